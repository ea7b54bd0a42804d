"""`precision: auto` picks bf16 where the GPU has it and fp16 with loss scaling where not; bf16
autocast trains on the CPU too, without a GradScaler."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from swagcli.train.runtime import amp_dtype, auto_dtype
from tests.train.test_pretrain import losses, tiny_recipe
from swagcli.train.dist import DistEnv
from swagcli.train.engine import train


def test_auto_precision_by_device():
    assert auto_dtype("cuda", True) is torch.bfloat16    # A100, H100, H200
    assert auto_dtype("cuda", False) is torch.float16    # V100: fp16 + GradScaler
    assert auto_dtype("cpu", True) is None
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert amp_dtype("fp32", torch.device("cpu")) is None


def test_bf16_autocast_trains_on_cpu(tiny_world, tmp_path):
    res = train(tiny_recipe(tiny_world, tmp_path / "bf16", samples=32 * 30, precision="bf16",
                            eval_samples=64), DistEnv(), progress=False)
    ls = losses(res["run_dir"])
    assert res["status"] == "finished" and all(math.isfinite(x) for x in ls)
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5
    assert res["precision"] == {"autocast": "bf16", "grad_scaler": False, "device": "cpu"}
    assert json.loads((Path(res["run_dir"]) / "result.json").read_text())["precision"]["autocast"] == "bf16"
