"""bzip2 decoded block by block (swagcli.prep.bz2par) against Python's sequential decoder."""

from __future__ import annotations

import bz2
import io
import random

import pytest

from swagcli.prep import bz2par
from swagcli.prep.dumps import Damaged, _read_frames


def _sequential(f):
    return _read_frames(f, bz2.BZ2Decompressor, OSError)


def _read(data: bytes, reader, **kw):
    out, err = [], None
    try:
        for b in reader(io.BytesIO(data), **kw):
            out.append(b)
    except Damaged:
        err = "damaged"
    return b"".join(out), err


@pytest.fixture(scope="module")
def texts():
    rng = random.Random(0)
    raw = "".join(f"{i}\t{rng.random()}\t" + "ab" * rng.randint(0, 150) + "\n" for i in range(20000)).encode()
    return raw, {"one stream": (bz2.compress(raw, 9), raw),
                 "streams of several levels": (bz2.compress(raw[:900_000], 2) + bz2.compress(raw[900_000:], 1)
                                               + bz2.compress(b"", 9) + bz2.compress(raw[:300], 9), raw + raw[:300]),
                 "empty": (bz2.compress(b"", 9), b""), "one line": (bz2.compress(b"dog\n"), b"dog\n")}


@pytest.mark.parametrize("window", [1 << 12, 1 << 16, 1 << 24])
def test_intact_files_decode_to_the_same_bytes_on_one_or_more_cores(texts, window, monkeypatch):
    monkeypatch.setattr(bz2par, "WINDOW", window)
    for name, (data, want) in texts[1].items():
        for workers in (1, 3):
            assert _read(data, bz2par.read_bz2, sequential=_sequential, workers=workers) == (want, None), name


def test_damaged_files_give_every_whole_block_before_the_damage(texts, monkeypatch):
    """Truncated, bit-flipped, trailing garbage: a prefix of the true bytes, at least what the
    sequential decoder gives, the same on 1 or 2 cores, and Damaged."""
    monkeypatch.setattr(bz2par, "WINDOW", 1 << 16)
    rng = random.Random(1)
    for name, (data, want) in texts[1].items():
        for _ in range(6):
            k = rng.random()
            if k < 0.4:
                bad = data[: rng.randint(0, len(data) - 1)]
            elif k < 0.8:
                bad = bytearray(data)
                bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
                bad = bytes(bad)
            else:
                bad = data + rng.choice([b"garbage", b"BZh9", b"\0" * 10])
            seq = _read(bad, _sequential)
            one = _read(bad, bz2par.read_bz2, sequential=_sequential, workers=1)
            two = _read(bad, bz2par.read_bz2, sequential=_sequential, workers=2)
            assert one == two, name
            assert want.startswith(one[0]) or one == seq, name  # (a flip that still decodes is the data)
            assert one[0].startswith(seq[0]) and one[1] == seq[1], name
