"""``data.decode: gpu`` on the CPU device (its CPU fallback): the workers leave JPEGs encoded, and
``batch_images`` decodes, crops and flips them as the CPU path would: same samples, same targets,
same crops and flips, same pixels; PNGs and EXIF-rotated JPEGs decoded in the workers in the same
batch; a JPEG whose header parses but whose data does not is dropped and counted, never a crash."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from swagcli.errors import SwagError
from swagcli.train import gpu_decode
from swagcli.train.data import StreamConfig, batch_images, make_loader
from swagcli.train.gpu_decode import EncodedBatch, resize_box

# The tolerance on pixels, gpu against cpu mode on the CPU device. Measured here: identical bytes
# (torchvision's and Pillow's wheels both carry libjpeg-turbo, and the resize is PIL's integer
# arithmetic redone exactly); allowed, for a torchvision built on another libjpeg: mean < 0.5 and
# max <= 8 grey levels. On a GPU nvJPEG's IDCT differs from libjpeg-turbo's by a level or two.
MEAN_TOL, MAX_TOL = 0.5, 8


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The CPU fallback runs many small torch ops: on a loaded 2-core machine two intra-op threads
    stall them (measured 5.3 s against 0.4 s for the same 384 images); one thread, restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(shards, plan, decode, workers=0, batches=6, **kw):
    """The first ``batches`` batches of the stream over ``shards``, images through batch_images."""
    cfg = StreamConfig(shards=shards, plan_dir=str(plan), resolution=32, loop=False, with_keys=True,
                       shuffle_buffer=200, seed=3, decode=decode, **kw)
    out = []
    for n, b in enumerate(make_loader(cfg, batch_size=64, workers=workers)):
        if n == batches:
            break
        kind = type(b["image"])
        x = batch_images(b, "cpu")
        out.append({"x": x, "keys": b["keys"], "idx": b["target_idx"], "w": b["target_w"], "kind": kind,
                    "streams": b["streams"], "dropped": b.get("dropped", 0), "enc": b["image"]})
    return out


def _same_batches(cpu, gpu):
    assert [b["keys"] for b in cpu] == [b["keys"] for b in gpu]
    diffs = []
    for a, b in zip(cpu, gpu):
        assert torch.equal(a["idx"], b["idx"]) and torch.equal(a["w"], b["w"])
        assert b["x"].dtype == torch.uint8 and b["x"].shape == a["x"].shape and b["x"].stride() == a["x"].stride()
        diffs.append((a["x"].float() - b["x"].float()).abs().flatten())
    d = torch.cat(diffs)
    assert d.mean() < MEAN_TOL and d.max() <= MAX_TOL, (float(d.mean()), float(d.max()))
    return d


def test_gpu_decode_on_cpu_yields_what_cpu_decode_yields(tiny_world):
    shards = tiny_world["shards"][:2]
    cpu = _run(shards, tiny_world["plan"], "cpu", workers=2)
    gpu = _run(shards, tiny_world["plan"], "gpu", workers=2)  # EncodedBatch crosses from the workers
    assert {s for b in gpu for s in b["streams"]} == {0, 1}
    assert all(b["kind"] is torch.Tensor for b in cpu)
    assert all(b["kind"] is EncodedBatch and len(b["enc"].pixels) == 0 for b in gpu)  # every JPEG left to the device
    d = _same_batches(cpu, gpu)
    assert d.max() == 0  # measured: identical (see MEAN_TOL)
    flips = torch.cat([b["enc"].flips for b in gpu])
    assert 0.4 < flips.float().mean() < 0.6  # the same flips: an unflipped image would differ
    assert [b["streams"].keys() for b in cpu] == [b["streams"].keys() for b in gpu]


def _rewrite(src, dst, fn, images=300):
    """A copy of the first ``images`` samples of shard ``src``, each image member passed through
    ``fn(i, name, data)`` -> (name, data) (i counts the images)."""
    i = 0
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name.endswith(".jpg"):
                if i == images:
                    break
                m.name, data = fn(i, m.name, data)
                i += 1
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    return [str(dst)]


def _png_and_rotated(i, name, data):
    im = Image.open(io.BytesIO(data))
    buf = io.BytesIO()
    if i % 3 == 0:
        im.save(buf, format="PNG")
        return name[:-4] + ".png", buf.getvalue()
    if i % 5 == 0:
        exif = Image.Exif()
        exif[0x0112] = 6
        im.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
        return name, buf.getvalue()
    return name, data


def test_a_batch_mixing_pngs_rotated_and_plain_jpegs(tiny_world, tmp_path):
    shards = _rewrite(tiny_world["shards"][0], tmp_path / "mixed.tar", _png_and_rotated)
    cpu = _run(shards, tiny_world["plan"], "cpu")
    gpu = _run(shards, tiny_world["plan"], "gpu")
    enc = [b["enc"] for b in gpu]
    assert all(len(e.pixels) and len(e.jpeg_at) for e in enc)  # decoded in the worker beside left encoded
    assert sum(len(e.pixels) for e in enc) > 0.4 * sum(len(e) for e in enc)  # PNGs and rotated JPEGs
    assert _same_batches(cpu, gpu).max() == 0


def _broken_sof(i, name, data):
    """Every 7th JPEG claims to be lossless (SOF3): its header parses, its data does not decode."""
    return name, data.replace(b"\xff\xc0", b"\xff\xc3", 1) if i % 7 == 0 else data


def test_a_jpeg_whose_data_breaks_after_its_header_is_dropped_and_counted(tiny_world, tmp_path):
    shards = _rewrite(tiny_world["shards"][0], tmp_path / "broken.tar", _broken_sof)
    cpu = _run(shards, tiny_world["plan"], "cpu", batches=None, max_bad_fraction=0.5)  # the whole shard
    gpu = _run(shards, tiny_world["plan"], "gpu", batches=None, max_bad_fraction=0.5)
    undecodable = list(cpu[-1]["streams"].values())[0][2]["undecodable"]
    dropped = sum(b["dropped"] for b in gpu)
    assert undecodable > 20 and dropped == undecodable  # the workers counted them in cpu mode
    keys = [k for b in gpu for k in b["keys"]]
    assert keys == [k for b in cpu for k in b["keys"]]  # the rest, in the same order
    for b in gpu:  # targets and images lost the same rows
        assert len(b["x"]) == len(b["keys"]) == len(b["idx"]) == len(b["w"])
    x = torch.cat([b["x"] for b in gpu])
    assert torch.equal(x, torch.cat([b["x"] for b in cpu]))


def test_jpegs_the_device_refuses_are_decoded_by_pil(tiny_world, monkeypatch):
    def refuse(data, device):
        raise RuntimeError("nvjpeg says no")

    cpu = _run(tiny_world["shards"][:1], tiny_world["plan"], "cpu", batches=2)
    monkeypatch.setattr(gpu_decode, "_decode_jpeg", refuse)
    gpu = _run(tiny_world["shards"][:1], tiny_world["plan"], "gpu", batches=2)
    assert _same_batches(cpu, gpu).max() == 0 and all(b["dropped"] == 0 for b in gpu)
    assert not gpu_decode.device_decodes("cpu")  # a CPU device: torchvision decodes on the CPU


@pytest.mark.parametrize("method", ["matmul", "taps"])
def test_resize_box_is_pils_resize_with_a_box(method):
    """Both resamplers (the CPU's dense float64, the device's int32 taps) give PIL's bytes: boxes
    fractional and whole, down- and upscaling, wide and tall (Pillow 13 runs tall ones vertical
    pass first)."""
    rng = np.random.default_rng(0)
    for i in range(60):
        h, w = (int(v) for v in rng.integers(4, 90, 2))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x0, y0 = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
        box = (x0, y0, rng.uniform(x0 + 0.5, w), rng.uniform(y0 + 0.5, h))
        if i % 3 == 0:  # whole pixels, as RandomResizedCrop draws
            box = (float(int(x0)), float(int(y0)), float(w), float(h))
        size, flip = int(rng.integers(1, 70)), bool(i % 2)
        ref = np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR, box=box))
        got = resize_box(torch.from_numpy(a).permute(2, 0, 1), box, size, flip, method).permute(1, 2, 0).numpy()
        assert np.array_equal(got, ref[:, ::-1] if flip else ref), (i, h, w, box, size)


def test_the_recipe_key_and_the_stream_option_validate(tiny_world):
    from swagcli import recipes

    r = recipes.load("pretrain", "recipes/pretrain/test_vit.yaml", overrides=["data.decode=gpu"])
    assert r.data.decode == "gpu"
    assert recipes.load("pretrain", "recipes/pretrain/test_vit.yaml").data.decode == "cpu"
    with pytest.raises(SwagError, match=r"data\.decode: Input should be 'cpu' or 'gpu'"):
        recipes.load("pretrain", "recipes/pretrain/test_vit.yaml", overrides=["data.decode=nvjpeg"])
    with pytest.raises(SwagError, match="decode 'nvjpeg' is not one of cpu, gpu"):
        _run(tiny_world["shards"][:1], tiny_world["plan"], "nvjpeg")
