"""JPEG decoding on the training device (``data.decode: gpu``): the DataLoader workers only read
headers and draw crops (:func:`swagcli.images.decode_or_defer`); the training process decodes the
batch with nvJPEG (``torchvision.io.decode_jpeg(list, device=cuda)``), crops, resizes and flips it
on the device.

* **The batch.** :func:`pack` (in the worker, from ``collate``) turns a batch holding at least one
  :class:`~swagcli.images.JpegCrop` into an :class:`EncodedBatch`: the JPEG bytes in one uint8
  tensor with offsets, their boxes, flips and header sizes, and the images the worker decoded
  itself (PNG, WebP, CMYK, EXIF-rotated or over-budget JPEGs, truncated files) as ready pixels with
  their places in the batch. Every field is a tensor, so it crosses from the workers through shared
  memory like the CPU path's batch.
* **The crop** is PIL's ``resize((R, R), BILINEAR, box=box)`` redone on tensors (:func:`taps`,
  :func:`resize_box`): the same filter taps (antialiased: the support widens with the downscale,
  and reaches past the box into the picture as PIL's does), the same 8-bit fixed-point weights and
  integer sums, the two passes in PIL's order, rounded to 8 bits in between; so on the same decoded
  pixels, PIL's bytes (int32 tap gathers on the device, dense float64 matrices on CPU, both exact).
  On the CPU device torchvision's libjpeg-turbo gives PIL's pixels too: the whole batch is the CPU
  path's, byte for byte (tested). nvJPEG's pixels differ from libjpeg-turbo's by a grey level or
  two (another IDCT and chroma upsampling), and the CPU path decodes large JPEGs at a reduced DCT
  scale where the crop allows it (``Image.draft``), which this path never does: on a GPU, same
  samples, same boxes and flips, pixels within a few grey levels.
* **Fallbacks.** Where the device cannot decode JPEGs (a CPU device, a torchvision without
  nvJPEG: probed once per device, :func:`device_decodes`), torchvision decodes them on the CPU, in
  this process, and the result is moved to the device: a run asked for ``decode: gpu`` still runs,
  though a CPU-only machine does better with ``decode: cpu`` (the workers decode in parallel). A
  batch nvJPEG refuses is retried image by image; an image it still refuses is decoded by PIL here
  (:func:`swagcli.images.decode_box`, the CPU path's decoder, with the same box and flip); one PIL
  cannot decode either (the header parsed, the data is broken) is dropped from the batch:
  :func:`decode_batch` returns its place, and ``swagcli.train.data.batch_images`` takes it out of
  the batch's targets and keys and counts it in ``batch["dropped"]``. In ``decode: cpu`` the
  worker would have counted it as ``undecodable``.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass, replace

import numpy as np
import PIL
import torch

from swagcli.images import MAX_PIXELS, BadImage, JpegCrop, decode_box

PRECISION_BITS = 22  # PIL's 8-bit resampling: weights in fixed point with 22 fraction bits
_PIL_MAJOR = int(PIL.__version__.split(".")[0])
ROW_CHUNK_ELEMS = 1 << 24  # gathered taps per chunk of a pass (64 MB of int32)


@dataclass
class EncodedBatch:
    """A batch whose JPEGs are still encoded: ``count`` images of ``size`` x ``size``; ``pixels``
    [m, R, R, 3] uint8 decoded in the worker, at ``pixel_at``; JPEG ``k`` is
    ``data[offsets[k]:offsets[k + 1]]``, at ``jpeg_at[k]``, of ``dims[k]`` = (width, height), cropped
    to ``boxes[k]`` (float64 x0, y0, x1, y1) and flipped where ``flips[k]``."""

    size: int
    count: int
    pixels: torch.Tensor
    pixel_at: torch.Tensor
    data: torch.Tensor
    offsets: torch.Tensor
    jpeg_at: torch.Tensor
    dims: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor

    def __len__(self) -> int:
        return self.count

    def pin_memory(self) -> EncodedBatch:  # DataLoader(pin_memory=True) calls this
        return replace(self, pixels=self.pixels.pin_memory()) if len(self.pixels) else self

    def jpegs(self) -> list[torch.Tensor]:
        o = self.offsets.tolist()
        return [self.data[a:b] for a, b in zip(o, o[1:])]


def pack(items: list) -> EncodedBatch:
    """A batch's images (uint8 HWC arrays and :class:`JpegCrop`) as an :class:`EncodedBatch`."""
    jpegs = [(i, x) for i, x in enumerate(items) if isinstance(x, JpegCrop)]
    ready = [(i, x) for i, x in enumerate(items) if not isinstance(x, JpegCrop)]
    size = jpegs[0][1].size
    ends = np.cumsum([0] + [len(x.data) for _, x in jpegs])
    data = np.empty(int(ends[-1]), np.uint8)
    for (_, x), a, b in zip(jpegs, ends, ends[1:]):
        data[a:b] = np.frombuffer(x.data, np.uint8)
    pixels = np.stack([x for _, x in ready]) if ready else np.zeros((0, size, size, 3), np.uint8)
    return EncodedBatch(
        size=size, count=len(items), pixels=torch.from_numpy(pixels),
        pixel_at=torch.tensor([i for i, _ in ready], dtype=torch.int64),
        data=torch.from_numpy(data), offsets=torch.from_numpy(ends.astype(np.int64)),
        jpeg_at=torch.tensor([i for i, _ in jpegs], dtype=torch.int64),
        dims=torch.tensor([(x.width, x.height) for _, x in jpegs], dtype=torch.int64).reshape(-1, 2),
        boxes=torch.tensor([x.box for _, x in jpegs], dtype=torch.float64).reshape(-1, 4),
        flips=torch.tensor([x.flip for _, x in jpegs], dtype=torch.bool))


