"""Weight files swag did not write: torchvision's RegNet and ViT (the layout of the released SWAG
weights) and facebookresearch/SWAG's torch.hub layout are recognised, converted to timm exactly,
their architecture inferred; a checkpoint's model is rebuilt from meta.json, not today's recipe
schema; a released trunk gets a hashtag head with `freeze: backbone`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import VisionTransformer

from swagcli import recipes, weights
from swagcli.errors import SwagError
from tests.faults.conftest import one_line_error

REPO = Path(__file__).resolve().parents[2]
TINY_VIT = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=128, mlp_dim=256,
                representation_size=128, num_classes=7)


def to_hub(sd: dict) -> dict:
    """torchvision keys renamed to facebookresearch/SWAG's hubconf models' layout."""
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = re.sub(r"^stem\.(\d)\.", r"stem.stem.\1.", k)
        k = re.sub(r"\.proj\.0\.weight$", ".proj.weight", k)
        k = k.replace(".proj.1.", ".bn.").replace("f.se.fc1.", "f.se.excitation.0.").replace("f.se.fc2.",
                                                                                               "f.se.excitation.2.")
        k = re.sub(r"\.f\.c\.0\.weight$", ".f.c.weight", k).replace(".f.c.1.", ".f.final_bn.")
        k = re.sub(r"^fc\.", "head.fc.", k)
        k = k.replace("encoder_layer_", "layer_").replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2.")
        k = k.replace("heads.", "head.layers.")
        if k == "encoder.pos_embedding":
            v = v.permute(1, 0, 2).contiguous()  # the hub keeps (S, 1, D)
        out[k] = v
    return out


@pytest.fixture(scope="module")
def tv_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    reg = torchvision.models.regnet_y_400mf(num_classes=10).eval()
    for m in reg.modules():  # non-trivial batch-norm statistics, as trained weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    vit = VisionTransformer(**TINY_VIT).eval()
    torch.save(reg.state_dict(), d / "regnet_y_400mf.pth")
    torch.save(to_hub(reg.state_dict()), d / "regnety_hub.torch")
    torch.save(vit.state_dict(), d / "vit_tv.pth")
    torch.save(to_hub(vit.state_dict()), d / "vit_hub.torch")
    return {"dir": d, "regnet": reg, "vit": vit}


def tv_features(model, x):
    with torch.no_grad():
        if isinstance(model, VisionTransformer):
            t = model._process_input(x)
            t = model.encoder(torch.cat([model.class_token.expand(len(x), -1, -1), t], 1))[:, 0]
            return model.heads.act(model.heads.pre_logits(t))  # the pre-logits layer: swag's
        return model.avgpool(model.trunk_output(model.stem(x))).flatten(1)


@pytest.mark.parametrize("name,kind,layout", [("regnet_y_400mf.pth", "regnet", "torchvision"),
                                              ("regnety_hub.torch", "regnet", "swag-hub"),
                                              ("vit_tv.pth", "vit", "torchvision"),
                                              ("vit_hub.torch", "vit", "swag-hub")])
def test_released_layouts_convert_to_timm_exactly(tv_files, name, kind, layout):
    model, conv, timm_name, kwargs = weights.model_for_file(tv_files["dir"] / name, None, None)
    assert conv.layout == layout and conv.family == kind
    if kind == "regnet":
        assert timm_name == "regnety_004" and conv.pre_logits is None  # inferred from the stage widths
    else:
        assert conv.pre_logits is not None and kwargs["embed_dim"] == 128 and kwargs["depth"] == 2
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.eval().features(x)
    assert torch.allclose(got, tv_features(tv_files[kind], x), atol=1e-5)


def test_a_vit_file_at_another_resolution_is_resampled(tv_files):
    from swagcli.evaluate.transfer import load_source

    spec = recipes.load("probe", flags={"source.checkpoint": str(tv_files["dir"] / "vit_tv.pth")}).source
    src = load_source(spec, resolution=48)  # the file's grid is 4x4 (32 px); 6x6 here
    assert src.model.backbone.pos_embed.shape[1] == 37
    with torch.no_grad():
        assert src.model.features(torch.randn(2, 3, 48, 48)).shape == (2, 128)


def test_another_architecture_is_one_line(cli, tv_files, tiny_world, tmp_path):
    down = tiny_world["world"] / "downstream"
    err = one_line_error(cli("probe", "-c", tv_files["dir"] / "vit_tv.pth", "--model", "regnety_004",
                             "--train", down / "train", "--val", down / "val", "-o", tmp_path / "p"))
    assert "torchvision weights of a ViT (width 128, 2 blocks, patch 8, 32 px, pre-logits layer)" in err
    assert re.search(r"0 of \d+ regnety_004 backbone tensors match", err) and "it looks like vit_" in err


def test_probe_on_the_torchvision_file_equals_the_timm_file(cli, tv_files, tiny_world, tmp_path):
    from safetensors.torch import save_file

    conv = weights.convert(weights.read_state_dict(tv_files["dir"] / "regnet_y_400mf.pth"))
    save_file({k: v.contiguous() for k, v in conv.backbone.items()}, str(tmp_path / "timm.safetensors"))
    down = tiny_world["world"] / "downstream"
    common = ["--train", down / "train", "--val", down / "val", "--set", "data.workers=0", "--set", "seeds=1"]
    a = cli("probe", "-c", tv_files["dir"] / "regnet_y_400mf.pth", "-o", tmp_path / "tv", *common)
    b = cli("probe", "-c", tmp_path / "timm.safetensors", "--model", "regnety_004", "-o", tmp_path / "tm", *common)
    assert a.code == b.code == 0, (a, b)
    pa, pb = (json.loads((tmp_path / d / "probe.json").read_text()) for d in ("tv", "tm"))
    assert pa["source"]["kind"] == "torchvision" and pa["source"]["model"] == "regnety_004"
    assert pa["summary"][0]["top1"] == pb["summary"][0]["top1"]


def _old_checkpoint(tiny_pretrained, tmp_path: Path, format_1: bool) -> Path:
    """A copy of the tiny run's checkpoint whose recipe.yaml has a key today's schema does not know
    (and, for format 1, whose meta.json says only what swag wrote before it described models)."""
    src = Path(tiny_pretrained["checkpoint"])
    ck = tmp_path / "old" / "checkpoints" / src.name
    shutil.copytree(src, ck)
    (ck / "recipe.yaml").write_text((ck / "recipe.yaml").read_text() + "a_key_from_another_version: 3\n")
    if format_1:
        meta = json.loads((ck / "meta.json").read_text())
        keep = ("format", "step", "model", "hashtags", "samples", "total_steps")
        (ck / "meta.json").write_text(json.dumps({k: meta[k] for k in keep}))
    return ck


@pytest.mark.parametrize("format_1", [False, True])
def test_a_checkpoint_loads_whatever_its_recipe_holds(cli, tiny_pretrained, tiny_world, tmp_path, format_1):
    ck = _old_checkpoint(tiny_pretrained, tmp_path, format_1)
    with pytest.raises(SwagError):  # today's schema refuses the recipe...
        recipes.load("pretrain", ck / "recipe.yaml")
    down = tiny_world["world"] / "downstream"  # ...but the checkpoint is read by what it says of itself
    assert cli("zeroshot", ck, down / "val", "-o", tmp_path / "zs", "--set", "data.workers=0").code == 0
    assert cli("probe", "-c", ck, "--train", down / "train", "--val", down / "val", "-o", tmp_path / "p",
               "--set", "data.workers=0", "--set", "fractions=[1.0]").code == 0
    res = cli("export", ck, "-o", tmp_path / "e")
    assert res.code == 0, res
    assert json.loads((tmp_path / "e" / "config.json").read_text())["architecture"] == "test_vit"


def test_a_released_trunk_gets_a_hashtag_head(cli, tiny_world, tiny_pretrained, tmp_path):
    """facebookresearch/SWAG#13: the released trunks have no hashtag head. The tiny run's trunk,
    exported to torchvision's layout and read back from that file, is frozen; a head is trained on
    it from the plan; zero-shot with Platt through that head is well above chance; the trunk's
    weights are bit-identical."""
    from safetensors.torch import load_file

    assert cli("export", tiny_pretrained["run_dir"], "-o", tmp_path / "tv", "--format", "torchvision").code == 0
    trunk = tmp_path / "tv" / "model.safetensors"
    run = tmp_path / "head"
    res = cli("pretrain", "-r", REPO / "recipes/pretrain/test_vit.yaml", "--out", run, "--plan", tiny_world["plan"],
              "--shards", tiny_world["world"] / "images", "--set", f"init.from={trunk}", "--set", "freeze=backbone",
              "--set", "samples=6400", "--set", "batch_size=64", "--set", "optim.lr=0.01", "--set", "data.workers=0",
              "--set", "checkpoint_every=1000")
    assert res.code == 0, res
    result = json.loads((run / "result.json").read_text())
    assert result["init"]["loaded"] > 0 and not result["init"]["missing"]
    before = load_file(str(Path(tiny_pretrained["checkpoint"]) / "model.safetensors"))
    after = load_file(str(Path(result["checkpoint"]) / "model.safetensors"))
    trunk_keys = [k for k in before if k.startswith("backbone.")]
    assert trunk_keys and all(torch.equal(before[k], after[k]) for k in trunk_keys)
    assert not torch.equal(before["head.weight"], after["head.weight"])  # the head is new
    down = tiny_world["world"] / "downstream"
    assert cli("zeroshot", run, down / "val", "-o", tmp_path / "zs", "--set", "data.workers=0").code == 0
    zs = json.loads((tmp_path / "zs" / "zeroshot.json").read_text())
    assert zs["results"]["platt"]["top1"] > 3 * zs["chance_top1"], zs["results"]


def test_freeze_needs_a_trunk(cli, tiny_world, tmp_path):
    one_line_error(cli("pretrain", "-r", REPO / "recipes/pretrain/test_vit.yaml", "--out", tmp_path / "r",
                       "--plan", tiny_world["plan"], "--shards", tiny_world["world"] / "images",
                       "--set", "freeze=backbone", "--set", "samples=32"), "freeze: backbone needs a trunk")
