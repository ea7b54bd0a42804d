"""Hostile images: decoding is never silently wrong (16-bit PNGs, EXIF orientation, alpha) and never
blows up memory (a pixel budget checked on the header, before any decoding; JPEGs over it reduced at
decode); ordinary images decode byte-identically to the decoder this replaced; the pretraining
stream and every transfer stage skip and count bad images instead of stopping, and stop with one
line past ``max_bad_fraction``."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
import tarfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from swagcli.errors import SwagError
from tests.faults.conftest import one_line_error

GARBAGE = b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 3


# -- helpers -----------------------------------------------------------------------------------------
def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h 8-bit grey pixels but holds a few bytes of image data: opening it
    costs nothing, decoding it would fail (truncated). Too large = judged on the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def gradient(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + 2 * yy) % 256], -1).astype(np.uint8)


def old_load_image(data: bytes, size: int, train: bool, rng=None) -> np.ndarray:
    """swagcli.train.data.load_image as it was before swagcli.images (the reference for ordinary images)."""
    from swagcli.train.data import center_box, rrc_box

    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        box = rrc_box(w, h, rng) if train else center_box(w, h)
        reduce = min(box[2] - box[0], box[3] - box[1]) / size
        if reduce >= 2 and im.format == "JPEG":
            im.draft("RGB", (math.ceil(w / reduce), math.ceil(h / reduce)))
            sx, sy = im.size[0] / w, im.size[1] / h
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        if im.mode != "RGB":
            im = im.convert("RGB")
        out = np.asarray(im.resize((size, size), Image.BILINEAR, box=box))
    if train and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


# -- 1. 16-bit and other modes ---------------------------------------------------------------------------
def _grey16() -> np.ndarray:
    return (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64 + 7).astype(np.uint16)  # 7 .. 65479


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "PPM"])
def test_16_bit_greyscale_decodes_to_its_8_bit_picture_not_white(fmt):
    from swagcli.train.data import load_image

    a = _grey16()
    data = encode(Image.fromarray(a), fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode in ("I;16", "I;16B", "I"), im.mode  # PNG: I;16, PGM: I
    out = load_image(data, 32, train=False)
    want = (a >> 8).astype(np.uint8)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], want) and np.array_equal(out[..., 1], want) and np.array_equal(out[..., 2], want)


def test_16_bit_big_endian_and_32_bit_int_and_float_modes():
    from swagcli.images import decode

    a = _grey16()
    want = (a >> 8).astype(np.uint8)
    big = Image.frombytes("I;16B", (32, 32), a.astype(">u2").tobytes())
    assert np.array_equal(decode(encode(big, "TIFF"), 32, False)[..., 0], want)
    assert np.array_equal(decode(encode(Image.fromarray(a.astype(np.int32)), "TIFF"), 32, False)[..., 0], want)
    f = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)  # float in [0, 1]
    out = decode(encode(Image.fromarray(f), "TIFF"), 32, False)[..., 0]
    assert np.abs(out.astype(int) - np.round(f * 255)).max() <= 1 and out.max() == 255 and out.min() == 0


def test_alpha_palette_and_cmyk_become_the_rgb_picture():
    from swagcli.images import decode

    rgb = gradient(32, 32)
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 255, np.uint8)], -1)
    rgba[:16, :, 3] = 0  # the top half transparent (its colour channels are not the picture)
    out = decode(encode(Image.fromarray(rgba), "PNG"), 32, False)
    assert np.array_equal(out[16:], rgb[16:]) and (out[:16] == 255).all()  # over white
    la = Image.fromarray(rgba[..., 0]).convert("LA")
    assert decode(encode(la, "PNG"), 32, False).shape == (32, 32, 3)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert np.array_equal(decode(encode(pal, "PNG"), 32, False), np.asarray(pal.convert("RGB")))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    data = encode(cmyk, "JPEG", quality=95)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode(data, 32, False), ref)


# -- 2. EXIF orientation -----------------------------------------------------------------------------------
# what the camera stored = the upright picture with the inverse of the transpose EXIF asks for
_INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}


def _stored(upright: Image.Image, orientation: int, fmt: str, **kw) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(upright.transpose(_INVERSE[orientation]), fmt, exif=exif.tobytes(), **kw)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied_before_the_crop(orientation):
    """Stored rotated/flipped with its EXIF tag, a picture decodes exactly as the upright one (PNG: no
    JPEG noise), with the same random crops: the box is drawn on the upright picture."""
    from swagcli.train.data import SampleRNG, load_image

    upright = Image.fromarray(gradient(40, 24))
    plain = encode(upright, "PNG")
    tagged = _stored(upright, orientation, "PNG")
    with Image.open(io.BytesIO(tagged)) as im:
        assert im.getexif().get(0x0112) == orientation
    assert np.array_equal(load_image(tagged, 16, False), load_image(plain, 16, False))
    for seed in range(4):
        assert np.array_equal(load_image(tagged, 16, True, SampleRNG(seed)),
                              load_image(plain, 16, True, SampleRNG(seed)))


def test_jpeg_orientation_6_is_upright_with_the_reduced_decode():
    """Orientation 6 (a phone held upright): the reduced (draft) decode happens on the stored
    orientation, the crop is drawn upright; the result is the upright full decode, up to JPEG noise."""
    from swagcli.train.data import SampleRNG, center_box, load_image, rrc_box

    upright = gradient(480, 640)  # portrait
    upright[:320, :, 0] = 250  # a red top half: what "upright" looks like
    data = _stored(Image.fromarray(upright), 6, "JPEG", quality=95)
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert full.size == (480, 640)
    for train, seed in [(False, 0)] + [(True, s) for s in range(5)]:
        out = load_image(data, 32, train, SampleRNG(seed))
        rng = SampleRNG(seed)
        box = rrc_box(480, 640, rng) if train else center_box(480, 640)
        ref = np.asarray(full.resize((32, 32), Image.BILINEAR, box=box))
        if train and rng.random() < 0.5:
            ref = ref[:, ::-1]
        assert np.abs(out.astype(float) - ref).mean() < 3, (train, seed)
    eval_out = load_image(data, 32, False)
    assert eval_out[:4, :, 0].mean() > 200 and eval_out[-4:, :, 0].mean() < 200  # red on top


# -- 3. the pixel budget -------------------------------------------------------------------------------------
def test_a_small_png_claiming_many_pixels_is_too_large_before_decoding():
    """The reported 20 KB PNG just under PIL's limit (~640 MB, 1.3 s per decode): too large from its
    header alone (the image data here is a few bytes: decoding would fail as truncated)."""
    from swagcli.images import MAX_PIXELS, ImageTooLarge, decode

    data = png_header(9400, 9400)  # 88.4 M pixels: under PIL's 89.5 M, no warning
    assert len(data) < 200 and MAX_PIXELS == 32_000_000
    t = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="max_pixels") as e:
        decode(data, 32, False)
    assert e.value.reason == "too_large" and time.perf_counter() - t < 0.5
    with pytest.raises(ImageTooLarge):
        decode(png_header(3000, 2000), 32, False, max_pixels=5_000_000)
    from swagcli.images import Undecodable

    with pytest.raises(Undecodable) as e:  # within the budget it is decoded, and is truncated
        decode(png_header(3000, 2000), 32, False)
    assert e.value.reason == "undecodable"


def test_pil_decompression_bombs_never_escape():
    from swagcli.images import ImageTooLarge, decode

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would be raised as an error here
        for w, h in [(20000, 20000), (10000, 9000)]:  # PIL's error (> 179 M) and its warning (> 89.5 M)
            with pytest.raises(ImageTooLarge):
                decode(png_header(w, h), 32, False, max_pixels=10**9)


def test_pil_decompression_bomb_warning_on_a_jpeg_counts_as_too_large(monkeypatch):
    from swagcli.images import ImageTooLarge, decode

    data = encode(Image.fromarray(gradient(640, 480)), "JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # 307,200 pixels: PIL warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLarge):
            decode(data, 32, False)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.fixture
def jpeg_loads(monkeypatch):
    """The size each JPEG is decoded at (after any draft)."""
    from PIL import JpegImagePlugin

    sizes = []
    orig = JpegImagePlugin.JpegImageFile.load

    def load(self):
        sizes.append(self.size)
        return orig(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    return sizes


def test_a_jpeg_over_the_budget_is_decoded_reduced_to_fit(jpeg_loads):
    from swagcli.images import ImageTooLarge, decode

    arr = gradient(640, 480)
    data = encode(Image.fromarray(arr), "JPEG", quality=95)
    # 300 px out of 480: the crop alone would decode at full size; the budget asks for 1/2
    out = decode(data, 300, False, max_pixels=100_000)
    assert jpeg_loads == [(320, 240)] and out.shape == (300, 300, 3)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((300, 300), Image.BILINEAR,
                                                                           box=(80, 0, 560, 480)))
    assert np.abs(out.astype(float) - full).mean() < 4
    jpeg_loads.clear()
    decode(data, 300, False, max_pixels=20_000)  # 1/4: 160 x 120 = 19,200
    assert jpeg_loads == [(160, 120)]
    jpeg_loads.clear()
    with pytest.raises(ImageTooLarge, match="1/8"):  # 1/8 is 80 x 60 = 4,800 > 4,000
        decode(data, 300, False, max_pixels=4_000)
    assert jpeg_loads == []  # never decoded
    # the crop's own reduction, when deeper than the budget's, is kept (the draws do not change)
    jpeg_loads.clear()
    decode(data, 16, False, max_pixels=100_000)
    assert jpeg_loads == [(80, 60)]


def test_a_progressive_jpeg_over_the_budget_is_too_large(jpeg_loads):
    """libjpeg buffers a progressive JPEG's coefficients at full size whatever the DCT scale: the
    reduced decode does not bound its memory."""
    from swagcli.images import ImageTooLarge, decode

    data = encode(Image.fromarray(gradient(640, 480)), "JPEG", progressive=True)
    with pytest.raises(ImageTooLarge, match="progressive"):
        decode(data, 300, False, max_pixels=100_000)
    assert jpeg_loads == []
    assert decode(data, 32, False).shape == (32, 32, 3)  # within the budget: decoded as before


def test_oversized_pngs_are_too_large_and_fit_when_the_budget_allows():
    from swagcli.images import ImageTooLarge, decode

    data = encode(Image.new("L", (600, 500), 128), "PNG")
    with pytest.raises(ImageTooLarge):
        decode(data, 32, False, max_pixels=299_999)
    assert (decode(data, 32, False, max_pixels=300_000) == 128).all()


# -- 4. ordinary images: byte-identical to the old decoder -------------------------------------------------------
def _ordinary_images(tiny_world) -> list[bytes]:
    out = []
    for url in tiny_world["shards"][:2]:
        with tarfile.open(url) as t:
            out += [t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg")][:40]
    world = Path(tiny_world["world"])
    out += [p.read_bytes() for p in sorted((world / "downstream" / "train").rglob("*.jpg"))[:20]]
    out += [p.read_bytes() for p in sorted((world / "groups" / "images").glob("*.jpg"))[:10]]
    rng = np.random.default_rng(0)
    for w, h in [(640, 480), (257, 131), (100, 380), (1024, 768)]:
        arr = (gradient(w, h).astype(int) + rng.integers(-20, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        out += [encode(im, "JPEG", quality=90), encode(im, "JPEG", quality=75, subsampling=0),
                encode(im, "PNG"), encode(im.convert("L"), "JPEG"), encode(im, "JPEG", progressive=True)]
    return out


def test_ordinary_images_decode_byte_identical_to_the_old_decoder(tiny_world):
    from swagcli.images import decode
    from swagcli.train.data import SampleRNG, load_image

    images = _ordinary_images(tiny_world)
    assert len(images) > 80
    for n, data in enumerate(images):
        for size in (32, 16, 24, 224):
            assert np.array_equal(decode(data, size, False), old_load_image(data, size, False)), (n, size)
            for seed in range(3):
                new = load_image(data, size, True, SampleRNG(n, seed))
                old = old_load_image(data, size, True, SampleRNG(n, seed))
                # the same bytes; a flip is now made by PIL (a contiguous array: collate's
                # np.stack copied the old negative-stride view 3 bytes at a time)
                assert np.array_equal(new, old) and new.flags.c_contiguous, (n, size, seed)


def test_images_module_keeps_torch_out():
    import subprocess
    import sys

    code = "import sys, swagcli.images; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


# -- the pretraining stream counts too_large apart ------------------------------------------------------------
def _oversized_copy(src_shards, dst, every=9) -> list[str]:
    out = []
    for n, src in enumerate(src_shards):
        p = dst / f"big-{n}.tar"
        with tarfile.open(src) as tin, tarfile.open(p, "w") as tout:
            for i, m in enumerate(tin.getmembers()):
                data = tin.extractfile(m).read()
                if m.name.endswith(".jpg") and i % every == 0:
                    data = png_header(9400, 9400)
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
        out.append(str(p))
    return out


def test_stream_counts_too_large_apart_and_names_max_pixels(tiny_world, tmp_path):
    from swagcli.train.data import StreamConfig, make_loader

    shards = _oversized_copy(tiny_world["shards"], tmp_path)
    cfg = StreamConfig(shards=shards, plan_dir=str(tiny_world["plan"]), resolution=32, loop=False,
                       max_bad_fraction=0.5)
    stats, n = {}, 0
    for b in make_loader(cfg, batch_size=128, workers=0):
        n += len(b["image"])
        (info,) = b["streams"].values()
        stats = info[2]
    assert stats["too_large"] > 100 and stats["undecodable"] == 0
    assert stats["bad"] == stats["too_large"] and n == stats["yielded"] == stats["planned"] - stats["too_large"]
    cfg.max_bad_fraction = 0.01
    with pytest.raises(SwagError, match=r"too large.*data\.max_pixels") as e:
        for _ in make_loader(cfg, batch_size=128, workers=0):
            pass
    assert "\n" not in str(e.value)


# -- 5. transfer stages skip and count -----------------------------------------------------------------------------
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


def class_folders(root: Path, per_class: int, bad: dict[tuple[int, int], bytes] | None = None) -> Path:
    """ROOT/cK/iNN.jpg: 16 px images, one colour per class plus noise; ``bad[(class, i)]`` replaces
    that image's bytes."""
    rng = np.random.default_rng(len(str(root)))
    for c, colour in enumerate(COLOURS):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            data = (bad or {}).get((c, i))
            if data is None:
                arr = (np.array(colour) + rng.integers(-40, 40, (16, 16, 3))).clip(0, 255).astype(np.uint8)
                data = encode(Image.fromarray(arr), "JPEG", quality=90)
            (d / f"i{i:02d}.jpg").write_bytes(data)
    return root


