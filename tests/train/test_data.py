"""The training stream on real webdataset shards of the tiny world: exact multiplicities across
ranks x workers, resume reproduces the stream, corrupt data skipped and counted."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from swagcli.errors import SwagError
from swagcli.prep.sample import load_part, load_plan
from swagcli.train.data import (StreamConfig, StreamPosition, center_box, load_image, make_loader)


def planned(plan_dir) -> tuple[Counter, dict]:
    doc = load_plan(plan_dir)
    mult, labels = Counter(), {}
    for part in doc["parts"]:
        a = load_part(doc, part)
        for j, key in enumerate(a["ids"].tolist()):
            mult[key] = int(a["mult"][j])
            labels[key] = a["labels"][a["label_ptr"][j]:a["label_ptr"][j + 1]].tolist()
    return mult, labels


def test_two_ranks_two_workers_see_every_sample_as_planned(tiny_world):
    want, labels = planned(tiny_world["plan"])
    seen, owner = Counter(), {}
    for rank in range(2):
        cfg = StreamConfig(shards=tiny_world["shards"], plan_dir=str(tiny_world["plan"]), resolution=32,
                           loop=False, with_keys=True, shuffle_buffer=300)
        for batch in make_loader(cfg, batch_size=50, workers=2, rank=rank, world=2):
            (stream,) = batch["streams"]  # a batch comes from one stream
            for i, key in enumerate(batch["keys"]):
                seen[key] += 1
                assert owner.setdefault(key, (rank, stream)) == (rank, stream)  # one stream per image
                k = int((batch["target_w"][i] > 0).sum())
                assert sorted(batch["target_idx"][i, :k].tolist()) == labels[key]
                assert torch.allclose(batch["target_w"][i, :k], torch.full((k,), 1.0 / k))
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
    assert seen == want and sum(seen.values()) == 5000
    assert len({o for o in owner.values()}) == 4  # all four streams had work


def test_resume_continues_the_same_stream(tiny_world):
    def cfg(start=None):
        return StreamConfig(shards=tiny_world["shards"], plan_dir=str(tiny_world["plan"]), resolution=32,
                            with_keys=True, shuffle_buffer=200, seed=5, start=start or {})

    full = []
    for i, b in enumerate(make_loader(cfg(), batch_size=40, workers=2)):
        full.append(b)
        if i == 9:
            break
    # interrupted after 6 batches: each stream's position from the last batch it delivered
    pos = {}
    for b in full[:6]:
        for stream, (epoch, offset, _) in b["streams"].items():
            pos[stream] = StreamPosition(epoch, offset + 1)
    resumed = []
    for i, b in enumerate(make_loader(cfg(pos), batch_size=40, workers=2)):
        resumed.append(b)
        if i == 3:
            break
    for a, b in zip(full[6:], resumed):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["image"], b["image"])  # same crops and flips


def _consume(tiny_world, layout, world, workers, start=None, batches=None):
    """What ``world`` ranks x ``workers`` take of one epoch dealt as ``layout``: per stream, the
    (offset, key) of each sample in the order taken, and where each stream stands after the last
    batch taken (``batches`` per rank; all of them when None)."""
    taken, pos = {}, dict(start or {})
    for rank in range(world):
        cfg = StreamConfig(shards=tiny_world["shards"], plan_dir=str(tiny_world["plan"]), resolution=16,
                           loop=False, with_keys=True, shuffle_buffer=layout["shuffle_buffer"], seed=3,
                           streams=layout["streams"], start=dict(start or {}))
        for i, batch in enumerate(make_loader(cfg, batch_size=40, workers=workers, rank=rank, world=world)):
            if batches is not None and i == batches:
                break
            for (stream, epoch, offset), key in zip(batch["where"], batch["keys"]):
                assert epoch == 0
                taken.setdefault(stream, []).append((offset, key))
            for stream, (epoch, offset, _) in batch["streams"].items():
                pos[stream] = StreamPosition(epoch, offset + 1)
    return taken, pos


@pytest.mark.parametrize("before,after", [((2, 1), (1, 1)), ((1, 1), (1, 2))],
                         ids=["2-processes-then-1", "1-worker-then-2"])
def test_a_resume_on_another_layout_sees_each_planned_sample_exactly_as_planned(tiny_world, before, after):
    """Elastic resume: an epoch begun by one number of processes x workers and finished by another
    sees every planned sample exactly as often as planned (none repeated, none skipped), and each
    of the run's streams yields what it yields uninterrupted (the same keys at the same offsets)."""
    from swagcli.train.data import stream_layout

    want, _ = planned(tiny_world["plan"])
    layout = stream_layout(len(tiny_world["shards"]), *before, shuffle_buffer=300, streams=4)
    assert layout["shuffle_buffer"] == 300 // (4 // (before[0] * before[1]))  # a worker's buffer, shared
    whole, _ = _consume(tiny_world, layout, *before)
    first, pos = _consume(tiny_world, layout, *before, batches=7)
    assert 0 < sum(map(len, first.values())) < 5000 / 2
    rest, _ = _consume(tiny_world, layout, *after, start=pos)
    seen = Counter(key for part in (first, rest) for got in part.values() for _, key in got)
    assert seen == want and sum(seen.values()) == 5000
    for stream, got in whole.items():  # each stream: its order, continued where it stood
        assert first.get(stream, []) + rest.get(stream, []) == got


