"""Hostile sources for `swag vocab build` and `swag sample`: files that break part-way (a truncated
.gz, a corrupt .zst or .bz2, a truncated parquet or img2dataset tar) are read up to the damage,
counted and named, the same posts in every pass and for any --workers; files that cannot be opened
are one-line errors; paths with glob and brace characters in their names are taken as they are."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import re
import signal
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.faults.conftest import Result, one_line_error

TAGS = ["#dog", "#cat", "#eggplant", "#aubergine", "#heron", "#crane", "#owl", "#salmon", "#horse",
        "#brownbear", "#apple", "#banana", "#bicycle", "#tree"]


def post(i: int, prefix: str = "p") -> dict:
    """A post with 2-3 WordNet tags, spread so that counts differ between tags; the caption varies
    the line's bytes (a gzip stream that is cut then still holds a readable prefix)."""
    tags = [TAGS[i % len(TAGS)], TAGS[(i * 7 + 3) % len(TAGS)]] + ([TAGS[i % 5]] if i % 3 == 0 else [])
    return {"id": f"{prefix}{i}", "hashtags": tags, "caption": f"photo {i * 7919 % 10007} of the day {i % 97}"}


def jsonl(lo: int, hi: int, prefix: str = "p") -> bytes:
    return "".join(json.dumps(post(i, prefix)) + "\n" for i in range(lo, hi)).encode()


@pytest.fixture
def deadline():
    """Fail (not hang) when a run with worker processes never ends."""
    def boom(*_):
        raise TimeoutError("the command did not finish in 120 s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def vocab_of(cli, out: Path, *dumps, args=()) -> dict:
    res = cli("vocab", "build", *dumps, "--out", out, "--head-min-images", 12, *args)
    assert res.code == 0, res
    return json.loads((out / "vocab.json").read_text())


def plan_of(cli, vocab_dir: Path, out: Path, *dumps, args=()) -> tuple[dict, Result]:
    res = cli("sample", *dumps, "--vocab", vocab_dir, "--out", out, "-m", 500, *args)
    assert res.code == 0, res
    return json.loads((out / "summary.json").read_text()), res


def plan_arrays(out: Path) -> list[dict]:
    parts = []
    for p in sorted((out / "plan").glob("part-*.npz")):
        with np.load(p) as z:
            parts.append({k: z[k].tolist() for k in z.files})
    return parts


def assert_plan_agrees_with_vocab(doc: dict, summary: dict, plan_dir: Path) -> None:
    """The plan saw exactly the vocabulary's posts: the same read report (damage included), the
    same images per hashtag (f(h)) and the same images with a vocabulary hashtag."""
    s = doc["stats"]
    assert summary["read"] == {k: s[k] for k in summary["read"]}
    with np.load(plan_dir / "histogram.npz") as z:
        assert z["images"].tolist() == [h["count"] for h in doc["hashtags"]]
    assert summary["images_with_vocab_tags"] == s["images_with_vocab_tag"]


def without_seconds(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "seconds"}


# -- 1. a truncated .gz among many dumps ---------------------------------------------------------
def cut_gz(n: int, keep: float = 0.6) -> tuple[bytes, int]:
    """A gzip stream of ``n`` posts cut short, and how many whole lines a decoder gets out of it."""
    gz = gzip.compress(jsonl(0, n, "b"), mtime=0)
    cut = gz[: int(len(gz) * keep)]
    readable = zlib.decompressobj(31).decompress(cut).count(b"\n")
    assert 0 < readable < n
    return cut, readable


def test_truncated_gz_among_dumps_is_read_up_to_the_damage(cli, tmp_path, deadline):
    d = tmp_path / "dumps"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl(0, 40, "a"))
    cut, readable = cut_gz(600)
    (d / "b.jsonl.gz").write_bytes(cut)
    (d / "c.jsonl.gz").write_bytes(gzip.compress(jsonl(0, 40, "c"), mtime=0))
    res = cli("vocab", "build", d, "--out", tmp_path / "v", "--head-min-images", 12)
    assert res.code == 0, res
    assert re.search(r"skipped: truncated files\W+1\b", res.out), res.out  # the report's row
    doc = json.loads((tmp_path / "v" / "vocab.json").read_text())
    s = doc["stats"]
    assert s["truncated"] == 1 and s["by_format"]["jsonl"]["truncated"] == 1
    [broke] = s["damaged"]
    assert broke["path"] == str(d / "b.jsonl.gz") and broke["lines_read"] == readable
    assert broke["error"] and "\n" not in broke["error"]
    assert (s["lines"], s["posts"]) == (80 + readable, 80 + readable)
    assert s["skipped"] == 0  # lines skipped; the damaged file is counted apart

    # exactly the posts before the damage: the vocabulary of the same lines written intact
    intact = tmp_path / "intact"
    intact.mkdir()
    (intact / "a.jsonl").write_bytes(jsonl(0, 40, "a"))
    (intact / "b.jsonl").write_bytes(jsonl(0, readable, "b"))
    (intact / "c.jsonl").write_bytes(jsonl(0, 40, "c"))
    assert doc["hashtags"] == vocab_of(cli, tmp_path / "v-intact", intact)["hashtags"]

    summary, res = plan_of(cli, tmp_path / "v", tmp_path / "plan", d)
    assert re.search(r"skipped: truncated files\W+1\b", res.out), res.out
    assert summary["read"]["damaged"] == s["damaged"]
    assert_plan_agrees_with_vocab(doc, summary, tmp_path / "plan")

    # two worker processes: the same vocabulary, the same plan, nothing hangs
    doc2 = vocab_of(cli, tmp_path / "v2", d, args=("--workers", 2))
    assert doc2["hashtags"] == doc["hashtags"] and without_seconds(doc2["stats"]) == without_seconds(s)
    summary2, _ = plan_of(cli, tmp_path / "v", tmp_path / "plan2", d, args=("--workers", 2))
    assert without_seconds(summary2) == without_seconds(summary)
    assert plan_arrays(tmp_path / "plan2") == plan_arrays(tmp_path / "plan")


