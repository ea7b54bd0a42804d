"""`strategy: fsdp` on CPU with gloo (FSDP2): it trains as DDP does on the same global batch, its
sharded checkpoints resume exactly, on the number of processes that wrote them or on another, and
consolidate into the single file that evaluation and export read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from swagcli import recipes
from swagcli.launch import run_local
from swagcli.train import checkpoint as ck
from swagcli.train.engine import request_stop, train
from swagcli.train.models import build_model

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def fsdp_recipe(world, out, strategy="fsdp", **over):
    # 2 processes x micro 8 x accumulation 2 = 32; clipping on: the loop's whole update path
    sets = [f"data.plan={world['plan']}", "data.shards=[" + ",".join(world["shards"]) + "]",
            "data.workers=1", "data.shuffle_buffer=200", "log_every=1", "batch_size=32", "micro_batch=8",
            f"samples={32 * STEPS}", "checkpoint_every=1000", "eval_samples=64", "optim.grad_clip=1.0",
            f"strategy={strategy}", "launcher.local.processes=2"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return recipes.load("pretrain", REPO / "recipes/pretrain/test_vit.yaml", flags={"out": str(out)},
                        overrides=sets)


def stop_after_3(recipe, env, **kw):
    """A run preempted after its third update (as SLURM's signal would stop it)."""
    return train(recipe, env, **kw, on_step=lambda s: s == 3 and request_stop())


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in open(Path(run) / "metrics.jsonl") if '"loss"' in line]


def weights(ckpt) -> dict:
    m = build_model("test_vit", 66, {"img_size": 32, "patch_size": 8})
    ck.load_weights(m, Path(ckpt))  # the consolidated file, strictly: every key, every shape
    return m.state_dict()


