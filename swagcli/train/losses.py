"""Hashtag losses on sparse targets: (indices, weights) per image, padded with weight 0.

``softmax`` (WSL §2.3, SWAG §3.2): cross-entropy between the softmax over all hashtags and the
target distribution that puts 1/K on each of the image's K hashtags. ``bce``: per-hashtag sigmoid
with binary cross-entropy against the multi-hot target (the ablation WSL found worse).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_ce(logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.gather(1, idx) * w).sum(1).mean()


def sigmoid_bce(logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    target = torch.zeros_like(logits, dtype=torch.float32)
    target.scatter_(1, idx, (w > 0).float())
    return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum") / logits.shape[0]


LOSSES = {"softmax": softmax_ce, "bce": sigmoid_bce}
