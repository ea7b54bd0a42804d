"""Fault sweep: the plan against the shards. A deleted shard used to be filled in silently by
repeating the others (38% of a plan never seen); now every epoch's planned-versus-found account
stops such a run in one line, and a plan drawn from an img2dataset folder refuses to start."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.faults.conftest import one_line_error

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes/pretrain/test_vit.yaml"


def args(plan, out, shards=None, *extra):
    return ["pretrain", "-r", RECIPE, "--out", out, "--plan", plan, *(["--shards", shards] if shards else []),
            "--set", "batch_size=64", "--set", "log_every=5", "--set", "checkpoint_every=1000",
            "--set", "eval_samples=64", *extra]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_deleted_shard_stops_the_run(cli, tiny_world, tmp_path, workers):
    shards = tmp_path / "images"
    shards.mkdir()
    for s in tiny_world["shards"][:-1]:  # one of the four shards is gone
        shutil.copy(s, shards)
    err = one_line_error(cli(*args(tiny_world["plan"], tmp_path / "run", shards, "--set", f"data.workers={workers}")),
                         "the image shards hold", "of the plan's 5,000 samples", "missing")
    assert "was a shard deleted" in err
    res = tmp_path / "run" / "result.json"
    assert not res.exists() or json.loads(res.read_text())["account"][0]["missing"] > 1000


def test_a_whole_run_accounts_for_every_planned_sample(tiny_world, tiny_pretrained):
    acc = json.loads((Path(tiny_pretrained["run_dir"]) / "result.json").read_text())["account"]
    assert acc and acc[0]["epoch"] == 0 and acc[0]["missing"] == 0 and acc[0]["planned"] == acc[0]["plan"] == 5000


def test_a_plan_from_an_img2dataset_folder_refuses_a_missing_shard(cli, layouts, tmp_path):
    from swagcli import recipes
    from swagcli.prep import sample, vocab

    world, _ = layouts
    folder = tmp_path / "i2d"
    shutil.copytree(world / "img2dataset", folder)
    vocab.build(recipes.load("vocab", flags={"dumps": [str(world / "dumps")], "out": str(tmp_path / "v"),
                                             "head_min_images": 20}))
    sample.build(recipes.load("sample", flags={"vocab": str(tmp_path / "v"), "dumps": [str(folder)],
                                               "out": str(tmp_path / "plan"), "samples": 300,
                                               "fields.tags": "usertags"}))
    gone = sorted(folder.glob("*.tar"))[1]
    gone.unlink()
    one_line_error(cli(*args(tmp_path / "plan", tmp_path / "run", None, "--set", "data.resolution=16",
                             "--set", "model.kwargs.img_size=16")),
                   str(gone), "image shard missing", "of the plan's shards")
    assert not (tmp_path / "run" / "checkpoints").exists()