@pytest.fixture(scope="module")
def pair(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    ddp = run_local(train, fsdp_recipe(tiny_world, root / "ddp", "ddp"), 2, root / "ddp")
    fsdp = run_local(train, fsdp_recipe(tiny_world, root / "fsdp"), 2, root / "fsdp")
    return ddp, fsdp


def test_fsdp_equals_ddp_on_the_same_global_batch(pair):
    ddp, fsdp = pair
    assert ddp["status"] == fsdp["status"] == "finished" and fsdp["step"] == STEPS
    assert losses(fsdp["run_dir"]) == pytest.approx(losses(ddp["run_dir"]), abs=1e-4)
    assert fsdp["eval_top1"] == pytest.approx(ddp["eval_top1"], abs=1e-6)  # evaluation in lockstep
    a, b = weights(fsdp["checkpoint"]), weights(ddp["checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    ckpt = Path(fsdp["checkpoint"])
    shards = sorted((ckpt / "sharded").iterdir())
    assert [p.suffix for p in shards] == [".safetensors"] * 2  # one per process, no pickled .metadata
    assert ck.load_meta(ckpt)["sharded"] == {"processes": 2} and ck.load_meta(ckpt)["strategy"] == "fsdp"


@pytest.fixture(scope="module")
def stopped(tiny_world, tmp_path_factory):
    """An fsdp run of 2 processes preempted after step 3 (each test resumes a copy)."""
    run = tmp_path_factory.mktemp("fsdp-stopped") / "run"
    first = run_local(stop_after_3, fsdp_recipe(tiny_world, run), 2, run)
    assert first["status"] == "preempted" and first["step"] == 3
    return run


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_sharded_stop_and_resume_equals_the_uninterrupted_run(pair, stopped, tiny_world, tmp_path):
    _, fsdp = pair
    run = _copy(stopped, tmp_path / "run")
    second = run_local(train, fsdp_recipe(tiny_world, run), 2, run)
    assert second["resumed_from"].endswith("step-00000003") and second["step"] == STEPS
    assert losses(run) == pytest.approx(losses(fsdp["run_dir"]), rel=1e-5)
    a, b = weights(second["checkpoint"]), weights(fsdp["checkpoint"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_a_checkpoint_sharded_by_two_processes_resumes_on_one(pair, stopped, tiny_world, tmp_path):
    """Written by 2 processes x 1 worker, resumed by 1 process x 2 workers (the same streams make
    the same global batches): the shards are resharded on load, the run ends as it would have."""
    _, fsdp = pair
    run = _copy(stopped, tmp_path / "run")
    one = fsdp_recipe(tiny_world, run, **{"launcher.local.processes": 1, "data.workers": 2})
    res = run_local(train, one, 1, run)
    assert res["status"] == "finished" and res["resumed_from"].endswith("step-00000003")
    assert res["streams"]["resumed_on"]["was"]["processes"] == 2
    assert losses(run) == pytest.approx(losses(fsdp["run_dir"]), rel=1e-5)
    a, b = weights(res["checkpoint"]), weights(fsdp["checkpoint"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert ck.load_meta(Path(res["checkpoint"]))["sharded"] == {"processes": 1}


def test_a_damaged_or_missing_shard_is_named_and_never_resumed_from(stopped, tmp_path):
    run = _copy(stopped, tmp_path / "run")
    ckpt = run / "checkpoints" / "step-00000003"
    shard = sorted((ckpt / "sharded").iterdir())[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    skipped: list = []
    assert ck.latest(run / "checkpoints", resume=True, skipped=skipped) is None
    assert skipped[0][1] == str(shard) and "truncated" in skipped[0][2]
    shard.unlink()
    assert ck.damage(ckpt, resume=True) == (str(ckpt / "sharded"), "1 of its 2 shard files")
    assert ck.damage(ckpt) is None  # evaluation reads the consolidated file, which is whole


def test_fsdp_with_fp16_is_refused_in_one_line(tiny_world, tmp_path):
    from swagcli.errors import SwagError
    from swagcli.train.dist import DistEnv

    r = fsdp_recipe(tiny_world, tmp_path / "run", precision="fp16", **{"launcher.local.processes": 1})
    with pytest.raises(SwagError, match="strategy fsdp: precision fp16 is not supported"):
        train(r, DistEnv(), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_pickle_planted_in_a_sharded_checkpoint_never_runs(stopped, tmp_path):
    """torch.distributed.checkpoint's own reader unpickles ``.metadata``: swag's never reads one."""
    import pickle

    from swagcli.recipes import OptimSpec
    from swagcli.train import sharding
    from swagcli.train.optim import build_optimizer
    from tests.faults.test_no_pickle import Boom

    run = _copy(stopped, tmp_path / "run")
    ckpt = run / "checkpoints" / "step-00000003"
    marker = tmp_path / "PWNED"
    for name in (".metadata", "__0_0.distcp", "model.index.safetensors.json"):
        (ckpt / "sharded" / name).write_bytes(pickle.dumps(Boom(marker)))
    model = build_model("test_vit", 66, {"img_size": 32, "patch_size": 8})
    opt = build_optimizer(model, OptimSpec(), 32)
    sharding.load_state(ckpt, model, opt, ck.load_train_state(ckpt)["optimizer"]["other"])
    assert not marker.exists()
    a = weights(ckpt)  # the consolidated file holds what the shards hold
    for k, v in model.state_dict().items():
        assert torch.equal(v, a[k]), k


def test_a_failed_sharded_save_leaves_the_previous_checkpoint_and_no_partial(tmp_path):
    """Published by rename like every checkpoint: a save that fails after its shards are written
    (here: nothing of the model among them, so nothing to consolidate) leaves no step directory,
    no temporary one, and the previous checkpoint and pointer as they were."""
    from swagcli.errors import SwagError
    from swagcli.recipes import OptimSpec
    from swagcli.train import sharding
    from swagcli.train.dist import DistEnv
    from swagcli.train.optim import build_optimizer

    model = build_model("test_vit", 66, {"img_size": 32, "patch_size": 8})
    opt = build_optimizer(model, OptimSpec(), 32)
    tensors, other = sharding.state(model, opt)
    root = tmp_path / "run" / "checkpoints"
    state = {"optimizer": {"sharded": True, "other": other}, "step": 1}
    first = ck.save_sharded(root, 1, DistEnv(), tensors, state, None, "kind: pretrain\n", {})
    assert ck.damage(first, resume=True) is None
    with pytest.raises(SwagError, match="no model shards"):
        ck.save_sharded(root, 2, DistEnv(), {"optim": tensors["optim"]}, state, None, "kind: pretrain\n", {})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001"]
    assert ck.latest(root, resume=True) == first
