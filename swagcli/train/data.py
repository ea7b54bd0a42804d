"""The training stream: image shards + a sample plan -> (image, hashtag target) batches.

A webdataset-style pipeline, one per (rank, DataLoader worker):

    shard list (this stream's share, reshuffled each epoch)
      -> tar members grouped into samples as webdataset groups them (a lean tar reader)
      -> join with the plan by key, each planned image repeated as often as planned (the same
         bytes object, never a copy)
      -> shuffle buffer
      -> decode + RandomResizedCrop + flip (train) or short-side resize + center crop (eval)
      -> uint8 CHW tensors with hashtag targets as (indices, weights 1/K)

With ``decode="gpu"`` (``data.decode: gpu``) the workers read each JPEG's header only and draw its
crop and flip (the same draws, so the same crop and flip as ``cpu``); the batch carries the JPEG
bytes, and :func:`batch_images` decodes, crops and flips them on the training device
(:mod:`swagcli.train.gpu_decode`, which says what falls back to the CPU and why). The training loop
takes images with ``batch_images(batch, device)`` in either mode.

Work is split by shard, and the split belongs to the run, not to its processes: shard ``j`` of an
epoch's permutation goes to stream ``j mod S`` of the run's ``S`` streams (``data.streams``,
:func:`stream_layout`, fixed when the run starts), each with its own shuffle of its shards'
planned samples (:class:`EpochStream`). The ``G = world * workers`` DataLoader workers play them,
stream ``v`` by worker ``v mod G``, each drawing from the stream of its own that is furthest
behind. So every planned sample is seen exactly as often as planned, by exactly one stream, and
what a stream yields does not depend on who plays it: a run resumed on another number of
processes or workers continues each stream where it stood (elastic resume; only the interleaving
of the streams in a batch changes). Streams run epoch after epoch without end (a rank never runs
dry while another still trains); :class:`StreamPosition` says where each stream is, and a stream
restarted with it fast-forwards (no decoding) to the same place, with the same shuffle and
augmentation draws.

Undecodable images, images over the pixel budget (``max_pixels``, judged on the header before
decoding: :mod:`swagcli.images`), samples without an image, truncated shards and planned samples
without hashtags are skipped and counted; past ``max_bad_fraction`` of the planned samples read, the
stream stops with a :class:`SwagError`. With ``decode="gpu"``, a JPEG whose header parses but
whose data does not decode is only found by :func:`batch_images`, which drops it from its batch and
counts it in ``batch["dropped"]``.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import torch

from swagcli.errors import SwagError
from swagcli.train import account
from swagcli.images import (MAX_PIXELS, ImageTooLarge, JpegCrop, center_box, decode,  # noqa: F401 - re-exported
                            decode_or_defer, rrc_box)
from swagcli.prep.sample import load_part, load_plan
from swagcli.tario import BadTar, tar_samples

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
DECODES = ("cpu", "gpu")
MIN_SEEN_FOR_BAD_CHECK = 50


def plan_df(plan_dir, hashtags: int) -> dict:
    """Over a plan's unique images (every part, in order; the same on every rank): ``images`` (N),
    ``df`` (per hashtag id, the plan images carrying it, labels as planned, after label noise) and
    ``all_universal``: the images whose every hashtag is on all N images (an image holds each such
    hashtag, so these are the images with exactly that many hashtags)."""
    plan = load_plan(plan_dir)
    df = np.zeros(hashtags, dtype=np.int64)
    by_k: dict[int, int] = {}
    n = 0
    for part in plan["parts"]:
        if not part["images"]:
            continue
        arr = load_part(plan, part)
        labels, ptr = arr["labels"].astype(np.int64), arr["label_ptr"]
        if len(labels) and (labels.max() >= hashtags or labels.min() < 0):
            raise SwagError(f"{plan['dir']}: plan part {part['path']} has hashtag id {int(labels.max())}, "
                            f"outside the vocabulary's {hashtags} hashtags")
        n += len(arr["ids"])
        df += np.bincount(labels, minlength=hashtags)
        for k, c in zip(*np.unique(np.diff(ptr), return_counts=True)):
            by_k[int(k)] = by_k.get(int(k), 0) + int(c)
    universal = int((df == n).sum()) if n else 0
    return {"images": n, "df": df, "all_universal": by_k.get(universal, 0) if universal else 0}


class PlanLookup:
    """key -> (multiplicity, hashtag ids) over a plan's parts (two parts cached at a time)."""

    def __init__(self, plan_dir):
        self.plan = load_plan(plan_dir)
        self.parts = sorted((p for p in self.plan["parts"] if p["images"]), key=lambda p: p["first_id"])
        self.firsts = [p["first_id"] for p in self.parts]
        self.disjoint = all(a["last_id"] < b["first_id"] for a, b in zip(self.parts, self.parts[1:]))
        self._cache: dict[int, dict] = {}

    def _part(self, j: int) -> dict:
        arr = self._cache.get(j)
        if arr is None:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            arr = self._cache[j] = load_part(self.plan, self.parts[j])
        return arr

    def _find(self, j: int, key: str):
        arr = self._part(j)
        ids = arr["ids"]
        i = int(np.searchsorted(ids, key))
        if i < len(ids) and ids[i] == key:
            ptr = arr["label_ptr"]
            return int(arr["mult"][i]), arr["labels"][ptr[i]:ptr[i + 1]]
        return None

    def get(self, key: str):
        if self.disjoint:
            j = bisect.bisect_right(self.firsts, key) - 1
            if j < 0 or key > self.parts[j]["last_id"]:
                return None
            return self._find(j, key)
        for j, p in enumerate(self.parts):  # overlapping id ranges: ask every part that may hold it
            if p["first_id"] <= key <= p["last_id"]:
                hit = self._find(j, key)
                if hit is not None:
                    return hit
        return None

    @property
    def total_samples(self) -> int:
        return sum(p["samples"] for p in self.plan["parts"])