KW = "source.kwargs={img_size: 16, patch_size: 8}"


def _probe_args(train, val, out, *sets):
    return ["probe", "--model", "test_vit", "--train", train, "--val", val, "--out", out, "--set", KW,
            "--set", "data.workers=0", "--seeds", "1", *[a for s in sets for a in ("--set", s)]]


def test_probe_skips_and_counts_a_corrupt_image(cli, tmp_path):
    train = class_folders(tmp_path / "train", 30, {(1, 3): GARBAGE})  # 1 of 120: under 1%
    val = class_folders(tmp_path / "val", 5)
    res = cli(*_probe_args(train, val, tmp_path / "p"))
    assert res.code == 0, res
    doc = json.loads((tmp_path / "p" / "probe.json").read_text())
    sk = doc["skipped_images"]
    assert sk["skipped"] == sk["undecodable"] == 1 and sk["too_large"] == 0
    assert sk["train"]["skipped"] == 1 and sk["train"]["images"] == 120 and sk["val"]["skipped"] == 0
    assert sk["files"][0]["file"].endswith("c1/i03.jpg") and sk["files"][0]["reason"] == "undecodable"
    assert doc["train_images"] == 119 and doc["val_images"] == 20
    # a cached rerun knows which images were skipped without decoding them again
    chunk = tmp_path / "p" / "features" / "train" / "chunk-00000.npy"
    before = chunk.stat().st_mtime_ns
    res = cli(*_probe_args(train, val, tmp_path / "p"))
    assert res.code == 0, res
    again = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert chunk.stat().st_mtime_ns == before and again["skipped_images"] == sk
    assert again["summary"] == doc["summary"]
    # a chunk whose list of skipped images is lost is recomputed, never trusted
    (tmp_path / "p" / "features" / "train" / "chunk-00000.skipped.json").unlink()
    res = cli(*_probe_args(train, val, tmp_path / "p"))
    assert res.code == 0, res
    third = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert chunk.stat().st_mtime_ns != before and third["skipped_images"] == sk


