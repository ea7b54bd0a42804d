"""Reading sources a block at a time into arrays: the columnar path of every counting and planning pass.

:func:`iter_blocks` reads a source as :func:`~swagcli.prep.dumps.iter_posts` does (the *row path*,
one :class:`~swagcli.prep.dumps.Post` per line, the reference) but hands out :class:`Block`\\ s: up to
a few hundred thousand posts at a time as arrays, ``tags[ptr[j]:ptr[j+1]]`` being post j's tags as
codes into the block's ``names`` (a pyarrow string array of normalized tags; a post's codes
distinct, in first-seen order: what the row path's ``Post.tags`` holds). The consumers
(``count_tags``, ``count_canonical``, the sampler's passes) work on these arrays with numpy and
arrow's hash kernels and never make a Python object per post or per distinct tag.

How a block is read (measured on 1M posts a core, ``bench/bench_count.py``): line formats are cut into
blocks of whole lines (~4 MB); a JSONL block goes through a compiled one-pass scanner
(:mod:`~swagcli.prep.jsonscan`, numba) where every line of it is plain, else through pyarrow's JSON
reader; a TSV or YFCC100M block through pyarrow's CSV reader (tab-separated, no quoting); parquet
record batches are columns already.
Raw tags are normalized by arrow's ASCII kernels (Python's :func:`~swagcli.prep.canon.normalize_tag`
for the few it cannot do the same way: non-ASCII, ``%XX``), and matched to a vocabulary by hash.

**Exactness.** The fast path takes a block only where it can give exactly what the row path gives:
the block decodes as UTF-8, every line is one JSON object on one line (starts with ``{``, ends with
``}``, and the reader's row count is the number of non-blank lines), the fields have the types the
row path reads the same way (string or integer ids, lists of strings or plain tag strings), no id
needs Python's own white-space rules, and so on (each check below). The lines it turns down are
read by the row path line by line, with their counts per rule exactly as before: the lines it can
name (a JSON parse error's row, an empty id, a bad marker, the first line that is not UTF-8) one by
one, the rest of the block by the fast path again; where it names none, piece by piece
(:func:`_pieces`). The JSONL scanner is exact by refusing: it takes a block only where Python's json
reads each line to the same fields (its module says which lines those are), and leaves any other
block to the checks above. Which path read a block is counted in :data:`PATHS` (for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import queue
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from swagcli.prep.canon import normalize_tag
from swagcli.prep.dumps import (YFCC_FIELDS, Damaged, Post, ReadSpec, ReadStats, detect_format, hashtags_in,
                                iter_posts, posts_of_lines, read_blocks, split_tags)

BLOCK_BYTES = 1 << 22  # bytes of whole lines per block (line formats)
# a block the fast path turns down (a bad line in it) is cut into SPLIT_PARTS pieces that are tried
# again, and so on down to pieces of SPLIT_MIN bytes, which the row path reads: one bad line in a
# block costs about two fast reads of it and the row path over 64 KB
SPLIT_PARTS, SPLIT_MIN = 8, 1 << 16  # (a fast read costs ~0.4 ms a call: ~50 lines by the row path)
BLOCK_POSTS = 1 << 16  # posts per block where posts come one at a time (the row path, tar shards)
PATHS = {"fast": 0, "rows": 0}  # blocks read by each path (this process)
SCAN_STOPS = 8  # lines a scanner may stop at in one block before the rest of it goes to the line checks


# -- tags as ids -------------------------------------------------------------------------------------
_NORM: dict[str, str] = {}  # raw -> normalized, for the raw tags arrow does not normalize (non-ASCII, %XX)
_NORM_MAX = 1 << 20
# raw tags at least, for the compiled normalizer (fewer: arrow's kernels, and a TSV or parquet run
# with few distinct tags a block never imports numba, ~0.3 s a process)
TAGNORM_MIN = 1 << 15


def normalize_unique(raws):
    """Raw tags (a pyarrow string array) -> (code of each into ``names``, -1 where it normalizes
    to nothing; ``names``: the distinct normalized tags), as
    :func:`~swagcli.prep.canon.normalize_tag` normalizes them: in one compiled pass
    (:mod:`~swagcli.prep.tagnorm`; arrow's kernels without numba) for ASCII tags without ``%`` or
    \\x1c-\\x1f (``+`` as a space, leading white space and ``#`` stripped, lower-cased, white
    space removed), in Python for the others."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tn = compiled("tagnorm") if len(raws) >= TAGNORM_MIN else None
    r, per = tn.normalized(raws) if tn is not None else _arrow_normalized(raws)
    if per is not None:  # the tags Python normalizes (non-ASCII, %XX, \x1c-\x1f)
        which = np.flatnonzero(per)
        fixed = []
        for raw in raws.take(pa.array(which)).to_pylist():
            n = _NORM.get(raw)
            if n is None:
                if len(_NORM) >= _NORM_MAX:
                    _NORM.clear()
                n = _NORM[raw] = normalize_tag(raw)
            fixed.append(n)
        r = pc.replace_with_mask(r, pa.array(per), pa.array(fixed, type=r.type))
    r = pc.if_else(pc.equal(r, ""), pa.scalar(None, pa.string()), r)
    enc = pc.dictionary_encode(r)
    codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, enc.dictionary


def _arrow_normalized(raws):
    """:func:`normalize_unique`'s ASCII rules by arrow's kernels (where numba is missing): (the
    tags, the mask of those Python normalizes or None)."""
    import pyarrow.compute as pc

    b = _bytes_of(raws)  # each kernel only where a byte asks for it
    space = (b == 32) | ((b >= 9) & (b <= 13))
    r = raws
    if (b == 43).any():
        r = pc.replace_substring(r, "+", " ")
        space |= b == 43
    has_space = bool(space.any())
    if has_space:
        r = pc.ascii_ltrim_whitespace(r)
    r = pc.ascii_ltrim(r, "#")
    if ((b >= 65) & (b <= 90)).any():
        r = pc.ascii_lower(r)
    if has_space:
        r = pc.replace_substring_regex(r, r"[ \t\n\r\x0b\x0c]+", "")
    odd_byte = _python_bytes(b)
    if not odd_byte.any():
        return r, None
    _, _, length = _edges(raws)
    start = np.concatenate(([0], np.cumsum(length)[:-1]))
    some = length > 0
    per = np.zeros(len(raws), dtype=bool)
    per[some] = np.logical_or.reduceat(odd_byte, start[some])
    return r, per


def _python_bytes(b: np.ndarray) -> np.ndarray:
    """The bytes of raw tags that Python normalizes (arrow's ASCII kernels do not): ``%``,
    \\x1c-\\x1f, non-ASCII."""
    return (b == 37) | ((b >= 0x1C) & (b <= 0x1F)) | (b >= 0x80)


def _needs_python(b: np.ndarray) -> bool:
    return bool(_python_bytes(b).any())


_DISTINCT = [0.0]  # distinct raw tags / tags in the last block: which way the next one is normalized
_VOCAB: list = [None, None]  # (tag_to_id, its (names, ids) arrays): the last vocabulary looked up


def vocabulary_ids(names, tag_to_id: dict) -> np.ndarray:
    """The vocabulary id of each normalized tag of ``names`` (-1: none), by a hash lookup in arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if _VOCAB[0] is not tag_to_id:
        _VOCAB[:] = [tag_to_id, (pa.array(list(tag_to_id), type=pa.string()),
                                 np.fromiter(tag_to_id.values(), dtype=np.int64, count=len(tag_to_id)))]
    known, ids = _VOCAB[1]
    pos = pc.index_in(names, value_set=known).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(pos >= 0, ids[np.maximum(pos, 0)] if len(ids) else -1, -1)


@dataclass
class Block:
    """Posts as arrays: ``ids`` (a list of str, or a pyarrow string array), ``ptr``/``tags`` (CSR of
    codes into ``names``, the block's distinct normalized tags as a pyarrow string array; a post's
    codes distinct, in first-seen order) and ``country`` (a list of str or None, where asked for)."""

    ids: object
    ptr: np.ndarray
    tags: np.ndarray
    names: object
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
        return Block(self.ids[lo:hi], self.ptr[lo:hi + 1] - a, self.tags[a:b], self.names, country)

    @staticmethod
    def concat(blocks: list["Block"]) -> "Block":
        if len(blocks) == 1:
            return blocks[0]
        if all(not isinstance(b.ids, list) for b in blocks):
            import pyarrow as pa

            ids = pa.concat_arrays([b.ids for b in blocks])
        else:
            ids = [i for b in blocks for i in b.id_list()]
        import pyarrow as pa

        country = None if any(b.country is None for b in blocks) else [c for b in blocks for c in b.country]
        base = np.cumsum([0] + [len(b.names) for b in blocks[:-1]])
        return Block(ids, offsets(np.concatenate([np.diff(b.ptr) for b in blocks])),
                     np.concatenate([b.tags + k for b, k in zip(blocks, base.tolist())]),
                     pa.concat_arrays([b.names for b in blocks]), country)


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
def iter_blocks(path: Path, spec: "str | ReadSpec", stats: ReadStats, country: bool = False,
                distinct: bool = True) -> Iterator[Block]:
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
        yield from _row_blocks(iter_posts(path, spec, stats), country)
        return
    if spec.fmt in ("img2dataset", "parquet"):
        from swagcli.prep.columnar import iter_parquet_blocks

        yield from iter_parquet_blocks(path, spec, stats, country, distinct)
        return
    reader = {"jsonl": _JsonBlocks, "tsv": _TsvBlocks, "yfcc": _YfccBlocks}[spec.fmt](spec, stats, country, distinct)
    start = stats.lines
    try:
        for raw in whole_lines(path):
            yield from reader.read(raw)
    except Damaged as e:  # truncated .gz, corrupt .zst/.bz2: the whole lines before it stand
        stats.broke(path, stats.lines - start, e)


def _row_blocks(posts: Iterator[Post], country: bool) -> Iterator[Block]:
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
        yield _block_of(ids, lens, flat, cs if country else None)
        if len(ids) < BLOCK_POSTS:
            return


def _block_of(ids: list, lens: list, flat: list, country) -> Block:
    import pyarrow as pa

    codes: dict[str, int] = {}
    tags = np.fromiter((codes.setdefault(t, len(codes)) for t in flat), dtype=np.int64, count=len(flat))
    return Block(ids, offsets(np.asarray(lens, dtype=np.int64)), tags, pa.array(list(codes), type=pa.string()), country)


def whole_lines(path: Path) -> Iterator[bytes]:
    """The decoded bytes of a line file in blocks of whole lines (each ends with a newline but
    perhaps the file's last). Where the file breaks (:class:`Damaged`, raised after the blocks
    before it), the line it cuts is lost with the rest, as the row path loses it. Compressed files
    are decompressed in a thread (zlib, bz2 and zstd let go of the GIL): the parsing overlaps it."""
    blocks = read_blocks(path, BLOCK_BYTES)
    if path.name.endswith((".gz", ".zst", ".zstd", ".bz2")):
        blocks = prefetched(blocks)
    pending, size = [], 0  # decompressors hand out pieces of ~64 KB: gathered up to a block
    with contextlib.closing(blocks):
        try:
            for data in blocks:
                pending.append(data)
                size += len(data)
                if size >= BLOCK_BYTES:
                    buf = b"".join(pending)
                    cut = buf.rfind(b"\n") + 1
                    if cut:
                        yield buf[:cut] if cut < len(buf) else buf
                        buf = buf[cut:]
                    pending, size = ([buf] if buf else []), len(buf)
        except Damaged:
            buf = b"".join(pending)
            cut = buf.rfind(b"\n") + 1
            if cut:
                yield buf[:cut]
            raise
    if pending:
        yield b"".join(pending)


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

    def __init__(self, spec: ReadSpec, stats: ReadStats, country: bool, distinct: bool = True):
        self.spec, self.stats, self.country, self.distinct = spec, stats, country, distinct

    dense = False  # the last block's bad lines were many: its pieces went to the row path

    def read(self, raw: bytes, split: bool = True):
        """The posts of one block. Where the format has a scanner (JSONL: :meth:`scan`), it reads
        the block's plain lines first, up to the first line that is not: that line alone goes to
        :meth:`checked`, and the scanner goes on from the line after it; after
        :data:`SCAN_STOPS` such lines in one block, the rest of it goes to :meth:`checked` at once.
        Returns whether the fast path read all of it."""
        clean = True
        if self.scans and raw and (raw.isascii() or _is_utf8(raw)):
            view, at = memoryview(raw), 0  # (the scanner reads on from a line without copying the rest)
            for _ in range(SCAN_STOPS):
                got = self.scan(view[at:])
                if got is None:
                    break
                block, n_lines, n_blank, stop = got
                self.stats.lines += n_lines
                self.stats.blank += n_blank
                if n_lines:
                    PATHS["fast"] += 1
                if block is not None and len(block):
                    yield block
                stop += at
                if stop >= len(raw):
                    return clean
                end = raw.find(b"\n", stop) + 1 or len(raw)
                ok = yield from self.checked(raw[stop:end], split)
                clean = clean and ok
                at = end
                if at >= len(raw):
                    return clean
            raw = raw[at:]
        ok = yield from self.checked(raw, split)
        return clean and ok

    def checked(self, raw: bytes, split: bool = True):
        """The posts of one block by the fast path if it takes the block. Else, where the fast
        path named the lines it turned down (``self.bad``: a JSON parse error's row, empty ids,
        a line that is not UTF-8), those lines go to the row path and the lines between them to
        :meth:`read` again; where it named none, the block is read piece by piece
        (:func:`_pieces`), the pieces it turns down by the row path. Returns whether the fast
        path read all of it."""
        clean = True
        while raw:
            self.bad = []
            got, lines = None, None
            text_ok = raw.isascii() or _is_utf8(raw)
            if not text_ok:
                try:  # where: Python's decoder names the first line that is not UTF-8
                    raw.decode("utf-8")
                    text_ok = True
                except UnicodeDecodeError as e:
                    self.bad = [raw.count(b"\n", 0, e.start)]
            if text_ok:
                lines = _Lines(raw)
                if lines.bare_cr == 0:
                    got = self.fast(raw, lines)
            if got is not None:
                PATHS["fast"] += 1
                self.stats.lines += lines.n
                self.stats.blank += lines.empty
                if len(got):
                    yield got
                return clean
            clean = False
            bad = sorted(set(self.bad))
            if bad and len(bad) * 50 <= raw.count(b"\n") + 1:  # cut the named lines out
                starts = _line_starts(raw)
                pos = 0
                for i in bad:
                    lo, hi = int(starts[i]), int(starts[i + 1]) if i + 1 < len(starts) else len(raw)
                    if lo > pos:
                        yield from self.read(raw[pos:lo], split)
                    yield from self._by_rows(raw[lo:hi])
                    pos = hi
                if pos < len(raw):  # after the last: another go (a JSON error names its first bad row only)
                    yield from self.read(raw[pos:], split)
                return False
            pieces = _pieces(raw, max(1, min(SPLIT_PARTS, len(raw) // SPLIT_MIN))) if split else [raw]
            if len(pieces) > 1:
                failed = 0
                for piece in pieces:
                    # bad lines everywhere (half the pieces so far turned down): the row path at once
                    dense = failed * 2 >= len(pieces)
                    ok = yield from (self._by_rows(piece) if dense else self.read(piece, not self.dense))
                    failed += not ok
                self.dense = failed * 2 >= len(pieces)
                return False
            yield from self._by_rows(raw)
            return False
        return clean

    def _bad_rows(self, lines: "_Lines", rows) -> None:
        """Name the lines of the fast reader's ``rows`` (rows count the non-empty lines)."""
        full = np.flatnonzero(lines.ends > lines.starts) if lines.empty else None
        rows = np.asarray(rows, dtype=np.int64)
        self.bad = (full[rows] if full is not None else rows).tolist()

    def _by_rows(self, raw: bytes):
        PATHS["rows"] += 1
        yield from _row_blocks(self._rows(raw), self.country)
        return False

    def _rows(self, raw: bytes) -> Iterator[Post]:
        """Today's per-line reading of one block (``iter_posts``' loop)."""
        lines = raw.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        return posts_of_lines(lines, self.stats, self.spec)

    scans = False  # the format has a scanner (:meth:`scan`)

    def scan(self, raw: bytes):
        """(posts, lines, blank lines, where it stopped) of the plain lines at the start of a block
        up to the first that is not, read without the fast path's line checks; None: no scanner."""
        return None

    def fast(self, raw: bytes, lines: "_Lines") -> Block | None:
        raise NotImplementedError


def _is_utf8(raw: bytes) -> bool:
    """Whether ``raw`` is UTF-8 as Python's decoder takes it, by arrow's validation (over 20x
    faster than ``raw.decode``, which was ~15% of a non-ASCII block's fast read)."""
    import pyarrow as pa

    off = pa.py_buffer(np.array([0, len(raw)], dtype=np.int64).tobytes())
    try:
        pa.LargeStringArray.from_buffers(1, off, pa.py_buffer(raw)).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _line_starts(raw: bytes) -> np.ndarray:
    a = np.frombuffer(raw, dtype=np.uint8)
    nl = np.flatnonzero(a == 10) + 1
    return np.concatenate(([0], nl[nl < len(a)]))


def _pieces(raw: bytes, parts: int = SPLIT_PARTS) -> list[bytes]:
    """``raw`` cut at line ends into about ``parts`` pieces of whole lines."""
    out, start, step = [], 0, max(1, len(raw) // parts)
    while start < len(raw):
        cut = raw.find(b"\n", start + step - 1) + 1 if start + step < len(raw) else len(raw)
        if cut <= start:
            cut = len(raw)
        out.append(raw[start:cut])
        start = cut
    return out


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

    def unbracketed(self, first: bytes, last: bytes) -> np.ndarray:
        """The non-empty lines that do not start with ``first`` and end with ``last``."""
        starts, ends = self.starts, self.ends
        full = np.flatnonzero(ends > starts)
        a = self.a
        return full[(a[starts[full]] != first[0]) | (a[ends[full] - 1] != last[0])]


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
             stats: ReadStats, spec: ReadSpec, distinct: bool = True) -> Block:
    """Posts from columns of ``n`` records, counted as :func:`~swagcli.prep.dumps.make_post` counts
    them: ``ok`` (a usable id), raw tags ``raw_flat`` (a pyarrow string array or list; None items
    ignored) of records ``raw_post``; ``captions`` (a callable giving record i's caption, or None):
    its ``#tags`` for a record without raw tags. ``distinct=False``: a post's codes may repeat."""
    import pyarrow as pa

    stats.no_id += int(n - ok.sum())
    if isinstance(raw_flat, list):
        raw_flat = pa.array(raw_flat, type=pa.string())
    elif not pa.types.is_string(raw_flat.type):
        raw_flat = raw_flat.cast(pa.string())
    post = raw_post
    if captions is not None and spec.caption_hashtags:
        extra, extra_post = [], []
        for i in np.flatnonzero(_untagged(ok, raw_flat, raw_post)).tolist():
            cap = captions(i)
            if isinstance(cap, str):
                found = hashtags_in(cap)
                if found:
                    stats.from_caption += 1
                    extra.extend(found)
                    extra_post.extend([i] * len(found))
        if extra:
            raw_flat = pa.concat_arrays([raw_flat, pa.array(extra, type=pa.string())])
            post = np.concatenate([raw_post, np.asarray(extra_post, dtype=np.int64)])
            order = np.argsort(post, kind="stable")
            raw_flat, post = raw_flat.take(pa.array(order)), post[order]
    import pyarrow.compute as pc

    if _DISTINCT[0] < 0.5 or _needs_python(_bytes_of(raw_flat)):
        # few distinct tags (or some Python must normalize): normalize each distinct raw tag once
        enc = pc.dictionary_encode(raw_flat)
        idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        codes, names = normalize_unique(enc.dictionary)
        lab = np.where(idx >= 0, codes[np.maximum(idx, 0)] if len(codes) else -1, -1)
        _DISTINCT[0] = len(enc.dictionary) / max(1, len(raw_flat))
    else:  # nearly every tag distinct: arrow normalizes them all, and one hash pass makes the codes
        lab, names = normalize_unique(raw_flat)
        _DISTINCT[0] = len(names) / max(1, len(raw_flat))
    mine = ok[post]
    lab, post = lab[mine], post[mine]
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
    return Block(ids, offsets(cnt[keep]), lab, names, country)


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


def _lax_spots(a: np.ndarray) -> np.ndarray:
    """Where ``NaN`` or ``Inf`` starts in a block (``a``: its bytes as uint8): pyarrow's JSON reader
    takes ``-NaN``, ``Inf`` and ``-Inf`` as numbers, which Python's json refuses (it takes ``NaN``,
    ``Infinity``, ``-Infinity``, as pyarrow does). A line holding either (in a caption too) goes to
    the row path: exact, and rare. (Trailing commas, nan/inf in other cases, comments: pyarrow
    refuses them, as Python does.) Found by each word's last byte, then the two before it: about
    a fifth of the cost of ``bytes.find`` for each word (bench_count's blocks)."""
    spots = []
    for word in (b"NaN", b"Inf"):
        at = np.flatnonzero(a[2:] == word[2])  # where a word would start
        spots.append(at[(a[at] == word[0]) & (a[at + 1] == word[1])])
    return np.concatenate(spots)


_COMPILED: dict = {}


def compiled(name: str):
    """One of prep's compiled modules (``jsonscan``, ``tagnorm``), or None where numba is missing
    or ``SWAG_NUMBA=0`` (then pyarrow's JSON reader and arrow's kernels do their work, as before
    them: the same results, tested). Loaded once a process; a damaged numba cache (a full disk,
    a cut file) is emptied and the module compiled anew, and where that fails too, the module
    is not used."""
    if os.environ.get("SWAG_NUMBA", "1") == "0":
        return None
    if name not in _COMPILED:
        _COMPILED[name] = _load_compiled(name)
    return _COMPILED[name]


def _load_compiled(name: str):
    try:
        mod = importlib.import_module(f"swagcli.prep.{name}")
    except ImportError:
        return None
    if _not_cached(mod):
        what = {"jsonscan": "the JSONL scanner (~10 s)", "tagnorm": "the tag normalizer"}.get(name, name)
        print(f"swag: compiling {what} into numba's cache, once a machine (`make setup` does it ahead)",
              file=sys.stderr, flush=True)
    for attempt in range(2):
        try:
            mod.warm()
            return mod
        except Exception:  # noqa: BLE001 (numba's cache or compiler: the kernels are an optimization)
            for fn in mod.KERNELS:
                with contextlib.suppress(Exception):
                    fn._cache.flush()
    return None


BRACKETS_MAX = 256  # '[' and '{' in a line, past which the row path reads it (its nesting might be past Python's)


def _bracket_heavy(lines: "_Lines") -> np.ndarray:
    """The lines with more than :data:`BRACKETS_MAX` opening brackets (in strings too): pyarrow's
    reader takes any nesting, Python's json raises past its recursion limit (~1,000 levels)."""
    if not (lines.ends - lines.starts > BRACKETS_MAX).any():  # (no line long enough to hold so many)
        return np.zeros(0, dtype=np.int64)
    a = lines.a
    opens = np.flatnonzero((a == 91) | (a == 123))
    if len(opens) <= BRACKETS_MAX:
        return opens[:0]
    per = np.bincount(np.searchsorted(lines.starts, opens, side="right") - 1, minlength=lines.n)
    return np.flatnonzero(per > BRACKETS_MAX)


def _not_cached(mod) -> bool:
    """Whether numba's cache lacks (or holds a stale copy of) one of the module's kernels. Read off
    numba's cache index, which is not a public interface: False where that cannot be read."""
    try:
        return any(not fn._cache._cache_file._load_index() for fn in mod.KERNELS)
    except Exception:  # noqa: BLE001 (only a notice depends on it)
        return False


class _JsonBlocks(_LineBlocks):
    with_caption = False  # read captions: set once a block held a post without tags

    def __init__(self, *a):
        super().__init__(*a)
        import pyarrow as pa

        self.id_type, self.tags_type = pa.string(), pa.list_(pa.string())
        s = self.spec
        self.names = {"id": s.id or "id", "tags": s.tags or "hashtags", "caption": s.caption or "caption",
                      "country": s.country or "country"}
        wanted = [self.names["id"], self.names["tags"], self.names["caption"] if s.caption_hashtags else None,
                  self.names["country"] if self.country else None]
        named = [x for x in wanted if x is not None]
        self.scanner = compiled("jsonscan") if len(set(named)) == len(named) else None
        if self.scanner is not None:
            self.keys = self.scanner.names_table(wanted)
        self.hits = self.misses = 0

    scans = True

    def scan(self, raw: bytes):
        """The plain lines at the start of a block by :mod:`~swagcli.prep.jsonscan` (no bad line,
        no escape in a value a post is read from, ...), up to the first that is not. A file in
        which it keeps stopping at once is left to pyarrow's reader from then on."""
        if self.scanner is None or self.misses > 2 * self.hits + 4:
            return None
        got = self.scanner.scan(raw, *self.keys)
        if got is None:
            return None
        if not got.lines:
            self.misses += 1
            return None, 0, 0, got.stop
        self.hits += 1
        block = None
        if got.rows:
            ids, ok = _ids(got.ids(), got.rows)
            flat, post = got.tags()
            block = assemble(got.rows, ids, ok, flat, post, got.caption if self.spec.caption_hashtags else None,
                             got.country() if self.country else None, self.stats, self.spec, self.distinct)
        return block, got.lines, got.blank, got.stop

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

        odd = lines.unbracketed(b"{", b"}")
        if len(odd):  # one object a line
            self.bad = odd.tolist()
            return None
        deep = _bracket_heavy(lines)
        if len(deep):  # Python's json may not read so deep a line (RecursionError): the row path decides
            self.bad = deep.tolist()
            return None
        lax = _lax_spots(lines.a)
        if len(lax):  # where pyarrow's reader may take what Python's json refuses: the row path has the line
            self.bad = np.unique(np.searchsorted(lines.starts, lax, side="right") - 1).tolist()
            return None
        try:  # (a lone surrogate escape, which Python keeps, arrow refuses: the row path has that line)
            table = self._read(raw, True)
        except pa.ArrowInvalid:
            try:  # the ids or tags of this file are of another type: learn it from this block
                table = self._read(raw, False)
            except pa.ArrowInvalid as e:
                row = re.search(r"in row (\d+)", str(e))
                if row and int(row.group(1)) < lines.n - lines.empty:
                    self._bad_rows(lines, [int(row.group(1))])
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
        captions = (lambda i: cap[i].as_py())
        if self.spec.caption_hashtags and not self.with_caption:
            if _untagged(got[1], tags[0], tags[1]).any():
                self.with_caption = True  # posts without tags take their caption's: read it (from now on)
                return self.fast(raw, lines)
            captions = None  # every post has tags: no caption is read
        if self.spec.caption_hashtags and not (pa.types.is_string(cap.type) or pa.types.is_null(cap.type)):
            return None
        return assemble(n, got[0], got[1], tags[0], tags[1], captions, country, self.stats, self.spec,
                        self.distinct)


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
            if got is not None:
                self._bad_rows(lines, np.flatnonzero(~got[1]))
            return None
        tags = tags.cast(pa.string()) if not pa.types.is_null(tags.type) else pa.nulls(n, pa.string())
        flat, post = _split_tag_strings(pc.fill_null(tags, ""), self.spec.tags_sep)
        country = None
        if self.country:
            c = cols[2]
            country = ([None] * n if pa.types.is_null(c.type)
                       else [(x.strip() or None) if x is not None else None for x in c.to_pylist()])
        return assemble(n, got[0], got[1], flat, post, None, country, self.stats, self.spec, self.distinct)


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
            self._bad_rows(lines, np.flatnonzero(~(photo | video)))
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
            if got is not None:
                self._bad_rows(lines, keep[~got[1]])
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
                         self.stats, spec, self.distinct)
        self.stats.video += int(video.sum())
        return block
