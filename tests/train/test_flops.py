"""FLOPs per sample (counted on the meta device, a multiply-add = 2 FLOPs), the published figures
they match, the GPU peak table, its device-name matching, and MFU."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from swagcli.train import flops as F


def meta_timm(name: str, **kwargs):
    import timm

    with torch.device("meta"):  # no weights allocated or initialized: instant for ViT-B
        return timm.create_model(name, pretrained=False, **kwargs)


def test_vit_b16_matches_swag_table5():
    t = time.perf_counter()
    r = F.flops_per_sample(meta_timm("vit_base_patch16_224"), (3, 224, 224))
    assert time.perf_counter() - t < 10  # ~0.3 s on a busy 2-core CPU
    assert r["counted_on"] == "meta"
    # SWAG Table 5: ViT-B/16 at 224 px, 17.6 "GFLOPs" = multiply-adds (fvcore's convention)
    assert r["forward_macs"] == pytest.approx(17.6e9, rel=0.05)
    assert r["forward_flops"] == 2 * r["forward_macs"]  # swag's convention: torch's, 2 per MAC


def test_regnety_16gf_matches_paper():
    r = F.flops_per_sample(meta_timm("regnety_160"), 224)
    # RegNet paper (Radosavovic et al. 2020) / SWAG Table 5: RegNetY-16GF, 15.9 GF at 224 px
    assert r["forward_macs"] == pytest.approx(15.9e9, rel=0.05)
    # grouped 3x3 convs: torch's own backward formula counts their weight gradient as dense (4.3x)
    assert r["train_ratio"] == pytest.approx(3.0, abs=0.02)


def test_test_vit_recipe_model_counts_and_trains_at_about_3x():
    from swagcli.train.models import build_model

    m = build_model("test_vit", 100, {"img_size": 32, "patch_size": 8})  # recipes/pretrain/test_vit.yaml
    r = F.flops_per_sample(m, (3, 32, 32))
    assert r["forward_flops"] > 0 and r["counted_on"] == "meta"
    # the stated convention: train = measured forward + backward, ~3x forward (a little under:
    # the image needs no gradient, so the patch embedding's input gradient is not computed)
    assert r["train_flops"] == r["forward_flops"] + r["backward_flops"]
    assert 2.85 < r["train_ratio"] <= 3.0
    assert m.training and all(p.device.type == "cpu" and p.grad is None for p in m.parameters())

    m.freeze_backbone()  # no weight gradients in the trunk, nothing flowing back into it
    assert F.flops_per_sample(m, 32)["train_ratio"] < 1.2


def test_mae_objective_and_rng_untouched():
    import timm

    from swagcli.train.mae import MaeModel

    backbone = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32, patch_size=8)
    mae = MaeModel(backbone, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    r = F.flops_per_sample(mae, 32, objective="mae")
    assert torch.equal(torch.rand(3), want)  # MAE's masks come from the CPU generator: restored
    assert r["forward_flops"] > 0 and 2.5 < r["train_ratio"] <= 3.0


class NoMeta(nn.Module):
    """Grouped conv + batch norm, and a tensor kept outside the state dict: meta cannot run it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.scale = torch.ones(1)  # not a buffer

    def forward(self, x):
        return self.bn(self.conv(self.stem(x))) * self.scale


def test_fallback_counts_on_cpu_and_leaves_the_model_alone():
    m = NoMeta().eval()
    stats = m.bn.running_mean.clone(), int(m.bn.num_batches_tracked)
    r = F.flops_per_sample(m, (3, 5, 5))
    assert r["counted_on"] == "cpu"
    stem, conv = 25 * 3 * 8, 25 * 8 * 2 * 9  # MACs per image: 1x1 3->8; 3x3 8->8 in 4 groups of 2
    assert r["forward_macs"] == stem + conv
    # backward: stem's weight grad only (the image needs none), conv's input and weight grads
    assert r["backward_flops"] == 2 * (stem + 2 * conv)
    assert not m.training  # mode restored
    assert torch.equal(m.bn.running_mean, stats[0]) and int(m.bn.num_batches_tracked) == stats[1]
    assert all(p.grad is None for p in m.parameters())