def decode_batch(enc: EncodedBatch, device) -> tuple[torch.Tensor, list[int]]:
    """The batch's images as uint8 [B, 3, R, R] on ``device`` (NHWC in memory, as the CPU path's
    batch), and the places of the images that would not decode (their rows hold no picture: the
    caller drops them with the batch's targets)."""
    device = torch.device(device)
    R = enc.size
    out = torch.empty((enc.count, R, R, 3), dtype=torch.uint8, device=device)
    if len(enc.pixels):
        out[enc.pixel_at.to(device)] = enc.pixels.to(device, non_blocking=True)
    datas = enc.jpegs()
    imgs = _decode_jpegs(datas, device)
    at, flips, boxes, dims = enc.jpeg_at.tolist(), enc.flips.tolist(), enc.boxes.tolist(), enc.dims.tolist()
    bad, done = [], []
    for k, img in enumerate(imgs):
        if img is not None:
            (w, h), (H, W) = dims[k], img.shape[1:]
            if (H, W) != (h, w):  # not the header's size (never seen): the box follows the picture
                boxes[k] = [boxes[k][0] * W / w, boxes[k][1] * H / h, boxes[k][2] * W / w, boxes[k][3] * H / h]
            done.append(k)
            continue
        budget = max(MAX_PIXELS, dims[k][0] * dims[k][1])  # the worker found it within data.max_pixels
        try:  # the device would not: PIL, as the CPU path decodes
            pix = decode_box(datas[k].numpy().tobytes(), R, boxes[k], flips[k], budget)
        except BadImage:
            bad.append(at[k])
            continue
        out[at[k]] = torch.from_numpy(np.array(pix)).to(device)
    if done:  # the filter taps of the whole batch at once, moved to the device at once
        sizes = np.array([imgs[k].shape[1:] for k in done])
        bx = np.array([boxes[k] for k in done])
        xt = _on(taps(sizes[:, 1], bx[:, 0], bx[:, 2], R), device)
        yt = _on(taps(sizes[:, 0], bx[:, 1], bx[:, 3], R), device)
        for j, k in enumerate(done):
            out[at[k]] = _resample(imgs[k], _one(xt, j), _one(yt, j), R, flips[k]).permute(1, 2, 0)
    return out.permute(0, 3, 1, 2), bad