def test_stream_loops_over_epochs_with_new_order(tiny_world):
    cfg = StreamConfig(shards=tiny_world["shards"], plan_dir=str(tiny_world["plan"]), resolution=32,
                       with_keys=True, shuffle_buffer=100)
    epochs = Counter()
    firsts = {}
    for i, b in enumerate(make_loader(cfg, batch_size=500, workers=0)):
        (info,) = b["streams"].values()
        epochs[info[0]] += len(b["keys"])
        firsts.setdefault(info[0], b["keys"][:20])
        if i == 21:
            break
    assert epochs[0] == 5000 and epochs[1] > 0  # one epoch is exactly the plan
    assert firsts[0] != firsts[1]


def _corrupt_copy(src_shards, dst, garbage_every=7, truncate_last=True):
    out = []
    for n, src in enumerate(src_shards):
        p = dst / f"bad-{n}.tar"
        with tarfile.open(src) as tin, tarfile.open(p, "w") as tout:
            for i, m in enumerate(tin.getmembers()):
                data = tin.extractfile(m).read()
                if m.name.endswith(".jpg") and i % garbage_every == 0:
                    data = b"\xff\xd8not a jpeg at all"
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
        out.append(str(p))
    if truncate_last:
        raw = open(out[-1], "rb").read()
        open(out[-1], "wb").write(raw[: len(raw) // 2 + 100])
    return out


def test_corrupt_images_and_truncated_shards_are_counted(tiny_world, tmp_path):
    shards = _corrupt_copy(tiny_world["shards"], tmp_path)
    cfg = StreamConfig(shards=shards, plan_dir=str(tiny_world["plan"]), resolution=32, loop=False,
                       max_bad_fraction=0.5)
    stats, n = {}, 0
    for b in make_loader(cfg, batch_size=64, workers=0):
        n += len(b["image"])
        (info,) = b["streams"].values()
        stats = info[2]
    assert stats["undecodable"] > 100 and stats["bad_shards"] == 1
    assert n == stats["yielded"] < 5000
    cfg.max_bad_fraction = 0.01
    with pytest.raises(SwagError, match="undecodable"):
        for _ in make_loader(cfg, batch_size=64, workers=0):
            pass


def test_eval_transform_is_center_crop(tiny_world):
    from PIL import Image

    im = Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(40, 60, 3) % 251)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    out = load_image(buf.getvalue(), 20, train=False)
    assert center_box(60, 40) == (10, 0, 50, 40)
    centre = torch.from_numpy(np.asarray(im.crop((10, 0, 50, 40)).resize((20, 20), Image.BILINEAR)).copy())
    left = torch.from_numpy(np.asarray(im.crop((0, 0, 40, 40)).resize((20, 20), Image.BILINEAR)).copy())
    out = torch.from_numpy(out.copy())
    diff = lambda a: (out.float() - a.float()).abs().mean()  # noqa: E731
    assert diff(centre) < 2 and diff(left) > 10  # PIL's box resize differs only at the borders


def _webdataset_samples(url):
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    with open(url, "rb") as f:
        return [{k: v for k, v in s.items() if k != "__local_path__"}
                for s in group_by_keys({**m, "__url__": url} for m in tar_file_iterator(f))]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_lean_tar_reader_groups_as_webdataset(tiny_world, tmp_path, fmt):
    """swag's tar reader yields exactly webdataset's samples: on the real shards, and on a shard
    with long names (GNU/pax/ustar prefix), unicode, directories, metadata members and keys whose
    file names carry several dots."""
    from swagcli.train.data import StreamStats, _samples

    for url in tiny_world["shards"][:2]:
        got = list(_samples(url, StreamStats()))
        assert got == _webdataset_samples(url) and len(got) > 100
    p = str(tmp_path / "odd.tar")
    long_dir = "d" * 120 if fmt != tarfile.USTAR_FORMAT else "sub/" + "d" * 90
    members = [("__meta__", b"{}"), ("a.jpg", b"1"), ("a.json", b"{}"), ("a.cls.txt", b"3"),
               (f"{long_dir}/b.JPG", b"x" * 513), (f"{long_dir}/b.json", b"[]"),
               ("caf\u00e9.jpg", b"2" * 512), ("dir/", None), ("c.seg.png", b""), ("noext", b"?")]
    with tarfile.open(p, "w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    stats = StreamStats()
    got = list(_samples(p, stats))
    assert got == _webdataset_samples(p) and stats.bad_shards == 0
    assert [s["__key__"] for s in got] == ["a", f"{long_dir}/b", "caf\u00e9", "c"]
    raw = open(p, "rb").read()
    for cut in (700, 1600, 4196, 6000):  # truncated mid-member / mid-header: counted, no crash
        open(p, "wb").write(raw[:cut])
        stats = StreamStats()
        list(_samples(p, stats))
        assert stats.bad_shards == 1
    bad = bytearray(raw)
    bad[3072 + 10] ^= 0xFF  # a flipped byte in the fourth header: bad checksum
    open(p, "wb").write(bytes(bad))
    stats = StreamStats()
    list(_samples(p, stats))
    assert stats.bad_shards == 1


def test_reduced_jpeg_decode_matches_full_decode():
    """Large JPEGs are decoded at a reduced DCT scale when the crop allows it: the result is the
    full decode + bilinear resize up to JPEG noise, for the eval crop and for random crops."""
    from PIL import Image

    from swagcli.train.data import SampleRNG, rrc_box

    yy, xx = np.mgrid[0:480, 0:640]
    arr = np.stack([xx * 255 // 640, yy * 255 // 480, (xx + yy) % 256 // 2 + 64], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    full = Image.open(io.BytesIO(data)).convert("RGB")
    for train, seed in [(False, 0)] + [(True, s) for s in range(6)]:
        out = load_image(data, 32, train, SampleRNG(seed))
        rng = SampleRNG(seed)
        box = rrc_box(640, 480, rng) if train else center_box(640, 480)
        ref = np.asarray(full.resize((32, 32), Image.BILINEAR, box=box))
        if train and rng.random() < 0.5:
            ref = ref[:, ::-1]
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(float) - ref).mean() < 3, (train, seed)


# -- img2dataset shards as they come ---------------------------------------------------------------
@pytest.fixture(scope="module")
def i2d_plan(layouts, tmp_path_factory):
    """A vocabulary built from the world's YFCC100M metadata, a plan drawn from its img2dataset
    folder (the user-tags column): the walk-through of the README."""
    from swagcli import recipes
    from swagcli.prep import sample, vocab

    world, _ = layouts
    root = tmp_path_factory.mktemp("i2d")
    vocab.build(recipes.load("vocab", flags={"dumps": [str(world / "yfcc")], "out": str(root / "vocab"),
                                             "head_min_images": 40}))
    sample.build(recipes.load("sample", flags={"vocab": str(root / "vocab"), "dumps": [str(world / "img2dataset")],
                                               "out": str(root / "plan"), "samples": 1500, "holdout": 0.1},
                              overrides=["fields.tags=usertags"]))
    return world / "img2dataset", root


def test_stream_reads_img2dataset_shards_by_key(i2d_plan):
    from swagcli.train.engine import expand_shards

    folder, root = i2d_plan
    plan = load_plan(root / "plan")
    assert plan["sources"] == {"formats": ["img2dataset"], "fields": {"tags": "usertags"}, "labels": "hashtags"}
    shards = expand_shards([], plan)  # none given: the tars beside the plan's parquet sources
    assert shards == sorted(str(p) for p in folder.glob("*.tar")) == expand_shards([str(folder)])
    want, labels = planned(root / "plan")
    assert all(k.isdigit() and len(k) == 9 for k in want)  # img2dataset keys: shard + index
    cfg = StreamConfig(shards=shards, plan_dir=str(root / "plan"), resolution=16, loop=False, with_keys=True)
    seen = Counter()
    for batch in make_loader(cfg, batch_size=100, workers=0):
        for i, key in enumerate(batch["keys"]):
            seen[key] += 1
            k = int((batch["target_w"][i] > 0).sum())
            assert sorted(batch["target_idx"][i, :k].tolist()) == labels[key]
        stats = next(iter(batch["streams"].values()))[2]
    assert seen == want and sum(seen.values()) == 1500
    assert stats["bad"] == 0 and stats["not_planned"] > 0  # held-out and tag-less images are read past


def test_pretrain_on_an_img2dataset_folder(i2d_plan, swag, tmp_path):
    folder, root = i2d_plan
    run = tmp_path / "run"
    swag("pretrain", "-r", "recipes/pretrain/test_vit.yaml", "-o", run, "--plan", root / "plan",
         "--set", "samples=256", "--set", "data.workers=0", "--set", "data.resolution=16",
         "--set", "model.kwargs.img_size=16", check=True)
    res = json.loads((run / "result.json").read_text())
    assert res["status"] == "finished" and res["samples"] == 256 and res["stream"]["bad"] == 0
    assert res["image_shards"]["count"] == 3 and res["image_shards"]["from"] == "the plan's img2dataset sources"
    assert res["eval_images"] > 0
    with pytest.raises(AssertionError, match="folder holds no .tar shards"):
        swag("pretrain", "-r", "recipes/pretrain/test_vit.yaml", "-o", tmp_path / "r2", "--plan", root / "plan",
             "--shards", tmp_path, check=True)
