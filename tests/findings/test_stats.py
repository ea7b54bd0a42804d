"""`swag findings` without training: expectations parse, paired differences and verdicts by hand,
every shipped study validates, and bad suites fail in one line before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swagcli import recipes as R
from swagcli.errors import SwagError
from swagcli.findings.runner import Study, compare, load_studies, paired, plan_jobs, table

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "recipes" / "ablations" / "findings.yaml"


def test_parse_expect_and_metrics():
    assert R.parse_expect("sqrt > natural") == (("sqrt", None), ("natural", None))
    assert R.parse_expect(" a[zeroshot_platt]>a[zeroshot] ") == (("a", "zeroshot_platt"), ("a", "zeroshot"))
    assert R.metric_spec("probe") == ("probe", 1.0) and R.metric_spec("probe@0.01") == ("probe", 0.01)
    for bad in ("sqrt >= natural", "sqrt", "a[top5] > b", "A > b"):
        with pytest.raises(ValueError):
            R.parse_expect(bad)
    with pytest.raises(ValueError):
        R.metric_spec("probe@2")


def test_paired_verdicts_by_hand():
    r = paired([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])  # diffs .1 .2 .3: mean .2, sd .1, se .0577
    assert r["mean"] == pytest.approx(0.2) and r["std"] == pytest.approx(0.1)
    assert r["se"] == pytest.approx(0.1 / 3 ** 0.5) and (r["wins"], r["n"], r["verdict"]) == (3, 3, "holds")
    r = paired([0.6, 0.4, 0.62], [0.5, 0.5, 0.5])  # diffs .1 -.1 .12: mean .04 < 2 se
    assert r["verdict"] == "weak" and r["wins"] == 2
    assert paired([0.5, 0.4], [0.5, 0.5])["verdict"] == "fails"
    # the opposite direction, at least two standard errors clear: told apart from no difference
    assert paired([0.4, 0.3, 0.2], [0.5, 0.5, 0.5])["verdict"] == "reversed"
    assert paired([0.4, 0.6, 0.38], [0.5, 0.5, 0.5])["verdict"] == "fails"  # mean -.04 < 2 se
    assert paired([0.49], [0.5])["verdict"] == "fails"  # one seed: no clear opposite
    assert paired([0.5], [0.5])["verdict"] == "fails"  # no difference is no direction
    assert paired([0.51], [0.5])["verdict"] == "holds"


def _study(**kw):
    data = {"title": "t", "paper": {"source": "WSL", "claim": "c", "values": {"a": 70.0}},
            "arms": [{"name": "a"}, {"name": "b", "x": 10}], "expect": ["a > b"], **kw}
    return Study("s", Path("s.yaml"), R.validate("ablation", data))


def test_compare_pairs_by_seed_and_table():
    st = _study(metrics=["probe", "probe@0.1"])
    results = [{"study": "s", "arm": arm, "seed": seed, "metrics": {"probe": v, "probe@0.1": v - 0.2}}
               for arm, vals in (("a", [0.8, 0.7, 0.9]), ("b", [0.7, 0.75])) for seed, v in enumerate(vals)]
    rows = compare(st, results)
    assert [(r["metric_a"], r["n"]) for r in rows] == [("probe", 2), ("probe@0.1", 2)]  # seed 2 has no pair
    assert rows[0]["diffs"] == pytest.approx([0.1, -0.05])
    t = table(st, results)
    a = next(r for r in t if r["arm"] == "a" and r["metric"] == "probe")
    assert a["mean"] == pytest.approx(0.8) and a["paper"] == 70.0 and len(a["values"]) == 3
    st2 = _study(metrics=["zeroshot", "zeroshot_platt"], expect=["a[zeroshot_platt] > a[zeroshot]"])
    res2 = [{"study": "s", "arm": "a", "seed": 0, "metrics": {"zeroshot": 0.2, "zeroshot_platt": 0.3}}]
    (row,) = compare(st2, res2)
    assert (row["metric_a"], row["metric_b"], round(row["mean"], 6)) == ("zeroshot_platt", "zeroshot", 0.1)


@pytest.mark.parametrize("data, needle", [
    ({"expect": ["a > c"]}, "no arm named 'c'"),
    ({"arms": [{"name": "a"}, {"name": "a"}]}, "arm names repeat"),
    ({"metrics": ["top5"]}, "unknown metric"),
    ({"arms": [{"name": "A b"}]}, "arms.0.name"),
])
def test_bad_study_is_one_line(data, needle):
    base = {"title": "t", "paper": {"source": "s", "claim": "c"}, "arms": [{"name": "a"}, {"name": "b"}],
            "expect": ["a > b"]}
    with pytest.raises(SwagError, match=needle):
        R.validate("ablation", {**base, **data}, "x.yaml")


def test_shipped_suite_plans_every_job(tmp_path):
    """Every shipped study resolves to valid sample / pretrain / probe recipes; the shared
    baseline is one run; evaluation needs are merged per run."""
    suite = R.load("findings", SUITE, flags={"out": str(tmp_path)})
    studies = load_studies(suite, SUITE.parent)
    assert {s.name for s in studies} == {"sampling", "sampling-tail", "noise", "loss", "init", "zeroshot", "mae",
                                         "labels"}
    jobs = plan_jobs(suite, studies, tmp_path, seeds=2)
    runs = {j.keys["run"] for j in jobs}
    base = {(j.study, j.arm): j.keys["run"] for j in jobs if j.seed == 0}
    shared = {base[("sampling", "head_tail_0.7")], base[("noise", "noise_0")], base[("loss", "softmax")],
              base[("init", "pretrained")], base[("zeroshot", "pretrained")], base[("mae", "random_init")],
              base[("labels", "hashtags")]}
    assert len(shared) == 1
    # sampling 7, sampling-tail 6 (a world of its own), noise +2, loss +1, random init, MAE init, labels +2
    assert len(runs) == 2 * (7 + 6 + 2 + 1 + 1 + 1 + 2)
    tail = [j for j in jobs if j.study == "sampling-tail"]
    (own,) = {j.world_dir for j in tail}
    assert own.parent.parent == tmp_path / "worlds" and {j.world_dir for j in jobs} == {own, tmp_path / "world"}
    assert all(j.sample["vocab"] == str(own.parent / "vocab") and j.sample["holdout"] == 0.05 for j in tail)
    assert all(j.world["concept_looks"] == "glyph" and j.world["posts"] == suite.world["posts"] for j in tail)
    assert not {j.keys["run"] for j in tail} & {j.keys["run"] for j in jobs if j.study != "sampling-tail"}
    # an arm with its own vocabulary plans from it: one per labels setting, shared by its seeds
    vocabs = {j.arm: j.sample["vocab"] for j in jobs if j.study == "labels"}
    assert vocabs["hashtags"] == str(tmp_path / "vocab") and len(set(vocabs.values())) == 3
    cap = next(j for j in jobs if j.study == "labels" and j.arm == "caption")
    assert cap.vocab["labels"] == "caption" and "/vocabs/" in cap.sample["vocab"]
    j = next(j for j in jobs if j.keys["run"] in shared)
    assert j.probe["fractions"] == [0.01, 0.1, 1.0] and j.zeroshot is not None
    assert not any(tmp_path.iterdir())  # planning writes nothing


@pytest.mark.parametrize("study, needle", [
    ({"metrics": ["probe", "tail_top1"]}, "metric tail_top1 needs held-out images"),
    ({"world": {"concept_looks": "glyf"}}, "world: concept_looks"),
    ({"world": {"downstream_tail": 1.5}}, "world: downstream_tail"),
    ({"sample": {"strategy": "sqrtt"}}, "sample: strategy"),
])
def test_bad_study_world_or_metric_fails_when_planned(tmp_path, study, needle):
    suite = R.load("findings", SUITE, flags={"out": str(tmp_path)})
    st = R.validate("ablation", {"title": "t", "paper": {"source": "s", "claim": "c"},
                                 "arms": [{"name": "a"}, {"name": "b"}], **study}, "x.yaml")
    with pytest.raises(SwagError, match=needle):
        plan_jobs(suite, [Study("x", tmp_path / "x.yaml", st)], tmp_path)
    assert not any(tmp_path.iterdir())


def test_bad_arm_fails_before_anything_runs(tmp_path, swag):
    study = tmp_path / "typo.yaml"
    study.write_text("kind: ablation\ntitle: t\npaper: {source: s, claim: c}\n"
                     "arms: [{name: a, sample: {strategy: sqrtt}}, {name: b}]\nexpect: ['a > b']\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.read_text().replace(
        "studies: [sampling, sampling-tail, noise, loss, init, zeroshot, mae, labels]", f"studies: [{study}]"))
    res = swag("findings", "-r", suite, "-o", tmp_path / "out")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "arms[a].sample: strategy" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()
    res = swag("findings", "-o", tmp_path / "out", "--study", "nope")
    assert res.returncode == 2 and "--study nope: not a study of this suite" in res.stderr


def test_stages_hash_as_resolved(tmp_path):
    """An MAE stage that inherits the suite's samples hashes like one that spells them out."""
    from swagcli.findings.runner import _canonical

    suite = R.load("findings", SUITE, flags={"out": str(tmp_path)})
    stage = {"objective": "mae", "mae": {"decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 4}}
    implicit = {**suite.pretrain, "stages": [stage, {"objective": "wsp"}]}
    explicit = {**suite.pretrain, "stages": [{**stage, "samples": suite.pretrain["samples"]}, {"objective": "wsp"}]}
    assert _canonical("pretrain", implicit, "x") == _canonical("pretrain", explicit, "x")
    other = {**suite.pretrain, "stages": [{**stage, "samples": 640}, {"objective": "wsp"}]}
    assert _canonical("pretrain", other, "x") != _canonical("pretrain", implicit, "x")


def test_captions_suite_plans(tmp_path):
    """recipes/ablations/findings-captions.yaml (the labels and balancing studies) resolves; its
    head/tail baseline is the labels study's hashtags arm."""
    path = SUITE.parent / "findings-captions.yaml"
    suite = R.load("findings", path, flags={"out": str(tmp_path)})
    jobs = plan_jobs(suite, load_studies(suite, path.parent), tmp_path)
    base = {(j.study, j.arm): j.keys["run"] for j in jobs if j.seed == 0}
    assert base[("labels", "hashtags")] == base[("balancing", "head_tail_0.7")]
    assert len({j.keys["run"] for j in jobs}) == 3 * 5


def test_a_kept_studys_verdicts_follow_todays_rule(tmp_path):
    """`--study X` keeps the report's other studies: their verdicts are read again from their
    per-seed differences by the rule the new rows follow (one rule in one report)."""
    from swagcli.findings.report import merged

    old_row = {"expect": "a > b", "metric_a": "probe", "metric_b": "probe", "mean": -0.2, "std": 0.1,
               "se": 0.0577, "n": 3, "wins": 0, "diffs": [-0.1, -0.2, -0.3], "verdict": "fails"}
    prev = {"created": "then", "world": {}, "runs": [], "studies": [{"name": "old", "seeds": 3, "expect": [old_row]}]}
    (tmp_path / "findings.json").write_text(json.dumps(prev))
    doc = {"world": {}, "runs": [], "studies": [{"name": "new", "seeds": 3, "expect": []}]}
    got = merged(doc, tmp_path, ["old", "new"])
    (row,) = got["studies"][0]["expect"]
    assert row["verdict"] == "reversed" and row["diffs"] == [-0.1, -0.2, -0.3]
    assert row["mean"] == pytest.approx(-0.2) and row["wins"] == 0 and row["metric_a"] == "probe"


@pytest.mark.parametrize("bad", [
    {"studies": [{"name": "old", "expect": [{"diffs": ["x", None]}]}]},  # diffs that are no numbers
    {"studies": [{"name": "old", "expect": ["row"]}]},
    {"studies": [{"name": "old", "expect": []}], "runs": ["run"]},
    {"studies": [{"name": "old", "expect": []}], "world": ["w"]},
    {"studies": [{"name": "old", "expect": []}], "runs": [{"study": "old"}]},  # a run without its key
])
def test_a_damaged_kept_report_is_refused_in_one_line(tmp_path, bad):
    from swagcli.findings.report import merged

    (tmp_path / "findings.json").write_text(json.dumps(bad))
    doc = {"world": {}, "runs": [], "studies": [{"name": "new", "seeds": 3, "expect": []}]}
    with pytest.raises(SwagError, match="not a findings report"):
        merged(doc, tmp_path, ["old", "new"])
