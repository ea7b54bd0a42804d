"""The training stream on real webdataset shards of the tiny world: exact multiplicities across
ranks x workers, resume reproduces the stream, corrupt data skipped and counted."""

from __future__ import annotations

import io
import shutil
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
    diff = lambda a: (out.float() - a.permute(2, 0, 1).float()).abs().mean()  # noqa: E731
    assert diff(centre) < 2 and diff(left) > 10  # PIL's box resize differs only at the borders
