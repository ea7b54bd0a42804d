"""FLOPs per sample, device peaks and model FLOPs utilization (MFU).

Convention, used throughout swag
--------------------------------
swag reports FLOPs **as torch counts them** (:class:`torch.utils.flop_counter.FlopCounterMode`):
a multiply-add is **2 FLOPs**. Only matrix products, convolutions and attention are counted
(element-wise work: norms, activations, the loss, the optimizer step, is not), which is also what
the published figures count.

The published "GFLOPs" of vision models (fvcore, pycls, timm's tables, SWAG's Table 5) count a
multiply-add as **1**: they are MACs, half of swag's number. ``forward_macs`` is given for comparing
with them: ViT-B/16 at 224 px is 17.56 G MACs (SWAG Table 5: 17.6 "GFLOPs"), i.e. 35.1 G FLOPs.

Training FLOPs per sample are **measured**, not assumed: one forward pass and one backward pass
(of the objective's output) are counted separately, and ``train_flops`` is their sum. For dense
models that is about 3x the forward (the usual "6 x params x tokens" rule): the backward computes
one product for the inputs' gradient and one for the weights', except where nothing needs a
gradient (the image itself: the stem's input gradient is skipped, so the ratio is a little under
3; a frozen backbone gets no weight gradients, so far less).

MFU = achieved FLOP/s / peak FLOP/s, with achieved = ``train_flops`` (per sample) x samples per
second per device, and the peak the device's dense tensor-core figure at the run's precision, both in
the same 2-per-multiply-add convention (NVIDIA's datasheets count an FMA as 2 FLOPs too). The
optimizer step and any activation recomputation are not in the numerator (model FLOPs, not
hardware FLOPs).

Counting runs on the ``meta`` device: parameters, buffers and the input are stand-ins without
storage, so nothing is computed or allocated and ViT-B/16 or RegNetY-16GF count in a fraction of
a second; the model itself is not modified (its weights, buffers, gradients and the RNG state are
left as they were). Where a model cannot run on meta, a real count on a tiny batch on the model's
own device is the fallback.

Nothing heavy is imported with this module: torch is imported inside the functions.
"""

from __future__ import annotations

import re
import time
from typing import Any

# --------------------------------------------------------------------------------------------------
# FLOPs per sample


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """convolution_backward: each gradient asked for (input's, weight's) takes exactly the
    multiply-adds of the forward convolution. torch's own formula forgets ``groups`` for the
    weight's gradient (it counts a grouped/depthwise conv's as if it were dense: RegNetY's backward
    came out at 4.3x its forward instead of 2x)."""
    from torch.utils.flop_counter import conv_flop_count

    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _custom_mapping() -> dict:
    import torch

    return {torch.ops.aten.convolution_backward: _conv_backward_flop}


class _NoScalar(TypeError):
    pass


def _scalar(out, objective: str):
    """The scalar a backward pass starts from: MAE models return (loss, pred, mask); hashtag and
    plain models return logits (their sum stands in for the loss: element-wise work is not counted)."""
    import torch

    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise _NoScalar(f"flops_per_sample: objective {objective}: model returned {type(out).__name__}, "
                        "not a tensor")
    return out if out.ndim == 0 else out.float().sum()


def _count(model, params: dict, x, objective: str) -> tuple[int, int]:
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as fwd:
        out = functional_call(model, params, (x,), tie_weights=True, strict=False)
    loss = _scalar(out, objective)
    bwd_flops = 0
    if loss.requires_grad:
        with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as bwd:
            loss.backward()
        bwd_flops = bwd.get_total_flops()
    return fwd.get_total_flops(), bwd_flops


