"""Real-world sources: YFCC100M metadata, img2dataset folders, parquet dumps; multi-word tags."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from swagcli.errors import SwagError
from swagcli.prep.dumps import ReadSpec, ReadStats, detect_format, expand_dumps, iter_posts, split_tags

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "yfcc100m_dataset-slice"
EXPECTED = {  # the fixture's photos: id -> tags as the reader gives them
    "6985418911": ["brownbear", "bears", "alaska", "katmainationalpark", "salmon", "wildlife", "grizzly"],
    "8471230965": ["sunset", "sailboat"],  # from the description's #tags (no user tags)
    "4302191188": ["café", "croissant", "painauchocolat", "paris"],
    "7746631250": ["newyork", "taxi", "yellowcab", "streetphotography"],
}


def read(path, fmt="auto", **spec):
    st = ReadStats()
    f = detect_format(Path(path), fmt)
    posts = list(iter_posts(Path(path), ReadSpec(f, **spec) if spec else f, st))
    return posts, st


def original_edition(text: str) -> str:
    """The original edition's 23 fields: no row number, no hash."""
    return "".join("\t".join(c[1:2] + c[3:]) + "\n" for c in (ln.split("\t") for ln in text.splitlines()))


# -- YFCC100M ------------------------------------------------------------------------------------------
def test_yfcc_fixture_as_distributed():
    posts, st = read(FIXTURE)
    assert detect_format(FIXTURE) == "yfcc"
    assert {p.id: p.tags for p in posts} == EXPECTED
    # machine tags (vision:animal=099, taxi:number=7j41) are never read as tags
    assert not any(":" in t or "=" in t for p in posts for t in p.tags)
    assert (st.lines, st.posts, st.video, st.no_tags, st.from_caption, st.skipped) == (6, 4, 1, 1, 1, 2)


@pytest.mark.parametrize("name, pack", [
    ("yfcc100m_dataset-0.bz2", bz2.compress), ("yfcc100m_dataset-0.gz", gzip.compress),
    ("meta.tsv", lambda b: b), ("slice", lambda b: b)])
def test_yfcc_both_editions_any_compression_sniffed(tmp_path, name, pack):
    text = FIXTURE.read_text()
    for edition, body in (("25-fields", text), ("23-fields", original_edition(text))):
        f = tmp_path / edition / name
        f.parent.mkdir()
        f.write_bytes(pack(body.encode()))
        assert detect_format(f) == "yfcc"  # by name, or by the first line's fields
        posts, st = read(f)
        assert {p.id: p.tags for p in posts} == EXPECTED, edition
        assert st.video == 1


def test_yfcc_broken_lines_are_counted_per_rule(tmp_path):
    lines = FIXTURE.read_bytes().splitlines()
    cut = b"\t".join(lines[0].split(b"\t")[:12])             # cut short: 12 fields
    bad_marker = b"\t".join(lines[3].split(b"\t")[:-1] + [b"x"])
    f = tmp_path / "yfcc100m_dataset-3"
    f.write_bytes(b"\n".join([lines[0], cut, b"\xff\xfe" + lines[5][2:], b"", bad_marker, *lines[1:]]) + b"\n")
    posts, st = read(f)
    assert [p.id for p in posts] == list(EXPECTED)
    assert (st.bad_columns, st.bad_utf8, st.blank, st.video, st.no_tags) == (2, 1, 1, 1, 1)
    assert st.lines == 10 and st.skipped == 5


def test_yfcc_24_fields_with_the_hash_or_the_row_number(tmp_path):
    cols = FIXTURE.read_text().splitlines()[0].split("\t")
    f = tmp_path / "yfcc100m_dataset-24"
    f.write_text("\t".join(cols[1:]) + "\n" + "\t".join(cols[:2] + cols[3:]) + "\n")
    assert [p.id for p in read(f)[0]] == ["6985418911", "6985418911"]


