"""`swag findings` end to end on the CI suite: arms shared between studies run once, a rerun
recomputes nothing, the report (markdown, PNGs, JSON) says what produced it."""

from __future__ import annotations

import json

from swagcli.findings.runner import run
from tests.findings.conftest import CI_SUITE


def test_shared_arms_run_once_and_the_report_is_complete(ci_findings):
    suite, root, doc, logs = ci_findings
    out = root / "out"
    # softmax (= init's pretrained = zeroshot's pretrained), bce, random weights: 3 runs x 2
    # seeds; bce shares softmax's sample plan; sampling-tail-ci: 3 arms x 2 seeds on a world of
    # its own (made once, beside the suite's, with its own vocabulary)
    assert len(list((out / "runs").iterdir())) == 12
    assert len(list((out / "plans").iterdir())) == 2 + 6
    assert sum("· seed" in line for line in logs) == 12
    (own,) = list((out / "worlds").iterdir())
    assert (own / "world" / "world.json").is_file() and (own / "vocab" / "vocab.json").is_file()
    assert json.loads((own / "world" / "world.json").read_text())["concepts"][0]["visual"]["glyph"] > 0
    assert "glyph" not in json.loads((out / "world" / "world.json").read_text())["concepts"][0]["visual"]
    assert sum(line.startswith("synthetic world:") for line in logs) == 2
    runs = {(r["study"], r["arm"], r["seed"]): r for r in doc["runs"]}
    shared = runs[("loss", "softmax", 1)]
    assert shared["run"] == runs[("init", "pretrained", 1)]["run"] == runs[("zeroshot", "pretrained", 1)]["run"]
    assert {"probe", "probe@0.01", "probe@0.1", "zeroshot", "zeroshot_platt"} <= set(shared["metrics"])
    assert set(runs[("init", "random", 0)]["metrics"]) == {"probe", "probe@0.01", "probe@0.1"}
    assert all(0 <= v <= 1 for r in doc["runs"] for v in r["metrics"].values())
    # held-out hashtag top-1 on head / tail images: only where the plan holds images out
    assert {"probe", "head_top1", "tail_top1"} <= set(runs[("sampling-tail-ci", "natural", 0)]["metrics"])
    assert "tail_top1" not in shared["metrics"]
    by = {s["name"]: s for s in doc["studies"]}
    assert [e["expect"] for e in by["init"]["expect"]] == ["pretrained > random"] * 3  # each metric
    (z,) = by["zeroshot"]["expect"]
    assert z["diffs"] == [runs[("zeroshot", "pretrained", s)]["metrics"]["zeroshot_platt"]
                          - runs[("zeroshot", "pretrained", s)]["metrics"]["zeroshot"] for s in (0, 1)]

    for d in (out / "report", root / "docs"):
        md = (d / "findings.md").read_text()
        for name in ("loss", "init", "zeroshot", "directions"):
            assert (d / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
            assert f"({name}.png)" in md
        assert "WSL §2.3" in md and "SWAG Table 2" in md and "SWAG Table 3" in md
        assert "| softmax > bce (probe) |" in md and "swag 0.1.0" in md
        assert "| sqrt > natural (tail_top1) |" in md and "World of its own, over the one above: concept_looks=glyph" in md
        assert "Recipe: `recipes/ablations/loss.yaml`" in md or "Recipe: `/" in md
        assert json.loads((d / "findings.json").read_text())["runs"] == doc["runs"]


def test_rerun_recomputes_nothing(ci_findings):
    suite, root, doc, _ = ci_findings
    marks = {p: p.stat().st_mtime_ns for p in (root / "out").glob("**/done.json")}
    logs: list[str] = []
    again = run(suite, CI_SUITE.parent, log=logs.append)
    assert again["runs"] == doc["runs"]  # seconds too: the compute behind each result
    results = [line for line in logs if "probe" in line]
    assert len(results) == 12 and all(line.endswith("(cached)") for line in results)
    assert marks == {p: p.stat().st_mtime_ns for p in (root / "out").glob("**/done.json")}


def test_cli_prints_the_directions(ci_findings, swag):
    """`swag findings` on the cached suite: the table of directions and where the report went."""
    _, root, doc, _ = ci_findings
    res = swag("findings", "-r", CI_SUITE, "-o", root / "out", "--study", "loss", check=True)
    assert "softmax > bce (probe)" in res.stdout and "holds" in res.stdout
    assert "init" not in res.stdout.split("Findings:")[1].split("wrote")[0]  # --study loss only
    assert str(root / "out" / "report" / "findings.md") in res.stdout.replace("\n", "")
    # the report already there keeps its other studies, each saying when it was measured
    kept = json.loads((root / "out" / "report" / "findings.json").read_text())
    assert [s["name"] for s in kept["studies"]] == [s["name"] for s in doc["studies"]]
    assert all(("measured" in s) == (s["name"] != "loss") for s in kept["studies"])
    assert sorted((r["study"], r["arm"], r["seed"], r["run"]) for r in kept["runs"]) == sorted(
        (r["study"], r["arm"], r["seed"], r["run"]) for r in doc["runs"])
    assert "Measured apart from the rest of this report: " in (root / "out" / "report" / "findings.md").read_text()
    # one it cannot read is refused, not replaced
    good = (root / "out" / "report" / "findings.json").read_text()
    (root / "out" / "report" / "findings.json").write_text("{not json")
    res = swag("findings", "-r", CI_SUITE, "-o", root / "out", "--study", "loss")
    assert res.returncode == 2 and "not a findings report" in res.stderr and res.stderr.count("\n") == 1
    assert (root / "out" / "report" / "findings.json").read_text() == "{not json"
    (root / "out" / "report" / "findings.json").write_text(good)
