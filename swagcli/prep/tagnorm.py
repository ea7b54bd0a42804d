"""Raw tags normalized in one compiled pass (numba), as :func:`~swagcli.prep.canon.normalize_tag` does.

For a block of mostly distinct raw tags (``bench/bench_vocab.py``: 400k tags on 2 posts each) arrow's
kernels, one after another (``+`` to a space, strip white space, strip ``#``, lower-case, drop white
space by a regex), were a third of the counting pass. This walks each tag's bytes once. It does the
ASCII rules only and marks the tags it leaves to Python: those with a byte :func:`normalize_tag`
treats otherwise (``%``, \\x1c-\\x1f, which Python counts as white space, any non-ASCII byte).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, boundscheck=False)
def normalize_ascii(data, off):
    """Tags ``data[off[k]:off[k+1]]`` -> (normalized bytes, their offsets, odd): a tag's leading
    white space and ``+`` skipped, then its leading ``#``, then the rest lower-cased (A-Z) without
    white space or ``+`` (``+`` is a space, as ``unquote_plus`` reads it). ``odd[k]``: tag k holds a
    byte Python must normalize; its bytes here are then not used."""
    n = len(off) - 1
    out = np.empty(max(1, off[n] - off[0]), dtype=np.uint8)
    ooff = np.empty(n + 1, dtype=np.int32)
    odd = np.zeros(n, dtype=np.bool_)
    p = 0
    ooff[0] = 0
    for k in range(n):
        s, e = off[k], off[k + 1]
        for q in range(s, e):
            c = data[q]
            if c == 37 or c >= 0x80 or 0x1C <= c <= 0x1F:
                odd[k] = True
                break
        i = s
        while i < e:
            c = data[i]
            if c == 32 or c == 43 or 9 <= c <= 13:
                i += 1
            else:
                break
        while i < e and data[i] == 35:
            i += 1
        for q in range(i, e):
            c = data[q]
            if c == 32 or c == 43 or 9 <= c <= 13:
                continue
            if 65 <= c <= 90:
                c += 32
            out[p] = c
            p += 1
        ooff[k + 1] = p
    return out, ooff, odd


def normalized(raws):
    """A pyarrow string array of raw tags -> (normalized tags, a string array with "" where a tag
    normalizes to nothing; a boolean mask of the tags Python must normalize, or None)."""
    import pyarrow as pa

    if len(raws) == 0:
        return raws, None
    large = pa.types.is_large_string(raws.type)
    bufs = raws.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int64 if large else np.int32)[raws.offset: raws.offset + len(raws) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and bufs[2].size else np.zeros(1, np.uint8)
    if data.flags.writeable:  # one compiled version: read-only data, C-contiguous int64 offsets
        data = data.view()
        data.flags.writeable = False
    out, ooff, odd = normalize_ascii(data, np.ascontiguousarray(off, dtype=np.int64))
    valid = raws.is_valid().to_numpy(zero_copy_only=False)
    nulls = int(len(valid) - valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    got = pa.StringArray.from_buffers(len(raws), pa.py_buffer(ooff), pa.py_buffer(out[: ooff[-1]]), bitmap, nulls)
    odd &= valid
    return got, (odd if odd.any() else None)


KERNELS = [normalize_ascii]  # (their numba caches: emptied where damaged)


def warm() -> None:
    import pyarrow as pa

    normalized(pa.array(["#A b", "x"]))
