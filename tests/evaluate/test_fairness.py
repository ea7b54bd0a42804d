"""`swag fairness`: the statistics against hand-computed cases, and the planted association of the
synthetic world found (and not invented) by a really pretrained model."""

from __future__ import annotations

import base64
import csv
import html.parser
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from swagcli.errors import SwagError
from swagcli.evaluate import fairness as F
from swagcli.evaluate import fairness_stats as S

REPO = Path(__file__).resolve().parents[2]


# -- geography by hand -------------------------------------------------------------------------------------
def test_country_accuracy_and_eighty_rule_by_hand():
    # 3 countries, 2 classes. Per (country, class): correct / images
    #   US: c0 4/4 = 1.0, c1 1/2 = 0.5      -> 5/6
    #   GB: c0 3/4 = .75, c1 2/2 = 1.0      -> 5/6
    #   NG: c0 1/2 = 0.5, (no c1)           -> 1/2
    rows = ([("US", 0, 1)] * 4 + [("US", 1, 1), ("US", 1, 0)] + [("GB", 0, 1)] * 3 + [("GB", 0, 0)]
            + [("GB", 1, 1)] * 2 + [("NG", 0, 1), ("NG", 0, 0)])
    countries = [r[0] for r in rows]
    y = np.array([r[1] for r in rows])
    pred = np.where([r[2] for r in rows], y, 1 - y)
    geo = S.geography(countries, y, pred, ["c0", "c1"], ratio=0.8)
    assert geo["country_names"] == ["GB", "NG", "US"]
    acc = {c["country"]: (c["correct"], c["images"], c["classes"]) for c in geo["countries"]}
    assert acc == {"US": (5, 6, 2), "GB": (5, 6, 2), "NG": (1, 2, 1)}
    assert geo["overall"] == pytest.approx(11 / 14)
    # rows = worse country r, columns = better country c: share of shared classes with acc_r < 0.8 acc_c
    #   GB vs US: c0 .75 < .8 yes; c1 1.0 < .4 no      -> 1/2
    #   US vs GB: c0 1.0 < .6 no;  c1 0.5 < .8 yes     -> 1/2
    #   NG vs US: c0 0.5 < .8 yes (c1 not in NG)       -> 1/1;   US vs NG: 1.0 < .4 no -> 0
    #   NG vs GB: 0.5 < .6 yes -> 1;                             GB vs NG: .75 < .4 no -> 0
    m = dict(zip(geo["country_names"], geo["eighty_rule"]))
    assert m["GB"] == [0.0, 0.0, 0.5]
    assert m["NG"] == [1.0, 0.0, 1.0]
    assert m["US"] == [0.5, 0.0, 0.0]
    comp = dict(zip(geo["country_names"], geo["compared"]))
    assert comp["US"] == [2, 1, 2] and comp["NG"] == [1, 1, 1]
    # min_images 3: NG's class 0 (2 images) and the 2-image class 1 cells drop out
    geo3 = S.geography(countries, y, pred, ["c0", "c1"], ratio=0.8, min_images=3)
    m3 = dict(zip(geo3["country_names"], geo3["eighty_rule"]))
    assert m3["GB"] == [0.0, 0.0, 1.0] and m3["US"] == [0.0, 0.0, 0.0] and m3["NG"] == [0.0, 0.0, 0.0]
    lo, hi = S.wilson(5, 6)
    assert lo < 5 / 6 < hi and lo == pytest.approx(0.4365, abs=1e-3) and hi == pytest.approx(0.9699, abs=1e-3)


# -- associations by hand -------------------------------------------------------------------------------------
def _topk(rows):
    return np.array(rows, dtype=np.int64)


