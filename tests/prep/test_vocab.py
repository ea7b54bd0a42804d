"""`swag vocab build` on hand-made dumps with real WordNet: merging, dropping, counting images
once, candidates by count and country, head/tail, parallel == serial, separable counting."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from swagcli import recipes
from swagcli.errors import SwagError
from swagcli.prep import vocab as V
from swagcli.prep.vocab import Vocab


def _write(path, posts):
    data = "".join(json.dumps(p) + "\n" for p in posts).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _posts():
    """Planted counts: eggplant+aubergine merge; an image with both counts once."""
    P = []
    n = 0

    def add(k, tags, country="US"):
        nonlocal n
        for _ in range(k):
            P.append({"id": f"p{n}", "hashtags": tags, "country": country})
            n += 1

    add(30, ["#eggplant"])
    add(20, ["#aubergine"])
    add(10, ["#eggplant", "#Aubergine", "#love"])     # 10 images, counted once for the merge
    add(12, ["#brownbear"])
    add(8, ["#ursusarctos", "#newyork"])
    add(25, ["#newyork", "#instagood"])              # no synsets: dropped
    add(1, ["#porcupine"])                            # below min_count=2: not a candidate
    add(3, ["#hedgehog"], country="GB")               # only GB: not a candidate with countries=[US]
    add(4, ["#hedgehog"], country="US")
    return P


@pytest.fixture
def dumps(tmp_path):
    posts = _posts()
    _write(tmp_path / "a.jsonl.gz", posts[::2])
    _write(tmp_path / "b.jsonl", posts[1::2])
    return tmp_path


def _build(dumps, out, **kw):
    r = recipes.load("vocab", flags={"dumps": [str(dumps / "*.jsonl*")], "out": str(out),
                                     "head_min_images": 40, **kw})
    return V.build(r)


def test_build_merges_drops_and_counts(dumps, tmp_path):
    doc = _build(dumps, tmp_path / "out")
    by_tag = {t: h for h in doc["hashtags"] for t in h["tags"]}
    egg = by_tag["eggplant"]
    assert by_tag["aubergine"] is egg and egg["synsets"] == ["eggplant.n.01", "eggplant.n.02"]
    assert egg["count"] == 60  # 30 + 20 + 10 images, the 10 with both tags once
    assert egg["tag_counts"] == {"eggplant": 40, "aubergine": 30}
    assert egg["name"] == "eggplant" and egg["head"] is True
    bear = by_tag["brownbear"]
    assert by_tag["ursusarctos"] is bear and bear["synsets"] == ["brown_bear.n.01"] and bear["count"] == 20
    assert bear["head"] is False
    for junk in ("newyork", "instagood", "love", "porcupine"):
        assert junk not in by_tag
    assert by_tag["hedgehog"]["count"] == 7
    assert [h["id"] for h in doc["hashtags"]] == list(range(len(doc["hashtags"])))
    keys = [h["key"] for h in doc["hashtags"]]
    assert keys == sorted(keys)  # ids are stable: ordered by synset key
    s = doc["stats"]
    assert (s["posts"], s["candidate_tags"], s["head_hashtags"]) == (113, 8, 1)
    assert s["dropped_no_synset"] == 3  # newyork, instagood, love
    out = tmp_path / "out"
    on_disk = json.loads((out / "vocab.json").read_text())
    assert on_disk == doc
    for h in on_disk["hashtags"]:
        assert {"name", "synsets", "tags", "count", "head"} <= set(h)
    assert (out / "zipf.png").stat().st_size > 5000
    assert "min_count: 2" in (out / "recipe.yaml").read_text()
    assert json.loads((out / "swag.json").read_text())["swag_version"]


def test_countries_choose_candidates_but_counts_use_all(dumps, tmp_path):
    doc = _build(dumps, tmp_path / "out", countries=["US"], min_count=5)
    names = {h["name"]: h for h in doc["hashtags"]}
    assert "hedgehog" not in names  # only 4 US images < min_count 5
    doc = _build(dumps, tmp_path / "out2", countries=["US"], min_count=4)
    assert {h["name"]: h["count"] for h in doc["hashtags"]}["hedgehog"] == 7  # GB images count too


def test_workers_give_identical_vocab(dumps, tmp_path):
    a = _build(dumps, tmp_path / "a", workers=1)
    b = _build(dumps, tmp_path / "b", workers=2)
    strip = lambda d: {k: v for k, v in d.items() if k != "stats"}  # noqa: E731
    assert strip(a) == strip(b)


def test_counting_is_separable_per_shard(dumps, canon):
    shards = sorted(str(p) for p in dumps.glob("*.jsonl*"))
    parts = [V.count_tags(p) for p in shards]
    merged, stats = V.merge_counts(parts)
    whole = Counter()
    for p in shards:
        whole.update(V.count_tags(p)[0])
    assert merged == whole and sum(s.posts for s in stats) == 113
    groups, _ = V.canonical_groups(merged, 2, canon)
    tag_to_id = {t: i for i, g in enumerate(groups) for t in g.tags}
    per_shard = [V.count_canonical(p, tag_to_id)[0] for p in shards]
    assert sum(per_shard, Counter())[tag_to_id["eggplant"]] == 60


def test_vocab_loads_back(dumps, tmp_path):
    _build(dumps, tmp_path / "out")
    v = Vocab.load(tmp_path / "out")
    assert v.tag_to_id["aubergine"] == v.tag_to_id["eggplant"]
    assert len(v) == len(v.names) == len(v.head)
    bad = tmp_path / "bad.json"
    bad.write_text('{"hashtags": []}')
    with pytest.raises(SwagError, match="not a swag vocabulary"):
        Vocab.load(bad)


def test_no_readable_posts_is_an_error(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b"{broken\n\xff\n")
    with pytest.raises(SwagError, match="no readable posts"):
        _build(tmp_path, tmp_path / "out")


def test_the_build_pauses_the_cycle_collector_and_gives_it_back(dumps, tmp_path, monkeypatch):
    """The build runs with Python's cycle collector off (a full collection walks the Canonicalizer's
    table: 0.1-0.2 s of a 400k-tag build) and leaves it as it found it, after a failure too."""
    import gc

    from swagcli.prep.parallel import gc_paused, map_shards

    seen = []
    real = V.canonical_groups

    def spy(*a, **kw):
        seen.append(gc.isenabled())
        return real(*a, **kw)

    monkeypatch.setattr(V, "canonical_groups", spy)
    _build(dumps, tmp_path / "out")
    assert seen == [False] and gc.isenabled()
    for workers in (1, 2):  # each shard of a pass, in this process or in a worker
        assert list(map_shards(gc.isenabled, [(), ()], workers)) == [False, False] and gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # off before: still off
    finally:
        gc.enable()
    with pytest.raises(ZeroDivisionError):
        with gc_paused():
            1 / 0
    assert gc.isenabled()