def test_yfcc_declared_on_a_jsonl_dump_says_so(tmp_path):
    from swagcli.prep.dumps import no_posts_error, read_report

    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"id": "a", "hashtags": ["#dog"]}) + "\n")
    posts, st = read(f, "yfcc")
    assert not posts and st.bad_columns == 1
    msg = str(no_posts_error([str(f)], read_report([st], ["yfcc"])))
    assert "1 wrong number of fields" in msg and "read as yfcc" in msg and "\n" not in msg


# -- tags ------------------------------------------------------------------------------------------------
def test_multi_word_tags_are_joined_as_hashtags(canon):
    from swagcli.prep.canon import normalize_tag

    assert [normalize_tag(t) for t in ("brown+bear", "Brown Bear", "#BrownBear", " new  york ", "caf%C3%A9",
                                       "t-shirt", "100%")] == [
        "brownbear", "brownbear", "brownbear", "newyork", "café", "t-shirt", "100%"]
    assert "brown_bear.n.01" in canon.synsets(normalize_tag("brown+bear"))  # Listing 1 splits it again
    assert split_tags("brown+bear,new york, #x") == ["brown+bear", "new york", "#x"]
    assert split_tags("#dog #cat") == ["#dog", "#cat"]
    assert split_tags("#a #b,#c") == ["#a", "#b", "#c"]


# -- parquet dumps ------------------------------------------------------------------------------------
def _parquet(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_tags_as_lists_strings_or_caption(tmp_path):
    f = _parquet(tmp_path / "posts.parquet",
                 id=[1, 2, 3, 4, None],
                 tags=[["#Dog", "brown bear"], [], None, ["x"], ["y"]],
                 caption=["", "a #Heron at dawn", "no tags here", "", ""],
                 country=["US", None, "GB", "IN", "US"])
    posts, st = read(f)
    assert detect_format(f) == "parquet"
    assert [(p.id, p.tags, p.country) for p in posts] == [
        ("1", ["dog", "brownbear"], "US"), ("2", ["heron"], None), ("4", ["x"], "IN")]
    assert (st.lines, st.no_tags, st.no_id, st.from_caption) == (5, 1, 1, 1)
    g = _parquet(tmp_path / "strings.parquet", photo_id=["a", "b"], user_tags=["brown+bear,salmon", "#dog #cat"])
    assert [p.tags for p in read(g)[0]] == [["brownbear", "salmon"], ["dog", "cat"]]
    h = _parquet(tmp_path / "pandas.parquet", id=[7.0, float("nan")], tags=["dog", "cat"])  # ints with a gap
    posts, st = read(h)
    assert [p.id for p in posts] == ["7"] and st.no_id == 1


def test_parquet_named_fields_and_clear_errors(tmp_path):
    f = _parquet(tmp_path / "p.parquet", uid=["a", "b"], labels=[["dog"], ["cat"]], text=["#x", "#y"])
    with pytest.raises(SwagError, match="no id column"):
        read(f)
    posts, _ = read(f, "parquet", id="uid", tags="labels")
    assert [(p.id, p.tags) for p in posts] == [("a", ["dog"]), ("b", ["cat"])]
    assert [p.tags for p in read(f, "parquet", id="uid", caption="text")[0]] == [["x"], ["y"]]
    with pytest.raises(SwagError, match=r"no column 'nope' for the tags \(columns: uid, labels, text\)"):
        read(f, "parquet", id="uid", tags="nope")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    posts, st = read(broken)  # no footer: damaged before its first record, counted
    assert not posts and st.truncated == 1 and "not a readable parquet file" in st.damaged[0]["error"]
    with pytest.raises(SwagError, match="reads .tar or .parquet"):
        detect_format(FIXTURE, "parquet")


def test_jsonl_named_fields(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"uid": 7, "labels": "brown+bear,elk", "where": "CA"}) + "\n"
                 + json.dumps({"uid": "  ", "labels": "dog"}) + "\n")
    posts, st = read(f, "jsonl", id="uid", tags="labels", country="where")
    assert [(p.id, p.tags, p.country) for p in posts] == [("7", ["brownbear", "elk"], "CA")]
    assert st.no_id == 1  # an id of white space is no id


