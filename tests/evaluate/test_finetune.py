"""`swag finetune` on the tiny world: it beats the linear probe; the zero-shot initialized head
starts far above chance and beats a random head with one image per class of a fine-grained set;
2-process gloo DDP equals one process on the same global batch; stop-and-resume reproduces the
uninterrupted run; the paper's defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from swagcli import recipes
from swagcli.errors import SwagError
from swagcli.evaluate.finetune import default_lr, default_resolution, run, update_budget
from swagcli.launch import run_local
from swagcli.train import checkpoint as ck
from swagcli.train.dist import DistEnv
from swagcli.train.engine import request_stop


def ft_recipe(world, ckpt, out, **over):
    sets = [f"source.checkpoint={ckpt}", f"data.train=[{world['world']}/downstream/train]",
            f"data.val=[{world['world']}/downstream/val]", "data.workers=0", "batch_size=32",
            "ema=0", "log_every=1", "checkpoint_every=1000", *[f"{k}={v}" for k, v in over.items()]]
    return recipes.load("finetune", flags={"out": str(out)}, overrides=sets)


def test_paper_defaults():
    assert [update_budget(n) for n in (100, 20_000, 20_001, 500_000, 500_001)] == [500, 500, 10_000, 10_000, 20_000]
    assert default_lr("regnety_160", "cub") == 6e-3 and default_lr("regnety_320", "cub") == 3e-3
    assert default_lr("vit_large_patch16_224", "places") == 1.2e-2
    with pytest.raises(SwagError, match="Table 8"):
        default_lr("test_vit", "in1k")
    assert default_resolution("vit_huge_patch14_224", 224) == 518
    assert default_resolution("regnety_1280", 224) == 384 and default_resolution("test_vit", 32) == 32
    r = recipes.load("finetune")
    assert (r.batch_size, r.mixup, r.ema, r.optim.weight_decay, r.optim.nesterov) == (512, 0.1, 1e-4, 0.0, True)


def test_finetuning_beats_the_probe(tiny_world, tiny_pretrained, tmp_path):
    """From the same checkpoint (the run's step 150), finetuning the whole network with the paper's
    recipe (SGD, half-cosine, mixup 0.1) beats the tuned linear probe on frozen features, on the
    fine-grained set (27 sibling classes, 5 training images each, 540 to validate): measured 98.1%
    vs 85.2% at 400 updates of 32 (200 updates: 92.4%). On the world's own downstream set both are
    at 98-100% of 100 images, too close to call."""
    from swagcli.evaluate.probe import run as probe

    run_dir = Path(tiny_pretrained["run_dir"])
    _fine_grained_set(tiny_world["world"], run_dir / "checkpoints" / "step-00000600" / "vocab.json",
                           tmp_path / "fine" / "downstream", train_per_class=5)
    world = {"world": tmp_path / "fine"}
    ckpt = run_dir / "checkpoints" / "step-00000150"
    p = probe(recipes.load("probe", flags={"out": str(tmp_path / "probe")}, overrides=[
        f"source.checkpoint={ckpt}", f"data.train=[{world['world']}/downstream/train]",
        f"data.val=[{world['world']}/downstream/val]", "data.workers=0"]))
    r = run(ft_recipe(world, ckpt, tmp_path / "ft", updates=400, **{"optim.lr": 0.8}), DistEnv(), progress=False)
    assert r["status"] == "finished" and r["step"] == 400
    assert r["top1"] >= p["summary"][0]["top1"] + 0.05, (r["top1"], p["summary"])
    doc = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert doc["top1"] == r["top1"] and doc["source"]["kind"] == "swag"
    ckpt = Path(r["checkpoint"])
    assert json.loads((ckpt / "classes.json").read_text())["classes"][0].endswith(".n.01")


def test_zeroshot_head_init_carries_the_hashtag_head(tiny_world, tiny_pretrained, tmp_path):
    """Before any real update (lr ~ 0), the zero-shot initialized head classifies far above chance
    and the random head at chance: the class -> hashtag map carries the hashtag head over."""
    top1 = {}
    for head in ("zeroshot", "random"):
        r = run(ft_recipe(tiny_world, tiny_pretrained["run_dir"], tmp_path / head, head_init=head, mixup=0,
                          updates=1, **{"optim.lr": 1e-12}), DistEnv(), progress=False)
        top1[head] = r["top1"]
    assert top1["zeroshot"] >= top1["random"] + 0.1 and top1["zeroshot"] >= 0.2, top1


def _fine_grained_set(world_dir: Path, vocab_path: Path, out: Path, max_rank: int = 30,
                           train_per_class: int = 1) -> int:
    """A fine-grained downstream set, where one image per class is not enough: every head concept
    (Zipf rank <= max_rank) of the families with at least 3 of them, so classes differ by the
    object's colour and texture, not by the family's background and shape; ``train_per_class``
    training images per class, 20 to validate. Classes are the concepts' synsets, so the zero-shot
    map finds their hashtags. Returns the number of classes."""
    import numpy as np

    from swagcli.prep.synth_render import jpeg, render

    world = json.loads((world_dir / "world.json").read_text())
    known = {h["name"] for h in json.loads(vocab_path.read_text())["hashtags"]}
    fam: dict[int, list[int]] = {}
    for i, c in enumerate(world["concepts"]):
        if c["rank"] <= max_rank and c["main_tag"] in known:
            fam.setdefault(c["family"], []).append(i)
    picked = [i for members in fam.values() if len(members) >= 3 for i in members]
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", 20)):
        for i in picked:
            d = out / split / world["concepts"][i]["synset"]
            d.mkdir(parents=True)
            for j in range(n):
                (d / f"{j}.jpg").write_bytes(jpeg(render(world["concepts"], [i], rng, world["image_size"])))
    return len(picked)


def test_zeroshot_head_init_beats_a_random_head_at_one_shot(tiny_world, tiny_pretrained, tmp_path):
    """Table 2's claim at small scale: with one labelled image per class of a fine-grained set (27
    sibling classes) and the same short budget (30 updates of 32, lr 0.03), the head started from
    the hashtag head through the zero-shot map ends well above a random head: measured 67.4% vs 53.7%
    (seed 0) and 66.9% vs 55.4% (seed 1). With longer or hotter budgets the random head catches up
    (100 updates at lr 0.01: 67% vs 61%; 30 at lr 0.1: 73% vs 74%)."""
    run_dir = Path(tiny_pretrained["run_dir"])
    classes = _fine_grained_set(tiny_world["world"], run_dir / "checkpoints" / "step-00000600" / "vocab.json",
                                     tmp_path / "fine" / "downstream")
    assert classes >= 15
    world = {"world": tmp_path / "fine"}
    top1 = {}
    for head in ("zeroshot", "random"):
        r = run(ft_recipe(world, run_dir, tmp_path / head, head_init=head, mixup=0, updates=30,
                          **{"optim.lr": 0.03}), DistEnv(), progress=False)
        top1[head] = r["top1"]
    assert top1["zeroshot"] >= top1["random"] + 0.05 and top1["zeroshot"] >= 0.4, top1


def test_zeroshot_init_needs_a_hashtag_head(tiny_world, tmp_path):
    r = ft_recipe(tiny_world, "", tmp_path / "x", head_init="zeroshot", **{"source.checkpoint": "null",
                                                                           "source.model": "test_vit",
                                                                           "optim.lr": 0.1, "updates": 1})
    with pytest.raises(SwagError, match="needs a swag checkpoint"):
        run(r, DistEnv(), progress=False)


def test_two_process_ddp_equals_one_process(tiny_world, tiny_pretrained, tmp_path):
    over = dict(updates=4, mixup=0, micro_batch=8, batch_size=16, **{"optim.lr": 0.4})
    ddp = ft_recipe(tiny_world, tiny_pretrained["run_dir"], tmp_path / "ddp", **over,
                    **{"launcher.local.processes": 2})
    one = ft_recipe(tiny_world, tiny_pretrained["run_dir"], tmp_path / "one", **over)
    a = run_local(run, ddp, 2, tmp_path / "ddp")
    b = run(one, DistEnv(), progress=False)
    la = [json.loads(x)["loss"] for x in open(tmp_path / "ddp" / "metrics.jsonl") if '"loss"' in x]
    lb = [json.loads(x)["loss"] for x in open(tmp_path / "one" / "metrics.jsonl") if '"loss"' in x]
    assert len(la) == len(lb) == 4
    assert all(abs(x - y) <= 1e-4 * abs(y) for x, y in zip(la, lb)), (la, lb)
    wa, wb = _weights(a["checkpoint"]), _weights(b["checkpoint"])
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert a["top1"] == b["top1"]


def _weights(ckpt):
    from safetensors.torch import load_file

    return load_file(str(Path(ckpt) / "model.safetensors"))


def test_stop_and_resume_reproduces_the_run(tiny_world, tiny_pretrained, tmp_path):
    over = dict(updates=6, batch_size=8, ema=0.1, **{"optim.lr": 0.4})
    full = run(ft_recipe(tiny_world, tiny_pretrained["run_dir"], tmp_path / "full", **over), DistEnv(), progress=False)

    def stop_at_3(step):
        if step == 3:
            request_stop()

    part = ft_recipe(tiny_world, tiny_pretrained["run_dir"], tmp_path / "part", **over)
    first = run(part, DistEnv(), progress=False, on_step=stop_at_3)
    assert first["status"] == "preempted" and first["step"] == 3
    second = run(part, DistEnv(), progress=False)
    assert second["status"] == "finished" and second["resumed_from"].endswith("step-00000003")
    wa, wb = _weights(full["checkpoint"]), _weights(second["checkpoint"])
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert abs(full["ema_top1"] - second["ema_top1"]) < 1e-9
    st = ck.load_train_state(Path(second["checkpoint"]))
    assert st["step"] == 6 and st["ema"]


def test_lr_grid_picks_on_a_heldout_split(tiny_world, tiny_pretrained, tmp_path):
    r = run(ft_recipe(tiny_world, tiny_pretrained["run_dir"], tmp_path / "g", updates=6, grid_updates=4,
                      lr_grid="[0.000001,0.8]"), DistEnv(), progress=False)
    assert [g["lr"] for g in r["lr_grid"]] == [1e-6, 0.8]
    assert r["lr"] == max(r["lr_grid"], key=lambda g: g["heldout_top1"])["lr"]
    assert all(g["heldout_images"] == 10 for g in r["lr_grid"])  # 10% of 100, stratified
    assert (tmp_path / "g" / "lr_grid" / "lr-0.8" / "checkpoints" / "latest").is_file()
    assert torch.tensor(r["lr_grid"][1]["heldout_top1"]) > torch.tensor(r["lr_grid"][0]["heldout_top1"])
