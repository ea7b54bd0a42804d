"""Reading sources a block at a time into arrays: the columnar path of every counting and planning pass.

:func:`iter_blocks` reads a source as :func:`~swagcli.prep.dumps.iter_posts` does (the *row path*,
one :class:`~swagcli.prep.dumps.Post` per line, the reference) but hands out :class:`Block`\\ s: a few
hundred thousand posts at a time as arrays, ``tags[ptr[j]:ptr[j+1]]`` being post j's tags as ids of
a :class:`TagTable` (normalized, distinct, in first-seen order: what the row path's ``Post.tags``
holds). The consumers (``count_tags``, ``count_canonical``, the sampler's two passes) work on these
arrays with numpy and never make a Python object per post.

How a block is read (measured on 1M posts a core, ``bench/bench_count.py``): line formats are cut into
blocks of whole lines (~4 MB); a JSONL block goes through pyarrow's JSON reader, a TSV or YFCC100M
block through its CSV reader (tab-separated, no quoting); parquet record batches are columns already.
Raw tags are normalized once per distinct string (a per-pass cache), so Python work scales with the
distinct tags of a block, not with its posts.

**Exactness.** The fast path takes a block only where it can give exactly what the row path gives:
the block decodes as UTF-8, every line is one JSON object on one line (starts with ``{``, ends with
``}``, and the reader's row count is the number of non-blank lines), the fields have the types the
row path reads the same way (string or integer ids, lists of strings or plain tag strings), no id
needs Python's own white-space rules, and so on (each check below). A block that fails any check, a
block holding a bad line among them, is read by the row path line by line, with its counts per rule
exactly as before. Which path read a block is counted (:attr:`ReadStats` is unchanged; the module
counters :data:`PATHS` are for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from swagcli.prep.canon import normalize_tag
from swagcli.prep.dumps import (YFCC_FIELDS, Damaged, Post, ReadSpec, ReadStats, _LINE_PARSERS, detect_format,
                                hashtags_in, iter_posts, read_blocks, split_tags)

BLOCK_BYTES = 1 << 23  # bytes of whole lines per block (line formats)
BLOCK_POSTS = 1 << 16  # posts per block where posts come one at a time (the row path, tar shards)
PATHS = {"fast": 0, "rows": 0}  # blocks read by each path (this process)
SHARED_MAX = 1 << 20  # tags the process's shared table holds before it starts afresh
_SHARED = None


# -- tags as ids -------------------------------------------------------------------------------------
class TagTable:
    """Normalized tags as ids (first-seen order), and raw tag -> id through a cache, so each
    distinct raw string is normalized once (``-1``: it normalizes to nothing)."""

    def __init__(self):
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self._raw: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.names)

    def intern(self, name: str) -> int:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
        return i

    def of_raw(self, raws: list) -> np.ndarray:
        """The ids of raw tags (``None`` and tags normalizing to nothing: -1)."""
        cache = self._raw
        got = list(map(cache.get, raws))
        if None in got:
            for k in [k for k, i in enumerate(got) if i is None]:
                r = raws[k]
                if r is None:
                    got[k] = -1
                    continue
                n = normalize_tag(r)
                got[k] = cache[r] = self.intern(n) if n else -1
        return np.array(got, dtype=np.int64)

    def canonical(self, tag_to_id: dict) -> np.ndarray:
        """The vocabulary id of each tag (-1: none), kept for this ``tag_to_id`` and extended to
        the tags interned since."""
        src, known = getattr(self, "_canon", (None, None))
        if src is not tag_to_id:
            known = np.zeros(0, dtype=np.int64)
        if len(known) < len(self.names):
            get = tag_to_id.get
            new = np.fromiter((get(t, -1) for t in self.names[len(known):]), dtype=np.int64,
                              count=len(self.names) - len(known))
            known = np.concatenate([known, new])
        self._canon = (tag_to_id, known)
        return known


def shared_table() -> TagTable:
    """The process's table, shared by the passes and files it reads (each raw tag normalized once
    a process); started afresh once it holds :data:`SHARED_MAX` tags."""
    global _SHARED
    if _SHARED is None or len(_SHARED) > SHARED_MAX:
        _SHARED = TagTable()
    return _SHARED


@dataclass
class Block:
    """Posts as arrays: ``ids`` (a list of str, or a pyarrow string array), ``ptr``/``tags`` (CSR of
    :class:`TagTable` ids, distinct per post in first-seen order) and ``country`` (a list of str or
    None, where it was asked for)."""

    ids: object
    ptr: np.ndarray
    tags: np.ndarray
    country: list | None = None

    def __len__(self) -> int:
        return len(self.ptr) - 1

    def id_list(self, index=None) -> list[str]:
        ids = self.ids
        if index is None:
            return ids if isinstance(ids, list) else ids.to_pylist()
        if isinstance(ids, list):
            return [ids[i] for i in index.tolist()]
        import pyarrow as pa

        return ids.take(pa.array(index)).to_pylist()

    def id_width(self) -> int:
        """The longest id's length in characters (the width of a numpy str array of them)."""
        ids = self.ids
        if isinstance(ids, list):
            return max(map(len, ids), default=1)
        import pyarrow.compute as pc

        return int(pc.max(pc.utf8_length(ids)).as_py() or 1) if len(ids) else 1

    def id_array(self, index: np.ndarray, width: int, as_bytes: bool = False) -> np.ndarray:
        """The ids at ``index`` as a numpy str array of ``width``: from the arrow buffers where the
        ids are ASCII, else through Python strings. ``as_bytes``: ASCII ids as bytes (``S``)."""
        ids = self.ids
        if not isinstance(ids, list) and len(index):
            import pyarrow as pa

            sub = ids.take(pa.array(index))
            data = _bytes_of(sub)
            if sub.null_count == 0 and not ((data >= 0x80) | (data == 0)).any():
                _, _, lens = _edges(sub)
                n = len(index)
                if (lens == width).all():
                    fixed = data.reshape(n, width)
                else:
                    fixed = np.zeros((n, width), dtype=np.uint8)
                    fixed[np.repeat(np.arange(n), lens), ranges(lens)] = data
                fixed = np.ascontiguousarray(fixed).view(f"S{width}").ravel()
                return fixed if as_bytes else fixed.astype(f"<U{width}")
        return np.array(self.id_list(index), dtype=f"<U{width}")

    def slice(self, lo: int, hi: int) -> "Block":
        """Posts ``lo`` to ``hi``."""
        a, b = int(self.ptr[lo]), int(self.ptr[hi])
        country = self.country[lo:hi] if self.country is not None else None
        return Block(self.ids[lo:hi], self.ptr[lo:hi + 1] - a, self.tags[a:b], country)

    @staticmethod
    def concat(blocks: list["Block"]) -> "Block":
        if len(blocks) == 1:
            return blocks[0]
        if all(not isinstance(b.ids, list) for b in blocks):
            import pyarrow as pa

            ids = pa.concat_arrays([b.ids for b in blocks])
        else:
            ids = [i for b in blocks for i in b.id_list()]
        country = None if any(b.country is None for b in blocks) else [c for b in blocks for c in b.country]
        return Block(ids, offsets(np.concatenate([np.diff(b.ptr) for b in blocks])),
                     np.concatenate([b.tags for b in blocks]), country)

    def take(self, index: np.ndarray) -> "Block":
        """The posts at ``index`` (sorted), in that order."""
        cnt = np.diff(self.ptr)[index]
        tags = self.tags[np.repeat(self.ptr[index], cnt) + ranges(cnt)]
        country = [self.country[i] for i in index.tolist()] if self.country is not None else None
        return Block(self.id_list(index), offsets(cnt), tags, country)