def test_probe_drops_skipped_rows_of_train_and_val_consistently(tmp_path):
    from swagcli import recipes
    from swagcli.evaluate.probe import run

    big = png_header(9400, 9400)
    train = class_folders(tmp_path / "train", 10, {(0, 0): GARBAGE, (2, 9): big})
    val = class_folders(tmp_path / "val", 5, {(3, 4): GARBAGE})
    r = recipes.load("probe", flags={"out": str(tmp_path / "p")}, overrides=[
        f"data.train=[{train}]", f"data.val=[{val}]", "data.workers=0", "source.model=test_vit", KW,
        "data.max_bad_fraction=0.1"])
    res = run(r)
    sk = res["skipped_images"]
    assert (sk["train"]["undecodable"], sk["train"]["too_large"], sk["val"]["undecodable"]) == (1, 1, 1)
    assert res["train_images"] == 38 and res["val_images"] == 19 and sk["skipped"] == 3
    assert res["summary"][0]["images"] == 38


def test_probe_stops_with_one_line_past_max_bad_fraction(cli, tmp_path):
    bad = {(c, i): GARBAGE for c in range(4) for i in range(0, 27, 3)}  # 36 of 120: 30%
    train = class_folders(tmp_path / "train", 30, bad)
    val = class_folders(tmp_path / "val", 5)
    res = cli(*_probe_args(train, val, tmp_path / "p"))
    line = one_line_error(res, "data.train", "36 of 120", "36 undecodable", "max_bad_fraction")
    assert "c0/i00.jpg" in line  # the first bad file
    # too large images are named with the field that sets the budget
    train2 = class_folders(tmp_path / "train2", 30, {(0, 0): png_header(3000, 3000)})
    res = cli(*_probe_args(train2, val, tmp_path / "p2", "data.max_pixels=1000000"))
    assert res.code == 0, res
    assert json.loads((tmp_path / "p2" / "probe.json").read_text())["skipped_images"]["too_large"] == 1
    res = cli(*_probe_args(train2, val, tmp_path / "p3", "data.max_pixels=1000000", "data.max_bad_fraction=0"))
    one_line_error(res, "data.train", "1 of 120", "data.max_pixels", "c0/i00.jpg")


