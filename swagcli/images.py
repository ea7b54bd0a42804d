"""Image bytes -> the uint8 picture a model sees: never silently wrong, never past a pixel budget.

:func:`decode` is the one decoder of swag (the pretraining stream, the transfer stages); torch-free.

* **Crops.** Training: torchvision's RandomResizedCrop + a horizontal flip, drawn from the caller's
  generator; evaluation: short-side resize + center crop. The box is drawn on the upright picture
  (EXIF orientation applied), at full size, so the draws never depend on how the bytes are decoded.
* **The pixel budget** (``max_pixels``, default :data:`MAX_PIXELS` = 32,000,000 decoded pixels;
  ``data.max_pixels`` in recipes) is checked on the header, before anything is decoded. A
  (baseline) JPEG over it is decoded at a reduced DCT scale (``Image.draft``: 1/2, 1/4 or 1/8), the
  least reduction that fits; anything else over it is :class:`ImageTooLarge` and is never decoded:
  PNG, WebP, BMP, GIF, TIFF, a JPEG too large even at 1/8, and a progressive JPEG (libjpeg holds a
  progressive file's coefficients at full size whatever the scale). PIL's own decompression-bomb
  limit (``Image.MAX_IMAGE_PIXELS``; its warning and its error) is :class:`ImageTooLarge` too.
* **Reduced decoding for speed**: a JPEG whose crop is at least twice the output size is decoded at
  a reduced DCT scale (as ``thumbnail`` does, never below the crop's output size), then resized
  with the same bilinear filter, so for camera-sized images most of the decode is skipped.
* **Modes.** EXIF orientation (2-8) is applied, on the decoded (reduced) picture. 16-bit greyscale
  (``I;16*``, and ``I`` where its samples are 0..65535: 16-bit PNG, PGM, TIFF) keeps its top 8
  bits (PIL's ``convert("RGB")`` clips it to white); other ``I`` images and float (``F``) images
  are scaled (``F`` in [0, 1] by 255, else min..max to 0..255). Transparency (RGBA, LA, PA, a
  palette with a transparent colour) is composited over white, since what a transparent pixel
  stores is not the picture; the other modes (L, P, CMYK, YCbCr, ...) go through PIL's RGB
  conversion. Ordinary 8-bit RGB and greyscale images decode exactly as before.
* **Decoding elsewhere.** :func:`decode_or_defer` (the stream's ``decode: gpu``) reads a plain JPEG's
  header only, draws its box and flip as :func:`decode` would, and returns a :class:`JpegCrop` for
  :mod:`swagcli.train.gpu_decode`; :func:`decode_box` is :func:`decode` with the box given, that
  module's fallback. A flip is done by PIL before the pixels become an array (a contiguous array:
  a flipped numpy view cost ~4x more to copy into the batch).
* Only the formats swag's sources carry are opened (:data:`FORMATS`); anything else, corrupt or
  truncated data included, is :class:`Undecodable`. Both errors are :class:`BadImage`, whose
  ``reason`` (``undecodable`` / ``too_large``) is what callers count.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

MAX_PIXELS = 32_000_000
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")  # MPO (camera JPEGs) opens as JPEG
_JPEG = ("JPEG", "MPO")
_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
              7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
FIRST_FILES = 10  # bad files named in a skip report


class BadImage(ValueError):
    """An image swag cannot use; ``reason`` is how it is counted."""

    reason = "undecodable"


class Undecodable(BadImage):
    reason = "undecodable"


class ImageTooLarge(BadImage):
    reason = "too_large"


# -- crops ---------------------------------------------------------------------------------------
def rrc_box(w: int, h: int, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop parameters, drawn from ``rng`` (``uniform``, ``integers``)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * ar)))
        ch = int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            return x, y, x + cw, y + ch
    in_ratio = w / h  # fallback: central crop at the closest allowed ratio
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def center_box(w: int, h: int):
    """Resize the short side, then a center crop of the same size: the square at the center."""
    s = min(w, h)
    x, y = (w - s) / 2, (h - s) / 2
    return x, y, x + s, y + s


# -- decoding ------------------------------------------------------------------------------------
def decode(data: bytes, size: int, train: bool, rng=None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes -> uint8 HWC array of ``size`` x ``size`` (RRC + flip drawn from ``rng`` for training,
    center crop for evaluation). Raises :class:`ImageTooLarge` or :class:`Undecodable`, never
    anything PIL raises."""
    return _opened(data, lambda im: _draw_and_decode(im, size, train, rng, max_pixels))


