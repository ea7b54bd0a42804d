"""Optimizers and the learning-rate schedule of SWAG §3.2.

lr = base_lr * global_batch / base_batch (linear scaling); linear warm-up over the first
``warmup_fraction`` of the updates from lr * ``warmup_start_factor``; then a half-cosine to 0.
"""

from __future__ import annotations

import math

import torch

from swagcli.train.models import param_groups


def scaled_lr(base_lr: float, base_batch: int, batch: int) -> float:
    return base_lr * batch / base_batch


def build_optimizer(model, cfg, batch: int, fused: bool = False) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW on ``param_groups``; ``fused``: their fused CUDA kernels."""
    lr = scaled_lr(cfg.lr, cfg.base_batch, batch)
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay)
    extra = {"fused": True} if fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, **extra)


def lr_factor(step: int, total: int, warmup_fraction: float, start_factor: float) -> float:
    """Multiplier of the peak lr at update ``step`` (0-based) of ``total``."""
    warm = int(round(warmup_fraction * total))
    if step < warm:
        return start_factor + (1.0 - start_factor) * step / warm
    span = max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))


def build_scheduler(opt, total: int, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, cfg.warmup_fraction, cfg.warmup_start_factor))
