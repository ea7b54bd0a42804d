"""The synthetic world: deterministic, WordNet-true, readable by the real readers, learnable."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swagcli.errors import SwagError
from swagcli.prep.canon import normalize_tag, synset_key
from swagcli.prep.synth import build_world, load_world, run
from swagcli.prep.synth_render import render
from swagcli.recipes import SynthRecipe
from swagcli.wordnet import synset_from_wnid

SMALL = dict(posts=600, concepts=40, dump_shards=4, gzip_fraction=0.5, image_size=32,
             images_per_shard=250, downstream_classes=8, downstream_train_per_class=6,
             downstream_val_per_class=4, group_images=150, bad_line_prob=0.02,
             caption_only_prob=0.05)


def small(out, **kw) -> SynthRecipe:
    return SynthRecipe(out=str(out), **{**SMALL, **kw})


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "world"
    stages = []
    summary = run(small(out), progress=lambda stage, done, total: stages.append(stage))
    assert {"world", "dumps", "images", "downstream", "groups"} <= set(stages)
    assert summary["posts"] == 600 and summary["concepts"] == 40 and summary["classes"] == 8
    return out


@pytest.fixture(scope="module")
def world(world_dir):
    return load_world(world_dir)


def digests(root: Path, skip=("swag.json",)) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def dump_lines(world_dir: Path, world: dict) -> list[bytes]:
    lines = []
    for rel in world["files"]["dumps"]:
        data = (world_dir / rel).read_bytes()
        lines += (gzip.decompress(data) if rel.endswith(".gz") else data).splitlines()
    return lines


def parse(line: bytes):
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def post_tags(post: dict) -> list[str]:
    if "hashtags" in post:
        return [normalize_tag(t) for t in post["hashtags"]]
    return [normalize_tag(w) for w in post["caption"].split() if w.startswith("#")]


# -- determinism ----------------------------------------------------------------------------------
def test_same_recipe_same_bytes_whatever_the_workers(tmp_path, world_dir):
    reference = digests(world_dir, skip=("swag.json", "recipe.yaml"))
    out = tmp_path / "again"
    run(small(out))
    first = digests(out)
    run(small(out))  # rerun into the same folder: earlier outputs are replaced
    assert digests(out) == first
    assert digests(out, skip=("swag.json", "recipe.yaml")) == reference
    run(small(tmp_path / "two", workers=2))
    assert digests(tmp_path / "two", skip=("swag.json", "recipe.yaml")) == reference


# sha256 of the sorted {file: sha256} of the SMALL world (swag.json, recipe.yaml and the file list
# left out: they name swag's version and every recipe key), as written by commit 47ae57f, before
# concept_looks and downstream_tail: options added since leave the existing worlds as they were
SMALL_WORLD_DIGEST = (240, "94682b7884d276ba5b8c03e4570c1dffdd30472728d3e9e944ffcbbe651322bb")


def test_existing_worlds_are_byte_identical(world_dir):
    files = digests(world_dir, skip=("swag.json", "recipe.yaml", "synth-files.txt"))
    whole = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    assert (len(files), whole) == SMALL_WORLD_DIGEST


def test_another_seed_another_world(tmp_path, world_dir):
    run(small(tmp_path / "s1", seed=1))
    a, b = digests(world_dir / "dumps"), digests(tmp_path / "s1" / "dumps")
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)


def test_output_folder_must_be_new_or_a_world(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SwagError, match="did not write"):
        run(small(tmp_path))
    with pytest.raises(SwagError, match="output directory"):
        run(SynthRecipe(**SMALL))
    with pytest.raises(SwagError, match="planted_group"):
        build_world(small(tmp_path / "x", planted_group="Z"))
    with pytest.raises(SwagError, match="load|not found"):
        load_world(tmp_path / "nothing")


# -- WordNet ground truth -------------------------------------------------------------------------
def test_tags_canonicalize_as_recorded(world, canon):
    keys = [c["key"] for c in world["concepts"]]
    assert len(set(keys)) == len(keys)
    mains = [canon.synsets(c["main_tag"]) for c in world["concepts"]]
    for c, main in zip(world["concepts"], mains):
        assert synset_key(main) == c["key"] and c["synset"] in main
        assert c["variants"][0] == {**c["variants"][0], "tag": c["main_tag"], "kind": "main"}
        assert abs(sum(v["weight"] for v in c["variants"]) - 1) < 1e-4
        for v in c["variants"]:
            got = canon.synsets(normalize_tag(v["tag"]))
            assert synset_key(got) == v["key"] and c["synset"] in got
    assert sum(len(m) for m in mains) == len(frozenset().union(*mains))  # pairwise disjoint
    assert len(world["junk_tags"]) >= 20
    assert all(not canon.synsets(j["tag"]) for j in world["junk_tags"])
    assert {"love", "instagood", "2019", "nofilter"} <= {j["tag"] for j in world["junk_tags"]}


def test_default_world_has_every_kind_of_variant_and_a_long_tail():
    w = build_world(SynthRecipe(out="unused"))  # 300 concepts, no files written
    variants = [v for c in w["concepts"] for v in c["variants"]]
    assert {"main", "synonym", "plural", "mixedcase"} == {v["kind"] for v in variants}
    assert any(v["compound"] and v["kind"] == "main" for v in variants)
    assert any(v["compound"] and v["kind"] == "synonym" for v in variants)
    assert len(w["concepts"]) == 300 and len({c["family"] for c in w["concepts"]}) >= 30
    probs = [c["prob"] for c in w["concepts"]]
    assert probs == sorted(probs, reverse=True)
    assert probs[-1] * 20000 < 12 and probs[0] / probs[150] > 100  # a handful in the tail
    assert len(w["downstream"]["classes"]) == 40
    assert sum(c["relation"] != "self" for c in w["downstream"]["classes"]) >= 35


def test_classes_map_to_their_concept_by_path_similarity(world, wn):
    world_keys = {v["key"] for c in world["concepts"] for v in c["variants"]}
    concept_synsets = {c["synset"] for c in world["concepts"]}
    world_tags = {v["tag"].lower() for c in world["concepts"] for v in c["variants"]}
    for cls in world["downstream"]["classes"]:
        x = synset_from_wnid(cls["wnid"])
        assert x.name() == cls["synset"]
        concept = world["concepts"][cls["concept"]]
        sims = {k: max(x.path_similarity(wn.synset(s)) for s in k.split("+")) for k in world_keys}
        best = max(sims.values())
        assert sorted(k for k, s in sims.items() if s == best) == cls["expected_keys"]
        assert concept["key"] in cls["expected_keys"] and abs(best - cls["similarity"]) < 1e-6
        if cls["relation"] != "self":
            assert cls["synset"] not in concept_synsets
            assert not {l.lower().replace("_", "") for l in x.lemma_names()} & world_tags
    ranks = sorted(c["concept"] for c in world["downstream"]["classes"])
    assert ranks[0] <= 2 and ranks[-1] >= 35  # head and tail
    assert world["groups"]["planted_concept"] not in ranks

def test_fine_grained_downstream_classes_from_few_families(wn):
    """downstream_families: 4 draws every class from the 4 largest families, head to tail, each
    still mapping to its concept's hashtag; asking for more classes than they hold is one line."""
    w = build_world(SynthRecipe(**{**SMALL, "concepts": 100, "downstream_classes": 20, "downstream_families": 4}))
    size = Counter(c["family"] for c in w["concepts"])
    top = sorted(size, key=lambda f: (-size[f], f))[:4]
    classes = w["downstream"]["classes"]
    assert {w["concepts"][c["concept"]]["family"] for c in classes} == set(top)
    ranks = sorted(w["concepts"][c["concept"]]["rank"] for c in classes)
    assert ranks[0] <= 3 and ranks[-1] >= 80 and len(set(ranks)) == 20
    assert all(w["concepts"][c["concept"]]["key"] in c["expected_keys"] for c in classes)
    assert build_world(SynthRecipe(**SMALL))["downstream"] == build_world(
        SynthRecipe(**SMALL, downstream_families=None))["downstream"]
    with pytest.raises(SwagError, match="in 1 families"):
        build_world(SynthRecipe(**{**SMALL, "downstream_classes": 30, "downstream_families": 1}))