def exact_chunks(blocks: Iterator[Block], size: int) -> Iterator[Block]:
    """The posts of ``blocks`` re-cut into blocks of exactly ``size`` posts (the last: the rest)."""
    pending, have = [], 0
    for b in blocks:
        while len(b):
            if have + len(b) < size:
                pending.append(b)
                have += len(b)
                break
            k = size - have
            pending.append(b.slice(0, k))
            yield Block.concat(pending)
            pending, have = [], 0
            b = b.slice(k, len(b))
    if have:
        yield Block.concat(pending)


def offsets(counts: np.ndarray) -> np.ndarray:
    """CSR row pointers: ``[0, c0, c0+c1, ...]``."""
    ptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def ranges(cnt: np.ndarray) -> np.ndarray:
    """[0..cnt[0]), [0..cnt[1]), ... concatenated."""
    total = int(cnt.sum())
    starts = np.repeat(np.cumsum(cnt) - cnt, cnt)
    return np.arange(total, dtype=np.int64) - starts


def first_distinct(lab: np.ndarray, post: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per post (``post[k]``: the post of entry k, nondecreasing): drop negative ids and repeats,
    keeping first occurrences in order. Returns (labels, their posts, counts per post)."""
    keep = lab >= 0
    if len(lab) > 1:
        lens = np.bincount(post, minlength=n)
        longest = int(lens.max())
        if longest <= 8:  # compare with the k-th previous entry of the same post
            for k in range(1, longest):
                keep[k:] &= ~((lab[k:] == lab[:-k]) & (post[k:] == post[:-k]))
        else:
            key = post * (int(lab.max()) + 2) + (lab + 1)
            first = np.zeros(len(lab), dtype=bool)
            first[np.unique(key, return_index=True)[1]] = True
            keep &= first
    lab, post = lab[keep], post[keep]
    return lab, post, np.bincount(post, minlength=n)


def sorted_distinct(lab: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per post (``lens[j]`` consecutive entries each): drop negative ids, sort, drop repeats.
    Returns (labels, counts per post)."""
    n = len(lens)
    longest = int(lens.max()) if n else 0
    if longest == 0:
        return np.zeros(0, dtype=lab.dtype), np.zeros(n, dtype=np.int64)
    if longest <= 16:  # sort each post's row of a padded matrix
        big = np.iinfo(np.int64).max
        pad = np.full((n, longest), big, dtype=np.int64)
        pad[np.repeat(np.arange(n), lens), ranges(lens)] = np.where(lab >= 0, lab, big)
        pad.sort(axis=1)
        keep = pad != big
        keep[:, 1:] &= pad[:, 1:] != pad[:, :-1]
        return pad[keep].astype(lab.dtype, copy=False), keep.sum(axis=1)
    post = np.repeat(np.arange(n, dtype=np.int64), lens)
    ok = lab >= 0
    lab, post = lab[ok], post[ok]
    key = np.unique(post * (int(lab.max(initial=0)) + 1) + lab)
    width = int(lab.max(initial=0)) + 1
    return (key % width).astype(lab.dtype, copy=False), np.bincount(key // width, minlength=n)


# -- reading ------------------------------------------------------------------------------------------
def iter_blocks(path: Path, spec: "str | ReadSpec", stats: ReadStats, table: TagTable,
                country: bool = False, distinct: bool = True) -> Iterator[Block]:
    """The good posts of one source as :class:`Block`\\ s, every line (record) counted into ``stats``
    exactly as :func:`~swagcli.prep.dumps.iter_posts` counts it. ``country``: fill
    :attr:`Block.country`; ``distinct=False``: a post's tags may repeat (for a consumer that
    maps them to hashtags and takes those distinct)."""
    path = Path(path)
    spec = spec if isinstance(spec, ReadSpec) else ReadSpec(spec)
    if spec.fmt == "auto":
        spec = dataclasses.replace(spec, fmt=detect_format(path))
    if spec.labels != "hashtags" or path.name.endswith(".tar"):
        # caption labelling is Python's work per caption; tar shards come a sample at a time
        yield from _row_blocks(iter_posts(path, spec, stats), table, country)
        return
    if spec.fmt in ("img2dataset", "parquet"):
        from swagcli.prep.columnar import iter_parquet_blocks

        yield from iter_parquet_blocks(path, spec, stats, table, country, distinct)
        return
    reader = {"jsonl": _JsonBlocks, "tsv": _TsvBlocks, "yfcc": _YfccBlocks}[spec.fmt](spec, stats, table, country, distinct)
    start = stats.lines
    try:
        for raw in whole_lines(path):
            yield from reader.read(raw)
    except Damaged as e:  # truncated .gz, corrupt .zst/.bz2: the whole lines before it stand
        stats.broke(path, stats.lines - start, e)


def _row_blocks(posts: Iterator[Post], table: TagTable, country: bool) -> Iterator[Block]:
    """Posts of the row path, gathered into blocks."""
    while True:
        ids, lens, flat, cs = [], [], [], []
        for post in posts:
            ids.append(post.id)
            lens.append(len(post.tags))
            flat.extend(post.tags)
            cs.append(post.country)
            if len(ids) == BLOCK_POSTS:
                break
        if not ids:
            return
        yield _block_of(ids, lens, flat, cs if country else None, table)
        if len(ids) < BLOCK_POSTS:
            return


def _block_of(ids: list, lens: list, flat: list, country, table: TagTable) -> Block:
    intern = table.intern
    tags = np.fromiter((intern(t) for t in flat), dtype=np.int64, count=len(flat))
    return Block(ids, offsets(np.asarray(lens, dtype=np.int64)), tags, country)


def whole_lines(path: Path) -> Iterator[bytes]:
    """The decoded bytes of a line file in blocks of whole lines (each ends with a newline but
    perhaps the file's last). Where the file breaks (:class:`Damaged`, raised after the blocks
    before it), the line it cuts is lost with the rest, as the row path loses it. Compressed files
    are decompressed in a thread (zlib, bz2 and zstd let go of the GIL): the parsing overlaps it."""
    blocks = read_blocks(path, BLOCK_BYTES)
    if path.name.endswith((".gz", ".zst", ".zstd", ".bz2")):
        blocks = prefetched(blocks)
    rest = b""
    with contextlib.closing(blocks):
        for data in blocks:
            if rest:
                data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            if len(data) - cut:
                rest = data[cut:]
                yield data[:cut]
            else:
                rest = b""
                yield data
    if rest:
        yield rest


def prefetched(blocks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """``blocks`` produced by a thread, up to ``depth`` ahead; its exceptions re-raised here, in
    order; closing this generator stops the thread."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for b in blocks:
                if not put((0, b)):
                    return
            put((1, None))
        except BaseException as e:  # noqa: BLE001 -- handed to the reader
            put((2, e))
        finally:
            with contextlib.suppress(Exception):
                blocks.close()

    t = threading.Thread(target=run, name="swag-decompress", daemon=True)
    t.start()
    try:
        while True:
            kind, item = q.get()
            if kind == 0:
                yield item
            elif kind == 1:
                return
            else:
                raise item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join(timeout=5)


class _LineBlocks:
    """One line format's block reader: :meth:`fast` gives a block's posts or None (then the row
    path reads it)."""

    def __init__(self, spec: ReadSpec, stats: ReadStats, table: TagTable, country: bool, distinct: bool = True):
        self.spec, self.stats, self.table, self.country, self.distinct = spec, stats, table, country, distinct

    def read(self, raw: bytes) -> Iterator[Block]:
        got = None
        if raw.isascii() or _utf8(raw):
            lines = _Lines(raw)
            if lines.bare_cr == 0:
                got = self.fast(raw, lines)
        if got is not None:
            PATHS["fast"] += 1
            self.stats.lines += lines.n
            self.stats.blank += lines.empty
            if len(got):
                yield got
            return
        PATHS["rows"] += 1
        yield from _row_blocks(self._rows(raw), self.table, self.country)

    def _rows(self, raw: bytes) -> Iterator[Post]:
        """Today's per-line reading of one block (``iter_posts``' loop)."""
        stats, spec, parse = self.stats, self.spec, _LINE_PARSERS[self.spec.fmt]
        lines = raw.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        for line in lines:
            stats.lines += 1
            try:
                text = line.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError:
                stats.bad_utf8 += 1
                continue
            if not text.strip():
                stats.blank += 1
                continue
            post = parse(text, stats, spec)
            if post is not None:
                stats.posts += 1
                yield post

    def fast(self, raw: bytes, lines: "_Lines") -> Block | None:
        raise NotImplementedError


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Lines:
    """Where a block's lines start and end (a trailing ``\\r`` taken off, as the row path does):
    how many, how many empty, and whether a ``\\r`` stands elsewhere (CSV readers end lines there)."""

    def __init__(self, raw: bytes):
        a = np.frombuffer(raw, dtype=np.uint8)
        nl = np.flatnonzero(a == 10)
        ends = nl if a[-1] == 10 else np.append(nl, len(a))
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = nl[: len(ends) - 1] + 1
        self.bare_cr = 0
        if b"\r" in raw:
            cr = (ends > starts) & (a[np.maximum(ends - 1, 0)] == 13)
            ends = ends - cr
            self.bare_cr = int(np.count_nonzero(a == 13)) - int(cr.sum())
        self.a, self.starts, self.ends, self.n = a, starts, ends, len(ends)
        self.empty = int(np.count_nonzero(ends == starts))

    def bracketed(self, first: bytes, last: bytes) -> bool:
        """Every non-empty line starts with ``first`` and ends with ``last``."""
        starts, ends = self.starts, self.ends
        if self.empty:
            full = ends > starts
            starts, ends = starts[full], ends[full]
        a = self.a
        return bool((a[starts] == first[0]).all() and (a[ends - 1] == last[0]).all())


# -- the columns into a block --------------------------------------------------------------------------
def _ids(col, n: int):
    """A column of ids as the row path reads them: (ids, ok) or None where the fast path cannot
    tell (floats, objects, ids with white space at an end)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_null(t):
        return [None] * n, np.zeros(n, dtype=bool)
    if pa.types.is_integer(t):
        col = pc.cast(col, pa.string())
    elif not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return None
    ok = col.is_valid().to_numpy(zero_copy_only=False)
    first, last, length = _edges(col)
    plain = ~ok | ((length > 0) & (first > 32) & (first < 127) & (last > 32) & (last < 127))
    if not plain.all():  # Python's own strip decides (white space, or a non-ASCII character at an end)
        ids = col.to_pylist()
        for i in np.flatnonzero(~plain).tolist():
            ids[i] = ids[i].strip()
            ok[i] = ids[i] != ""
        return ids, ok
    return col, ok


def _edges(col):
    """Each string's first and last byte and its length in bytes (0, 0, 0 for a null), read off
    the array's buffers."""
    import pyarrow as pa

    if len(col) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    large = pa.types.is_large_string(col.type)
    bufs = col.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int64 if large else np.int32)[col.offset: col.offset + len(col) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and bufs[2].size else np.zeros(1, np.uint8)
    length = np.diff(off).astype(np.int64)
    some = length > 0
    first = np.where(some, data[np.minimum(off[:-1], len(data) - 1)], 0)
    last = np.where(some, data[np.clip(off[1:] - 1, 0, len(data) - 1)], 0)
    return first, last, length


def _bytes_of(col) -> np.ndarray:
    """The bytes of a string array's values, all of them, as one uint8 array."""
    import pyarrow as pa

    if len(col) == 0:
        return np.zeros(0, dtype=np.uint8)
    large = pa.types.is_large_string(col.type)
    bufs = col.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int64 if large else np.int32)[col.offset: col.offset + len(col) + 1]
    if bufs[2] is None:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer(bufs[2], dtype=np.uint8)[int(off[0]): int(off[-1])]


def assemble(n: int, ids, ok: np.ndarray, raw_flat, raw_post: np.ndarray, captions, country,
             stats: ReadStats, spec: ReadSpec, table: TagTable, distinct: bool = True) -> Block:
    """Posts from columns of ``n`` records, counted as :func:`~swagcli.prep.dumps.make_post` counts
    them: ``ok`` (a usable id), raw tags ``raw_flat`` (a pyarrow string array or list; None items
    ignored) of records ``raw_post``; ``captions`` (a callable giving record i's caption, or None):
    its ``#tags`` for a record without raw tags."""
    stats.no_id += int(n - ok.sum())
    import pyarrow as pa

    if isinstance(raw_flat, list):
        lab = table.of_raw(raw_flat)
        valid = np.fromiter((t is not None for t in raw_flat), dtype=bool, count=len(raw_flat))
    else:
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(raw_flat) if not pa.types.is_dictionary(raw_flat.type) else raw_flat
        m = table.of_raw(enc.dictionary.to_pylist())
        idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        lab = np.where(idx >= 0, m[np.maximum(idx, 0)] if len(m) else -1, -1)
        valid = idx >= 0
    lab, post = lab[ok[raw_post]], raw_post[ok[raw_post]]
    if captions is not None and spec.caption_hashtags:
        has_raw = np.zeros(n, dtype=bool)
        has_raw[raw_post[valid]] = True
        extra_lab, extra_post = [], []
        for i in np.flatnonzero(ok & ~has_raw).tolist():
            cap = captions(i)
            if isinstance(cap, str):
                found = hashtags_in(cap)
                if found:
                    stats.from_caption += 1
                    extra_lab.append(table.of_raw(found))
                    extra_post.append(np.full(len(found), i, dtype=np.int64))
        if extra_lab:
            lab = np.concatenate([lab] + extra_lab)
            post = np.concatenate([post] + extra_post)
            order = np.argsort(post, kind="stable")
            lab, post = lab[order], post[order]
    if distinct:
        lab, post, cnt = first_distinct(lab, post, n)
    else:
        some = lab >= 0
        lab, post = lab[some], post[some]
        cnt = np.bincount(post, minlength=n)
    good = ok & (cnt > 0)
    stats.no_tags += int((ok & (cnt == 0)).sum())
    stats.posts += int(good.sum())
    keep = np.flatnonzero(good)
    if len(keep) < n:
        if isinstance(ids, list):
            ids = [ids[i] for i in keep.tolist()]
        else:
            ids = ids.take(pa.array(keep))
        if country is not None:
            country = [country[i] for i in keep.tolist()]
    return Block(ids, offsets(cnt[keep]), lab, country)


def _split_tag_strings(col, sep: str | None):
    """A column of tag strings split as :func:`~swagcli.prep.dumps.split_tags` splits them: (raw
    flat, record of each). In arrow where no string holds what Python's rules treat otherwise (a
    comma, a non-ASCII or \\x1c-\\x1f character, a declared separator), else string by string."""
    import pyarrow.compute as pc

    if sep is None:
        b = _bytes_of(col)
        if not ((b == 44) | ((b >= 0x1C) & (b <= 0x1F)) | (b >= 0x80)).any():
            return _drop_empty(pc.ascii_split_whitespace(col))
    flat, post = [], []
    for i, s in enumerate(col.to_pylist()):
        if s:
            got = split_tags(s, sep)
            flat.extend(got)
            post.extend([i] * len(got))
    return flat, np.asarray(post, dtype=np.int64)


def _untagged(ok: np.ndarray, flat, post: np.ndarray) -> np.ndarray:
    """Records with an id and no raw tag (their caption's ``#tags`` are read)."""
    valid = (np.fromiter((t is not None for t in flat), dtype=bool, count=len(flat)) if isinstance(flat, list)
             else flat.is_valid().to_numpy(zero_copy_only=False))
    has = np.zeros(len(ok), dtype=bool)
    has[post[valid]] = True
    return ok & ~has


def _drop_empty(lists):
    """A list column's items but empty strings, and the record of each."""
    import pyarrow as pa
    import pyarrow.compute as pc

    flat = lists.flatten()
    post = pc.list_parent_indices(lists).to_numpy().astype(np.int64)
    some = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
    if some.all():
        return flat, post
    return flat.filter(pa.array(some)), post[some]


def tag_column(col, sep: str | None):
    """Raw tags of a column (lists of strings, tag strings or nothing): (flat, record of each), or
    None for types the row path reads item by item (lists of mixed things)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_null(t):
        return [], np.zeros(0, dtype=np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _split_tag_strings(col, sep)
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type) or pa.types.is_null(t.value_type)):
        flat = col.flatten()
        post = pc.list_parent_indices(col).to_numpy().astype(np.int64)
        if pa.types.is_null(t.value_type):
            return [None] * len(flat), post
        return flat, post
    return None


class _JsonBlocks(_LineBlocks):
    with_caption = False  # read captions: set once a block held a post without tags

    def __init__(self, *a):
        super().__init__(*a)
        import pyarrow as pa

        self.id_type, self.tags_type = pa.string(), pa.list_(pa.string())
        s = self.spec
        self.names = {"id": s.id or "id", "tags": s.tags or "hashtags", "caption": s.caption or "caption",
                      "country": s.country or "country"}

    def _read(self, raw: bytes, explicit: bool):
        import pyarrow as pa
        import pyarrow.json as pj

        fields = [(self.names["id"], self.id_type), (self.names["tags"], self.tags_type)]
        if self.spec.caption_hashtags and self.with_caption:
            fields.append((self.names["caption"], pa.string()))
        if self.country:
            fields.append((self.names["country"], pa.string()))
        if len({f for f, _ in fields}) < len(fields):
            raise pa.ArrowInvalid("one field named twice")
        opts = pj.ReadOptions(use_threads=False, block_size=len(raw) + 1)
        parse = (pj.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore") if explicit
                 else pj.ParseOptions(unexpected_field_behavior="infer"))
        return pj.read_json(io.BytesIO(raw), read_options=opts, parse_options=parse)

    def fast(self, raw: bytes, lines: _Lines) -> Block | None:
        import pyarrow as pa

        if not lines.bracketed(b"{", b"}"):  # one object a line
            return None
        if b"\\u" in raw and re.search(rb"\\u[dD][89a-fA-F]", raw):  # surrogate escapes: Python and arrow differ on lone ones
            return None
        try:
            table = self._read(raw, True)
        except pa.ArrowInvalid:
            try:  # the ids or tags of this file are of another type: learn it from this block
                table = self._read(raw, False)
            except pa.ArrowInvalid:
                return None
            names = table.schema.names
            for key, attr in (("id", "id_type"), ("tags", "tags_type")):
                if self.names[key] in names:
                    setattr(self, attr, table.schema.field(self.names[key]).type)
        n = table.num_rows
        if n != lines.n - lines.empty:
            return None
        cols = {k: (table.column(v).combine_chunks() if v in table.schema.names else pa.nulls(n))
                for k, v in self.names.items()}
        got = _ids(cols["id"], n)
        tags = tag_column(cols["tags"], self.spec.tags_sep)
        if got is None or tags is None:
            return None
        country = None
        if self.country:
            c = cols["country"]
            if not (pa.types.is_string(c.type) or pa.types.is_null(c.type)):
                return None
            country = [x or None for x in c.to_pylist()]
        cap = cols["caption"]
        if self.spec.caption_hashtags and not self.with_caption and _untagged(got[1], tags[0], tags[1]).any():
            self.with_caption = True  # posts without tags take their caption's: read it (from now on)
            return self.fast(raw, lines)
        if self.spec.caption_hashtags and not (pa.types.is_string(cap.type) or pa.types.is_null(cap.type)):
            return None
        return assemble(n, got[0], got[1], tags[0], tags[1], (lambda i: cap[i].as_py()), country,
                        self.stats, self.spec, self.table, self.distinct)


def _csv(raw: bytes, names: list[str]):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    return pcsv.read_csv(
        io.BytesIO(raw),
        read_options=pcsv.ReadOptions(use_threads=False, block_size=len(raw) + 1, autogenerate_column_names=True),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False, double_quote=False,
                                        newlines_in_values=False, ignore_empty_lines=True),
        convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in names}, include_columns=names,
                                            include_missing_columns=True, strings_can_be_null=False,
                                            quoted_strings_can_be_null=False, null_values=[]))


def _tsv_fields(raw: bytes) -> list:
    """The first three tab-separated fields of a block's non-empty lines, whatever their number
    (missing ones null), as the row path splits them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    text = pc.cast(pa.array([x for x in lines if x], type=pa.binary()), pa.string())
    got = pc.extract_regex(text, r"^(?P<a>[^\t]*)(?:\t(?P<b>[^\t]*))?(?:\t(?P<c>[^\t]*))?")
    has = [pc.match_substring(text, "\t"), pc.match_substring_regex(text, r"^[^\t]*\t[^\t]*\t")]
    out = [got.field(0)]
    for k in (1, 2):  # a field the line does not have is missing (None), not empty
        out.append(pc.if_else(has[k - 1], got.field(k), pa.scalar(None, pa.string())))
    return out


class _TsvBlocks(_LineBlocks):
    def fast(self, raw: bytes, lines: _Lines) -> Block | None:
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            table = _csv(raw, ["f0", "f1", "f2"])
            cols = [table.column(c).combine_chunks() for c in ("f0", "f1", "f2")]
        except pa.ArrowInvalid:  # lines with other numbers of fields (the country is optional)
            cols = _tsv_fields(raw)
        n = len(cols[0])
        if n != lines.n - lines.empty:
            return None
        ids, tags = cols[0], cols[1]
        got = _ids(ids, n)
        if got is None or not got[1].all():  # an empty id, or a line of white space: the row path
            return None
        tags = tags.cast(pa.string()) if not pa.types.is_null(tags.type) else pa.nulls(n, pa.string())
        flat, post = _split_tag_strings(pc.fill_null(tags, ""), self.spec.tags_sep)
        country = None
        if self.country:
            c = cols[2]
            country = ([None] * n if pa.types.is_null(c.type)
                       else [(x.strip() or None) if x is not None else None for x in c.to_pylist()])
        return assemble(n, got[0], got[1], flat, post, None, country, self.stats, self.spec, self.table, self.distinct)


class _YfccBlocks(_LineBlocks):
    """YFCC100M's metadata lines (:func:`~swagcli.prep.dumps._parse_yfcc`): ids, user tags
    split at commas, the marker, and the title and description for a photo without user tags."""

    captions = False  # set once a block needed them: read them from then on

    def fast(self, raw: bytes, lines: _Lines) -> Block | None:
        import pyarrow as pa
        import pyarrow.compute as pc

        k = raw.find(b"\n")
        nf = raw[: k if k >= 0 else len(raw)].rstrip(b"\r").count(b"\t") + 1
        if nf not in YFCC_FIELDS:
            return None
        spec = self.spec
        want = ["f0", "f1", f"f{nf - 15}", f"f{nf - 1}"]
        if spec.caption_hashtags and self.captions:
            want += [f"f{nf - 17}", f"f{nf - 16}"]
        try:
            table = _csv(raw, want)
        except pa.ArrowInvalid:
            return None
        if table.num_rows != lines.n - lines.empty or len(table.column_names) != len(want):
            return None
        col = {c: table.column(c).combine_chunks() for c in want}
        marker = col[f"f{nf - 1}"]
        photo = pc.equal(marker, "0").to_numpy(zero_copy_only=False)
        video = pc.equal(marker, "1").to_numpy(zero_copy_only=False)
        if not (photo | video).all():  # a marker with white space, or none: the row path
            return None
        keep = np.flatnonzero(photo)
        take = pa.array(keep)
        f0, f1 = col["f0"].take(take), col["f1"].take(take)
        if nf == 23:
            ids = f0
        elif nf == 25:
            ids = f1
        else:  # 24: the hash, or a row number before the id
            ids = pc.if_else(pc.match_substring_regex(f1, "^[0-9a-f]{32}$"), f0, f1)
        tags = col[f"f{nf - 15}"].take(take)
        n = len(keep)
        got = _ids(ids, n)
        if got is None or not got[1].all():
            return None
        flat, post = _drop_empty(pc.split_pattern(tags, ","))
        captions = None
        if spec.caption_hashtags:
            bare = pc.equal(tags, "").to_numpy(zero_copy_only=False) & got[1]
            if bare.any():
                if not self.captions:
                    self.captions = True  # read this block again, with the titles and descriptions
                    return self.fast(raw, lines)
                from urllib.parse import unquote_plus

                title, desc = col[f"f{nf - 17}"].take(take), col[f"f{nf - 16}"].take(take)

                def caption(i):  # only where the user tags field is empty (',,' holds no tag, nor a caption)
                    if not bare[i]:
                        return None
                    return (unquote_plus(title[i].as_py()) + " " + unquote_plus(desc[i].as_py())).strip()

                captions = caption
        block = assemble(n, got[0], got[1], flat, post, captions, [None] * n if self.country else None,
                         self.stats, spec, self.table, self.distinct)
        self.stats.video += int(video.sum())
        return block