def test_finetune_substitutes_bad_training_images_and_skips_bad_val_images(tmp_path):
    from swagcli import recipes
    from swagcli.evaluate.finetune import run
    from swagcli.train.dist import DistEnv

    train = class_folders(tmp_path / "train", 8, {(0, 2): GARBAGE, (3, 7): png_header(9400, 9400)})
    val = class_folders(tmp_path / "val", 3, {(1, 1): GARBAGE})
    r = recipes.load("finetune", flags={"out": str(tmp_path / "ft")}, overrides=[
        f"data.train=[{train}]", f"data.val=[{val}]", "data.workers=0", "source.model=test_vit", KW,
        "batch_size=32", "updates=3", "optim.lr=0.05", "ema=0", "log_every=1", "checkpoint_every=1000",
        "data.max_bad_fraction=0.2"])
    res = run(r, DistEnv(), progress=False)
    assert res["status"] == "finished" and res["images"] == 11
    doc = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    sk = doc["skipped_images"]
    assert sk["train"]["undecodable"] == 1 and sk["train"]["too_large"] == 1 and sk["train"]["substituted"] >= 2
    assert sk["val"]["undecodable"] == 1 and sk["val"]["images"] == 12
    files = {"/".join(Path(f["file"]).parts[-2:]) for f in sk["files"]}
    assert files == {"c0/i02.jpg", "c3/i07.jpg", "c1/i01.jpg"}
    # past the fraction: one line naming the count and the first bad file
    r2 = r.model_copy(update={"out": str(tmp_path / "ft2")})
    r2.data.max_bad_fraction = 0.01
    with pytest.raises(SwagError, match=r"data\.(train|val): .*max_bad_fraction") as e:
        run(r2, DistEnv(), progress=False)
    assert "\n" not in str(e.value) and ("c0/i02.jpg" in str(e.value) or "c1/i01.jpg" in str(e.value))