# -- img2dataset ----------------------------------------------------------------------------------------
def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _meta(key, status="success", **kw):
    return json.dumps({"key": key, "status": status, "url": "http://x/" + key, **kw}).encode()


def test_img2dataset_tar_records_failed_and_broken(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    _tar(d / "00000.tar", [
        ("000000000.jpg", b"jpg"), ("000000000.json", _meta("000000000")), ("000000000.txt", b"my #Dog and #brown_bear"),
        ("000000001.jpg", b"jpg"), ("000000001.json", _meta("000000001", "failed_to_resize")),
        ("000000001.txt", b"#cat"),
        ("000000002.jpg", b"jpg"), ("000000002.json", b"{not json"), ("000000002.txt", b"#owl"),
        ("000000003.jpg", b"jpg"), ("000000003.json", _meta("000000003", usertags="brown+bear,salmon")),
        ("000000003.txt", b"no hashtags"),
        ("000000004.jpg", b"jpg"), ("000000004.txt", b"\xff\xfe #bad"),
    ])
    (d / "00000_stats.json").write_text(json.dumps({"count": 5, "successes": 4}))
    assert expand_dumps([str(d)]) == [d / "00000.tar"]  # the stats file is no dump
    assert expand_dumps([str(d / "*")]) == [d / "00000.tar"]
    posts, st = read(d / "00000.tar")
    assert [(p.id, p.tags) for p in posts] == [("000000000", ["dog", "brown_bear"])]
    assert (st.lines, st.failed_download, st.bad_json, st.no_tags, st.bad_utf8) == (5, 1, 1, 1, 1)
    posts, st = read(d / "00000.tar", "img2dataset", tags="usertags")
    assert [(p.id, p.tags) for p in posts] == [("000000000", ["dog", "brown_bear"]),
                                                ("000000003", ["brownbear", "salmon"])]
    cut = tmp_path / "cut.tar"
    cut.write_bytes((d / "00000.tar").read_bytes()[:1500])  # inside the first sample's second header
    posts, st = read(cut)
    assert not posts and st.truncated == 1  # the sample being read is lost with the rest
    assert st.damaged == [{"path": str(cut), "lines_read": 0, "error": "truncated header"}]


def _tag_counts(specs, **spec) -> tuple[Counter, ReadStats, int]:
    counts, st, n = Counter(), ReadStats(), 0
    for p in expand_dumps(specs):
        f = detect_format(p)
        for post in iter_posts(p, ReadSpec(f, **spec), st):
            counts.update(post.tags)
            n += 1
    return counts, st, n


def test_every_layout_holds_the_same_posts(layouts):
    out, summary = layouts
    ref, ref_st, n = _tag_counts([str(out / "dumps")])
    assert ref_st.bad_json + ref_st.bad_utf8 == summary["bad_lines"] > 0
    yfcc = _tag_counts([str(out / "yfcc")])
    assert yfcc[0] == ref and yfcc[2] == n
    assert yfcc[1].video == summary["yfcc_videos"] > 0
    assert yfcc[1].bad_columns + yfcc[1].bad_utf8 == summary["yfcc_bad_lines"] == summary["bad_lines"]
    user_tags = [ln.split(b"\t")[-15] for ln in bz2.open(out / "yfcc" / "yfcc100m_dataset-1.bz2").read().split(b"\n")
                 if ln.count(b"\t") == 22]
    assert any(b"+" in t for t in user_tags), "multi-word tags are written as Flickr does: brown+bear"
    i2d = out / "img2dataset"
    for kw in ({}, {"tags": "usertags"}):  # the caption's #tags, or the user-tags column
        counts, st, m = _tag_counts([str(i2d)], **kw)
        assert counts == ref and m == n, kw
        assert st.failed_download == summary["img2dataset_failed_downloads"] > 0
    stats = [json.loads(p.read_text()) for p in sorted(i2d.glob("*_stats.json"))]
    assert sum(s["failed_to_download"] for s in stats) == summary["img2dataset_failed_downloads"]
    tars = _tag_counts([str(i2d / "*.tar")])  # the tars alone: successes only, the same posts
    assert tars[0] == ref and tars[1].failed_download == 0


def test_img2dataset_folder_picks_the_parquet_and_ids_are_keys(layouts, tmp_path):
    out, _ = layouts
    i2d = out / "img2dataset"
    assert [p.name for p in expand_dumps([str(i2d)])] == ["00000.parquet", "00001.parquet", "00002.parquet"]
    posts = list(iter_posts(i2d / "00001.parquet"))
    table = pq.read_table(i2d / "00001.parquet", columns=["key", "status"]).to_pylist()
    ok = [r["key"] for r in table if r["status"] == "success"]
    assert {p.id for p in posts} <= set(ok) and all(k.startswith("00001") for k in ok)
    with tarfile.open(i2d / "00001.tar") as tar:
        keys = [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".jpg")]
    assert keys == ok  # failed downloads are in the parquet only
    alone = tmp_path / "alone"  # a folder whose parquets are gone: its tars are read
    alone.mkdir()
    for p in i2d.glob("*.tar"):
        shutil.copy(p, alone / p.name)
    assert [p.suffix for p in expand_dumps([str(alone)])] == [".tar"] * 3