# -- the same class: every compressed or columnar source that breaks part-way ---------------------
def tsv(lo: int, hi: int, prefix: str = "p") -> bytes:
    return "".join(f"{prefix}{i}\t{' '.join(post(i)['hashtags'])}\n" for i in range(lo, hi)).encode()


def frames(pack, n_frames: int, per: int, body=jsonl, prefix: str = "f") -> tuple[bytes, list[int]]:
    """``n_frames`` compressed frames (streams) of ``per`` posts each, concatenated as pzstd and
    pbzip2 write them; and where each frame starts."""
    blobs = [pack(body(k * per, (k + 1) * per, prefix)) for k in range(n_frames)]
    starts = [sum(map(len, blobs[:k])) for k in range(n_frames + 1)]
    return b"".join(blobs), starts


def zst(b: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(b)  # as the zstd tool writes


def flip(blob: bytes, at: int, n: int = 8) -> bytes:
    b = bytearray(blob)
    for k in range(at, at + n):
        b[k] ^= 0x5A
    return bytes(b)


def damaged_gz(d: Path):
    cut, readable = cut_gz(300)
    (d / "cut.jsonl.gz").write_bytes(cut)
    return "cut.jsonl.gz", readable


def truncated_zst(d: Path):
    blob, at = frames(zst, 6, 30, prefix="zt")
    (d / "cut.jsonl.zst").write_bytes(blob[: (at[3] + at[4]) // 2])  # cut inside the 4th frame
    return "cut.jsonl.zst", 90


def corrupt_zst(d: Path):
    blob, at = frames(zst, 6, 30, prefix="zc")
    (d / "corrupt.jsonl.zst").write_bytes(flip(blob, (at[2] + at[3]) // 2))  # garbage in the 3rd frame
    return "corrupt.jsonl.zst", 60


def truncated_bz2(d: Path):
    blob, at = frames(bz2.compress, 6, 30, tsv, prefix="bt")  # TSV: the format sniffed from it
    (d / "cut.tsv.bz2").write_bytes(blob[: (at[3] + at[4]) // 2])
    return "cut.tsv.bz2", 90


def corrupt_bz2(d: Path):
    blob, at = frames(bz2.compress, 6, 30, prefix="bc")
    (d / "corrupt.jsonl.bz2").write_bytes(flip(blob, (at[2] + at[3]) // 2))
    return "corrupt.jsonl.bz2", 60


def truncated_tar(d: Path):
    """An img2dataset shard cut inside the 7th sample's metadata: six whole samples before it."""
    shards = d / "i2d"
    shards.mkdir()
    for n, shard in enumerate(("00000", "00001")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(10):
                key = f"{shard}{i:04d}"
                p = post(i + 20 * n)
                for ext, data in (("jpg", b"\xff\xd8jpeg" * 20),
                                  ("json", json.dumps({"key": key, "status": "success"}).encode()),
                                  ("txt", ("a photo " + " ".join(p["hashtags"])).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        data = buf.getvalue()
        if shard == "00001":
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                member = tar.getmember("000010006.json")
            data = data[: member.offset_data + 10]
        (shards / f"{shard}.tar").write_bytes(data)
    return "i2d/00001.tar", 6


def parquet_rows(lo: int, hi: int, prefix: str) -> pa.Table:
    return pa.table({"id": [f"{prefix}{i}" for i in range(lo, hi)],
                     "hashtags": [post(i)["hashtags"] for i in range(lo, hi)]})


def truncated_parquet(d: Path):
    f = d / "cut.parquet"
    pq.write_table(parquet_rows(0, 50, "qt"), f, row_group_size=10)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # the footer is gone: nothing readable
    return "cut.parquet", 0


def corrupt_parquet(d: Path):
    f = d / "corrupt.parquet"
    pq.write_table(parquet_rows(0, 50, "qc"), f, row_group_size=10)
    col = pq.ParquetFile(f).metadata.row_group(2).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    blob = bytearray(f.read_bytes())
    blob[start:start + col.total_compressed_size] = b"\xab" * col.total_compressed_size
    f.write_bytes(bytes(blob))  # row groups 0 and 1 (20 records) readable, then garbage
    return "corrupt.parquet", 20


DAMAGE = [damaged_gz, truncated_zst, corrupt_zst, truncated_bz2, corrupt_bz2, truncated_tar, truncated_parquet,
          corrupt_parquet]


def test_every_kind_of_damage_is_read_up_to_it_counted_and_named(cli, tmp_path):
    """A .gz cut short, a .zst cut inside a frame or with a frame that does not decode, the same
    for .bz2 (TSV, its format sniffed), an img2dataset tar cut inside a sample, a parquet file
    without its footer or with a corrupt row group: all in one build, each named with the whole
    lines (records) read before its damage; the plan over them agrees with the vocabulary."""
    d = tmp_path / "dumps"
    d.mkdir()
    expected = dict(make(d) for make in DAMAGE)
    good = d / "good.jsonl"
    good.write_bytes(jsonl(100, 130, "g"))
    dumps = [good, *(d / name for name in expected)]
    doc = vocab_of(cli, tmp_path / "v", *dumps)
    s = doc["stats"]
    assert {Path(x["path"]).relative_to(d).as_posix(): x["lines_read"] for x in s["damaged"]} == expected
    assert all(x["error"] and "\n" not in x["error"] for x in s["damaged"])
    assert s["truncated"] == len(DAMAGE)
    assert {f: v["truncated"] for f, v in s["by_format"].items()} == {
        "jsonl": 4, "tsv": 1, "img2dataset": 1, "parquet": 2}
    assert s["posts"] == s["lines"] == 30 + sum(expected.values())
    summary, res = plan_of(cli, tmp_path / "v", tmp_path / "plan", *dumps)
    assert re.search(r"skipped: truncated files\W+4\W+1\W+1\W+2\W+8\b", res.out), res.out
    assert_plan_agrees_with_vocab(doc, summary, tmp_path / "plan")
    # the img2dataset folder as a whole: the intact shard and the cut one
    s = vocab_of(cli, tmp_path / "v-dir", d / "i2d")["stats"]
    assert (s["posts"], [x["lines_read"] for x in s["damaged"]]) == (16, [6])


def test_a_gz_that_is_no_gzip_at_all_is_damaged_at_line_0(cli, tmp_path):
    (tmp_path / "plain.jsonl.gz").write_bytes(jsonl(0, 20))  # not compressed, named .gz
    (tmp_path / "good.jsonl").write_bytes(jsonl(0, 20, "g"))
    doc = vocab_of(cli, tmp_path / "v", tmp_path / "good.jsonl", tmp_path / "plain.jsonl.gz")
    assert [(d["path"], d["lines_read"]) for d in doc["stats"]["damaged"]] == [(str(tmp_path / "plain.jsonl.gz"), 0)]


def test_intact_multi_frame_zst_and_bz2_are_read_whole(cli, tmp_path):
    (tmp_path / "a.jsonl.zst").write_bytes(frames(zst, 4, 25)[0])
    (tmp_path / "b.jsonl.bz2").write_bytes(frames(bz2.compress, 4, 25, prefix="b")[0])
    s = vocab_of(cli, tmp_path / "v", tmp_path / "a.jsonl.zst", tmp_path / "b.jsonl.bz2")["stats"]
    assert (s["lines"], s["posts"], s["truncated"], s["damaged"]) == (200, 200, 0, [])


def test_nothing_readable_at_all_is_one_line_naming_the_damage(cli, tmp_path):
    name, _ = truncated_parquet(tmp_path)
    gz = gzip.compress(jsonl(0, 300), mtime=0)
    (tmp_path / "b.jsonl.gz").write_bytes(gz[:40])  # not even one whole line
    line = one_line_error(cli("vocab", "build", tmp_path / name, tmp_path / "b.jsonl.gz", "--out", tmp_path / "v"),
                          "no readable posts", "broke after")
    assert str(tmp_path / name) in line or str(tmp_path / "b.jsonl.gz") in line
    assert not (tmp_path / "v" / "vocab.json").exists()


def test_a_file_that_cannot_be_opened_stays_an_error(cli, tmp_path, monkeypatch, deadline):
    (tmp_path / "good.jsonl").write_bytes(jsonl(0, 30))
    one_line_error(cli("vocab", "build", tmp_path / "good.jsonl", tmp_path / "gone.jsonl.gz", "--out", tmp_path / "v"),
                   "gone.jsonl.gz", "no such dump file")
    locked = tmp_path / "locked.jsonl.gz"
    locked.write_bytes(gzip.compress(jsonl(0, 30, "l")))
    import builtins

    real_open = builtins.open

    def denied(file, *a, **kw):  # as for a file of mode 000 when not root
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", denied)
    for workers in (1, 2):
        one_line_error(cli("vocab", "build", tmp_path / "good.jsonl", locked, "--out", tmp_path / "v",
                           "--workers", workers), "locked.jsonl.gz", "Permission denied")
    assert not (tmp_path / "v" / "vocab.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files of mode 000")
def test_a_file_without_read_permission_is_one_line(cli, tmp_path):
    f = tmp_path / "locked.jsonl"
    f.write_bytes(jsonl(0, 30))
    f.chmod(0)
    try:
        one_line_error(cli("vocab", "build", f, "--out", tmp_path / "v"), "locked.jsonl", "cannot open")
    finally:
        f.chmod(0o644)


# -- 2. names with glob and brace characters -------------------------------------------------------
NAMES = ["[2020]/part.jsonl", "a[1].jsonl", "b{1,2}.jsonl", "c{x}.jsonl", "d{.jsonl", "e}.jsonl",
         "k=v.jsonl", "q'uo\"te.jsonl", "with space.jsonl", "star*.jsonl", "what?.jsonl"]
DECOYS = ["2/part.jsonl", "0/part.jsonl", "a1.jsonl", "b1.jsonl", "b2.jsonl", "cx.jsonl", "starX.jsonl",
          "whatX.jsonl"]


@pytest.fixture
def odd_names(tmp_path):
    """Each odd name holds a different number of posts; decoys are what a glob or brace reading
    of the names would match instead."""
    root = tmp_path / "odd"
    sizes = {}
    for k, name in enumerate(NAMES + DECOYS):
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(jsonl(0, 12 + k, f"n{k}-"))
        sizes[name] = 12 + k
    return root, sizes


@pytest.mark.parametrize("name", NAMES)
def test_an_existing_path_is_taken_as_it_is(odd_names, name):
    from swagcli.prep.dumps import expand_dumps

    root, _ = odd_names
    assert expand_dumps([str(root / name)]) == [root / name]


def test_odd_names_through_vocab_and_sample(cli, tmp_path, odd_names):
    root, sizes = odd_names
    literal = [root / n for n in NAMES if "/" not in n] + [root / "[2020]"]  # the folder as a folder
    s = vocab_of(cli, tmp_path / "v", *literal)["stats"]
    assert (s["dumps"], s["lines"]) == (len(NAMES), sum(sizes[n] for n in NAMES))
    summary, _ = plan_of(cli, tmp_path / "v", tmp_path / "plan", root / "a[1].jsonl", root / "[2020]")
    assert summary["read"]["lines"] == sizes["a[1].jsonl"] + sizes["[2020]/part.jsonl"]
    s = vocab_of(cli, tmp_path / "v", str(root / "b{1..2}.jsonl"))["stats"]  # a range, no file of that name
    assert (s["dumps"], s["lines"]) == (2, sizes["b1.jsonl"] + sizes["b2.jsonl"])
    one_line_error(cli("vocab", "build", str(root / "zz*.jsonl"), "--out", tmp_path / "v"), "no dump matches")
    one_line_error(cli("vocab", "build", str(root / "nope{.jsonl"), "--out", tmp_path / "v"), "no such dump file")
    one_line_error(cli("vocab", "build", str(root / "b{1..3}.jsonl"), "--out", tmp_path / "v"),
                   "b3.jsonl", "no such dump file")


def test_patterns_still_expand(odd_names):
    from swagcli.prep.dumps import expand_dumps

    root, _ = odd_names

    def names(spec):
        return [p.relative_to(root).as_posix() for p in expand_dumps([str(root / spec)])]

    assert names("b{1..2}.jsonl") == ["b1.jsonl", "b2.jsonl"]
    assert names("star*.jsonl") == ["star*.jsonl"]  # the file of that name, not starX.jsonl too
    assert names("sta?X.jsonl") == ["starX.jsonl"]
    assert names("[[]2020]/*.jsonl") == ["[2020]/part.jsonl"]  # an escaped bracket
    assert names("[02]/part.jsonl") == ["0/part.jsonl", "2/part.jsonl"]  # a class, where no such name exists
    assert names("{a[1],k=v}.jsonl") == ["a[1].jsonl", "k=v.jsonl"]  # brace items taken as they are


def test_expand_api(tmp_path, odd_names):
    from swagcli.paths import expand, is_pattern

    root, _ = odd_names
    assert expand(str(root / "a[1].jsonl")) == [str(root / "a[1].jsonl")]
    assert expand(str(root / "b{1,2}.jsonl")) == [str(root / "b{1,2}.jsonl")]
    assert expand(str(root / "b{2,1,}.jsonl")) == [str(root / n) for n in ("b2.jsonl", "b1.jsonl", "b.jsonl")]
    # brace order kept; a missing item (b.jsonl) comes back as it is, for the caller to report
    assert expand(str(root / "*X.jsonl")) == [str(root / n) for n in ("starX.jsonl", "whatX.jsonl")]
    assert expand(str(root / "zz*.jsonl")) == [str(root / "zz*.jsonl")]  # unmatched: as the shell leaves it
    assert expand(str(root / "x{.jsonl")) == [str(root / "x{.jsonl")]  # unbalanced braces: no expansion
    assert is_pattern("a*.jsonl") and is_pattern("a[1]") and not is_pattern("a{1,2}") and not is_pattern("k=v")
