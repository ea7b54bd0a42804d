"""bzip2 decoded block by block in parallel (threads: the bz2 module lets go of the GIL).

A bzip2 stream is a header (``BZh1``-``BZh9``) and blocks, each starting with the 48-bit magic
0x314159265359 at any bit offset, then its 32-bit CRC, ended by 0x177245385090, the stream's
combined CRC and padding to a byte; streams may follow one another (pbzip2, lbzip2, ``cat``). Each
block is made a stream of its own (the header, the block's bits, the end magic and the block's CRC,
which is a one-block stream's combined CRC) and decoded by :func:`bz2.decompress` in a pool.

On an intact file the output is the sequential decoder's (:func:`swagcli.prep.dumps._read_frames`).
The block path checks the structure as it goes (headers where streams begin, each stream's combined
CRC from its blocks' CRCs, every block decoding with its CRC) and, the moment anything does not fit
(a truncated or corrupt file, trailing garbage, a block magic's pattern inside the compressed data),
hands over to the sequential decoder from the start of the file, which skips what was already given
out and raises :class:`~swagcli.prep.dumps.Damaged` where it breaks. So a damaged file gives every
whole block before its damage (the sequential decoder alone lost the blocks decoded in the same
256 KB read as the damage), the same on any number of cores: where it breaks depends on the bytes.
"""

from __future__ import annotations

import bz2
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

BLOCK_MAGIC = 0x314159265359
END_MAGIC = 0x177245385090
WINDOW = 1 << 24  # compressed bytes looked at at a time (~18 blocks of level 9)


class _Misfit(Exception):
    """The parallel path cannot vouch for this file: the sequential decoder takes over."""


def _patterns(value: int):
    out = []
    for s in range(8):
        if s == 0:
            out.append((value.to_bytes(6, "big"), None, None))
            continue
        b = (value << (8 - s)).to_bytes(7, "big")
        lo, hi = (1 << (8 - s)) - 1, (0xFF << (8 - s)) & 0xFF
        out.append((b[1:6], (lo, b[0] & lo), (hi, b[6] & hi)))
    return out


_PATTERNS = {BLOCK_MAGIC: _patterns(BLOCK_MAGIC), END_MAGIC: _patterns(END_MAGIC)}


def find_magic(buf: bytes, value: int) -> list[int]:
    """The bit offsets at which the 48-bit ``value`` stands in ``buf``, sorted."""
    hits = []
    for s, (mid, first, last) in enumerate(_PATTERNS[value]):
        i = buf.find(mid, 0 if s == 0 else 1)
        while i >= 0:
            if s == 0:
                hits.append(i * 8)
            else:
                j = i - 1
                if j + 6 < len(buf) and (buf[j] & first[0]) == first[1] and (buf[j + 6] & last[0]) == last[1]:
                    hits.append(j * 8 + s)
            i = buf.find(mid, i + 1)
    return sorted(hits)


def _bits(buf: bytes, lo: int, hi: int) -> int:
    a, b = lo // 8, (hi + 7) // 8
    return (int.from_bytes(buf[a:b], "big") >> (b * 8 - hi)) & ((1 << (hi - lo)) - 1)


def _one_block_stream(buf: bytes, lo: int, hi: int, level: bytes) -> bytes:
    n = hi - lo + 80
    pad = (-n) % 8
    total = (_bits(buf, lo, hi) << 80) | (END_MAGIC << 32) | _bits(buf, lo + 48, lo + 80)
    return b"BZh" + level + (total << pad).to_bytes((n + pad) // 8, "big")


def _decode(job) -> bytes:
    buf, lo, hi, level = job
    return bz2.decompress(_one_block_stream(buf, lo, hi, level))


def _crc_step(combined: int, block_crc: int) -> int:
    return (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ block_crc


def parallel_blocks(f, workers: int) -> Iterator[bytes]:
    """The decoded bytes of the open bzip2 file ``f``, block by block; :class:`_Misfit` where the
    file is not one the parallel path can vouch for (after giving out what it could)."""
    with ThreadPoolExecutor(workers) as pool:
        buf = f.read(WINDOW)
        eof = len(buf) < WINDOW
        pos = 0  # bit offset in buf where the next stream header or block stands
        at_header = True
        combined = 0
        while True:
            if at_header:
                if eof and pos // 8 == len(buf):
                    return  # the file ends after a whole stream
                a = pos // 8
                if pos % 8 or buf[a:a + 3] != b"BZh" or not (0x31 <= (buf[a + 3:a + 4] or b"\0")[0] <= 0x39):
                    raise _Misfit("no stream header")
                level = buf[a + 3:a + 4]  # the stream's block size: each block is decoded under it
                pos += 32
                at_header, combined = False, 0
            blocks = [b for b in find_magic(buf, BLOCK_MAGIC) if b >= pos]
            ends = [b for b in find_magic(buf, END_MAGIC) if b >= pos]
            stops = sorted(blocks + ends)
            if not stops or stops[0] != pos:
                raise _Misfit("no block where one should start")
            jobs, crcs, end = [], [], None
            for k, lo in enumerate(stops):
                if lo in ends:
                    end = lo
                    break
                if k + 1 == len(stops):
                    break  # this block's end is past the window
                jobs.append((buf, lo, stops[k + 1], level))
                crcs.append(_bits(buf, lo + 48, lo + 80))
            if not jobs and end is None:
                if eof:
                    raise _Misfit("cut inside a block")
                more = f.read(WINDOW)  # a block longer than the window: look further
                eof = len(more) < WINDOW
                buf = buf[pos // 8:] + more
                pos %= 8
                continue
            try:
                for out in pool.map(_decode, jobs):
                    yield out
            except (OSError, ValueError, EOFError) as e:
                raise _Misfit(str(e)) from None
            for c in crcs:
                combined = _crc_step(combined, c)
            if end is not None:
                if end + 80 > len(buf) * 8:
                    if eof:
                        raise _Misfit("cut in the end record")
                else:
                    if _bits(buf, end + 48, end + 80) != combined:
                        raise _Misfit("combined CRC")
                    pos = end + 80 + (-(end + 80)) % 8
                    at_header = True
                    continue
            nxt = jobs[-1][2] if jobs else pos
            if eof and end is None and nxt == pos:
                raise _Misfit("stuck")
            keep = nxt // 8
            more = b"" if eof else f.read(WINDOW)
            eof = eof or len(more) < WINDOW
            buf = buf[keep:] + more
            pos = nxt - keep * 8
            if end is not None:  # the end record straddled the window: read on, then look again
                continue


def read_bz2(f, sequential, workers: int | None = None) -> Iterator[bytes]:
    """The decoded bytes of the bzip2 file ``f``, block by block (in parallel where the machine has
    cores; the same bytes on one core), and from wherever the block path cannot vouch for the file
    by ``sequential(f)`` from the start, skipping what was given out."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    given = 0
    try:
        for out in parallel_blocks(f, workers):
            given += len(out)
            yield out
        f.close()
        return
    except _Misfit:
        f.seek(0)
    for out in sequential(f):  # the first `given` bytes were given out already
        if given >= len(out):
            given -= len(out)
            continue
        yield out[given:]
        given = 0
