"""Where a stage runs: its device, process group, autocast precision and batch arithmetic.

Shared by every stage that runs a model (pretraining, finetuning, the probe's and zero-shot's
feature passes), so none of them reaches into another's module for these.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from swagcli.errors import SwagError
from swagcli.train.dist import DistEnv


def pick_device(name: str, env: DistEnv) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SwagError("device: cuda requested but no GPU is visible")
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the process group of ``env`` (once): NCCL on CUDA, gloo on the CPU."""
    if env.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def auto_dtype(device_type: str, bf16_supported: bool):
    """``precision: auto``: bf16 autocast on GPUs that have it (A100, H100, ...: no loss scaling
    needed), fp16 with a GradScaler only where they do not (V100, T4), fp32 on the CPU."""
    if device_type != "cuda":
        return None
    return torch.bfloat16 if bf16_supported else torch.float16


def amp_dtype(precision: str, device: torch.device):
    """The autocast dtype of a recipe's ``precision`` on ``device`` (None: fp32, no autocast). A
    GradScaler is used exactly when this is fp16."""
    if precision == "auto":
        return auto_dtype(device.type, device.type == "cuda" and torch.cuda.is_bf16_supported())
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def plan_layout(recipe, env: DistEnv) -> dict:
    """Batch arithmetic: global batch = world x micro_batch x accumulation."""
    micro = recipe.micro_batch or max(1, recipe.batch_size // env.world)
    if recipe.batch_size % (env.world * micro):
        raise SwagError(f"batch_size {recipe.batch_size} is not a multiple of processes ({env.world}) "
                        f"x micro_batch ({micro})")
    return {"micro": micro, "accum": recipe.batch_size // (env.world * micro)}


def all_mean(value: torch.Tensor, env: DistEnv) -> float:
    """The mean of a scalar over the processes (itself in one process)."""
    if env.distributed:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= env.world
    return float(value)


def any_rank(flags: tuple, env: DistEnv, device) -> tuple:
    """Each flag: true on some rank (one all-reduce for all of them)."""
    if not env.distributed:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t)
    return tuple(bool(v > 0) for v in t.tolist())


def training_threads(device: torch.device, workers: int, environ=None) -> int | None:
    """torch's intra-op threads for training on the CPU: the cores this process may use less one
    per DataLoader worker (at least 1), unless ``OMP_NUM_THREADS`` says otherwise (then None: left
    as it is). Two OpenMP threads on two cores shared with a decoding worker spin at every op's
    barrier: measured 0.51-0.63 of the model's own speed against 0.86-0.90 with one thread
    (bench/README.md, GPU training). None on a GPU (the threads only launch kernels there)."""
    import os

    env = os.environ if environ is None else environ
    if device.type != "cpu" or env.get("OMP_NUM_THREADS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - workers)
