"""Hashtag losses on sparse targets: (indices, weights) per image, padded with weight 0.

``softmax`` (WSL §2.3, SWAG §3.2): cross-entropy between the softmax over all hashtags and the
target distribution that puts 1/K on each of the image's K hashtags. ``bce``: per-hashtag sigmoid
with binary cross-entropy against the multi-hot target (the ablation WSL found worse).
``softmax_idf`` (SuperClass, SPEC.md §9): softmax cross-entropy, each 1/K weight multiplied by the
hashtag's ``idf = log(N / df)`` over the plan (:func:`plan_idf`) and the target renormalized to
sum 1; an image whose hashtags all have ``df = N`` (idf 0, nothing left to renormalize) keeps its
1/K target.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def softmax_ce(logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.gather(1, idx) * w).sum(1).mean()


def sigmoid_bce(logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    target = torch.zeros_like(logits, dtype=torch.float32)
    target.scatter_(1, idx, (w > 0).float())
    return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum") / logits.shape[0]


def plan_idf(df: np.ndarray, images: int) -> np.ndarray:
    """``log(N / df(h))`` per hashtag (float64); 0 for hashtags on no plan image (never a target)."""
    df = np.asarray(df, dtype=np.float64)
    return np.where(df > 0, np.log(images / np.maximum(df, 1.0)), 0.0)


def idf_targets(idx: torch.Tensor, w: torch.Tensor, idf: torch.Tensor) -> torch.Tensor:
    """The 1/K weights ``w`` times ``idf[idx]``, renormalized per image; an image whose weights all
    become 0 (every hashtag on every plan image) keeps ``w``. Padding (weight 0) stays 0."""
    v = w * idf[idx]
    s = v.sum(1, keepdim=True)
    return torch.where(s > 0, v / torch.where(s > 0, s, torch.ones_like(s)), w)


class SoftmaxIdf:
    """``softmax_idf``: :func:`softmax_ce` against :func:`idf_targets` (``idf`` on the logits' device)."""

    def __init__(self, idf):
        self.idf = torch.as_tensor(np.asarray(idf), dtype=torch.float32)

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.idf.device != logits.device:
            self.idf = self.idf.to(logits.device)
        return softmax_ce(logits, idx, idf_targets(idx, w.float(), self.idf))


LOSSES = {"softmax": softmax_ce, "bce": sigmoid_bce}  # softmax_idf needs the plan: SoftmaxIdf