def flops_per_sample(model, input_size=(3, 224, 224), objective: str = "wsp", batch: int = 2) -> dict[str, Any]:
    """FLOPs of one training sample of ``model`` at ``input_size`` (C, H, W; or one int: 3 x s x s).

    Returns ``forward_flops``, ``backward_flops``, ``train_flops`` (= forward + backward, measured),
    ``forward_macs`` (= forward_flops / 2, the published "GFLOPs" convention), ``train_ratio``
    (train / forward, ~3), ``counted_on`` ("meta" or the fallback's device), ``seconds`` and
    ``convention``. All per image, in torch's convention (a multiply-add = 2 FLOPs).

    The model is counted in training mode (MAE masks as it trains), ``batch`` images at once, and
    the totals divided by ``batch``; ``objective`` ("wsp", "mae", ...) only decides what the
    backward starts from (MAE's forward returns its loss first).
    """
    import torch

    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    input_size = tuple(int(s) for s in input_size)
    start = time.perf_counter()
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    home = first.device if first is not None else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    model.train()  # HashtagModel.train keeps a frozen backbone in eval
    try:
        # MAE draws its masks from the CPU generator: the caller's random stream is left as it was
        with torch.random.fork_rng(devices=[home] if home.type == "cuda" else []):
            try:
                meta = torch.device("meta")
                params = {n: torch.empty_like(p, device=meta).requires_grad_(p.requires_grad)
                          for n, p in model.named_parameters()}
                params |= {n: torch.empty_like(b, device=meta) for n, b in model.named_buffers()}
                fwd, bwd = _count(model, params, torch.empty(batch, *input_size, device=meta, dtype=dtype),
                                  objective)
                where = "meta"
            except _NoScalar:
                raise
            except Exception:  # an op without a meta kernel, a tensor kept outside the state dict...
                # detached parameters share storage but gather their own gradients; buffers are
                # copied, so batch-norm statistics of the model stay as they were
                params = {n: p.detach().requires_grad_(p.requires_grad) for n, p in model.named_parameters()}
                params |= {n: b.detach().clone() for n, b in model.named_buffers()}
                fwd, bwd = _count(model, params, torch.randn(batch, *input_size, device=home, dtype=dtype),
                                  objective)
                where = str(home)
    finally:
        for m, mode in modes:
            m.training = mode
    fwd, bwd = fwd / batch, bwd / batch
    return {"forward_flops": fwd, "backward_flops": bwd, "train_flops": fwd + bwd, "forward_macs": fwd / 2,
            "train_ratio": (fwd + bwd) / fwd if fwd else None, "counted_on": where,
            "input_size": list(input_size), "seconds": time.perf_counter() - start,
            "convention": "torch FlopCounterMode: a multiply-add = 2 FLOPs; train = measured forward + backward"}


# --------------------------------------------------------------------------------------------------
# Peak FLOP/s

_TERA = 1e12
# Dense (no structured sparsity) peaks from NVIDIA's datasheets, FLOP/s, an FMA = 2 FLOPs: the
# datasheets' starred figures are with 2:4 sparsity, halved here. bf16/fp16/tf32 on tensor cores;
# fp32 is the plain (non-tensor-core) figure. None: the format is not supported (V100: no bf16, no
# tf32). "sms": the full part's SM count; a MIG slice or cut-down part is scaled by its own.
PEAKS: dict[str, dict[str, Any]] = {
    "V100-SXM2": {"bf16": None, "fp16": 125 * _TERA, "tf32": None, "fp32": 15.7 * _TERA, "sms": 80},
    "V100-PCIe": {"bf16": None, "fp16": 112 * _TERA, "tf32": None, "fp32": 14 * _TERA, "sms": 80},
    "V100S-PCIe": {"bf16": None, "fp16": 130 * _TERA, "tf32": None, "fp32": 16.4 * _TERA, "sms": 80},
    "A100-SXM": {"bf16": 312 * _TERA, "fp16": 312 * _TERA, "tf32": 156 * _TERA, "fp32": 19.5 * _TERA, "sms": 108},
    "A100-PCIe": {"bf16": 312 * _TERA, "fp16": 312 * _TERA, "tf32": 156 * _TERA, "fp32": 19.5 * _TERA, "sms": 108},
    "H100-SXM": {"bf16": 989.5 * _TERA, "fp16": 989.5 * _TERA, "tf32": 494.5 * _TERA, "fp32": 67 * _TERA, "sms": 132},
    "H100-PCIe": {"bf16": 756.5 * _TERA, "fp16": 756.5 * _TERA, "tf32": 378 * _TERA, "fp32": 51 * _TERA, "sms": 114},
    "H100-NVL": {"bf16": 835.5 * _TERA, "fp16": 835.5 * _TERA, "tf32": 417.5 * _TERA, "fp32": 60 * _TERA, "sms": 132},
    "H200": {"bf16": 989.5 * _TERA, "fp16": 989.5 * _TERA, "tf32": 494.5 * _TERA, "fp32": 67 * _TERA, "sms": 132},
    "H200-NVL": {"bf16": 835.5 * _TERA, "fp16": 835.5 * _TERA, "tf32": 417.5 * _TERA, "fp32": 60 * _TERA, "sms": 132},
    "GH200": {"bf16": 989.5 * _TERA, "fp16": 989.5 * _TERA, "tf32": 494.5 * _TERA, "fp32": 67 * _TERA, "sms": 132},
}

