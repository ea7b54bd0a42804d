"""`swag export`: a swag checkpoint read by tools that are not swag. timm's `local-dir:` loader (in a
process where swag cannot be imported) gives swag's features, and the hashtag logits where timm can
hold the head; `--format torchvision` loads strictly into torchvision's class with the same logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from swagcli import recipes
from swagcli.evaluate.transfer import load_swag
from tests.faults.conftest import one_line_error

REPO = Path(__file__).resolve().parents[2]

LOAD = textwrap.dedent('''
    import importlib.util, json, sys
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f)]  # swag's editable install
    sys.path = [p for p in sys.path if p not in ("", ".", {repo!r})]
    assert importlib.util.find_spec("swagcli") is None, "swag is importable here"
    import timm, torch
    model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
    x = torch.load(sys.argv[2])
    with torch.no_grad():
        y = model(x)
    print(json.dumps({{"out": y.tolist(), "num_classes": model.num_classes,
                      "label_names": model.pretrained_cfg.get("label_names")}}))
''').format(repo=str(REPO))


def timm_outside_swag(folder: Path, x: torch.Tensor, tmp_path: Path) -> dict:
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "load.py").write_text(LOAD)
    res = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(folder), str(tmp_path / "x.pt")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def regnet_run(tiny_world, tmp_path_factory):
    """A swag RegNet (timm regnety_004) pretrained for a few steps on the tiny world."""
    from swagcli.train.dist import DistEnv
    from swagcli.train.engine import train

    out = tmp_path_factory.mktemp("regnet") / "run"
    r = recipes.load("pretrain", REPO / "recipes/pretrain/test_vit.yaml", flags={
        "out": str(out), "data.plan": str(tiny_world["plan"]), "data.shards": tiny_world["shards"]},
        overrides=["model.name=regnety_004", "model.kwargs={}", "samples=192", "batch_size=64", "data.workers=0"])
    return train(r, DistEnv(), progress=False)


def _x(res: int) -> torch.Tensor:
    return torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(3))


def test_a_vit_with_pre_logits_through_timm_without_swag(cli, tiny_pretrained, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "exp"
    assert cli("export", tiny_pretrained["run_dir"], "-o", out).code == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "swag_head.safetensors"]
    src = load_swag(Path(tiny_pretrained["run_dir"]))
    x = _x(32)
    got = timm_outside_swag(out, x, tmp_path)
    with torch.no_grad():
        feats, logits = src.model.backbone(x), src.model(x)
    assert got["num_classes"] == 0 and got["label_names"] == list(src.vocab.names)
    assert torch.allclose(torch.tensor(got["out"]), feats, atol=1e-5)
    with safe_open(str(out / "swag_head.safetensors"), "pt") as f:  # the lines the model card shows
        h = {k: f.get_tensor(k) for k in f.keys()}
        assert json.loads(f.metadata()["labels"]) == list(src.vocab.names)
    mine = torch.tanh(torch.tensor(got["out"]) @ h["pre_logits.weight"].T + h["pre_logits.bias"]) \
        @ h["head.weight"].T + h["head.bias"]
    assert torch.allclose(mine, logits, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "license:" in card and "held-out hashtag accuracy" in card and "swag_head.safetensors" in card


def test_a_regnet_with_its_hashtag_head_through_timm_without_swag(cli, regnet_run, tmp_path):
    out = tmp_path / "exp"
    assert cli("export", regnet_run["run_dir"], "-o", out).code == 0
    assert not (out / "swag_head.safetensors").exists() and not (out / ".swag.lock").exists()
    src = load_swag(Path(regnet_run["run_dir"]))
    x = _x(32)
    got = timm_outside_swag(out, x, tmp_path)
    with torch.no_grad():
        logits = src.model(x)
    assert got["num_classes"] == len(src.vocab) and got["label_names"] == list(src.vocab.names)
    assert torch.allclose(torch.tensor(got["out"]), logits, atol=1e-5)
    out0 = tmp_path / "bb"
    assert cli("export", regnet_run["run_dir"], "-o", out0, "--backbone-only").code == 0
    got0 = timm_outside_swag(out0, x, tmp_path)
    with torch.no_grad():
        assert torch.allclose(torch.tensor(got0["out"]), src.model.backbone(x), atol=1e-5)
    assert got0["num_classes"] == 0 and not got0["label_names"]


@pytest.mark.parametrize("which", ["vit", "regnet"])
def test_torchvision_format_loads_strictly_with_the_same_logits(cli, tiny_pretrained, regnet_run, tmp_path, which):
    import torchvision
    from safetensors.torch import load_file

    run = tiny_pretrained["run_dir"] if which == "vit" else regnet_run["run_dir"]
    out = tmp_path / "tv"
    assert cli("export", run, "-o", out, "--format", "torchvision").code == 0
    cfg = json.loads((out / "config.json").read_text())
    builder = cfg["torchvision"]["builder"].rsplit(".", 1)[1]
    model = getattr(torchvision.models, builder)(**cfg["torchvision"]["args"])
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    if which == "vit":
        assert builder == "VisionTransformer" and cfg["torchvision"]["args"]["representation_size"] == 64
    else:
        assert builder == "regnet_y_400mf"
    src = load_swag(Path(run))
    x = _x(32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), src.model(x), atol=1e-5)


def test_ema_weights_of_a_finetune_run(cli, tiny_world, tiny_pretrained, tmp_path):
    from safetensors.torch import load_file

    from swagcli.train import checkpoint as ck

    down = tiny_world["world"] / "downstream"
    one_line_error(cli("export", tiny_pretrained["run_dir"], "-o", tmp_path / "x", "--ema"), "not a finetune")
    res = cli("finetune", "-c", tiny_pretrained["run_dir"], "--train", down / "train", "--val", down / "val",
              "-o", tmp_path / "ft", "--set", "updates=3", "--set", "batch_size=16", "--set", "ema=0.5",
              "--set", "data.workers=0", "--set", "optim.lr=0.01")
    assert res.code == 0, res
    for flag, name in (("--no-ema", "raw"), ("--ema", "ema")):
        assert cli("export", tmp_path / "ft", "-o", tmp_path / name, flag).code == 0
    raw, ema = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("raw", "ema"))
    st = ck.load_train_state(ck.resolve(tmp_path / "ft"))
    assert torch.equal(ema["blocks.0.attn.qkv.weight"], st["ema"]["backbone.blocks.0.attn.qkv.weight"])
    assert not torch.equal(raw["blocks.0.attn.qkv.weight"], ema["blocks.0.attn.qkv.weight"])
    labels = json.loads((tmp_path / "ema" / "config.json").read_text())["label_names"]
    assert labels == json.loads((ck.resolve(tmp_path / "ft") / "classes.json").read_text())["classes"]