def test_peak_unknown_on_cpu():
    for dtype in (torch.bfloat16, torch.float16, None, "tf32"):
        assert F.peak_flops("cpu", dtype) is None
        assert F.peak_flops(torch.device("cpu"), dtype) is None
    assert F.mfu(1e9, 100.0, None) is None


@pytest.mark.parametrize("name,model,bf16", [
    ("Tesla V100-SXM2-32GB", "V100-SXM2", None),
    ("Tesla V100-SXM2-16GB", "V100-SXM2", None),
    ("Tesla V100-PCIE-16GB", "V100-PCIe", None),
    ("Tesla V100S-PCIE-32GB", "V100S-PCIe", None),
    ("NVIDIA A100-SXM4-40GB", "A100-SXM", 312e12),
    ("NVIDIA A100-SXM4-80GB", "A100-SXM", 312e12),
    ("NVIDIA A100-PCIE-40GB", "A100-PCIe", 312e12),
    ("NVIDIA A100 80GB PCIe", "A100-PCIe", 312e12),
    ("NVIDIA H100 80GB HBM3", "H100-SXM", 989.5e12),
    ("NVIDIA H100 PCIe", "H100-PCIe", 756.5e12),
    ("NVIDIA H100 NVL", "H100-NVL", 835.5e12),
    ("NVIDIA H200", "H200", 989.5e12),
    ("NVIDIA H200 NVL", "H200-NVL", 835.5e12),
    ("NVIDIA GH200 480GB", "GH200", 989.5e12),
])
def test_device_names(name, model, bf16):
    assert F.gpu_model(name) == model
    assert F.peak_for_name(name, torch.bfloat16) == bf16
    assert F.peak_for_name(name, "bf16") == bf16


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "NVIDIA A10G", "Tesla T4", "NVIDIA A100X",
                                  "NVIDIA L40S", "AMD Instinct MI300X", ""])
def test_unknown_gpus(name):
    assert F.gpu_model(name) is None and F.peak_for_name(name, torch.bfloat16) is None


def test_peak_table_per_precision():
    h100 = "NVIDIA H100 80GB HBM3"
    assert F.peak_for_name(h100, torch.float16) == 989.5e12
    assert F.peak_for_name(h100, "tf32") == 494.5e12
    assert F.peak_for_name(h100, None) == F.peak_for_name(h100, torch.float32) == 67e12  # no autocast
    assert F.peak_for_name("NVIDIA H200", "bf16") == F.peak_for_name(h100, "bf16")
    v100 = "Tesla V100-SXM2-32GB"
    assert F.peak_for_name(v100, torch.float16) == 125e12
    assert F.peak_for_name(v100, "tf32") is None  # Volta has neither bf16 nor tf32
    a100 = "NVIDIA A100-SXM4-80GB"
    assert F.peak_for_name(a100, "tf32") == 156e12 and F.peak_for_name(a100, "fp32") == 19.5e12
    # a MIG slice (its multiprocessors, 14 of 108 for 1g.10gb) gets its share of the chip
    assert F.peak_for_name("NVIDIA A100-SXM4-80GB MIG 1g.10gb", "bf16", sm_count=14) == pytest.approx(312e12 * 14 / 108)
    assert F.peak_for_name(h100, "bf16", sm_count=132) == 989.5e12
    with pytest.raises(ValueError):
        F.precision_key("int8")


def test_mfu_arithmetic():
    # ViT-B/16 training at ~105 G FLOPs per image, 3000 images/s on an H100: ~32% MFU
    train = 3 * 2 * 17.56e9
    assert F.mfu(train, 3000.0, 989.5e12) == pytest.approx(train * 3000 / 989.5e12)
    assert F.mfu(train, 3000.0, 989.5e12) == pytest.approx(0.3195, abs=1e-3)
    assert F.mfu(1e12, 1.0, 1e12) == 1.0
    assert F.mfu(train, 0.0, 989.5e12) == 0.0
    assert F.mfu(train, 3000.0, 0) is None