# -- decoding ------------------------------------------------------------------------------------
def _decode_jpeg(data, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: "use TorchCodec"
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


@functools.lru_cache(maxsize=None)
def device_decodes(device: str) -> bool:
    """Whether torchvision decodes JPEGs on ``device`` (a CUDA device with nvJPEG), probed once."""
    if torch.device(device).type != "cuda":
        return False
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buf, format="JPEG")
    try:
        _decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], torch.device(device))
    except (RuntimeError, NotImplementedError, ImportError):  # "torchvision not compiled with nvJPEG support"
        return False
    return True


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """[3, H, W] uint8 per JPEG on ``device`` (decoded there, else on CPU and moved), None where
    torchvision would not decode it (all None where torchvision has no ``decode_jpeg``: a release
    after its deprecation in 0.29 may drop it; PIL then decodes them all)."""
    if not datas:
        return []
    where = device if device_decodes(str(device)) else torch.device("cpu")
    try:
        imgs = _decode_jpeg(datas, where)
    except ImportError:
        return [None] * len(datas)
    except RuntimeError:  # no partial results: one image at a time
        imgs = []
        for d in datas:
            try:
                imgs.append(_decode_jpeg([d], where)[0])
            except RuntimeError:
                imgs.append(None)
    return [None if x is None else x.to(device, non_blocking=True) for x in imgs]


# -- PIL's bilinear resize with a box, on tensors ----------------------------------------------------
def taps(in_size, b0, b1, out: int):
    """PIL's ``precompute_coeffs`` for the bilinear filter and its 8-bit fixed-point weights, for
    ``n`` pictures at once (``in_size``, ``b0``, ``b1``: [n], one axis of each picture and box):
    (source index [n, out, K] counted from ``lo``, integer weights [n, out, K] summing to ~2^22,
    taps per picture [n], lo [n], hi [n]: the source span the taps read). The same double
    arithmetic in the same order as PIL's C, which takes the box as floats (float32)."""
    in_size = np.asarray(in_size, np.int64).reshape(-1)
    b0, b1 = np.asarray(b0, np.float32).reshape(-1), np.asarray(b1, np.float32).reshape(-1)
    scale = (b1 - b0).astype(np.float64) / out  # the difference in float32, as C's ``in1 - in0``
    fs = np.maximum(scale, 1.0)  # the bilinear filter's support (1) widened by the downscale
    ks = np.ceil(fs).astype(np.int64) * 2 + 1
    center = b0.astype(np.float64)[:, None] + (np.arange(out) + 0.5) * scale[:, None]  # [n, out]
    xmin = np.maximum(np.trunc(center - fs[:, None] + 0.5).astype(np.int64), 0)  # C's (int): toward zero
    xmax = np.minimum(np.trunc(center + fs[:, None] + 0.5).astype(np.int64), in_size[:, None])
    x = xmin[:, :, None] + np.arange(int(ks.max()))  # [n, out, K]
    w = np.clip(1.0 - np.abs((x - center[:, :, None] + 0.5) * (1.0 / fs)[:, None, None]), 0.0, None)
    w[x >= xmax[:, :, None]] = 0.0
    total = w[:, :, 0].copy()
    for j in range(1, w.shape[2]):  # summed tap after tap, as C does
        total += w[:, :, j]
    w = np.divide(w, total[:, :, None], out=w, where=total[:, :, None] != 0)
    kk = np.trunc(0.5 + w * (1 << PRECISION_BITS)).astype(np.int32)
    lo, hi = xmin.min(1), xmax.max(1)
    idx = np.minimum(x, (hi - 1)[:, None, None]) - lo[:, None, None]  # zero-weight taps read a real pixel
    return idx, kk, ks, lo, hi


def _on(t, device):
    idx, kk, ks, lo, hi = t
    return torch.from_numpy(idx).to(device), torch.from_numpy(kk).to(device), ks.tolist(), lo.tolist(), hi.tolist()


def _one(t, j: int):
    """Picture ``j``'s taps (its own K of them)."""
    idx, kk, ks, lo, hi = t
    return idx[j, :, :ks[j]], kk[j, :, :ks[j]], lo[j], hi[j]