def test_glyph_world_gives_each_concept_a_look_of_its_own(wn):
    """concept_looks: glyph: a family's concepts share its shape, background, colours and grating;
    each shows a glyph of its own (16 cells, 5..11 set), at least 4 cells from every other; the
    rest of the world (concepts, tags, frequencies, classes) is the family world's."""
    from swagcli.prep.synth_render import GLYPH_DISTANCE

    fam = build_world(SynthRecipe(**SMALL))
    w = build_world(SynthRecipe(**SMALL, concept_looks="glyph"))
    strip = lambda c: {k: v for k, v in c.items() if k != "visual"}  # noqa: E731
    assert [strip(c) for c in w["concepts"]] == [strip(c) for c in fam["concepts"]]
    assert w["downstream"] == fam["downstream"]
    looks = {}
    for c in w["concepts"]:
        v = dict(c["visual"])
        glyph = v.pop("glyph")
        assert looks.setdefault(c["family"], v) == v and 5 <= glyph.bit_count() <= 11
    glyphs = [c["visual"]["glyph"] for c in w["concepts"]]
    assert min((a ^ b).bit_count() for i, a in enumerate(glyphs) for b in glyphs[:i]) >= GLYPH_DISTANCE
    # two concepts of one family differ in their image by the glyph alone
    same = [c["index"] for c in w["concepts"] if c["family"] == w["concepts"][0]["family"]][:2]
    a, b = (render(w["concepts"], [i], np.random.default_rng(0), 32).astype(int) for i in same)
    differ = np.abs(a - b).sum(2) > 60
    frame = np.ones_like(differ)
    frame[1:-1, 1:-1] = False
    assert 0.05 < differ.mean() < 0.4 and not (differ & frame).any()  # the panel on the object only