@dataclass
class StreamStats:
    """Per stream, cumulative."""

    read: int = 0            # samples read from the shards
    not_planned: int = 0     # read, but not in the plan (not drawn)
    planned: int = 0         # planned samples met (with multiplicity)
    no_image: int = 0        # planned, but the sample has no image member
    no_labels: int = 0       # planned, but without hashtags
    undecodable: int = 0     # the image would not decode
    too_large: int = 0       # over the pixel budget (max_pixels): never decoded
    bad_shards: int = 0      # truncated or corrupt shards (the rest of the shard is lost)
    yielded: int = 0

    @property
    def bad(self) -> int:
        return self.no_image + self.no_labels + self.undecodable + self.too_large + self.bad_shards

    def as_dict(self) -> dict:
        """The counts, ``bad``, and ``epoch_planned``: planned samples met in the current epoch."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {
            "bad": self.bad, "epoch_planned": self.planned - getattr(self, "epoch_base", 0)}


@dataclass
class StreamPosition:
    """Where one stream is: its epoch and how many samples it has yielded in that epoch."""

    epoch: int = 0
    offset: int = 0


# -- augmentation ----------------------------------------------------------------------------------
_MASK = (1 << 64) - 1


class SampleRNG:
    """A counter-based generator (splitmix64) keyed by the sample's place in the stream: cheap to
    create per sample (numpy's take ~30 µs), so a resumed stream redraws the same augmentation."""

    def __init__(self, *key: int):
        self.state = hash(key) & _MASK  # tuples of ints hash the same in every process

    def random(self) -> float:
        self.state = z = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return ((z ^ (z >> 31)) >> 11) * (1.0 / (1 << 53))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def integers(self, lo: int, hi: int) -> int:
        """In [lo, hi)."""
        return lo + min(int(self.random() * (hi - lo)), hi - lo - 1)


# -- decoding ------------------------------------------------------------------------------------
# rrc_box, center_box and the decoder live in swagcli.images (torch-free, shared with the transfer
# stages); load_image(data, size, train, rng=None, max_pixels=MAX_PIXELS) is that decoder
load_image = decode


# -- the stream ------------------------------------------------------------------------------------
@dataclass
class StreamConfig:
    shards: list[str]
    plan_dir: str
    resolution: int = 224
    train: bool = True
    shuffle_buffer: int = 2000
    seed: int = 0
    max_bad_fraction: float = 0.01
    max_pixels: int = MAX_PIXELS  # decoded pixels per image (data.max_pixels)
    account_dir: str | None = None  # where the streams write what each epoch's shards held
    loop: bool = True  # epoch after epoch; False: one epoch (evaluation, tests)
    with_keys: bool = False
    start: dict = field(default_factory=dict)  # stream index -> StreamPosition
    # DataLoader takes batches from its workers in turn, starting with worker 0; a resumed
    # loader whose next batch is due from stream k lets worker w play stream (w + k) mod workers
    rotate: int = 0
    # the streams each epoch is dealt to (stream_layout), played by the world x workers DataLoader
    # streams in turn (stream v by player v mod players); 0: one each
    streams: int = 0
    decode: str = "cpu"  # "gpu": JPEGs left encoded for batch_images to decode on the device


def _samples(url: str, stats: StreamStats):
    """The samples of one tar shard (:func:`~swagcli.tario.tar_samples`); a truncated or corrupt
    shard ends early and is counted."""
    try:
        with open(url, "rb", buffering=1 << 20) as f:
            for s in tar_samples(f):
                s["__url__"] = url
                yield s
    except (BadTar, OSError, ValueError):
        stats.bad_shards += 1  # the sample being read when the shard broke is lost with it


def stream_shards(shards: list[str], epoch: int, seed: int, index: int, streams: int) -> list[str]:
    """This stream's shards in ``epoch``: a seeded permutation of all shards, dealt round-robin."""
    perm = np.random.default_rng([seed, 7, epoch]).permutation(len(shards))
    return [shards[j] for j in perm[index::streams]]


def _planned(urls, lookup: PlanLookup, stats: StreamStats):
    """(key, image bytes, labels) for every planned sample, repeated as planned."""
    for url in urls:
        for s in _samples(url, stats):
            stats.read += 1
            hit = lookup.get(s["__key__"])
            if hit is None:
                stats.not_planned += 1
                continue
            mult, labels = hit
            stats.planned += mult
            img = next((s[e] for e in IMAGE_EXTS if e in s), None)
            if img is None:
                stats.no_image += mult
                continue
            if len(labels) == 0:
                stats.no_labels += mult
                continue
            item = (s["__key__"], img, labels)
            for _ in range(mult):
                yield item


_ACCOUNTED = ("planned", "read", "not_planned", "no_image", "no_labels", "bad_shards")


def _accounted(items, stats: StreamStats, root, epoch: int, index: int, shards: int):
    """``items``, then (when the epoch's shards are read) what they held, written for the run's
    planned-versus-found account (:mod:`swagcli.train.account`)."""
    before = {k: getattr(stats, k) for k in _ACCOUNTED}
    yield from items
    account.write(root, epoch, index, {"shards": shards, **{k: getattr(stats, k) - before[k] for k in _ACCOUNTED}})


def _shuffled(items, size: int, rng):
    buf = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


class HashtagStream(torch.utils.data.IterableDataset):
    """Yields ``(image uint8 HWC, labels int64, info)``; ``info`` = (stream, epoch, offset, key|None,
    cumulative stats dict). With ``decode="gpu"`` the image of a JPEG the device can take is a
    :class:`~swagcli.images.JpegCrop` (its bytes, crop box and flip) instead."""

    def __init__(self, cfg: StreamConfig, rank: int = 0, world: int = 1):
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.lookup = PlanLookup(cfg.plan_dir)
        if not cfg.shards:
            raise SwagError("training stream: no image shards given")
        if cfg.decode not in DECODES:
            raise SwagError(f"training stream: decode {cfg.decode!r} is not one of {', '.join(DECODES)}")

    def _ids(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, (info.id + self.cfg.rotate) % info.num_workers) if info else (1, 0)
        return self.rank * workers + worker, self.world * workers

    def __iter__(self):
        cfg = self.cfg
        index, physical = self._ids()
        total = cfg.streams or physical
        root = Path(cfg.account_dir) if cfg.account_dir else None
        load = load_image if cfg.decode == "cpu" else decode_or_defer
        live = [p for p in (EpochStream(self, v, total, cfg.start.get(v, StreamPosition()), root)
                            for v in range(index, total, physical)) if not p.ended]
        while live:
            # the stream furthest behind draws next (ties: the lowest index): a pure function of
            # the streams' positions, so a restart from them draws as the run would have
            part = min(live, key=lambda q: (q.epoch, q.offset, q.index))
            got = part.draw()
            if got is None:  # its epoch ended: the next one is open (or it has ended)
                if part.ended:
                    live.remove(part)
                continue
            offset, key, data, labels = got
            stats = part.stats
            rng = SampleRNG(cfg.seed, 13, part.epoch, part.index, offset)
            try:
                img = load(data, cfg.resolution, cfg.train, rng, cfg.max_pixels)
            except ImageTooLarge:  # judged on the header: never decoded
                stats.too_large += 1
                self._check(stats)
                continue
            except Exception:  # Undecodable (swagcli.images turns what PIL raises into it)
                stats.undecodable += 1
                self._check(stats)
                continue
            stats.yielded += 1
            # the live stats object: collate reads it once per batch, when it is current
            yield img, labels, (part.index, part.epoch, offset, key if cfg.with_keys else None, stats)

    def _check(self, stats: StreamStats, end: bool = False):
        if stats.planned < MIN_SEEN_FOR_BAD_CHECK and not end:
            return
        if stats.bad > self.cfg.max_bad_fraction * max(stats.planned, 1):
            raise SwagError(
                f"training stream: {stats.bad} bad of {stats.planned} planned samples "
                f"(> max_bad_fraction {self.cfg.max_bad_fraction}): {stats.undecodable} undecodable, "
                f"{stats.too_large} too large (over data.max_pixels={self.cfg.max_pixels:,} pixels), "
                f"{stats.no_image} without image, {stats.bad_shards} truncated shards")


_END = object()


class EpochStream:
    """One of the ``total`` streams each epoch is dealt to (``index``): its shards of the epoch
    (:func:`stream_shards`), their planned samples in a seeded shuffle, and where it stands in them
    (``epoch``, ``offset``: samples drawn). Which process and DataLoader worker plays it does not
    change any of this; a stream restarted at a position fast-forwards to it (no decoding)."""

    def __init__(self, ds: "HashtagStream", index: int, total: int, start: StreamPosition, root: Path | None):
        self.ds, self.index, self.total, self.root = ds, index, total, root
        self.epoch, self.offset, self.met = start.epoch, 0, 0
        self.stats = StreamStats()
        self.ended = False
        self._open(skip=start.offset)

    def _open(self, skip: int = 0) -> None:
        cfg = self.ds.cfg
        urls = stream_shards(cfg.shards, self.epoch, cfg.seed, self.index, self.total)
        if not urls:  # more streams than shards: this one never has any (every epoch deals the same count)
            self.ended = True
            return
        self.stats.epoch_base = self.stats.planned
        items = _planned(urls, self.ds.lookup, self.stats)
        if self.root is not None:
            items = _accounted(items, self.stats, self.root, self.epoch, self.index, len(urls))
        self.order = iter(_shuffled(items, cfg.shuffle_buffer,
                                    np.random.default_rng([cfg.seed, 11, self.epoch, self.index])))
        self.offset = self.met = 0
        while self.offset < skip and next(self.order, _END) is not _END:
            self.offset += 1
            self.met += 1

    def draw(self):
        """(offset, key, image bytes, labels) of the next planned sample, or None when this epoch
        ended (the stream then stands at the start of the next, or has ``ended``)."""
        item = next(self.order, _END)
        if item is not _END:
            self.offset += 1
            self.met += 1
            return (self.offset - 1, *item)
        cfg = self.ds.cfg
        self.ds._check(self.stats, end=True)
        if self.met == 0 and self.root is not None:  # nothing for this stream: is there anything anywhere?
            expected = account.expected_streams(self.total, len(cfg.shards))
            if account.nothing_anywhere(self.root, self.epoch, expected):
                raise SwagError(account.verdict(account.epoch_total(self.root, self.epoch, expected),
                                                self.ds.lookup.total_samples, cfg.max_bad_fraction))
        self.epoch += 1
        if cfg.loop:
            self._open()
        else:
            self.ended = True
        return None


def stream_layout(shards: int, world: int, workers: int, shuffle_buffer: int, streams: int | None = None) -> dict:
    """How a fresh training run deals its epochs: ``streams`` (``data.streams``; by default one per
    DataLoader worker of the ``world x workers``, as many as can later play them all; more let a
    resume on more workers use them), and each stream's shuffle buffer, the recipe's
    ``shuffle_buffer`` shared by the streams one worker plays (so memory is as with one stream
    per worker). Both are fixed for the run: a resume takes them from its checkpoint."""
    players = world * max(1, workers)
    if streams is None:
        streams = min(players, shards)
    per_player = max(1, streams // players)
    return {"streams": int(streams), "shuffle_buffer": max(1, -(-shuffle_buffer // per_player))}


def collate(batch):
    """Stack images; targets as padded (indices, weights 1/K); keep each stream's latest info.

    Done in numpy: torch ops in the main process (``workers=0``) contend for the cores with the
    training threads and were measured to stall 10-700 ms per batch on a loaded machine.
    A batch holding JPEGs left for the GPU (``decode="gpu"``) carries them as an
    :class:`~swagcli.train.gpu_decode.EncodedBatch` under ``image``: see :func:`batch_images`."""
    pics = [b[0] for b in batch]
    if any(isinstance(p, JpegCrop) for p in pics):
        from swagcli.train.gpu_decode import pack

        imgs = pack(pics)
    else:  # NHWC in memory, seen as NCHW (channels-last strides): no transpose copy per image
        imgs = torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2)
    lens = np.array([len(b[1]) for b in batch])
    kmax = int(lens.max())
    mask = np.arange(kmax) < lens[:, None]
    idx = np.zeros((len(batch), kmax), np.int64)
    idx[mask] = np.concatenate([b[1] for b in batch])
    wts = np.zeros((len(batch), kmax), np.float32)
    wts[mask] = np.repeat(np.float32(1.0) / lens, lens)
    infos = [b[2] for b in batch]
    out = {"image": imgs, "target_idx": torch.from_numpy(idx), "target_w": torch.from_numpy(wts),
           "keys": [i[3] for i in infos], "streams": _latest_per_stream(infos)}
    if infos[0][3] is not None:  # with_keys: where each sample is in its stream's epoch
        out["where"] = [(i[0], i[1], i[2]) for i in infos]
    return out


def batch_images(batch: dict, device) -> torch.Tensor:
    """The batch's images as uint8 [B, 3, R, R] (NHWC in memory) on ``device``: what the training
    loop feeds its normalizer, in either decode mode. A CPU-decoded batch is moved
    (``non_blocking``); a ``decode="gpu"`` batch is decoded, cropped and flipped on ``device``
    (:func:`swagcli.train.gpu_decode.decode_batch`). An image that no decoder takes (its header
    parsed, its data is broken) is dropped: call this before reading the targets, which then lose
    its row too (``target_idx``, ``target_w``, ``keys``), and ``batch["dropped"]`` counts it (the
    stream's ``undecodable`` count never sees it: the workers did not decode it)."""
    img = batch["image"]
    if isinstance(img, torch.Tensor):
        return img.to(device, non_blocking=True)
    from swagcli.train.gpu_decode import decode_batch

    x, bad = decode_batch(img, device)
    batch["dropped"] = batch.get("dropped", 0) + len(bad)
    if bad:  # one mask for the images and their targets
        keep = torch.ones(len(batch["keys"]), dtype=torch.bool)
        keep[bad] = False
        x = x[keep.to(x.device)]
        batch["target_idx"], batch["target_w"] = batch["target_idx"][keep], batch["target_w"][keep]
        for name in ("keys", "where"):
            if name in batch:
                batch[name] = [k for k, m in zip(batch[name], keep.tolist()) if m]
    return x


def _latest_per_stream(infos) -> dict:
    """stream -> (epoch, offset, stats) of its last sample in the batch."""
    last = {i[0]: i for i in infos}
    return {k: (i[1], i[2], i[4].as_dict()) for k, i in last.items()}


def make_loader(cfg: StreamConfig, batch_size: int, workers: int = 2, rank: int = 0,
                world: int = 1) -> torch.utils.data.DataLoader:
    from swagcli.signals import dataloader_worker_init

    ds = HashtagStream(cfg, rank, world)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=workers, collate_fn=collate,
        persistent_workers=False, pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None, drop_last=False,
        worker_init_fn=dataloader_worker_init if workers else None)
