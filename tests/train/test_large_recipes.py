"""The large-ViT pretraining recipes: each builds (on the meta device: no memory, no weights) the
shape its paper describes, with the paper's parameter count, and the FSDP recipes state a memory per
GPU and a GPU count that are consistent with the recipe and no smaller than its sharded state."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from swagcli import recipes
from swagcli.train.models import build_model

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "recipes" / "pretrain"
GiB = 2**30
TOKENS = (224 // 14) ** 2 + 1  # 257: 16 x 16 patches of 14 px + the class token
HASHTAGS = 28_000  # SWAG: |C| ~ 27k, "between 27k and 28k"; MAWS: 28K classes (the larger, for bounds)
GPU_GIB = 80e9 / GiB  # the recipes assume 80 GB A100/H100-class GPUs

# recipe -> (paper's parameter count, (width, depth, MLP, heads, patch), where both come from)
PAPER = {
    # SWAG Table 5 (ViT L/16 at 224 px: 304.3M "with an ImageNet-1k head"); the shape is ViT-L/16's
    "vit_l16.yaml": (304.3e6, (1024, 24, 4096, 16, 16), "SWAG Table 5"),
    # SWAG Table 5 (ViT H/14 at 224 px: 632.0M with an ImageNet-1k head; MAWS Section 3: 632M)
    "vit_h14.yaml": (632.0e6, (1280, 32, 5120, 16, 14), "SWAG Table 5"),
    # SWAG Table 5 (ViT G/14 at 224 px: 1,844.4M with an ImageNet-1k head; the dagger: not trainable
    # in SWAG's setup "even with a batch size of 1"); shape of ViT-G/14 (Zhai et al.; InternVL Table 1)
    "vit_g14.yaml": (1844.4e6, (1664, 48, 8192, 16, 14), "SWAG Table 5"),
    # MAWS Section 3 "Architecture": "larger 1.9B and 6.5B parameter ViT models, which we call ViT-2B
    # and ViT-6.5B (Appendix Table 8)", patch 14; ViT-2B's shape as facebookresearch/maws builds
    # vit_2b14 (embed_dim 2560, depth 24, 32 heads, MLP ratio 4)
    "maws_vit_2b14.yaml": (1.9e9, (2560, 24, 10240, 32, 14), "MAWS Section 3 / Table 8"),
    # MAWS Section 3: 6.5B; its shape (and 6,440M) as InternVL Table 1 tabulates MAWS's ViT-6.5B
    "maws_vit_6p5b14.yaml": (6.44e9, (4096, 32, 16384, 32, 14), "MAWS Section 3; InternVL Table 1"),
}
LARGE = ["vit_g14.yaml", "maws_vit_2b14.yaml", "maws_vit_6p5b14.yaml"]
SWAG_TABLE5 = {"vit_l16.yaml", "vit_h14.yaml", "vit_g14.yaml"}  # counts that include a 1k head

MEMORY = re.compile(r"^# memory per GPU: ~(\d+(?:\.\d+)?) GiB at micro_batch (\d+) \(", re.M)
GPUS = re.compile(r"^# GPUs: (\d+) \((\d+) nodes x (\d+) ", re.M)


def load(name: str):
    return recipes.load("pretrain", PRETRAIN / name)


@functools.lru_cache(maxsize=None)
def _meta_model(name: str, kwargs: tuple, pre_logits: bool | None):
    with torch.device("meta"):  # parameters without storage: a 6.5B model in no memory, in < 1 s
        return build_model(name, 1000, dict(kwargs), pre_logits)


def meta_model(r):
    return _meta_model(r.model.name, tuple(sorted(r.model.kwargs.items())), r.model.pre_logits)


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def trained_params(backbone) -> int:
    """What FSDP shards in a hashtag run: backbone + pre-logits Linear(d, d) + Linear(d, 28k)."""
    d = backbone.num_features
    return numel(backbone) + d * d + d + (d + 1) * HASHTAGS


def estimate_gib(backbone, micro_batch: int, gpus: int) -> float:
    """The headers' arithmetic: FSDP2 full sharding with bf16 compute params (fp32 master copy) and
    per-block activation checkpointing."""
    d, depth = backbone.embed_dim, len(backbone.blocks)
    mlp = backbone.blocks[0].mlp.fc1.out_features
    state = 16 * trained_params(backbone) / gpus  # fp32 params + grads + AdamW's two moments
    gathered = 8 * numel(backbone.blocks[0])  # bf16 current + prefetched block, its fp32 unsharded grads
    kept = micro_batch * TOKENS * d * 2 * depth  # each block's bf16 input, kept for the recompute
    block = 2 * micro_batch * TOKENS * (7 * d + 2 * mlp) * 2  # one block's saved activations + grads
    logits = micro_batch * HASHTAGS * 10  # bf16 logits, fp32 log-softmax and its grad
    return (state + gathered + kept + block + logits) / GiB + 3  # + CUDA context, NCCL, allocator


@pytest.mark.parametrize("name", list(PAPER))
def test_recipe_builds_the_papers_vit(name):
    paper, (width, depth, mlp, heads, patch), source = PAPER[name]
    r = load(name)
    model = meta_model(r)
    b = model.backbone
    assert next(b.parameters()).is_meta  # nothing allocated
    shape = (b.embed_dim, len(b.blocks), b.blocks[0].mlp.fc1.out_features, b.blocks[0].attn.num_heads,
             b.patch_embed.patch_size[0])
    assert shape == (width, depth, mlp, heads, patch), f"{name}: not the shape of {source}"
    assert b.patch_embed.num_patches + 1 == (224 // patch) ** 2 + 1
    assert r.model.pre_logits is True and r.batch_size == 8192
    n = numel(b)
    assert abs(n - paper) / paper < 0.02, f"{name}: {n / 1e6:.1f}M backbone vs {paper / 1e6:.1f}M ({source})"
    if name in SWAG_TABLE5:  # Table 5 counts "with an ImageNet-1k head": backbone + Linear(d, 1000)
        assert abs(n + numel(model.head) - paper) / paper < 1e-3


@pytest.mark.parametrize("name", LARGE)
def test_large_recipe_is_sharded_and_states_its_memory(name):
    r = load(name)
    assert (r.strategy, r.precision, r.speed.grad_checkpointing) == ("fsdp", "bf16", True)
    assert (r.optim.name, r.optim.lr, r.optim.base_batch, r.optim.betas, r.optim.weight_decay) == (
        "adamw", 4e-4, 8192, (0.9, 0.95), 0.1)  # SPEC §3 (MAWS: SWAG's hashtag hyperparameters)
    assert (r.optim.warmup_fraction, r.optim.warmup_start_factor) == (0.05, 0.1)
    header = (PRETRAIN / name).read_text().split("\nkind:")[0]
    mem, gpus = MEMORY.search(header), GPUS.search(header)
    assert mem and gpus, f"{name}: header needs '# memory per GPU: ~NN GiB at micro_batch M (' and '# GPUs: N ('"
    gib, micro = float(mem.group(1)), int(mem.group(2))
    n_gpus, nodes, per_node = map(int, gpus.groups())
    slurm = r.launcher.slurm
    assert slurm is not None and (slurm.nodes, slurm.gpus_per_node) == (nodes, per_node) == (nodes, 8)
    assert n_gpus == nodes * per_node and micro == r.micro_batch
    assert r.batch_size % (n_gpus * micro) == 0  # runtime.plan_layout's rule
    b = meta_model(r).backbone
    bound = 16 * trained_params(b) / n_gpus / GiB  # the sharded fp32 state alone
    assert gib >= bound, f"{name}: ~{gib} GiB is below the sharded state {bound:.2f} GiB"
    assert gib < GPU_GIB, f"{name}: ~{gib} GiB does not fit an 80 GB GPU"
    est = estimate_gib(b, micro, n_gpus)
    assert abs(gib - est) <= 1, f"{name}: header says ~{gib} GiB, its arithmetic gives {est:.1f} GiB"
    if r.stages:  # MAWS: MAE then hashtags, each stage a valid recipe that splits over the same GPUs
        from swagcli.train.stages import stage_recipes

        stages = stage_recipes(recipes.load("pretrain", PRETRAIN / name, flags={"out": "unused"}))
        assert [s.objective for s in stages] == ["mae", "wsp"]
        for s in stages:
            assert s.strategy == "fsdp" and s.batch_size % (n_gpus * s.micro_batch) == 0
            assert s.model == r.model  # the MAE encoder is the backbone the hashtag stage trains
