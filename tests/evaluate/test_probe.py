"""`swag probe` and the transfer plumbing on the tiny world: hashtag pretraining beats random
weights under the same probe; the feature cache resumes and is never reused for another model;
webdataset shards and class folders give the same split; timm weight files load."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from swagcli import recipes
from swagcli.errors import SwagError
from swagcli.evaluate.probe import run as probe
from swagcli.evaluate.transfer import extract, load_source, load_split

KW = "{img_size: 32, patch_size: 8}"


def probe_recipe(world, out, source: list[str], **over):
    sets = [f"data.train=[{world['world']}/downstream/train]", f"data.val=[{world['world']}/downstream/val]",
            "data.workers=0", *source, *[f"{k}={v}" for k, v in over.items()]]
    return recipes.load("probe", flags={"out": str(out)}, overrides=sets)


@pytest.fixture(scope="module")
def probes(tiny_world, tiny_pretrained, tmp_path_factory):
    root = tmp_path_factory.mktemp("probes")
    ckpt = ["source.checkpoint=" + tiny_pretrained["run_dir"]]
    rand = ["source.model=test_vit", f"source.kwargs={KW}"]
    return {"root": root,
            "pre": probe(probe_recipe(tiny_world, root / "pre", ckpt, fractions="[0.1,1.0]", seeds=2)),
            "rand": probe(probe_recipe(tiny_world, root / "rand", rand, fractions="[0.1,1.0]", seeds=2))}


def test_probe_on_hashtag_pretraining_beats_random_weights(probes):
    pre, rand = probes["pre"], probes["rand"]
    full = {k: next(s for s in r["summary"] if s["fraction"] == 1.0) for k, r in probes.items() if k != "root"}
    assert full["pre"]["top1"] >= full["rand"]["top1"] + 0.08, full
    low = {k: next(s for s in r["summary"] if s["fraction"] == 0.1) for k, r in probes.items() if k != "root"}
    assert low["pre"]["top1"] > low["rand"]["top1"], low
    for r in (pre, rand):
        assert r["classes"] == 10 and r["train_images"] == 100 and r["val_images"] == 100
        assert len(r["fits"]) == 3 and all(f["converged"] for f in r["fits"])
        assert [s["images"] for s in r["summary"]] == [10, 100]  # 1 and 10 per class
        out = Path(r["out"])
        assert (out / "probe.png").stat().st_size > 5000 and (out / "classifier.pt").is_file()
        assert json.loads((out / "probe.json").read_text())["summary"] == r["summary"]
        assert (out / "swag.json").is_file() and (out / "recipe.yaml").is_file()


def test_feature_cache_resumes_and_is_keyed_by_model(probes, tiny_world, tiny_pretrained, tmp_path):
    cache = probes["root"] / "pre" / "features" / "train"
    chunk = cache / "chunk-00000.npy"
    before = chunk.stat().st_mtime_ns
    src = load_source(recipes.load("probe", overrides=["source.checkpoint=" + tiny_pretrained["run_dir"]]).source)
    split = load_split([str(tiny_world["world"] / "downstream/train")], "train")
    again = extract(src, split, cache, 32, workers=0)
    assert chunk.stat().st_mtime_ns == before and again.shape == (100, 64)  # read back, not recomputed
    other = load_source(recipes.load("probe", overrides=["source.model=test_vit", f"source.kwargs={KW}"]).source)
    fresh = extract(other, split, cache, 32, workers=0)
    assert chunk.stat().st_mtime_ns != before and not np.allclose(fresh, again)
    chunk.unlink()  # an interrupted extraction: the missing chunk is redone
    assert np.array_equal(extract(other, split, cache, 32, workers=0), fresh)


def _to_shards(folder: Path, out: Path, per_shard: int = 40) -> list[str]:
    files = sorted(p for p in folder.rglob("*.jpg"))
    shards = []
    for s in range(0, len(files), per_shard):
        path = out / f"split-{s // per_shard:03d}.tar"
        with tarfile.open(path, "w") as t:
            for f in files[s:s + per_shard]:
                for name, data in ((f"{f.stem}.jpg", f.read_bytes()), (f"{f.stem}.cls", f.parent.name.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        shards.append(str(path))
    return shards


def test_webdataset_split_matches_class_folders(tiny_world, tiny_pretrained, tmp_path):
    folder = tiny_world["world"] / "downstream" / "train"
    shards = _to_shards(folder, tmp_path)
    a = load_split([str(folder)], "train")
    b = load_split([str(tmp_path / "split-{000..002}.tar")], "train")
    assert a.classes == b.classes and np.array_equal(a.labels, b.labels)
    assert all(a.read(i) == b.read(i) for i in range(len(a)))
    src = load_source(recipes.load("probe", overrides=["source.checkpoint=" + tiny_pretrained["run_dir"]]).source)
    fa = extract(src, a, tmp_path / "fa", 32, workers=0)
    fb = extract(src, b, tmp_path / "fb", 32, workers=0)
    assert np.array_equal(fa, fb)
    val = load_split([str(tiny_world["world"] / "downstream" / "val")], "val", b.classes)
    assert len(val) == 100
    with pytest.raises(SwagError, match="not in the training split"):
        load_split([str(folder)], "val", b.classes[:5])
    with pytest.raises(SwagError, match="no such image shard"):
        load_split([str(tmp_path / "nope-*.tar")], "train")
    assert len(shards) == 3


def test_timm_weight_file_loads_the_backbone(tiny_world, tiny_pretrained, tmp_path):
    from safetensors.torch import save_file

    swag = load_source(recipes.load("probe", overrides=["source.checkpoint=" + tiny_pretrained["run_dir"]]).source)
    sd = {"module." + k: v.contiguous() for k, v in swag.model.backbone.state_dict().items()}
    sd["module.head.weight"] = torch.zeros(1000, 64)  # a classifier the file may carry: dropped
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    for f in ("w.safetensors", "w.pth"):
        spec = recipes.load("probe", overrides=[f"source.checkpoint={tmp_path / f}", "source.model=test_vit",
                                                f"source.kwargs={KW}"]).source
        timm_src = load_source(spec)
        assert timm_src.kind == "timm" and timm_src.resolution == 32
        with torch.no_grad():
            assert torch.allclose(timm_src.model.backbone(x), swag.model.backbone(x))
    wrong = recipes.load("probe", overrides=[f"source.checkpoint={tmp_path / 'w.pth'}", "source.model=resnet18"]).source
    with pytest.raises(SwagError, match="0 of 100 resnet18 backbone tensors match .*it looks like vit_base_patch16_224"):
        load_source(wrong)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SwagError, match="not a readable weight file"):
        load_source(recipes.load("probe", overrides=[f"source.checkpoint={tmp_path / 'junk.pth'}",
                                                     "source.model=test_vit"]).source)


def test_probe_cli_reports_and_fails_in_one_line(swag, tiny_world, tmp_path):
    down = tiny_world["world"] / "downstream"
    ok = swag("probe", "--model", "test_vit", "--set", f"source.kwargs={KW}", "--train", down / "train",
              "--val", down / "val", "--out", tmp_path / "p", "--set", "data.workers=0")
    assert ok.returncode == 0, ok.stderr
    assert "Linear probe: test_vit (random)" in ok.stdout and "probe.json" in ok.stdout
    bad = swag("probe", "--model", "test_vit", "--train", down / "train", "--out", tmp_path / "q")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: data.val: no images given")
    assert len(bad.stderr.strip().splitlines()) == 1
    nosrc = swag("probe", "--train", down / "train", "--val", down / "val", "--out", tmp_path / "r")
    assert nosrc.returncode == 2 and "source.model" in nosrc.stderr


def test_shard_split_groups_like_the_training_stream(tmp_path):
    """Keys split at the first dot of the file name (not of a dotted directory), metadata skipped,
    samples without an image or a label left out; a broken shard is a one-line error."""
    p = tmp_path / "s.tar"
    members = [("__meta__", b"{}"), ("v1.0/a.jpg", b"AAA"), ("v1.0/a.cls", b"dog"), ("b.JPG", b"BB"),
               ("b.cls", b"cat"), ("c.jpg", b"C"), ("d.cls", b"dog")]
    with tarfile.open(p, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    s = load_split([str(p)], "train")
    assert s.classes == ["cat", "dog"] and s.labels.tolist() == [1, 0]
    assert [s.read(i) for i in range(len(s))] == [b"AAA", b"BB"]
    p.write_bytes(p.read_bytes()[:1600])
    with pytest.raises(SwagError, match="unreadable shard"):
        load_split([str(p)], "train")


def test_finetune_cli_bad_input_is_one_line(swag, tmp_path):
    for args, msg in [(["--head-init", "bogus"], "head_init"),
                      (["--model", "test_vit", "--train", "/nonexistent", "--val", "/nonexistent"], "data.train")]:
        res = swag("finetune", "-o", tmp_path / "x", *args)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and msg in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing written for a refused recipe