def test_association_rates_and_differences_by_hand():
    # top-2 of 4 hashtags for 3 groups; G0 4 images, G1 4, G2 2 (below min_group 3: not ranked, not in others)
    topk = _topk([[0, 1], [0, 1], [0, 2], [0, 2],      # G0: h0 1.0, h1 .5, h2 .5
                  [1, 2], [1, 2], [1, 3], [0, 3],      # G1: h0 .25, h1 .75, h2 .5, h3 .5
                  [3, 2], [3, 2]])                     # G2: h3 1.0, h2 1.0
    groups = np.array([0] * 4 + [1] * 4 + [2] * 2)
    out = S.associations(topk, groups, ["G0", "G1", "G2"], 4, top_n=4, min_group=3, bootstrap=0)
    g0, g1, g2 = out
    assert (g0["images"], g0["ranked"], g2["ranked"]) == (4, True, False)
    d0 = {r["hashtag_id"]: r for r in g0["top"]}
    # G0 against G1 alone (G2 is too small): h0 1.0 - .25, h1 .5 - .75, h3 0 - .5, h2 .5 - .5 = 0 (left out)
    assert [r["hashtag_id"] for r in g0["top"]] == [0, 3, 1]
    assert d0[0]["abs_diff"] == pytest.approx(0.75) and d0[0]["rel_diff"] == pytest.approx(3.0)
    assert d0[1]["abs_diff"] == pytest.approx(-0.25) and d0[3]["rel_diff"] == pytest.approx(-1.0)
    # G2 (reported, not ranked) against the mean of G0 and G1
    d2 = {r["hashtag_id"]: r for r in g2["top"]}
    assert d2[3]["others_rate"] == pytest.approx(0.25) and d2[3]["abs_diff"] == pytest.approx(0.75)
    assert d2[2]["abs_diff"] == pytest.approx(0.5)
    assert g1["top"][0]["hashtag_id"] == 0 and g1["top"][0]["abs_diff"] == pytest.approx(-0.75)
    # a hashtag nobody else gets has no relative difference
    only = S.associations(_topk([[0]] * 3 + [[1]] * 3), np.array([0] * 3 + [1] * 3), ["a", "b"], 2,
                          min_group=1, bootstrap=0)
    assert only[0]["top"][0]["rel_diff"] is None and only[0]["top"][0]["abs_diff"] == 1.0


def test_bootstrap_intervals_cover_the_estimate_and_see_real_effects():
    rng = np.random.default_rng(0)
    n = 400
    groups = np.repeat([0, 1, 2], n)
    # hashtag 0: 50% in group 1, 20% elsewhere (a real effect); hashtag 1: 30% everywhere (none)
    p0 = np.where(groups == 1, 0.5, 0.2)
    has0, has1 = rng.random(3 * n) < p0, rng.random(3 * n) < 0.3
    topk = np.stack([np.where(has0, 0, 2), np.where(has1, 1, 3)], axis=1)
    out = S.associations(topk, groups, ["a", "b", "c"], 4, top_n=4, min_group=30, bootstrap=500, seed=1)
    b = {r["hashtag_id"]: r for r in out[1]["top"]}
    assert b[0]["significant"] and b[0]["ci_low"] > 0.2 and b[0]["ci_low"] < b[0]["abs_diff"] < b[0]["ci_high"]
    assert out[1]["top"][0]["hashtag_id"] == 0
    for g in out:
        for r in g["top"]:
            assert r["ci_low"] <= r["abs_diff"] <= r["ci_high"]
            if r["hashtag_id"] == 1:
                assert not r["significant"] and r["ci_high"] - r["ci_low"] < 0.15
    # the same seed gives the same intervals
    again = S.associations(topk, groups, ["a", "b", "c"], 4, top_n=4, min_group=30, bootstrap=500, seed=1)
    assert again == out


def test_attribute_groups_buckets_and_errors():
    g, names = S.attribute_groups(["3", "17", "", "25.5", "99", "n/a", "10"], "age", 10)
    assert names == ["0-10", "10-20", "20-30", "90-100"]
    assert g.tolist() == [0, 1, -1, 2, 3, -1, 1]
    g, names = S.attribute_groups(["b", "a", "b", "?"], "gender", None)
    assert names == ["a", "b"] and g.tolist() == [1, 0, 1, -1]
    with pytest.raises(SwagError, match=r"'abc' \(row 2\) is not a number"):
        S.attribute_groups(["5", "abc"], "age", 10)
    with pytest.raises(SwagError, match="buckets.years=10"):
        S.attribute_groups([str(i) for i in range(80)], "years", None)