def test_downstream_classes_mostly_from_the_tail(wn):
    """downstream_tail: 0.8 takes that share of the classes from past the concepts holding half of
    the posts, the rest from the head; a side too short gives its classes to the other."""
    from swagcli.prep.synth import head_concepts

    w = build_world(SynthRecipe(**{**SMALL, "concepts": 60, "downstream_classes": 10, "zipf_exponent": 1.4,
                                   "downstream_tail": 0.8}))
    head = head_concepts(w["concepts"])
    assert sum(c["prob"] for c in w["concepts"][:head]) >= 0.5 > sum(c["prob"] for c in w["concepts"][:head - 1])
    ranks = [c["concept"] for c in w["downstream"]["classes"]]
    assert len(set(ranks)) == 10 and sum(r >= head for r in ranks) == 8
    few = build_world(SynthRecipe(**{**SMALL, "concepts": 60, "downstream_classes": 12, "zipf_exponent": 1.4,
                                     "downstream_families": 3, "downstream_tail": 0.8}))
    assert len(few["downstream"]["classes"]) == 12  # the head of 3 families is short: the tail takes it up
    assert build_world(SynthRecipe(**SMALL, downstream_tail=0.0))["downstream"] == build_world(
        SynthRecipe(**SMALL))["downstream"]


# -- dumps ----------------------------------------------------------------------------------------
def test_dumps(world_dir, world):
    files = world["files"]["dumps"]
    assert len(files) == 4 and sum(f.endswith(".gz") for f in files) == 2
    lines = dump_lines(world_dir, world)
    posts = [p for p in map(parse, lines) if p is not None]
    bad = len(lines) - len(posts)
    assert len(posts) == 600 and bad == world["counts"]["dumps"]["bad_lines"] > 0
    assert any(b"\xff" in line for line in lines)
    assert [p["id"] for p in posts] == [f"p{i:07d}" for i in range(600)]
    assert {p["country"] for p in posts} <= set(world["countries"])
    caption_only = [p for p in posts if "hashtags" not in p]
    assert caption_only and all("#" in p["caption"] for p in caption_only if post_tags(p))
    assert any(p.get("hashtags") == [] for p in posts)
    assert any(t != t.lower() for p in posts for t in p.get("hashtags", []))  # #BrownBear
    owner = {v["tag"].lower(): c["index"] for c in world["concepts"] for v in c["variants"]}
    junk = {j["tag"] for j in world["junk_tags"]}
    per_concept = Counter()
    for p in posts:
        tags = post_tags(p)
        assert all(t in owner or t in junk for t in tags)
        per_concept.update({owner[t] for t in tags if t in owner})
    counts = [per_concept[i] for i in range(40)]
    assert counts[0] >= 5 * max(1, sorted(counts)[20])  # Zipf: head >> median


def test_dumps_read_by_the_real_reader(world_dir, world):
    from swagcli.prep.dumps import ReadStats, iter_posts

    stats = ReadStats()
    for rel in world["files"]["dumps"]:
        list(iter_posts(world_dir / rel, stats=stats))
    assert stats.bad_json + stats.bad_utf8 == world["counts"]["dumps"]["bad_lines"]
    assert stats.from_caption > 0 and stats.posts + stats.no_tags == 600


# -- images ---------------------------------------------------------------------------------------
def test_image_shards_are_webdataset(world_dir, world):
    import webdataset as wds

    urls = [str(world_dir / rel) for rel in world["files"]["images"]]
    assert len(urls) == 3
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"p{i:07d}" for i in range(600)]
    for s in samples[:50]:
        assert s["jpg"].size == (32, 32) and s["jpg"].mode == "RGB"
        assert all(0 <= c < 40 for c in s["json"]["concepts"])
    shown = Counter(c for s in samples for c in s["json"]["concepts"])
    assert [shown[i] for i in range(40)] == [c["posts"] for c in world["concepts"]]
    assert sum(len(s["json"]["concepts"]) == 2 for s in samples) > 100  # second objects


