"""Sources that are not lines of text: parquet files and img2dataset output folders.

img2dataset writes, per shard, ``NNNNN.tar`` (``KEY.jpg``, ``KEY.txt`` the caption, ``KEY.json`` the
metadata, successful downloads only), ``NNNNN.parquet`` (the same metadata for every input row,
failed downloads included, with their ``status``) and ``NNNNN_stats.json``. A shard is read from
its parquet where there is one (:func:`~swagcli.prep.dumps.expand_dumps` picks it), else from its
tar. The post id is the shard key (``000010023``): the training stream joins the plan to the image
shards by it. Hashtags are the ``#tags`` of the caption, or a field named in the recipe
(``fields.tags``: e.g. the Flickr user tags kept with img2dataset's ``save_additional_columns``).
A record whose status is not ``success`` is a failed download: skipped and counted.

A file that breaks part-way is read up to the damage and counted (:meth:`ReadStats.broke`): a
parquet file row group by row group (a truncated one, its footer gone, has no readable record), a
tar shard sample by sample (the sample being read when it broke is lost with the rest).

A plain parquet dump has an id column and a tags column (a list, or a string as
:func:`~swagcli.prep.dumps.split_tags` reads it) or a caption column; the columns are found by
their usual names (:data:`ID_COLUMNS`, ...) or named in the recipe (``fields``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from swagcli.errors import SwagError
from swagcli.prep.dumps import SHARD_RE, Damaged, Post, ReadSpec, ReadStats, make_post, one_line
from swagcli.tario import BadTar, tar_samples

ID_COLUMNS = ("id", "key", "photo_id", "photoid", "post_id")
TAG_COLUMNS = ("hashtags", "tags", "user_tags", "usertags")
CAPTION_COLUMNS = ("caption", "text", "txt", "title")
BATCH_ROWS = 65536


def _parquet(path: Path):
    """The open parquet file; :class:`Damaged` where its footer does not read (a truncated
    file), a :class:`SwagError` where the file cannot be opened at all."""
    import pyarrow.parquet as pq

    try:
        open(path, "rb").close()
    except OSError as e:
        raise SwagError(f"{path}: cannot open ({e.strerror or e})") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise Damaged(f"not a readable parquet file ({one_line(e)})") from None


def parquet_kind(path: Path) -> str:
    """``img2dataset`` for img2dataset's metadata (``key`` and ``status`` columns), else ``parquet``;
    for a damaged file (no schema to go by), what its name says (``NNNNN.parquet``: img2dataset)."""
    try:
        names = set(_parquet(path).schema_arrow.names)
    except Damaged:
        return "img2dataset" if SHARD_RE.match(path.name) else "parquet"
    return "img2dataset" if {"key", "status"} <= names else "parquet"


def _column(names: list[str], named: str | None, usual: tuple, what: str, path: Path) -> str | None:
    if named:
        if named not in names:
            raise SwagError(f"{path}: no column {named!r} for the {what} (columns: {', '.join(names)})")
        return named
    return next((c for c in usual if c in names), None)


def _columns(pf, path: Path, spec: ReadSpec) -> list:
    """The columns a parquet source is read from: [id, tags, caption, country, status], each a
    name or None."""
    names = pf.schema_arrow.names
    status = None
    if spec.fmt == "img2dataset":
        if "key" not in names:
            raise SwagError(f"{path}: not img2dataset metadata (no 'key' column; columns: {', '.join(names)})")
        id_col, status = "key", "status" if "status" in names else None
        tag_col = _column(names, spec.tags, (), "tags", path)
        cap_col = _column(names, spec.caption, ("caption",), "caption", path)
        if tag_col is None and cap_col is None:
            raise SwagError(f"{path}: no caption column (downloaded without --caption_col?): name the "
                            f"field holding the tags with --tags-field (columns: {', '.join(names)})")
    else:
        id_col = _column(names, spec.id, ID_COLUMNS, "id", path)
        if id_col is None:
            raise SwagError(f"{path}: no id column ({', '.join(ID_COLUMNS)}; name it with fields.id)")
        tag_col = _column(names, spec.tags, TAG_COLUMNS, "tags", path)
        cap_col = _column(names, spec.caption, CAPTION_COLUMNS, "caption", path)
        if tag_col is None and cap_col is None:
            raise SwagError(f"{path}: no tags or caption column ({', '.join(TAG_COLUMNS + CAPTION_COLUMNS)}; "
                            "name one with fields.tags or fields.caption)")
    if spec.labels != "hashtags" and cap_col is None:
        raise SwagError(f"{path}: labels: {spec.labels} reads captions, and there is no caption column "
                        f"({', '.join(CAPTION_COLUMNS)}; name it with fields.caption; columns: {', '.join(names)})")
    country_col = _column(names, spec.country, ("country",), "country", path)
    return [id_col, tag_col, cap_col, country_col, status]


def _batches(pf, wanted: list):
    """The file's record batches, row group by row group: a batch reader over the whole file
    reads ahead, so a damaged row group would cost the records of the good ones before it."""
    columns = [c for c in dict.fromkeys(wanted) if c]
    for group in range(pf.num_row_groups):
        yield from pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)


def _batch_rows(batch, wanted: list, spec: ReadSpec, stats: ReadStats) -> Iterator[Post]:
    """The row path over one record batch."""
    data = batch.to_pydict()
    none = [None] * batch.num_rows
    for pid, tags, caption, country, st in zip(*(data[c] if c else none for c in wanted)):
        stats.lines += 1
        if st is not None and st != "success":
            stats.failed_download += 1
            continue
        post = make_post(pid, tags, caption, country, stats, spec)
        if post is not None:
            stats.posts += 1
            yield post


def _open(path: Path, stats: ReadStats):
    try:
        return _parquet(path)
    except Damaged as e:
        stats.broke(path, 0, e)
        return None


def iter_columnar(path: Path, spec: ReadSpec, stats: ReadStats) -> Iterator[Post]:
    import pyarrow as pa

    if path.name.endswith(".tar"):
        yield from _iter_shard_tar(path, spec, stats)
        return
    pf = _open(path, stats)
    if pf is None:
        return
    wanted = _columns(pf, path, spec)
    start = stats.lines
    try:
        for batch in _batches(pf, wanted):
            yield from _batch_rows(batch, wanted, spec, stats)
    except (OSError, ValueError, pa.ArrowException) as e:  # a corrupt row group
        stats.broke(path, stats.lines - start, e)


def iter_parquet_blocks(path: Path, spec: ReadSpec, stats: ReadStats, country: bool, distinct: bool = True):
    """:func:`iter_columnar` as :class:`~swagcli.prep.blocks.Block`\\ s: a record batch at a time on
    its columns, or by the row path where a column is of a type that path reads value by value."""
    import pyarrow as pa

    from swagcli.prep import blocks

    pf = _open(path, stats)
    if pf is None:
        return
    wanted = _columns(pf, path, spec)
    start = stats.lines
    try:
        for batch in _batches(pf, wanted):
            got = _fast_batch(batch, wanted, spec, stats, country, distinct)
            if got is None:
                blocks.PATHS["rows"] += 1
                yield from blocks._row_blocks(_batch_rows(batch, wanted, spec, stats), country)
            else:
                blocks.PATHS["fast"] += 1
                if len(got):
                    yield got
    except (OSError, ValueError, pa.ArrowException) as e:  # a corrupt row group
        stats.broke(path, stats.lines - start, e)


def _fast_batch(batch, wanted: list, spec: ReadSpec, stats: ReadStats, country: bool, distinct: bool):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from swagcli.prep.blocks import _ids, assemble, tag_column

    id_col, tag_col, cap_col, country_col, status = wanted
    col = {c: batch.column(c) for c in dict.fromkeys(wanted) if c}
    n = batch.num_rows
    failed = 0
    if status:
        st = col[status]
        if not (pa.types.is_string(st.type) or pa.types.is_null(st.type)):
            return None
        bad = pc.fill_null(pc.not_equal(st, "success"), False).to_numpy(zero_copy_only=False)
        if bad.any():
            failed = int(bad.sum())
            keep = pa.array(np.flatnonzero(~bad))
            col = {c: v.take(keep) for c, v in col.items()}
            n -= failed
    got = _ids(col[id_col], n)
    tags = tag_column(col[tag_col], spec.tags_sep) if tag_col else ([], np.zeros(0, dtype=np.int64))
    if got is None or tags is None:
        return None
    text = lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)  # noqa: E731
    cap = col[cap_col] if cap_col else None
    if cap is not None and not text(cap.type):
        cap = None  # not text: never a caption (the row path's isinstance(caption, str))
    countries = None
    if country:
        if country_col and not text(col[country_col].type):
            return None
        countries = [x or None for x in col[country_col].to_pylist()] if country_col else [None] * n
    block = assemble(n, got[0], got[1], tags[0], tags[1], (lambda i: cap[i].as_py()) if cap is not None else None,
                     countries, stats, spec, distinct)
    stats.lines += batch.num_rows
    stats.failed_download += failed
    return block


def _iter_shard_tar(path: Path, spec: ReadSpec, stats: ReadStats) -> Iterator[Post]:
    """An img2dataset tar shard: one record per sample (``KEY.txt`` caption, ``KEY.json`` metadata)."""
    try:
        f = open(path, "rb", buffering=1 << 20)
    except OSError as e:
        raise SwagError(f"{path}: cannot open ({e.strerror or e})") from None
    start = stats.lines
    try:
        with f:
            for s in tar_samples(f):
                stats.lines += 1
                meta: dict = {}
                if "json" in s:
                    try:
                        meta = json.loads(s["json"])
                    except ValueError:
                        meta = None
                    if not isinstance(meta, dict):
                        stats.bad_json += 1
                        continue
                st = meta.get("status")
                if st is not None and st != "success":
                    stats.failed_download += 1
                    continue
                if spec.caption:
                    caption = meta.get(spec.caption)
                elif "txt" in s:
                    try:
                        caption = s["txt"].decode("utf-8")
                    except UnicodeDecodeError:
                        stats.bad_utf8 += 1
                        continue
                else:
                    caption = meta.get("caption")
                post = make_post(s["__key__"], meta.get(spec.tags) if spec.tags else None, caption,
                                 meta.get(spec.country) if spec.country else None, stats, spec)
                if post is not None:
                    stats.posts += 1
                    yield post
    except (BadTar, OSError) as e:  # truncated or corrupt: the samples before it stand
        stats.broke(path, stats.lines - start, e)


def shard_tars(sources: list[str]) -> list[str]:
    """The tar shards of img2dataset sources (a source is a shard's parquet or its tar), where
    they exist: what the training stream reads for a plan drawn from them."""
    out = []
    for s in sources:
        tar = Path(s).with_suffix(".tar")
        if tar.is_file():
            out.append(str(tar))
    return out