def test_train_set_substitutes_deterministically():
    from swagcli.evaluate.finetune import TrainSet
    from swagcli.evaluate.transfer import ImageSet, Split

    good = [encode(Image.new("RGB", (16, 16), COLOURS[k]), "PNG") for k in range(3)]
    items = [GARBAGE, good[1], good[2]]

    class Mem(Split):
        def read(self, i):
            return items[i]

    split = Mem(["bad", "g1", "g2"], np.array([0, 1, 2]), ["a", "b", "c"], "mem")
    ts = TrainSet(ImageSet(split, 16, train=True, seed=0))
    x1, y1, bad1 = ts[(0, 5)]
    x2, y2, bad2 = ts[(0, 5)]
    assert y1 == y2 == 1 and np.array_equal(x1, x2)  # the next image, with its own label
    assert bad1 == bad2 and bad1[0][:2] == (0, "undecodable")
    x, y, bad = ts[(2, 7)]
    assert y == 2 and bad == []
    allbad = Mem(["b0", "b1"], np.array([0, 1]), ["a", "b"], "mem")
    items[1] = GARBAGE
    with pytest.raises(SwagError, match="no training image"):
        TrainSet(ImageSet(allbad, 16, train=True))[(0, 0)]


@pytest.fixture(scope="module")
def mini_checkpoint(tiny_world, tmp_path_factory):
    """A swag checkpoint (hashtag head + vocabulary) after two steps: enough for the plumbing."""
    from swagcli import recipes
    from swagcli.train.dist import DistEnv
    from swagcli.train.engine import train

    out = tmp_path_factory.mktemp("mini-pretrained") / "run"
    sets = [f"data.plan={tiny_world['plan']}", "data.shards=[" + ",".join(tiny_world["shards"]) + "]",
            "data.workers=0", "data.shuffle_buffer=50", "batch_size=32", "samples=64", "checkpoint_every=2"]
    r = recipes.load("pretrain", Path(__file__).resolve().parents[2] / "recipes/pretrain/test_vit.yaml",
                     flags={"out": str(out)}, overrides=sets)
    return train(r, DistEnv(), progress=False)["run_dir"]


