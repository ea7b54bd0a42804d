"""A one-pass JSONL scanner, compiled by numba: the JSONL fast path's reader where a block is plain.

pyarrow's JSON reader was over half of a JSONL counting pass (17.5 of ~31 ms a 4 MB block,
``bench/bench_count.py``); measured in its place: DuckDB's ``read_json`` to arrow (15.5 ms),
msgspec (33-39 ms), a numpy structural index (13 ms for the string gaps alone), arrow's
``split_pattern`` (13 ms for the split alone). This scanner (6 ms) walks a block's bytes once,
checks that every line is one JSON object as Python's ``json.loads`` reads it, and notes where the
values of the four fields a post is read from (id, tags, caption, country) lie.

It is exact by refusing: it reads a line only where it is, after JSON white space, empty or one
object whose

* keys are strings without escapes (an escaped key could spell a wanted one);
* wanted keys appear at most once (Python keeps the last of two; this scanner does not choose);
* id is a string, ``null``, or an integer (``-?(0|[1-9][0-9]*)``, not ``-0``, which Python reads
  as 0): its text is what ``str(int)`` gives;
* tags are ``null`` or a list of strings; country a string or ``null``; caption a string (Python's
  json decodes it where a post needs it) or ``null``. Escapes in the strings of id, tags and
  country are decoded here, as Python's json decodes them, into UTF-8; a lone surrogate
  (``\\ud800``, which Python keeps and UTF-8 cannot hold) is refused;
* other values are any JSON value Python's json takes but ``NaN``/``Infinity``, nested at most
  :data:`DEPTH` deep: strings with valid escapes and no control character, numbers by JSON's
  grammar, ``true``/``false``/``null``, arrays, objects.

At the first line that is not so (a bad line, a number as tags, a lone surrogate) it stops, and
the block reader gives that line to the readers before it (pyarrow's, then the row path), which
name bad lines and count them per rule. So the lines this scanner reads hold no bad line, and
their posts are the row path's.
"""

from __future__ import annotations

import numpy as np
from numba import njit

DEPTH = 32  # nesting of containers in a skipped value
ID, TAGS, CAPTION, COUNTRY = range(4)
TAKEN = {"blocks": 0, "refused": 0}  # blocks this process's scanner took whole, and blocks it stopped in

jit = njit(cache=True, nogil=True, boundscheck=False)
# (the helpers are inner functions of the scanner: numba inlines those, where a call to another
# compiled function that takes the block costs ~12 ns, its reference count, per call)