def test_render_is_reusable_and_deterministic(world):
    concepts = world["concepts"]
    a = render(concepts, [0], np.random.default_rng(5), 48)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render(concepts, [0], np.random.default_rng(5), 48))
    assert not np.array_equal(a, render(concepts, [1], np.random.default_rng(5), 48))


# -- downstream -----------------------------------------------------------------------------------
def test_downstream_layout(world_dir, world):
    root = world_dir / "downstream"
    classes = json.loads((root / "classes.json").read_text())
    assert set(classes) == {c["wnid"] for c in world["downstream"]["classes"]}
    for split, n in (("train", 6), ("val", 4)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(classes)
        for wnid in folders:
            files = sorted((root / split / wnid).glob("*.jpg"))
            assert len(files) == n
            assert synset_from_wnid(wnid).name() == classes[wnid]["synset"]
    for c in world["downstream"]["classes"]:
        assert classes[c["wnid"]]["expected_tags"] and classes[c["wnid"]]["concept"]
        if c["relation"] != "self":
            assert c["synset"] != c["concept_synset"]


def _roughness(path: Path) -> float:
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return float(np.abs(np.diff(img, axis=1)).mean())


def test_harder_downstream_set(world_dir, tmp_path):
    """downstream_noise scales the downstream images' pixel noise, downstream_distractors adds a
    second object to them; the posts' dumps and image shards stay byte-identical. Measured: mean
    neighbour-pixel difference 24.5 (noise x3) and 12.9 (distractors) against 11.3."""
    def files(root, sub):
        return {p.relative_to(root): p.read_bytes() for p in sorted((root / sub).rglob("*")) if p.is_file()}

    base = files(world_dir, "downstream")
    for name, kw in (("noisy", {"downstream_noise": 3.0}), ("distract", {"downstream_distractors": 1.0})):
        out = tmp_path / name
        run(small(out, **kw))
        assert files(out, "images") == files(world_dir, "images")
        assert files(out, "dumps") == files(world_dir, "dumps")
        got = files(out, "downstream")
        assert got.keys() == base.keys()
        jpgs = [k for k in base if k.suffix == ".jpg"]
        assert all(got[k] != base[k] for k in jpgs), name
        rough = np.mean([_roughness(out / k) for k in jpgs])
        rough0 = np.mean([_roughness(world_dir / k) for k in jpgs])
        assert (rough > 1.5 * rough0) if name == "noisy" else (rough < 1.3 * rough0), (name, rough, rough0)


def _colour_features(path: Path) -> np.ndarray:
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) // 64
    codes = (img[..., 0] * 16 + img[..., 1] * 4 + img[..., 2]).astype(int).ravel()
    return np.bincount(codes, minlength=64) / codes.size


def test_downstream_classes_are_learnable(world_dir):
    """Even a colour histogram with nearest centroids tells the classes apart."""
    root = world_dir / "downstream"
    wnids = sorted(p.name for p in (root / "train").iterdir())
    centroids = np.stack([np.mean([_colour_features(f) for f in (root / "train" / w).glob("*.jpg")],
                                  axis=0) for w in wnids])
    hits = total = 0
    for i, w in enumerate(wnids):
        for f in (root / "val" / w).glob("*.jpg"):
            hits += np.argmin(((centroids - _colour_features(f)) ** 2).sum(1)) == i
            total += 1
    assert hits / total > 0.6  # chance: 1/8


# -- fairness set ---------------------------------------------------------------------------------
def test_groups_manifest_and_planted_association(world_dir, world):
    with open(world_dir / "groups" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "group", "country", "label", "concept"]
    assert len(rows) == 150
    assert set(Counter(r["group"] for r in rows).values()) == {50}
    assert {r["country"] for r in rows} <= set(world["countries"])
    assert {r["label"] for r in rows} <= {c["wnid"] for c in world["downstream"]["classes"]}
    assert all((world_dir / "groups" / r["path"]).is_file() for r in rows)
    g = world["groups"]
    rate = {grp: np.mean([g["planted_synset"] in r["concept"].split("+")
                          for r in rows if r["group"] == grp]) for grp in g["groups"]}
    others = [rate[grp] for grp in g["groups"] if grp != g["planted_group"]]
    assert rate[g["planted_group"]] > 0.15 and max(others) == 0
    assert g["planted_shown"][g["planted_group"]] == round(rate[g["planted_group"]] * 50)
    assert g["noisy_country"] in world["countries"] and g["noise_scale"] > 1


# -- boundaries -----------------------------------------------------------------------------------
def test_prep_imports_no_torch():
    code = "import swagcli.prep.synth, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
