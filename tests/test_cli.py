"""The `swag` command as a user meets it: help, version, one-line errors with exit code 2."""

from __future__ import annotations

import json

from swagcli import __version__


def test_help_lists_every_subcommand(swag):
    res = swag("--help")
    assert res.returncode == 0
    for cmd in ["vocab", "sample", "pretrain", "probe", "finetune", "zeroshot", "fairness", "synth", "demo",
                "findings", "recipe"]:
        assert cmd in res.stdout
    assert swag("--version").stdout.strip() == f"swag {__version__}"


def test_missing_dump_is_one_line(swag, tmp_path):
    res = swag("vocab", "build", tmp_path / "nope.jsonl", "--out", tmp_path / "o")
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such dump file"
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_bad_override_on_command_line(swag, tmp_path):
    res = swag("vocab", "build", "x", "--out", tmp_path, "--set", "min_count=zero")
    assert res.returncode == 2 and "min_count" in res.stderr and "Traceback" not in res.stderr


def test_vocab_build_canon_show(swag, tmp_path):
    dump = tmp_path / "d.tsv"
    dump.write_text("".join(f"p{i}\t#eggplant #aubergine #newyork\n" for i in range(3))
                    + "q1\t#brownbear\nq2\t#BrownBear #love\n")
    out = tmp_path / "v"
    res = swag("vocab", "build", dump, "--out", out, "--head-min-images", "3", check=True)
    assert "canonical hashtags" in res.stdout and str(out / "vocab.json") in res.stdout
    doc = json.loads((out / "vocab.json").read_text())
    assert sorted(h["name"] for h in doc["hashtags"]) == ["brownbear", "eggplant"]  # ties: the shorter tag names it
    res = swag("vocab", "canon", "#Eggplant", "aubergine", "#newyork", "--vocab", out, check=True)
    lines = res.stdout.splitlines()
    egg = next(l for l in lines if "#eggplant" in l)
    assert "eggplant.n.01 eggplant.n.02" in egg and "eggplant (id 1)" in egg  # brown_bear sorts first
    assert "dropped" in next(l for l in lines if "#newyork" in l)
    res = swag("vocab", "show", out, check=True)
    assert "brownbear" in res.stdout and "head (>= 3 images)" in res.stdout
    res = swag("vocab", "show", tmp_path)
    assert res.returncode == 2 and "no vocabulary here" in res.stderr



def test_vocab_report_counts_skips_per_format(swag, tmp_path):
    from pathlib import Path

    fixture = Path(__file__).parent / "data" / "yfcc100m_dataset-slice"
    dump = tmp_path / "d.jsonl"
    dump.write_text('{"id": "a", "hashtags": ["#salmon"]}\n{broken\n{"id": "b", "hashtags": []}\n')
    res = swag("vocab", "build", fixture, dump, "--out", tmp_path / "v", "--min-count", "1", check=True)
    rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]]
            for ln in res.stdout.splitlines() if ln.count("│") == 5}  # label, yfcc, jsonl, total
    assert rows["lines / records"] == ["6", "3", "9"]
    assert rows["skipped: videos (marker 1)"] == ["1", "-", "1"]
    assert rows["skipped: invalid JSON"] == ["-", "1", "1"]
    assert rows["skipped: no hashtags"] == ["1", "1", "2"]
    doc = json.loads((tmp_path / "v" / "vocab.json").read_text())
    assert doc["sources"]["formats"] == ["jsonl", "yfcc"] and doc["stats"]["by_format"]["yfcc"]["video"] == 1
    assert "brownbear" in {t for h in doc["hashtags"] for t in h["tags"]}  # brown+bear, joined
    res = swag("vocab", "canon", "brown+bear", "Brown Bear", check=True)
    assert res.stdout.count("#brownbear") == 2 and "brown_bear.n.01" in res.stdout
    res = swag("synth", "--out", tmp_path / "w", "--layout", "flickr")
    assert res.returncode == 2 and "layouts" in res.stderr and "Traceback" not in res.stderr
