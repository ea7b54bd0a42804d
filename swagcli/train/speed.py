"""Throughput settings shared by every training loop (`speed:` in pretrain and finetune recipes).

* ``channels_last``: the model's weights and every input batch in NHWC, which cuDNN's convolutions
  prefer on tensor cores (RegNets; harmless on ViTs, whose only convolution is the patch embedding);
* ``grad_checkpointing``: timm's ``set_grad_checkpointing``: activations of each block recomputed
  in the backward pass, memory for compute (the gradients are the same);
* ``compile``: ``torch.compile`` of the model as the loop calls it (DDP-wrapped where distributed),
  the checkpointed weights being the uncompiled module's (the same tensors);
* ``fused``: the fused CUDA kernels of AdamW/SGD (``auto``: on CUDA, never on the CPU).

None of them changes what is trained, so a run may be resumed with other settings.
"""

from __future__ import annotations

import torch


def prepare(model: torch.nn.Module, spec, device: torch.device) -> torch.nn.Module:
    """Apply ``channels_last`` and ``grad_checkpointing`` to ``model`` (in place; returned)."""
    if spec.grad_checkpointing:
        from swagcli.errors import SwagError

        target = getattr(model, "backbone", model)
        if not hasattr(target, "set_grad_checkpointing"):
            raise SwagError(f"speed.grad_checkpointing: {type(target).__name__} has no set_grad_checkpointing "
                            "(timm models do)")
        try:
            target.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError) as e:
            raise SwagError(f"speed.grad_checkpointing: this model does not support it ({e or type(e).__name__})") from None
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def inputs(x: torch.Tensor, spec) -> torch.Tensor:
    """A batch laid out as the model wants it."""
    return x.contiguous(memory_format=torch.channels_last) if spec.channels_last and x.dim() == 4 else x


def compiled(module: torch.nn.Module, spec) -> torch.nn.Module:
    """``module`` as the loop calls it: compiled where ``spec.compile``."""
    return torch.compile(module) if spec.compile else module


def fused(spec, device: torch.device) -> bool:
    """Whether the optimizer uses its fused CUDA kernel."""
    if spec.fused == "auto":
        return device.type == "cuda"
    return spec.fused == "on"


def describe(spec, device: torch.device) -> dict:
    """What result.json records of the settings in effect."""
    return {"compile": spec.compile, "channels_last": spec.channels_last,
            "grad_checkpointing": spec.grad_checkpointing, "fused_optimizer": fused(spec, device)}


class Meter:
    """What a run's progress bar, metrics.jsonl and result.json say of its speed: samples/s (in
    all and per device), the share of the time spent waiting on the loader, and MFU (model FLOPs
    utilization, :mod:`swagcli.train.flops`'s convention) where the device's peak is known.

    ``count``: the model's FLOPs per sample (``flops_per_sample``), or None where it could not be
    counted; ``peak``: the device's FLOP/s at the run's precision, or None (a CPU, an unknown GPU)."""

    def __init__(self, world: int, count: dict | None, peak: float | None, device_name: str):
        import time

        self.world, self.count, self.peak, self.device_name = world, count, peak, device_name
        self.t0, self.wait, self.samples = time.perf_counter(), 0.0, 0

    def waited(self, seconds: float) -> None:
        self.wait += seconds

    def snapshot(self, samples: int) -> dict:
        """Since the meter started, ``samples`` (all ranks) later."""
        import time

        from swagcli.train.flops import mfu

        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        sps = samples / elapsed
        out = {"samples_per_s": sps, "samples_per_s_per_device": sps / self.world,
               "data_wait": min(1.0, self.wait / elapsed)}
        if self.count and self.peak:
            out["mfu"] = mfu(self.count["train_flops"], sps / self.world, self.peak)
        return out

    def summary(self, samples: int) -> dict:
        snap = self.snapshot(samples)
        return {**{k: round(v, 4) for k, v in snap.items()}, "device": self.device_name,
                "peak_flops": self.peak if self.peak else "unknown",
                "flops_per_sample": ({k: self.count[k] for k in ("forward_flops", "train_flops", "forward_macs")}
                                     | {"convention": "torch: a multiply-add is 2 FLOPs (published GFLOPs = forward_macs)"})
                if self.count else None}


def meter(model, resolution: int, device, dtype, world: int, objective: str) -> Meter:
    """A :class:`Meter` for this run: the model's FLOPs counted once (on the meta device; a model
    that cannot be counted is reported without MFU, never an error), the device's peak looked up."""
    import torch

    from swagcli.train import flops

    try:
        count = flops.flops_per_sample(model, (3, resolution, resolution), objective)
    except Exception:  # noqa: BLE001 - counting is a report, never a reason to stop a run
        count = None
    prec = dtype if dtype is not None else ("tf32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
                                            else None)
    try:
        peak = flops.peak_flops(device, prec)
    except (ValueError, RuntimeError):
        peak = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return Meter(world, count, peak, name)
