"""timm backbones with a hashtag head (SPEC.md §3).

Any timm model name works. The backbone is built with ``num_classes=0`` (pooled features); ViTs
get the paper's extra linear layer (out dim = embed dim, followed by tanh as in ViT's pre-logits)
before the hashtag classifier. Nothing is downloaded: ``pretrained`` timm weights are refused,
and initial weights come from a local file (``init``) instead.
"""

from __future__ import annotations

import torch
from torch import nn

from swagcli.errors import SwagError


def is_vit(name: str) -> bool:
    return name.startswith(("vit_", "test_vit", "deit", "eva", "beit")) or "_vit_" in name


class HashtagModel(nn.Module):
    """backbone -> [ViT: Linear(d, d) + tanh] -> Linear(d, |C|)."""

    def __init__(self, backbone: nn.Module, num_classes: int, pre_logits: bool):
        super().__init__()
        self.backbone = backbone
        dim = backbone.num_features
        self.pre_logits = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) if pre_logits else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.bias)

    @property
    def num_features(self) -> int:
        return self.head.in_features

    frozen = False

    def freeze_backbone(self) -> "HashtagModel":
        """Train the pre-logits layer and the head only: the backbone's parameters get no gradient
        and it stays in eval mode (batch-norm statistics kept), whatever ``train()`` is called."""
        self.frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What transfer uses: the representation the hashtag head reads."""
        return self.pre_logits(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, num_classes: int, kwargs: dict | None = None,
                pre_logits: bool | None = None) -> HashtagModel:
    import timm

    kwargs = dict(kwargs or {})
    if kwargs.pop("pretrained", False):
        raise SwagError(f"model {name}: pretrained hub weights are not fetched; use init.from with a local file")
    try:
        backbone = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise SwagError(f"model.name: {e}") from None
    except TypeError as e:
        raise SwagError(f"model.kwargs: {name} does not take {e}") from None
    return HashtagModel(backbone, num_classes, is_vit(name) if pre_logits is None else pre_logits)


def param_groups(model: nn.Module, weight_decay: float, no_decay: str) -> list[dict]:
    """Split parameters into decayed and not decayed.

    ``bn``: no weight decay on batch-norm parameters (SWAG's RegNetY recipe); ``norm_bias``: none
    on any normalization parameter or bias (the usual ViT practice); ``none``: decay everything.
    """
    decay, keep = [], []
    norm_types = (nn.modules.batchnorm._BatchNorm,) if no_decay == "bn" else (
        nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    skip = set()
    if no_decay != "none":
        for module in model.modules():
            if isinstance(module, norm_types) or type(module).__name__ in (
                    () if no_decay == "bn" else ("LayerNorm2d", "RmsNorm")):
                skip.update(id(p) for p in module.parameters(recurse=False))
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in skip or (no_decay == "norm_bias" and (p.ndim <= 1 or pname.endswith(".bias"))):
            keep.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0})
    return groups


class Normalizer(torch.nn.Module):
    """uint8 CHW batches -> float, normalized with the backbone's mean/std, on the device."""

    def __init__(self, backbone):
        super().__init__()
        cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x):
        # batches arrive NHWC in memory (see data.collate); made NCHW-contiguous here, on the
        # device and still uint8, so the model sees the usual layout
        return (x.contiguous().float() - self.mean) / self.std
