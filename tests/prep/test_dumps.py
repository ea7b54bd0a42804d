"""Reading dumps: formats, compression, path patterns, bad lines counted, clear errors."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard

from swagcli.errors import SwagError
from swagcli.prep.dumps import ReadStats, detect_format, expand_dumps, iter_posts

POSTS = [
    {"id": "a", "hashtags": ["#Dog", "#dog", "cat"], "country": "US"},
    {"id": "b", "hashtags": ["#eggplant"], "country": "GB"},
    {"id": "c", "caption": "sunny day with my #BrownBear and #love"},
    {"id": "d", "hashtags": []},
    {"id": "e", "hashtags": "#crane #heron"},
]


def _jsonl(posts) -> bytes:
    return "".join(json.dumps(p) + "\n" for p in posts).encode()


@pytest.mark.parametrize("suffix, compress", [
    (".jsonl", lambda b: b),
    (".jsonl.gz", gzip.compress),
    (".jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
    (".json.bz2", __import__("bz2").compress),
])
def test_jsonl_any_compression(tmp_path, suffix, compress):
    f = tmp_path / f"d{suffix}"
    f.write_bytes(compress(_jsonl(POSTS)))
    st = ReadStats()
    posts = list(iter_posts(f, stats=st))
    assert [p.id for p in posts] == ["a", "b", "c", "e"]
    assert posts[0].tags == ["dog", "cat"] and posts[0].country == "US"  # normalized, distinct
    assert posts[2].tags == ["brownbear", "love"]  # from the caption
    assert posts[3].tags == ["crane", "heron"]
    assert (st.lines, st.posts, st.no_tags, st.from_caption) == (5, 4, 1, 1)


def test_bad_lines_are_skipped_and_counted(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(_jsonl(POSTS[:2]) + b"{not json\n" + b"\xff\xfe\xfd\n" + b"[1, 2]\n"
                  + b'{"hashtags": ["#x"]}\n' + b"\n" + _jsonl(POSTS[4:]))
    st = ReadStats()
    ids = [p.id for p in iter_posts(f, stats=st)]
    assert ids == ["a", "b", "e"]
    assert (st.bad_json, st.bad_utf8, st.no_id, st.blank, st.skipped) == (2, 1, 1, 1, 4)


def test_tsv_with_optional_country(tmp_path):
    f = tmp_path / "d.tsv.gz"
    f.write_bytes(gzip.compress(b"p1\t#dog #Cat\tUS\np2\t#eggplant,#aubergine\n\t#x\np3\t\n"))
    st = ReadStats()
    posts = list(iter_posts(f, stats=st))
    assert [(p.id, p.tags, p.country) for p in posts] == [
        ("p1", ["dog", "cat"], "US"), ("p2", ["eggplant", "aubergine"], None)]
    assert (st.no_id, st.no_tags) == (1, 1)


def test_format_sniffed_without_suffix(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(_jsonl(POSTS[:1]))
    b.write_text("x\t#dog\n")
    assert (detect_format(a), detect_format(b)) == ("jsonl", "tsv")


def test_paths_globs_braces_dirs(tmp_path):
    for i in range(3):
        (tmp_path / f"s-{i:03d}.jsonl").write_bytes(_jsonl(POSTS[:1]))
    (tmp_path / "notes.md").write_text("not a dump")
    assert [p.name for p in expand_dumps(str(tmp_path / "s-{000..001}.jsonl"))] == ["s-000.jsonl", "s-001.jsonl"]
    assert len(expand_dumps([str(tmp_path / "s-*.jsonl")])) == 3
    assert len(expand_dumps([str(tmp_path)])) == 3  # the directory's dumps, not notes.md
    with pytest.raises(SwagError, match="no such dump file"):
        expand_dumps([str(tmp_path / "missing.jsonl")])
    with pytest.raises(SwagError, match="no dump matches"):
        expand_dumps([str(tmp_path / "zz-*.jsonl")])


def test_truncated_gzip_is_read_up_to_the_damage_and_counted(tmp_path):
    import zlib

    f = tmp_path / "t.jsonl.gz"
    cut = gzip.compress(_jsonl(POSTS * 200))[:-40]
    f.write_bytes(cut)
    whole = zlib.decompressobj(31).decompress(cut).count(b"\n")  # the lines before the damage
    st = ReadStats()
    posts = list(iter_posts(f, stats=st))
    ids = [p["id"] for p in (POSTS * 200)[:whole] if p.get("hashtags") != []]
    assert [p.id for p in posts] == ids and st.posts == len(ids) > 0
    assert (st.lines, st.truncated, st.skipped) == (whole, 1, whole - len(ids))  # no cut line parsed
    assert [(d["path"], d["lines_read"]) for d in st.damaged] == [(str(f), whole)]