def test_manifest_csv_and_jsonl_and_their_errors(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("path,group\nimg/a.jpg,A\n")
    (tmp_path / "m.jsonl").write_text('{"path": "img/a.jpg", "group": "A", "age": 31}\n\n')
    for name in ("m.csv", "m.jsonl"):
        man = F.read_manifest(str(tmp_path / name))
        assert man.column("group", "x") == ["A"]
        split = F.manifest_split(man, "path")
        assert split.items == [str(tmp_path / "img" / "a.jpg")]
    assert F.read_manifest(str(tmp_path / "m.jsonl")).column("age", "x") == ["31"]
    with pytest.raises(SwagError, match="has no column 'skin'.*it has: path, group"):
        F.read_manifest(str(tmp_path / "m.csv")).column("skin", "associations.attributes")
    (tmp_path / "bad.csv").write_text("path,group\nimg/a.jpg,A\nimg/missing.jpg,B\n")
    with pytest.raises(SwagError, match="1 of 2 images not found.*row 2"):
        F.manifest_split(F.read_manifest(str(tmp_path / "bad.csv")), "path")
    (tmp_path / "bad.jsonl").write_text('{"path": "a"}\n[1, 2]\n')
    with pytest.raises(SwagError, match="bad.jsonl:2: not a JSON object"):
        F.read_manifest(str(tmp_path / "bad.jsonl"))
    with pytest.raises(SwagError, match="no such file"):
        F.read_manifest(str(tmp_path / "nope.csv"))


# -- the synthetic world with a real model ---------------------------------------------------------------------
def _recipe(out, checkpoint, manifest, *sets):
    from swagcli import recipes

    return recipes.load("fairness", flags={"out": str(out)}, overrides=[
        f"source.checkpoint={checkpoint}", f"data.manifest={manifest}", "associations.attributes=[group]",
        "data.workers=0", *sets])


@pytest.fixture(scope="module")
def planted_run(tiny_world, tiny_pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("fairness") / "planted"
    res = F.run(_recipe(out, tiny_pretrained["run_dir"], tiny_world["world"] / "groups" / "manifest.csv"))
    return res, json.loads((tiny_world["world"] / "world.json").read_text())


def _group(res, name):
    return next(g for g in res["associations"]["attributes"]["group"]["groups"] if g["group"] == name)


def test_planted_association_is_found(planted_run, tiny_pretrained):
    res, world = planted_run
    from swagcli.evaluate.transfer import load_source
    from swagcli.recipes import SourceSpec

    vocab = load_source(SourceSpec(checkpoint=tiny_pretrained["run_dir"])).vocab
    planted = vocab.tag_to_id[world["groups"]["planted_tag"]]
    gp = world["groups"]["planted_group"]
    top = _group(res, gp)["top"][0]
    # the planted group's first-ranked hashtag is the planted concept's, more often predicted, and the
    # interval excludes zero
    assert top["hashtag_id"] == planted, [(r["hashtag"], r["abs_diff"]) for r in _group(res, gp)["top"][:5]]
    assert top["abs_diff"] > 0.15 and top["ci_low"] > 0 and top["significant"]
    effect = top["abs_diff"]
    for name in world["groups"]["groups"]:
        if name == gp:
            continue
        g = _group(res, name)
        # the other groups see the mirror image (less often than the average of the rest: sign -)
        mirror = next(r for r in g["top"] if r["hashtag_id"] == planted)
        assert mirror["abs_diff"] < 0
        # and nothing of the planted effect's size of their own
        own = [r for r in g["top"] if r["hashtag_id"] != planted]
        assert max(abs(r["abs_diff"]) for r in own) < effect / 2, own[:3]


def test_no_planted_size_association_in_a_world_without_one(planted_run, tiny_pretrained, tmp_path):
    """The same world with planted_strength 0: no group shows an association of half the planted size."""
    from swagcli import recipes
    from swagcli.prep import synth

    res, _ = planted_run
    effect = max(_group(res, g["group"])["top"][0]["abs_diff"]
                 for g in res["associations"]["attributes"]["group"]["groups"])
    world = tmp_path / "null-world"
    synth.run(recipes.load("synth", REPO / "recipes/synth/tiny.yaml", flags={"out": str(world)},
                           overrides=["planted_strength=0"]))
    null = F.run(_recipe(tmp_path / "null", tiny_pretrained["run_dir"], world / "groups" / "manifest.csv",
                         "geography.enabled=false"))
    for g in null["associations"]["attributes"]["group"]["groups"]:
        assert g["ranked"]
        assert max(abs(r["abs_diff"]) for r in g["top"]) < effect / 2, g["top"][:3]


def test_geography_on_the_world_with_a_user_mapping(planted_run, tiny_world, tiny_pretrained, tmp_path):
    res, world = planted_run
    geo = res["geography"]
    assert geo["mapping"] == "wordnet" and not geo["unreached_classes"]
    assert {c["country"] for c in geo["countries"]} == set(world["countries"])
    assert sum(c["images"] for c in geo["countries"]) == res["images"]
    # the per-country numbers are the per-(country, class) cells summed
    for c in geo["countries"]:
        cells = [r for r in geo["class_accuracy"] if r["country"] == c["country"]]
        assert sum(r["correct"] for r in cells) == c["correct"] and c["ci_low"] <= c["accuracy"] <= c["ci_high"]
    assert geo["overall"] > 3 / len(world["downstream"]["classes"])  # far above chance
    # the user's own map (one line per class, '#' optional), built from the world's ground truth, gives
    # the same predictions as WordNet's map of the same hashtags
    lines = [f"{c['wnid']}\t" + " ".join("#" + t for t in c["expected_tags"]) + " #notatag"
             for c in world["downstream"]["classes"]]
    (tmp_path / "map.tsv").write_text("\n".join(lines) + "\n")
    user = F.run(_recipe(tmp_path / "user", tiny_pretrained["run_dir"], tiny_world["world"] / "groups" / "manifest.csv",
                         f"geography.mapping={tmp_path / 'map.tsv'}", "associations.enabled=false"))
    assert user["geography"]["unknown_hashtags"] == ["notatag"]
    assert user["geography"]["class_hashtags"] == geo["class_hashtags"]
    assert user["geography"]["countries"] == geo["countries"]
    assert "associations" not in user


class _Html(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a["src"])
        for k in ("src", "href"):
            if a.get(k) and not a[k].startswith("data:"):
                self.external.append(a[k])
        if tag in ("script", "link"):
            self.external.append(tag)


def test_report_files_and_self_contained_html(planted_run):
    from PIL import Image

    res, _ = planted_run
    out = Path(res["out"])
    for name in ("report.html", "fairness.json", "associations.csv", "countries.csv", "eighty_rule.csv",
                 "country_class_accuracy.csv", "associations_group.png", "countries.png", "eighty_rule.png",
                 "swag.json", "recipe.yaml"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "fairness.json").read_text())
    assert doc["images"] == res["images"] and set(doc["figures"]) == {"associations: group",
                                                                       "accuracy per country", "80% rule"}
    with open(out / "associations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["group"] for r in rows} == {"A", "B", "C"} and len(rows) == 3 * 20
    page = (out / "report.html").read_text()
    p = _Html()
    p.feed(page)
    assert not p.external and len(p.imgs) == 3 and p.tags.count("table") >= 5
    for src in p.imgs:  # every figure is an inline PNG that decodes
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and img.size[0] > 300
    top = _group(res, "B")["top"][0]
    assert f"#{top['hashtag']}" in page and "80% rule" in page


def test_cli_fairness_and_its_errors(swag, tiny_world, tiny_pretrained, tmp_path):
    manifest = tiny_world["world"] / "groups" / "manifest.csv"
    ck = tiny_pretrained["run_dir"]
    res = swag("fairness", ck, manifest, "-a", "group", "-o", tmp_path / "f", "--set", "associations.bootstrap=50",
               "--set", "data.workers=0", check=True)
    assert "Associations by group" in res.stdout and "accuracy per country" in res.stdout
    assert (tmp_path / "f" / "report.html").is_file()
    bad = [(["-a", "skin"], "has no column 'skin'"),
           ([], "associations.attributes: name the manifest columns"),
           (["-a", "group", "--set", "geography.country_column=nation"], "--no-geography"),
           (["-a", "group", "--no-geography", "--no-associations"], "nothing to do")]
    for args, msg in bad:
        r = swag("fairness", ck, manifest, "-o", tmp_path / "e", *args)
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    r = swag("fairness", ck, tmp_path / "none.csv", "-a", "group", "-o", tmp_path / "e")
    assert r.returncode == 2 and "no such file" in r.stderr
    assert not (tmp_path / "e").exists()  # nothing written for bad input


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (make test installs it)")
def test_report_renders_in_headless_chromium(planted_run, tmp_path):
    """A browser draws the report: the page is long, and the inline figures' bar colours are on it."""
    from PIL import Image

    res, _ = planted_run
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,3000", f"--screenshot={shot}", (Path(res["out"]) / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.shape[:2] == (3000, 1200)

    def share(rgb):
        return float((np.abs(px - np.array(rgb)).sum(axis=2) < 30).mean())

    assert share((31, 119, 180)) > 1e-3  # tab:blue: positive differences (associations chart)
    assert share((214, 39, 40)) > 1e-3  # tab:red: negative differences
    assert share((44, 160, 44)) > 0 or share((86, 179, 86)) > 0  # the per-country bars (alpha 0.8)
    assert share((255, 255, 255)) < 0.95  # not a blank page