@dataclass(frozen=True)
class JpegCrop:
    """A JPEG left encoded for the GPU (:mod:`swagcli.train.gpu_decode`), its crop already drawn:
    ``box`` (x0, y0, x1, y1) on the picture as stored (``width`` x ``height``, no EXIF rotation),
    resized to ``size`` x ``size`` with PIL's bilinear filter, then flipped when ``flip``."""

    data: bytes
    width: int
    height: int
    box: tuple[float, float, float, float]
    flip: bool
    size: int


def decode_or_defer(data: bytes, size: int, train: bool, rng=None,
                    max_pixels: int = MAX_PIXELS) -> np.ndarray | JpegCrop:
    """:func:`decode`, except that a JPEG the GPU can take is only opened (its header read), its
    box and flip drawn from ``rng`` exactly as :func:`decode` draws them, and returned undecoded
    as a :class:`JpegCrop`. That is a baseline or progressive JPEG, RGB or greyscale, without EXIF
    rotation, within ``max_pixels`` (no reduced decode needed) and ending in an EOI marker (a
    truncated file goes to :func:`decode`, which counts it as it always has). Anything else is
    decoded here, as by :func:`decode`."""
    def go(im):
        if im.format in _JPEG and im.mode in ("RGB", "L") and im.width * im.height <= max_pixels \
                and data.rfind(b"\xff\xd9", max(0, len(data) - 64)) >= 0 and _orientation(im) is None:
            w, h = im.size
            box = rrc_box(w, h, rng) if train else center_box(w, h)
            return JpegCrop(data, w, h, box, bool(train and rng.random() < 0.5), size)
        return _draw_and_decode(im, size, train, rng, max_pixels)

    return _opened(data, go)


