"""Throughput settings (`speed:`) change how fast, not what is trained: the same losses with
channels_last and gradient checkpointing, and with torch.compile (on the CPU, inductor)."""

from __future__ import annotations

import pytest

from swagcli.train.dist import DistEnv
from swagcli.train.engine import train
from tests.train.test_pretrain import losses, tiny_recipe

STEPS = 6


@pytest.fixture(scope="module")
def plain(tiny_world, tmp_path_factory):
    res = train(tiny_recipe(tiny_world, tmp_path_factory.mktemp("plain") / "run", samples=32 * STEPS,
                            eval_samples=32), DistEnv(), progress=False)
    return losses(res["run_dir"]), res


def test_channels_last_and_checkpointing_train_alike(plain, tiny_world, tmp_path):
    res = train(tiny_recipe(tiny_world, tmp_path / "run", samples=32 * STEPS, eval_samples=32,
                            **{"speed.channels_last": True, "speed.grad_checkpointing": True}),
                DistEnv(), progress=False)
    got, want = losses(res["run_dir"]), plain[0]
    assert len(got) == len(want) == STEPS
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4, (got, want)
    assert res["speed"] == {"compile": False, "channels_last": True, "grad_checkpointing": True,
                            "fused_optimizer": False}
    assert plain[1]["speed"]["fused_optimizer"] is False  # auto: CUDA only


def test_compile_trains_alike(plain, tiny_world, tmp_path):
    res = train(tiny_recipe(tiny_world, tmp_path / "run", samples=32 * STEPS, eval_samples=32,
                            **{"speed.compile": True}), DistEnv(), progress=False)
    got, want = losses(res["run_dir"]), plain[0]
    assert res["status"] == "finished" and res["speed"]["compile"] is True
    assert max(abs(a - b) / abs(b) for a, b in zip(got, want)) < 1e-3, (got, want)


def test_every_run_reports_its_throughput(plain):
    """samples/s per device, the share of time waiting on the loader, FLOPs per sample; MFU is
    unknown on a CPU (no peak), never a made-up figure."""
    import json
    from pathlib import Path

    res = plain[1]
    t = res["throughput"]
    assert t["samples_per_s"] > 0 and t["samples_per_s_per_device"] == t["samples_per_s"]
    assert 0 <= t["data_wait"] <= 1 and t["peak_flops"] == "unknown" and "mfu" not in t
    fl = t["flops_per_sample"]
    assert fl["train_flops"] > 2 * fl["forward_flops"] and fl["forward_macs"] * 2 == fl["forward_flops"]
    rows = [json.loads(x) for x in open(Path(res["run_dir"]) / "metrics.jsonl")]
    assert all("data_wait" in r and "samples_per_s_per_device" in r for r in rows if "loss" in r)