def _copy_folders(src: Path, dst: Path, bad_every: int) -> tuple[Path, list[str]]:
    bad = []
    for n, f in enumerate(sorted(src.rglob("*.jpg"))):
        to = dst / f.parent.name / f.name
        to.parent.mkdir(parents=True, exist_ok=True)
        if n % bad_every == bad_every - 1:
            to.write_bytes(GARBAGE)
            bad.append(f"{f.parent.name}/{f.name}")
        else:
            to.write_bytes(f.read_bytes())
    return dst, bad


def test_zeroshot_skips_and_drops_the_labels_of_bad_images(tiny_world, mini_checkpoint, tmp_path):
    from swagcli import recipes
    from swagcli.evaluate import zeroshot as Z

    val, bad = _copy_folders(Path(tiny_world["world"]) / "downstream" / "val", tmp_path / "val", 50)
    assert len(bad) == 2

    def rec(out, *sets):
        return recipes.load("zeroshot", flags={"out": str(out)}, overrides=[
            f"source.checkpoint={mini_checkpoint}", f"data.val=[{val}]", "data.workers=0", *sets])

    r = Z.run(rec(tmp_path / "z", "data.max_bad_fraction=0.05"))
    assert r["images"] == 98 and r["skipped_images"]["undecodable"] == 2
    assert {"/".join(Path(f["file"]).parts[-2:]) for f in r["skipped_images"]["files"]} == set(bad)
    doc = json.loads((tmp_path / "z" / "zeroshot.json").read_text())
    assert doc["skipped_images"] == r["skipped_images"]
    again = Z.run(rec(tmp_path / "z", "data.max_bad_fraction=0.05"))  # from the cache
    assert again["skipped_images"] == r["skipped_images"] and again["results"] == r["results"]
    with pytest.raises(SwagError, match=r"data\.val: 2 of 100 images") as e:
        Z.run(rec(tmp_path / "z"))  # default 0.01
    assert bad[0] in str(e.value)