def resize_box(img: torch.Tensor, box, size: int, flip: bool = False, method: str | None = None) -> torch.Tensor:
    """``img`` uint8 [C, H, W] -> uint8 [C, size, size]: PIL's ``resize((size, size), BILINEAR,
    box=box)``, flipped left-right when ``flip`` (one picture; :func:`decode_batch` does a batch)."""
    _, H, W = img.shape
    xt = _one(_on(taps(W, box[0], box[2], size), img.device), 0)
    yt = _one(_on(taps(H, box[1], box[3], size), img.device), 0)
    return _resample(img, xt, yt, size, flip, method)


def _resample(img: torch.Tensor, xt, yt, size: int, flip: bool, method: str | None = None) -> torch.Tensor:
    """Exact integer arithmetic as PIL's, so on the same pixels the same bytes: ``method`` "taps"
    (int32 gathers of the filter taps, memory-bound: the device's) or "matmul" (dense float64
    weight matrices, exact for these values: the CPU's)."""
    _, H, W = img.shape
    (xi, xk, x0, x1), (yi, yk, y0, y1) = xt, yt
    src = img[:, y0:y1, x0:x1]
    if (method or ("matmul" if img.device.type == "cpu" else "taps")) == "matmul":
        mx, my = _dense(xi, xk, x1 - x0), _dense(yi, yk, y1 - y0)
        src = src.to(torch.float64)
        hor = lambda t: _round8(t @ mx.T)  # noqa: E731 - [C, h, w] -> [C, h, size]
        ver = lambda t: _round8(my @ t)  # noqa: E731 - [C, h, w] -> [C, size, w]
    else:
        src = src.to(torch.int32)
        hor = lambda t: _horizontal(t, xi, xk)  # noqa: E731
        ver = lambda t: _vertical(t, yi, yk)  # noqa: E731
    if _horizontal_first(W, H, size):
        res = ver(hor(src))
    else:  # Pillow >= 13 runs the vertical pass first when it shrinks the height much more
        res = hor(ver(src))
    res = res.to(torch.uint8)
    return res.flip(-1) if flip else res


def _horizontal_first(W: int, H: int, size: int) -> bool:
    """The order of PIL's two passes (``ImagingResampleInner``), on the whole picture's size."""
    return _PIL_MAJOR < 13 or not (H - size > 0 and H - size > (W - size) * 2)


def _dense(idx: torch.Tensor, kk: torch.Tensor, n: int) -> torch.Tensor:
    """The taps as a [size, n] float64 matrix of weights / 2^22: every product and partial sum with
    8-bit pixels is a multiple of 2^-22 below 2^9, exact in float64 in any order of summation."""
    m = torch.zeros((idx.shape[0], n), dtype=torch.float64, device=idx.device)
    return m.scatter_add_(1, idx, kk.to(torch.float64) / (1 << PRECISION_BITS))


def _horizontal(src: torch.Tensor, xi, xk) -> torch.Tensor:
    """int32 [C, h, w] -> [C, h, size], PIL's sums rounded to 8 bits; in row chunks, to bound the
    gathered taps."""
    rows = max(1, ROW_CHUNK_ELEMS // max(1, src.shape[0] * xi.numel()))
    parts = [_fixed8((src[:, r:r + rows, xi] * xk).sum(-1, dtype=torch.int32)) for r in range(0, src.shape[1], rows)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _vertical(src: torch.Tensor, yi, yk) -> torch.Tensor:
    """int32 [C, h, w] -> [C, size, w], as :func:`_horizontal`; in column chunks."""
    cols = max(1, ROW_CHUNK_ELEMS // max(1, src.shape[0] * yi.numel()))
    parts = [_fixed8((src[:, yi, c:c + cols] * yk[:, :, None]).sum(2, dtype=torch.int32))
             for c in range(0, src.shape[2], cols)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _fixed8(acc: torch.Tensor) -> torch.Tensor:
    """PIL's ``clip8``: (sum + 2^21) >> 22, clipped to 0..255 (sums of 8-bit pixels times weights
    summing to ~2^22 stay below 2^31)."""
    return ((acc + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp_(0, 255)


def _round8(x: torch.Tensor) -> torch.Tensor:
    """:func:`_fixed8` on the float64 sums (weights / 2^22): + 1/2, floor, clipped to 0..255."""
    return torch.floor_(x + 0.5).clamp_(0, 255)