def test_caption_hashtags_are_not_url_anchors_or_html_entities(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"id": "a", "caption": "see http://x.org/p#frag &#39;hi&#39; (#Owl) #brown_bear"}) + "\n")
    assert read(f)[0][0].tags == ["owl", "brown_bear"]


def test_img2dataset_without_captions_asks_for_the_tags_field(tmp_path):
    f = _parquet(tmp_path / "00000.parquet", key=["000000000"], status=["success"], usertags=["dog"])
    assert detect_format(f) == "img2dataset"
    with pytest.raises(SwagError, match="no caption column .* --tags-field"):
        read(f)
    assert [p.tags for p in read(f, "img2dataset", tags="usertags")[0]] == [["dog"]]


def test_a_plan_over_two_folders_with_repeating_keys_is_refused(layouts, tmp_path):
    from swagcli import recipes
    from swagcli.prep import sample, vocab

    out, _ = layouts
    copy = tmp_path / "second-download"
    shutil.copytree(out / "img2dataset", copy)
    vocab.build(recipes.load("vocab", flags={"dumps": [str(out / "dumps")], "out": str(tmp_path / "v")}))
    r = recipes.load("sample", flags={"vocab": str(tmp_path / "v"), "dumps": [str(out / "img2dataset"), str(copy)],
                                      "out": str(tmp_path / "p"), "samples": 10})
    with pytest.raises(SwagError, match="both hold img2dataset shard 00000, whose keys repeat"):
        sample.build(r)
    assert not (tmp_path / "p").exists()


def test_layouts_are_the_same_bytes_whatever_the_workers(tmp_path):
    import hashlib

    from swagcli.prep.synth import run
    from swagcli.recipes import SynthRecipe

    def digests(workers):
        out = tmp_path / f"w{workers}"
        run(SynthRecipe(out=str(out), posts=200, concepts=30, dump_shards=2, image_size=16, downstream_classes=4,
                        downstream_train_per_class=1, downstream_val_per_class=1, group_images=0,
                        layouts=["yfcc", "img2dataset"], workers=workers))
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for d in ("yfcc", "img2dataset") for p in sorted((out / d).iterdir())}

    one = digests(1)
    assert len(one) == 2 + 3 * 2 and one == digests(2)