# first match wins, on torch.cuda.get_device_name() upper-cased
_NAMES = [
    (r"\bV100S\b", "V100S-PCIe"),
    (r"\bV100\b.*\bSXM", "V100-SXM2"),
    (r"\bV100\b.*\bPCIE\b", "V100-PCIe"),
    (r"\bA100\b.*\bPCIE\b", "A100-PCIe"),
    (r"\bA100\b", "A100-SXM"),
    (r"\bGH200\b", "GH200"),
    (r"\bH200\b.*\bNVL\b", "H200-NVL"),
    (r"\bH200\b", "H200"),
    (r"\bH100\b.*\bNVL\b", "H100-NVL"),
    (r"\bH100\b.*\bPCIE\b", "H100-PCIe"),
    (r"\bH100\b", "H100-SXM"),  # "NVIDIA H100 80GB HBM3" is the SXM5 part
]


def gpu_model(name: str) -> str | None:
    """The :data:`PEAKS` key of a ``torch.cuda.get_device_name()`` string, None if not in the table."""
    up = name.upper()
    for pattern, key in _NAMES:
        if re.search(pattern, up):
            return key
    return None


def precision_key(dtype) -> str:
    """"bf16" | "fp16" | "tf32" | "fp32" from a torch dtype, None (no autocast: fp32) or a name.
    fp32 is the plain fp32 peak: pass "tf32" where fp32 matmuls run on TF32 tensor cores."""
    if dtype is None:
        return "fp32"
    s = str(dtype).removeprefix("torch.").lower()
    key = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "half": "fp16", "fp16": "fp16",
           "tf32": "tf32", "float32": "fp32", "float": "fp32", "fp32": "fp32"}.get(s)
    if key is None:
        raise ValueError(f"precision {dtype!r}: one of bf16, fp16, tf32, fp32")
    return key


def peak_for_name(name: str, dtype, sm_count: int | None = None) -> float | None:
    """Dense peak FLOP/s of the GPU called ``name`` at ``dtype``; None where unknown (a GPU not in
    the table, or a format it lacks). ``sm_count`` (the device's multiprocessors) scales the peak
    down for a MIG slice or a cut-down part."""
    key = gpu_model(name)
    if key is None:
        return None
    row = PEAKS[key]
    peak = row[precision_key(dtype)]
    if peak is None:
        return None
    if sm_count:
        peak *= min(1.0, sm_count / row["sms"])
    return float(peak)


def peak_flops(device, dtype) -> float | None:
    """Dense peak FLOP/s of ``device`` (a torch.device, "cuda:0", "cpu", an index) at ``dtype``
    (the run's autocast dtype, None for fp32, or "tf32"). None = unknown: always on a CPU (or mps),
    and on a GPU not in :data:`PEAKS`."""
    import torch

    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    return peak_for_name(props.name, dtype, props.multi_processor_count)


def mfu(flops_per_sample_train: float, samples_per_s_per_device: float, peak: float | None) -> float | None:
    """Model FLOPs utilization, 0..1: training FLOPs per sample x samples/s on one device over
    that device's peak FLOP/s (both with a multiply-add = 2 FLOPs). None where the peak is unknown."""
    if not peak or peak <= 0 or flops_per_sample_train is None or samples_per_s_per_device is None:
        return None
    return flops_per_sample_train * samples_per_s_per_device / peak