def test_fairness_drops_groups_countries_and_labels_of_bad_images(tiny_world, mini_checkpoint, tmp_path):
    from swagcli import recipes
    from swagcli.evaluate import fairness as F

    world = Path(tiny_world["world"])
    rows = list(csv.DictReader((world / "groups" / "manifest.csv").read_text().splitlines()))
    (tmp_path / "bad.jpg").write_bytes(GARBAGE)
    (tmp_path / "big.png").write_bytes(png_header(9400, 9400))
    for i, name in ((5, "bad.jpg"), (17, "big.png")):
        rows[i]["path"] = str(tmp_path / name)
    for r in rows:
        if not Path(r["path"]).is_absolute():
            r["path"] = str(world / "groups" / r["path"])
    man = tmp_path / "manifest.csv"
    with open(man, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rec = recipes.load("fairness", flags={"out": str(tmp_path / "f")}, overrides=[
        f"source.checkpoint={mini_checkpoint}", f"data.manifest={man}", "associations.attributes=[group]",
        "associations.bootstrap=0", "data.workers=0"])
    res = F.run(rec)
    n = len(rows) - 2
    sk = res["skipped_images"]
    assert (sk["undecodable"], sk["too_large"], res["images"]) == (1, 1, n)
    att = res["associations"]["attributes"]["group"]
    assert sum(g["images"] for g in att["groups"]) + att["missing"] == n
    assert sum(c["images"] for c in res["geography"]["countries"]) == n
    assert json.loads((tmp_path / "f" / "fairness.json").read_text())["skipped_images"] == sk
    rec.data.max_bad_fraction = 0.001
    with pytest.raises(SwagError, match=r"data\.manifest: 2 of 300 images") as e:
        F.run(rec)
    assert "bad.jpg" in str(e.value) and "\n" not in str(e.value)
