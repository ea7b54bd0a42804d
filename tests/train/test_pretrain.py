"""`swag pretrain` on the tiny world, on CPU: it learns; 2-process gloo DDP equals one process on
the same global batch; stop-and-resume reproduces the uninterrupted run; a non-finite loss
stops with the last good checkpoint; every shipped recipe builds its model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from swagcli import recipes
from swagcli.errors import SwagError
from swagcli.launch import run_local
from swagcli.train import checkpoint as ck
from swagcli.train.dist import DistEnv
from swagcli.train.engine import request_stop, train
from swagcli.train.models import build_model

REPO = Path(__file__).resolve().parents[2]


def tiny_recipe(world, out, **over):
    sets = [f"data.plan={world['plan']}", "data.shards=[" + ",".join(world["shards"]) + "]",
            "data.workers=0", "data.shuffle_buffer=200", "log_every=1", "batch_size=32",
            "checkpoint_every=1000"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return recipes.load("pretrain", REPO / "recipes/pretrain/test_vit.yaml", flags={"out": str(out)},
                        overrides=sets)


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]
    return [r["loss"] for r in rows if "loss" in r]


def test_tiny_vit_learns_the_world(tiny_pretrained):
    res = tiny_pretrained  # 600 steps of 64 samples, lr 0.003 (tests/conftest.py)
    ls = losses(res["run_dir"])
    assert res["status"] == "finished" and res["step"] == 600
    assert sum(ls[-10:]) / 10 < 0.6 * sum(ls[:5]) / 5  # loss falls clearly
    chance = 1 / 66
    assert res["eval_images"] > 100 and res["eval_top1"] > 10 * chance, res
    # held-out top-1 split by head / tail hashtag images (an image with both is in neither)
    assert 0 < res["eval_head_images"] and 0 < res["eval_tail_images"]
    assert res["eval_head_images"] + res["eval_tail_images"] <= res["eval_images"]
    assert res["eval_head_top1"] > res["eval_tail_top1"] > chance, res  # the head is learned first
    meta = ck.load_meta(Path(res["checkpoint"]))
    assert meta["step"] == 600 and meta["hashtags"] == 66
    model = build_model("test_vit", 66, {"img_size": 32, "patch_size": 8})
    ck.load_weights(model, Path(res["checkpoint"]))  # weights + hashtag head load back
    st = ck.load_train_state(Path(res["checkpoint"]))  # weights_only
    assert set(st) >= {"optimizer", "scheduler", "scaler", "step", "samples", "streams", "rng"}
    assert (Path(res["checkpoint"]) / "vocab.json").is_file() and (Path(res["run_dir"]) / "recipe.yaml").is_file()


def test_two_process_ddp_equals_one_process(tiny_world, tmp_path):
    # 2 processes x 1 worker x micro 16  ==  1 process x 2 workers x micro 16 x 2 accumulation:
    # the same streams (rank*workers + worker) make the same global batches
    steps = 5
    ddp = tiny_recipe(tiny_world, tmp_path / "ddp", samples=32 * steps, micro_batch=16,
                      **{"data.workers": 1, "launcher.local.processes": 2})
    one = tiny_recipe(tiny_world, tmp_path / "one", samples=32 * steps, micro_batch=16, **{"data.workers": 2})
    res = run_local(train, ddp, 2, tmp_path / "ddp")
    ref = train(one, DistEnv(), progress=False)
    assert res["step"] == ref["step"] == steps
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "one"), rel=1e-4, abs=1e-5)
    a = build_model("test_vit", 66, {"img_size": 32, "patch_size": 8})
    b = build_model("test_vit", 66, {"img_size": 32, "patch_size": 8})
    ck.load_weights(a, Path(res["checkpoint"]))
    ck.load_weights(b, Path(ref["checkpoint"]))
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-5), n


def test_stop_and_resume_reproduces_the_run(tiny_world, tmp_path):
    full = tiny_recipe(tiny_world, tmp_path / "full", samples=32 * 8, **{"data.workers": 2})
    train(full, DistEnv(), progress=False)
    part = tiny_recipe(tiny_world, tmp_path / "part", samples=32 * 8, **{"data.workers": 2})
    first = train(part, DistEnv(), progress=False, on_step=lambda s: s == 3 and request_stop())
    assert first["status"] == "preempted" and first["step"] == 3
    second = train(part, DistEnv(), progress=False)
    assert second["resumed_from"].endswith("step-00000003") and second["step"] == 8
    assert losses(tmp_path / "part") == pytest.approx(losses(tmp_path / "full"), rel=1e-5)


def test_non_finite_loss_keeps_last_good_checkpoint(tiny_world, tmp_path):
    r = tiny_recipe(tiny_world, tmp_path / "nan", samples=32 * 30, checkpoint_every=1,
                    **{"optim.name": "sgd", "optim.lr": 1.0e6, "optim.warmup_fraction": 0})
    with pytest.raises(SwagError, match="non-finite loss .* last good checkpoint") as e:
        train(r, DistEnv(), progress=False)
    good = ck.latest(tmp_path / "nan" / "checkpoints")
    assert good is not None and str(good) in str(e.value)
    assert "\n" not in str(e.value)


def test_interrupted_checkpoint_write_leaves_previous(tiny_world, tmp_path):
    r = tiny_recipe(tiny_world, tmp_path / "run", samples=32 * 2, checkpoint_every=1)
    train(r, DistEnv(), progress=False)
    root = tmp_path / "run" / "checkpoints"
    (root / ".step-00000003.partial").mkdir()  # a crash mid-write
    (root / ".step-00000003.partial" / "model.safetensors").write_bytes(b"half")
    assert ck.latest(root).name == "step-00000002"
    assert ck.resolve(tmp_path / "run").name == "step-00000002"


PAPER = {"regnety_16gf": 83.6e6, "regnety_32gf": 145.0e6, "regnety_128gf": 644.8e6,
         "vit_b16": 86.6e6, "vit_l16": 304.3e6, "vit_h14": 632.0e6}


@pytest.mark.parametrize("path", sorted((REPO / "recipes/pretrain").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_pretrain_recipe_builds_its_model(path):
    r = recipes.load("pretrain", path)
    with torch.device("meta"):
        model = build_model(r.model.name, 1000, r.model.kwargs, r.model.pre_logits)
    n = sum(p.numel() for p in model.parameters())
    if path.stem in PAPER:  # SWAG Table 5 counts, with a 1k-class head
        extra = model.num_features ** 2 + model.num_features if r.model.pre_logits else 0
        assert abs(n - extra - PAPER[path.stem]) / PAPER[path.stem] < 0.02, n
    assert r.batch_size <= 8192