@jit
def scan_block(a, kb, kl):
    """Returns (where the first line not plain starts, or len(a); then of the lines before it:
    lines, blank lines, rows, tags, spans, tag spans, tag offsets). ``spans[r]``: row r's (id
    start, id end, caption start, caption end, caption escaped, country start, country end), -1
    where the field is missing or null, then (id escaped, country escaped); a tag span is (start,
    end, escaped); ``kb``/``kl``: the wanted keys (:func:`names_table`)."""
    n = len(a)
    stack = np.empty(DEPTH, dtype=np.uint8)

    def ws(i):
        while i < n:
            c = a[i]
            if c == 32 or c == 9 or c == 13:
                i += 1
            else:
                break
        return i

    def string(i):
        """a[i] is '"': (the index past the closing quote or -1, whether it holds an escape)."""
        i += 1
        esc = False
        while i < n:
            c = a[i]
            if c == 34:
                return i + 1, esc
            if c == 92:
                esc = True
                if i + 1 >= n:
                    return -1, esc
                d = a[i + 1]
                if d == 117:
                    if i + 5 >= n:
                        return -1, esc
                    for k in range(i + 2, i + 6):
                        h = a[k]
                        if not ((48 <= h <= 57) or (65 <= h <= 70) or (97 <= h <= 102)):
                            return -1, esc
                    i += 6
                elif d == 34 or d == 92 or d == 47 or d == 98 or d == 102 or d == 110 or d == 114 or d == 116:
                    i += 2
                else:
                    return -1, esc
            elif c < 32:
                return -1, esc
            else:
                i += 1
        return -1, esc

    def digits(j):
        while j < n and 48 <= a[j] <= 57:
            j += 1
        return j

    def number(i):
        """(the index past a JSON number at i or -1, whether it is an integer)."""
        j = i
        if j < n and a[j] == 45:
            j += 1
        if j >= n:
            return -1, False
        if a[j] == 48:
            j += 1
        elif 49 <= a[j] <= 57:
            j = digits(j)
        else:
            return -1, False
        integer = True
        if j < n and a[j] == 46:
            if j + 1 >= n or not (48 <= a[j + 1] <= 57):
                return -1, False
            j = digits(j + 1)
            integer = False
        if j < n and (a[j] == 101 or a[j] == 69):
            j += 1
            if j < n and (a[j] == 43 or a[j] == 45):
                j += 1
            if j >= n or not (48 <= a[j] <= 57):
                return -1, False
            j = digits(j)
            integer = False
        return j, integer

    def literal(i):
        """The index past ``null``, ``true`` or ``false`` at i, or -1."""
        c = a[i]
        if c == 110:
            if i + 3 < n and a[i + 1] == 117 and a[i + 2] == 108 and a[i + 3] == 108:
                return i + 4
        elif c == 116:
            if i + 3 < n and a[i + 1] == 114 and a[i + 2] == 117 and a[i + 3] == 101:
                return i + 4
        elif c == 102:
            if i + 4 < n and a[i + 1] == 97 and a[i + 2] == 108 and a[i + 3] == 115 and a[i + 4] == 101:
                return i + 5
        return -1

    def member_key(i):
        """At a member's key in a skipped object: the index of its value, or -1."""
        if i >= n or a[i] != 34:
            return -1
        i, _ = string(i)
        if i < 0:
            return -1
        i = ws(i)
        if i >= n or a[i] != 58:
            return -1
        return ws(i + 1)

    def skip(i):
        """The index past the JSON value at i, or -1."""
        depth = 0
        while True:
            if i >= n:
                return -1
            c = a[i]
            if c == 34:
                i, _ = string(i)
                if i < 0:
                    return -1
            elif c == 123 or c == 91:
                if depth == DEPTH:
                    return -1
                stack[depth] = c
                depth += 1
                i = ws(i + 1)
                if i >= n:
                    return -1
                if a[i] == c + 2:  # '}' is '{' + 2, ']' is '[' + 2
                    depth -= 1
                    i += 1
                elif c == 123:
                    i = member_key(i)
                    if i < 0:
                        return -1
                    continue
                else:
                    continue
            elif c == 45 or 48 <= c <= 57:
                i, _ = number(i)
                if i < 0:
                    return -1
            else:
                i = literal(i)
                if i < 0:
                    return -1
            while True:  # after a value: the container's next item, or its end
                if depth == 0:
                    return i
                i = ws(i)
                if i >= n:
                    return -1
                c = a[i]
                top = stack[depth - 1]
                if c == 44:
                    i = ws(i + 1)
                    if top == 123:
                        i = member_key(i)
                        if i < 0:
                            return -1
                    break
                if c == top + 2:
                    depth -= 1
                    i += 1
                else:
                    return -1

    def hex4(q):
        v = 0
        for k in range(q, q + 4):
            h = a[k]
            v = v * 16 + (h - 48 if h <= 57 else (h - 55 if h <= 70 else h - 87))
        return v

    def paired(s, e):
        """Whether every \\u surrogate escape in a[s:e] (escapes valid) is a high one followed by
        a low one: Python keeps a lone one, which UTF-8 (and arrow) cannot hold."""
        q = s
        while q < e:
            if a[q] != 92:
                q += 1
            elif a[q + 1] != 117:
                q += 2
            else:
                v = hex4(q + 2)
                if 0xDC00 <= v <= 0xDFFF:
                    return False
                if 0xD800 <= v <= 0xDBFF:
                    if not (q + 12 <= e and a[q + 6] == 92 and a[q + 7] == 117 and 0xDC00 <= hex4(q + 8) <= 0xDFFF):
                        return False
                    q += 12
                else:
                    q += 6
        return True

    def which_key(s, e):
        """Which wanted key (0-3) a[s:e] is, or -1."""
        lo = 0
        for w in range(4):
            size = kl[w]
            if size == e - s:
                same = True
                for k in range(size):
                    if a[s + k] != kb[lo + k]:
                        same = False
                        break
                if same:
                    return w
            if size > 0:
                lo += size
        return -1

    nl = 1
    quotes = 0
    for k in range(n):
        nl += a[k] == 10
        quotes += a[k] == 34
    spans = np.empty((nl, 9), dtype=np.int64)
    tags = np.empty((quotes // 2 + 1, 3), dtype=np.int64)
    toff = np.empty(nl + 1, dtype=np.int64)
    toff[0] = 0
    i = 0
    lines = 0
    blank = 0
    row = 0
    nt = 0
    while i < n:
        lines += 1
        j = ws(i)
        if j >= n or a[j] == 10:
            blank += 1
            i = j + 1
            continue
        if a[j] != 123:
            return i, lines - 1, blank, row, toff[row], spans, tags, toff
        for k in range(7):
            spans[row, k] = -1
        spans[row, 7] = spans[row, 8] = 0
        seen = 0
        bad = False
        j = ws(j + 1)
        if j < n and a[j] == 125:
            j += 1
        else:
            while True:  # the members
                if j >= n or a[j] != 34:
                    bad = True
                    break
                ks = j + 1
                j, esc = string(j)
                if j < 0 or esc:
                    bad = True
                    break
                w = which_key(ks, j - 1)
                j = ws(j)
                if j >= n or a[j] != 58:
                    bad = True
                    break
                j = ws(j + 1)
                if j >= n:
                    bad = True
                    break
                if w >= 0:
                    if seen & (1 << w):
                        bad = True
                        break
                    seen |= 1 << w
                c = a[j]
                if w < 0:
                    j = skip(j)
                elif c == 110:  # null: as if missing
                    j = literal(j)
                elif w == TAGS:
                    if c != 91:
                        bad = True
                        break
                    j = ws(j + 1)
                    if j < n and a[j] == 93:
                        j += 1
                    else:
                        while True:
                            if j >= n or a[j] != 34:
                                j = -1
                                break
                            s = j + 1
                            j, esc = string(j)
                            if j < 0 or (esc and not paired(s, j - 1)):
                                j = -1
                                break
                            tags[nt, 0] = s
                            tags[nt, 1] = j - 1
                            tags[nt, 2] = esc
                            nt += 1
                            j = ws(j)
                            if j < n and a[j] == 44:
                                j = ws(j + 1)
                                continue
                            if j < n and a[j] == 93:
                                j += 1
                            else:
                                j = -1
                            break
                elif c == 34:
                    s = j + 1
                    j, esc = string(j)
                    if j >= 0:
                        if w == ID:
                            spans[row, 0], spans[row, 1], spans[row, 7] = s, j - 1, esc
                        elif w == CAPTION:
                            spans[row, 2], spans[row, 3], spans[row, 4] = s, j - 1, esc
                        else:
                            spans[row, 5], spans[row, 6], spans[row, 8] = s, j - 1, esc
                        if esc and w != CAPTION and not paired(s, j - 1):
                            j = -1
                elif w == ID and (c == 45 or 48 <= c <= 57):
                    s = j
                    j, integer = number(j)
                    if not integer or (j == s + 2 and a[s] == 45 and a[s + 1] == 48):
                        j = -1
                    spans[row, 0], spans[row, 1] = s, j
                else:
                    j = -1
                if j < 0:
                    bad = True
                    break
                j = ws(j)
                if j >= n:
                    bad = True
                    break
                if a[j] == 44:
                    j = ws(j + 1)
                    continue
                if a[j] == 125:
                    j += 1
                    break
                bad = True
                break
        if not bad:
            j = ws(j)
            bad = j < n and a[j] != 10
        if bad:
            return i, lines - 1, blank, row, toff[row], spans, tags, toff
        row += 1
        toff[row] = nt
        i = j + 1
    return n, lines, blank, row, nt, spans, tags, toff


@jit
def gather(a, sp, cs, ce, cx):
    """Strings a[s[k]:e[k]] (s, e, esc: columns cs, ce, cx of the spans ``sp``; null where
    s[k] < 0) as arrow's buffers: (offsets, data, valid); the ones with ``esc[k]`` decoded as
    Python's json decodes them (surrogates paired: the scanner checked), into UTF-8. A decoded
    string is never longer than its JSON text."""
    s, e, esc = sp[:, cs], sp[:, ce], sp[:, cx]
    m = len(s)
    off = np.empty(m + 1, dtype=np.int32)
    valid = np.empty(m, dtype=np.bool_)
    total = 0
    for k in range(m):
        if s[k] >= 0:
            total += e[k] - s[k]
    data = np.empty(total, dtype=np.uint8)

    def hex4(q):
        v = 0
        for k in range(q, q + 4):
            h = a[k]
            v = v * 16 + (h - 48 if h <= 57 else (h - 55 if h <= 70 else h - 87))
        return v

    p = 0
    off[0] = 0
    for k in range(m):
        if s[k] < 0:
            valid[k] = False
        elif not esc[k]:
            for q in range(s[k], e[k]):
                data[p] = a[q]
                p += 1
            valid[k] = True
        else:
            q = s[k]
            while q < e[k]:
                c = a[q]
                if c != 92:
                    data[p] = c
                    p += 1
                    q += 1
                    continue
                d = a[q + 1]
                if d != 117:
                    data[p] = (8 if d == 98 else 12 if d == 102 else 10 if d == 110 else 13 if d == 114
                               else 9 if d == 116 else d)  # \" \\ \/ are themselves
                    p += 1
                    q += 2
                    continue
                v = hex4(q + 2)
                q += 6
                if 0xD800 <= v <= 0xDBFF:
                    v = 0x10000 + ((v - 0xD800) << 10) + (hex4(q + 2) - 0xDC00)
                    q += 6
                if v < 0x80:
                    data[p] = v
                    p += 1
                elif v < 0x800:
                    data[p] = 0xC0 | (v >> 6)
                    data[p + 1] = 0x80 | (v & 0x3F)
                    p += 2
                elif v < 0x10000:
                    data[p] = 0xE0 | (v >> 12)
                    data[p + 1] = 0x80 | ((v >> 6) & 0x3F)
                    data[p + 2] = 0x80 | (v & 0x3F)
                    p += 3
                else:
                    data[p] = 0xF0 | (v >> 18)
                    data[p + 1] = 0x80 | ((v >> 12) & 0x3F)
                    data[p + 2] = 0x80 | ((v >> 6) & 0x3F)
                    data[p + 3] = 0x80 | (v & 0x3F)
                    p += 4
            valid[k] = True
        off[k + 1] = p
    return off, data, valid


def names_table(names: list) -> tuple[np.ndarray, np.ndarray]:
    """The four wanted keys (id, tags, caption, country; None: not wanted) as the scanner takes
    them: their UTF-8 bytes one after another, and each one's length (-1: not wanted)."""
    enc = [None if x is None else x.encode("utf-8") for x in names]
    kb = b"".join(x for x in enc if x is not None)
    kl = np.array([-1 if x is None else len(x) for x in enc], dtype=np.int64)
    return np.frombuffer(kb + b"\0", dtype=np.uint8), kl


class Scanned:
    """A block's plain lines, up to its first line that is not (``stop``: where that starts, the
    block's length where there is none), as the scanner read them: counts, and columns as arrow
    arrays."""

    def __init__(self, raw: bytes, a: np.ndarray, out):
        self.stop, self.lines, self.blank, self.rows, nt, spans, tags, toff = out
        self.raw, self.a = raw, a
        self.spans = spans[: self.rows]
        self.tag_spans = tags[:nt]
        self.counts = np.diff(toff[: self.rows + 1])

    def strings(self, spans: np.ndarray, s: int, e: int, esc: int):
        """The strings raw[s:e] (columns s, e, esc of ``spans``; null where s < 0; JSON escapes
        decoded where esc) as a pyarrow string array."""
        import pyarrow as pa

        off, data, valid = gather(self.a, spans, s, e, esc)
        nulls = int(len(valid) - valid.sum())
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
        return pa.StringArray.from_buffers(len(valid), pa.py_buffer(off), pa.py_buffer(data), bitmap, nulls)

    def ids(self):
        return self.strings(self.spans, 0, 1, 7)

    def tags(self):
        """(raw tags as a string array, the row of each)."""
        post = np.repeat(np.arange(self.rows, dtype=np.int64), self.counts)
        return self.strings(self.tag_spans, 0, 1, 2), post

    def country(self) -> list:
        return [x or None for x in self.strings(self.spans, 5, 6, 8).to_pylist()]

    def caption(self, i: int):
        """Row i's caption as Python's json reads it (None: missing or null)."""
        s, e, esc = (int(x) for x in self.spans[i, 2:5])
        if s < 0:
            return None
        if esc:
            import json

            return json.loads(bytes(self.raw[s - 1: e + 1]).decode("utf-8"))
        return bytes(self.raw[s:e]).decode("utf-8")


def scan(raw: "bytes | memoryview", kb: np.ndarray, kl: np.ndarray) -> "Scanned | None":
    """The block's plain lines up to the first that is not (see the module's text), or None for a
    block over 2 GB."""
    if len(raw) >= 1 << 31:
        return None
    a = np.frombuffer(raw, dtype=np.uint8)
    if a.flags.writeable:  # (a bytearray: one compiled version, for read-only blocks, serves all)
        a = a.view()
        a.flags.writeable = False
    got = Scanned(raw, a, scan_block(a, kb, kl))
    TAKEN["blocks" if got.stop == len(raw) else "refused"] += 1
    return got


KERNELS = [scan_block, gather]  # (their numba caches: emptied where damaged)


def warm() -> float:
    """Compile the scanner into numba's cache now (``make setup`` does: the first JSONL block of a
    machine would wait ~10 s for it) and return the seconds it took; a cached one loads in ~0.1 s."""
    import time

    t = time.perf_counter()
    got = scan(b'{"id":"a","hashtags":["#x"],"caption":"c","country":"US"}\n', *names_table(["id", "hashtags",
                                                                                               "caption", "country"]))
    got.ids(), got.tags(), got.country()
    return time.perf_counter() - t


if __name__ == "__main__":
    import time

    from swagcli.prep import tagnorm

    t0 = time.perf_counter()
    tagnorm.warm()
    warm()
    print(f"swag: prep's compiled kernels are in numba's cache ({time.perf_counter() - t0:.1f} s)")