def decode_box(data: bytes, size: int, box, flip: bool, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """:func:`decode` with the crop given: ``box`` on the upright picture at full size (as
    :func:`decode` draws it), then flipped when ``flip``. The GPU decoder's fallback for a
    :class:`JpegCrop` the device would not decode."""
    return _opened(data, lambda im: _array(_decode(im, size, max_pixels, lambda W, H: tuple(box)), flip))


def _draw_and_decode(im, size: int, train: bool, rng, max_pixels: int) -> np.ndarray:
    out = _decode(im, size, max_pixels, (lambda W, H: rrc_box(W, H, rng)) if train else center_box)
    return _array(out, train and rng.random() < 0.5)


def _array(im: Image.Image, flip: bool) -> np.ndarray:
    """The uint8 HWC pixels, flipped left-right by PIL when ``flip``: contiguous, since a flipped
    numpy view costs ~4x more to copy into the batch (measured: 56 µs against 12 µs at 112 px)."""
    return np.asarray(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else im)


def _opened(data: bytes, fn):
    """``fn(image)`` on the opened bytes, what PIL raises turned into :class:`BadImage`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # odd EXIF, palettes
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                return fn(im)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"over PIL's decompression-bomb limit ({_line(e)})") from None
    except MemoryError:
        raise
    except Image.UnidentifiedImageError:
        raise Undecodable(f"not an image in a format swag reads ({', '.join(FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise Undecodable(_line(e)) from None


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _decode(im: Image.Image, size: int, max_pixels: int, draw) -> Image.Image:
    """Decode and crop: ``draw(W, H)`` gives the box on the upright picture at full size."""
    w, h = im.size  # as stored (before any orientation)
    jpeg = im.format in _JPEG
    scale = _budget_scale(im, w, h, jpeg, max_pixels)
    if not jpeg:
        im.load()  # within the budget; a PNG's EXIF may follow its pixels
    orient = _orientation(im)
    turned = orient in (5, 6, 7, 8)
    W, H = (h, w) if turned else (w, h)  # upright
    box = draw(W, H)
    reduce = min(box[2] - box[0], box[3] - box[1]) / size
    if jpeg and (reduce >= 2 or scale > 1):
        want = (math.ceil(w / reduce), math.ceil(h / reduce)) if reduce >= 2 else None
        if want is None or _draft_scale(w, h, want) < scale:
            want = (max(1, w // scale), max(1, h // scale))  # PIL's draft then picks ``scale``
        im.draft("RGB", want)
        dw, dh = im.size
        if dw * dh > max_pixels:  # the draft was refused
            raise ImageTooLarge(f"{w}x{h} = {w * h:,} pixels > max_pixels {max_pixels:,} (no reduced decode)")
        sx, sy = ((dh, dw) if turned else (dw, dh))
        sx, sy = sx / W, sy / H
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    im = _rgb(im)
    if orient in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orient])
    return im.resize((size, size), Image.BILINEAR, box=box)


def _budget_scale(im: Image.Image, w: int, h: int, jpeg: bool, max_pixels: int) -> int:
    """The DCT reduction (1, 2, 4, 8) that brings the decode within ``max_pixels``, from the header."""
    if w * h <= max_pixels:
        return 1
    over = f"{w}x{h} = {w * h:,} pixels > max_pixels {max_pixels:,}"
    if not jpeg:
        raise ImageTooLarge(over)
    if im.info.get("progressive") or im.info.get("progression"):
        raise ImageTooLarge(f"{over} (a progressive JPEG: a reduced decode would not bound its memory)")
    for s in (2, 4, 8):
        if math.ceil(w / s) * math.ceil(h / s) <= max_pixels:
            return s
    raise ImageTooLarge(f"{over}, even decoded at 1/8")


def _draft_scale(w: int, h: int, want: tuple[int, int]) -> int:
    """The DCT scale ``JpegImageFile.draft`` picks for a requested size."""
    s = min(w // want[0], h // want[1])
    return next(k for k in (8, 4, 2, 1) if s >= k)


def _orientation(im: Image.Image) -> int | None:
    try:
        o = im.getexif().get(_ORIENTATION)
    except Exception:  # noqa: BLE001 - corrupt EXIF: the picture as stored
        return None
    return o if isinstance(o, int) and o in _TRANSPOSE else None


def _rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB, with the picture's own values (see the module notes for each mode)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16"):
        return _grey(np.asarray(im) >> 8)
    if mode == "I":
        a = np.asarray(im)
        lo, hi = int(a.min()), int(a.max())
        return _grey(a >> 8 if lo >= 0 and hi <= 65535 else _stretch(a.astype(np.float64), lo, hi))
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        return _grey(np.rint(a * 255) if lo >= 0 and hi <= 1 else _stretch(a, lo, hi))
    if mode in _ALPHA or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _stretch(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.rint((a - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(a)


def _grey(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)).convert("RGB")


# -- what a transfer stage skipped ---------------------------------------------------------------------
def skip_report(skipped: list[dict], images: int, **extra) -> dict:
    """JSON-ready counts of ``skipped`` (dicts with ``index``, ``file``, ``reason``, ``error``) out of
    ``images``, naming the first :data:`FIRST_FILES` (by index)."""
    first = sorted(skipped, key=lambda s: s["index"])[:FIRST_FILES]
    return {"images": images, "skipped": len(skipped),
            "undecodable": sum(s["reason"] == "undecodable" for s in skipped),
            "too_large": sum(s["reason"] == "too_large" for s in skipped), **extra,
            "files": [{k: s[k] for k in ("file", "reason", "error")} for s in first]}


def combine_reports(reports: dict[str, dict]) -> dict:
    """Totals over the splits of a command, with each split's report under its name."""
    files = [f for r in reports.values() for f in r["files"]][:FIRST_FILES]
    return {"skipped": sum(r["skipped"] for r in reports.values()),
            "undecodable": sum(r["undecodable"] for r in reports.values()),
            "too_large": sum(r["too_large"] for r in reports.values()), "files": files, **reports}


def check_skipped(report: dict, what: str, max_bad_fraction: float, max_pixels: int) -> None:
    """A one-line :class:`~swagcli.errors.SwagError` when more than ``max_bad_fraction`` of the
    report's images were skipped, or all of them."""
    from swagcli.errors import SwagError

    n, total = report["skipped"], report["images"]
    if n == 0 or (n <= max_bad_fraction * total and n < total):
        return
    first = report["files"][0] if report["files"] else {"file": "?", "error": "?"}
    raise SwagError(
        f"{what}: {n} of {total} images skipped ({report['undecodable']} undecodable, "
        f"{report['too_large']} over data.max_pixels={max_pixels:,}), more than data.max_bad_fraction="
        f"{max_bad_fraction:g}; first: {first['file']} ({first['error']})")
