"""What every transfer protocol shares: the pretrained model, the downstream sets, features.

* :func:`load_source`: a swag run/checkpoint (backbone + the hashtag head + its vocabulary), a
  local timm weight file (backbone only: e.g. released SWAG backbones), or random weights (the
  baseline every transfer result is compared with). Nothing is downloaded.
* :func:`load_split`: a labelled split, from ImageNet-layout class folders (``train/n01440764/
  x.jpg``) or from webdataset shards (``KEY.jpg`` + ``KEY.cls``: a class index or name), indexed
  once so both give random access.
* :func:`extract_kept` (:func:`extract`: its features alone): frozen features of a split, cached
  on disk in chunks: an interrupted extraction resumes at the first missing chunk, and a cache made
  by another model, resolution, pixel budget or image list is never reused. Images that do not
  decode or are over the pixel budget (:mod:`swagcli.images`) are skipped and counted, and the
  indices of the images kept are cached with the features, so every caller drops the same rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swagcli.errors import SwagError
from swagcli.images import MAX_PIXELS, BadImage, check_skipped, skip_report

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CHUNK = 2048  # images per cached feature chunk
WNID = re.compile(r"^n\d{8}$")


# -- the pretrained model ---------------------------------------------------------------------------
@dataclass
class Source:
    model: torch.nn.Module  # HashtagModel
    name: str  # timm model name
    kind: str  # swag | timm | random
    resolution: int  # the resolution it was pretrained at
    path: str | None = None
    vocab: object | None = None  # swagcli.prep.vocab.Vocab (swag checkpoints)
    fingerprint: str = ""
    meta: dict = field(default_factory=dict)
    kwargs: dict = field(default_factory=dict)  # the timm kwargs it was built with


def _default_resolution(backbone) -> int:
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    img = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    return int(img[0]) if img else int(size[-1])


def load_source(spec, seed: int = 0, resolution: int | None = None) -> Source:
    """The model named by a :class:`~swagcli.recipes.SourceSpec`, on the CPU, in eval mode: a swag run
    or checkpoint, a weight file in any layout :mod:`swagcli.weights` knows (timm, torchvision, the
    SWAG torch.hub models, a swag ``model.safetensors``; the architecture inferred unless
    ``source.model`` names it), or random weights. ``resolution``: the input size it will see (a
    ViT's position embeddings are resampled to it)."""
    from swagcli.train.models import build_model

    path = spec.checkpoint
    if path and Path(path).is_dir():
        src = load_swag(Path(path))
    elif path:
        if not Path(path).is_file():
            raise SwagError(f"source.checkpoint: {path}: no such file or directory")
        from swagcli import weights

        torch.manual_seed(seed)
        model, conv, name, kwargs = weights.model_for_file(path, spec.model, spec.kwargs)
        st = Path(path).stat()
        src = Source(model.eval(), name, conv.layout, _default_resolution(model.backbone), str(path), None,
                     f"file:{name}:{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}",
                     {"layout": conv.layout, "family": conv.family, "pre_logits": conv.pre_logits is not None},
                     kwargs)
    else:
        if not spec.model:
            raise SwagError("source.model: a timm model name is needed for random weights (or give a "
                            "checkpoint: a swag run or a weight file)")
        torch.manual_seed(seed)
        model = build_model(spec.model, 1, spec.kwargs, pre_logits=False)
        src = Source(model.eval(), spec.model, "random", _default_resolution(model.backbone), None, None,
                     f"random:{spec.model}:{json.dumps(spec.kwargs, sort_keys=True)}:{seed}", {}, dict(spec.kwargs))
    if resolution and resolution != src.resolution:
        at_resolution(src, resolution)
    return src


def at_resolution(src: Source, resolution: int) -> None:
    """A ViT backbone set to ``resolution`` (position embeddings resampled, as timm does);
    convolutional backbones take any size as they are."""
    bb = src.model.backbone
    size = getattr(getattr(bb, "patch_embed", None), "img_size", None)
    if size is None or tuple(size) == (resolution, resolution):
        return
    if not hasattr(bb, "set_input_size"):
        raise SwagError(f"data.resolution: {src.name} is fixed at {size[0]} px")
    bb.set_input_size(img_size=resolution)
    src.fingerprint += f":@{resolution}"


def load_swag(path: Path) -> Source:
    """A swag checkpoint, rebuilt from what its meta.json says (:func:`checkpoint.model_spec`),
    never from today's recipe schema."""
    from swagcli.prep.vocab import Vocab
    from swagcli.train import checkpoint as ckpt_io
    from swagcli.train.models import build_model

    ckpt = ckpt_io.resolve(path)
    spec = ckpt_io.model_spec(ckpt)
    name, kwargs, fp = spec["model"], spec.get("model_kwargs") or {}, f"swag:{ckpt.resolve()}:{spec.get('step')}"
    if spec.get("objective") == "mae":  # the encoder alone: no hashtag head, no pre-logits layer
        model = build_model(name, 1, kwargs, pre_logits=False)
        ckpt_io.load_encoder(model, str(ckpt))
        return Source(model.eval(), name, "swag-mae", spec["resolution"], str(ckpt), None, fp, spec, kwargs)
    if spec.get("objective") == "finetune":
        model = build_model(name, int(spec.get("classes") or spec["num_classes"]), kwargs, spec["pre_logits"])
        ckpt_io.load_weights(model, ckpt)
        return Source(model.eval(), name, "swag-finetune", spec["resolution"], str(ckpt), None, fp, spec, kwargs)
    try:
        vocab = Vocab(json.loads((ckpt / "vocab.json").read_text()), str(ckpt / "vocab.json"))
    except (OSError, ValueError) as e:
        raise SwagError(f"{ckpt / 'vocab.json'}: unreadable ({type(e).__name__})") from None
    model = build_model(name, len(vocab), kwargs, spec["pre_logits"])
    ckpt_io.load_weights(model, ckpt)
    return Source(model.eval(), name, "swag", spec["resolution"], str(ckpt), vocab, fp, spec, kwargs)


# -- downstream splits ------------------------------------------------------------------------------
@dataclass
class Split:
    """A labelled image set: ``items[i]`` is a file path or (tar path, offset, size)."""

    items: list
    labels: np.ndarray
    classes: list[str]
    source: str
    empty_classes: list[str] = field(default_factory=list)  # class folders without images: left out

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int) -> bytes:
        item = self.items[i]
        if isinstance(item, str):
            return Path(item).read_bytes()
        path, offset, size = item
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def name(self, i: int) -> str:
        """Image ``i`` as a user finds it: its path, or its shard and the member's byte offset."""
        item = self.items[i]
        return item if isinstance(item, str) else f"{item[0]} (member at byte {item[1]})"

    def subset(self, idx) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split([self.items[i] for i in idx], self.labels[idx], self.classes, self.source, self.empty_classes)

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for item, y in zip(self.items, self.labels.tolist()):
            h.update(f"{item}|{y}\n".encode())
        return h.hexdigest()


def load_split(specs: list[str], what: str, classes: list[str] | None = None) -> Split:
    """A split from class folders or webdataset shards. ``classes`` (the train split's) fixes the
    label order of a validation split; a class it does not know is an error."""
    if not specs:
        raise SwagError(f"data.{what}: no images given (a class-folder directory or webdataset shards)")
    if len(specs) == 1 and Path(specs[0]).is_dir():
        return _folder_split(Path(specs[0]), what, classes)
    from swagcli.train.engine import expand_shards

    try:
        shards = expand_shards(specs)
    except SwagError as e:
        raise SwagError(str(e).replace("data.shards", f"data.{what}")) from None
    return _shard_split(shards, what, classes)


def _label_order(found: list[str], classes: list[str] | None, what: str, where: str) -> list[str]:
    if classes is None:
        return sorted(found)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise SwagError(f"data.{what}: {where}: classes not in the training split (no training images): "
                        f"{', '.join(unknown[:5])}")
    return classes


def _folder_split(root: Path, what: str, classes: list[str] | None) -> Split:
    """A folder without images is no class: left out of the label order (named in ``empty_classes``)."""
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not dirs:
        raise SwagError(f"data.{what}: {root}: no class folders (expected ROOT/CLASS/IMAGE.jpg)")
    files = {d.name: [str(f) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
             for d in dirs}
    empty = [c for c, fs in files.items() if not fs]
    if len(empty) == len(files):
        raise SwagError(f"data.{what}: {root}: no images in its class folders")
    order = _label_order([c for c, fs in files.items() if fs], classes, what, str(root))
    index = {c: i for i, c in enumerate(order)}
    items = [f for fs in files.values() for f in fs]
    labels = [index[c] for c, fs in files.items() for _ in fs]
    return Split(items, np.asarray(labels, dtype=np.int64), order, str(root), empty)


def _shard_split(shards: list[str], what: str, classes: list[str] | None) -> Split:
    from swagcli.tario import BadTar, member_key, tar_members
    from swagcli.train.data import IMAGE_EXTS

    items, raw = [], []

    def add(sample: dict) -> None:
        image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if image is not None and "cls" in sample:
            items.append(image)
            raw.append(sample["cls"])

    for url in shards:  # samples grouped as the training stream groups them (tario.member_key)
        cur, key = {}, None
        try:
            with open(url, "rb") as f:
                for name, data, offset in tar_members(f):
                    split = member_key(name)
                    if split is None:
                        continue
                    if split[0] != key:
                        add(cur)
                        cur, key = {}, split[0]
                    if split[1] in IMAGE_EXTS:
                        cur[split[1]] = (url, offset, len(data))
                    elif split[1] == "cls":
                        cur["cls"] = data.decode("utf-8", "replace").strip()
            add(cur)
        except (BadTar, OSError) as e:
            raise SwagError(f"data.{what}: {url}: unreadable shard ({e})") from None
    if not items:
        raise SwagError(f"data.{what}: no samples with an image and a .cls label in {len(shards)} shard(s)")
    if all(r.isdigit() for r in raw):
        ids = [int(r) for r in raw]
        order = classes or [str(i) for i in range(max(ids) + 1)]
        if max(ids) >= len(order):
            raise SwagError(f"data.{what}: class index {max(ids)} but the training split has {len(order)} classes")
        labels = ids
    else:
        order = _label_order(sorted(set(raw)), classes, what, shards[0])
        index = {c: i for i, c in enumerate(order)}
        labels = [index[r] for r in raw]
    return Split(items, np.asarray(labels, dtype=np.int64), order, shards[0])


def require_classes(train: Split, what: str = "train") -> None:
    """A training split for a classifier has images of two classes at least: with one, every
    prediction is right (100% top-1) whatever the model."""
    present = [train.classes[i] for i in np.unique(train.labels).tolist()]
    if len(present) < 2:
        left = (f" (empty class folders left out: {', '.join(train.empty_classes[:5])})"
                if train.empty_classes else "")
        raise SwagError(f"data.{what}: {train.source}: only one class ({present[0]}) has images{left}; "
                        "a classifier needs at least 2")


def require_trained_classes(train: Split, val: Split, what: str = "val") -> None:
    """Every class with validation images has training images (shards with class indices can
    name a class the training shards never show)."""
    unseen = sorted(set(np.unique(val.labels).tolist()) - set(np.unique(train.labels).tolist()))
    if unseen:
        raise SwagError(f"data.{what}: {val.source}: classes not in the training split (no training images): "
                        f"{', '.join(val.classes[i] for i in unseen[:5])}")


def class_synsets(classes: list[str]) -> list:
    """The WordNet synset of each class name (an ImageNet wnid or a synset name such as
    ``dog.n.01``), or None where it is neither."""
    from swagcli.wordnet import get_wordnet, synset_from_wnid

    wn = get_wordnet()
    out = []
    for c in classes:
        syn = None
        try:
            if WNID.match(c):
                syn = synset_from_wnid(c)
            elif re.match(r"^[\w'.-]+\.[nvasr]\.\d+$", c):
                syn = wn.synset(c)
        except Exception:  # noqa: BLE001 - nltk raises several types for unknown names
            syn = None
        out.append(syn)
    return out


# -- images ---------------------------------------------------------------------------------------------
class ImageSet(torch.utils.data.Dataset):
    """A split as (uint8 HWC image, label) pairs; ``train`` draws RandomResizedCrop + flip from a
    generator keyed by (seed, key, index), so a resumed run redraws the same augmentations.

    With ``skip``, an image that does not decode or is over ``max_pixels`` comes as
    ``(None, label, i, (reason, error))`` (usable ones as ``(image, label, i, None)``), and
    :func:`loader` batches with :func:`collate_kept`, which leaves it out; without, it is a
    :class:`SwagError`."""

    def __init__(self, split: Split, resolution: int, train: bool, seed: int = 0, max_pixels: int = MAX_PIXELS,
                 skip: bool = False):
        self.split, self.resolution, self.train, self.seed = split, resolution, train, seed
        self.max_pixels, self.skip = max_pixels, skip

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        if not self.skip:
            return self.item(i, 0)
        try:
            return self.decode(i), int(self.split.labels[i]), i, None
        except BadImage as e:
            return None, int(self.split.labels[i]), i, (e.reason, str(e))

    def decode(self, i: int, key: int = 0):
        """Image ``i`` with the augmentation drawn for ``key`` (e.g. its place in the stream); raises
        :class:`~swagcli.images.BadImage`."""
        from swagcli.images import Undecodable, decode
        from swagcli.train.data import SampleRNG

        rng = SampleRNG(self.seed, 17, key, i) if self.train else None
        try:
            data = self.split.read(i)
        except OSError as e:
            raise Undecodable(f"unreadable ({e.strerror or e})") from None
        return decode(data, self.resolution, self.train, rng, self.max_pixels)

    def item(self, i: int, key: int):
        """(image ``i``, its label) with the augmentation drawn for ``key``; a bad image is a SwagError."""
        try:
            img = self.decode(i, key)
        except BadImage as e:
            what = "image over data.max_pixels" if e.reason == "too_large" else "undecodable image"
            raise SwagError(f"{self.split.name(i)}: {what} ({e})") from None
        return img, int(self.split.labels[i])


def collate(batch):
    imgs = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2)
    return imgs, torch.tensor([b[1] for b in batch], dtype=torch.int64)


def collate_kept(batch):
    """A batch of :class:`ImageSet` ``skip`` items: (images of the usable ones, or None when there
    are none; their labels; their indices; ``(index, reason, error)`` of the others)."""
    good = [b for b in batch if b[0] is not None]
    imgs = torch.from_numpy(np.stack([b[0] for b in good])).permute(0, 3, 1, 2) if good else None
    return (imgs, torch.tensor([b[1] for b in good], dtype=torch.int64), [b[2] for b in good],
            [(b[2], *b[3]) for b in batch if b[0] is None])


def loader(ds: ImageSet, batch_size: int, workers: int, sampler=None, shuffle=False, drop_last=False):
    from swagcli.signals import dataloader_worker_init

    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, sampler=sampler,
                                       shuffle=shuffle and sampler is None, drop_last=drop_last,
                                       collate_fn=collate_kept if getattr(ds, "skip", False) else collate,
                                       persistent_workers=False,
                                       worker_init_fn=dataloader_worker_init if workers else None)


# -- features ----------------------------------------------------------------------------------------
@dataclass
class Extracted:
    """What :func:`extract_kept` computed for a split: one row per usable image."""

    features: np.ndarray  # [K, D] float32
    kept: np.ndarray  # [K] int64: the rows' indices in the split
    skipped: list[dict]  # per skipped image: index, file, reason (undecodable | too_large), error
    images: int  # the split's size

    def report(self) -> dict:
        """The JSON a command's result holds under ``skipped_images``."""
        return skip_report(self.skipped, self.images)


def extract(source: Source, split: Split, cache: Path, resolution: int, **kw) -> np.ndarray:
    """The features of :func:`extract_kept` alone (rows: the images that decoded, in split order)."""
    return extract_kept(source, split, cache, resolution, **kw).features


def extract_kept(source: Source, split: Split, cache: Path, resolution: int, batch_size: int = 64,
                 workers: int = 2, device: torch.device | None = None, dtype=None, progress=None,
                 stage: str = "features", fn=None, key_extra: dict | None = None, max_pixels: int = MAX_PIXELS,
                 max_bad_fraction: float | None = None, what: str = "data") -> Extracted:
    """Features (float32, [K, D]) of every usable image of ``split`` (eval transform), cached in
    ``cache/chunk-NNNNN.npy`` with the images it skipped in ``chunk-NNNNN.skipped.json`` (a chunk
    lacking either, or inconsistent, is recomputed); ``progress(stage, done, total)`` is told as
    batches complete. ``fn(model, x)`` computes something else per batch (e.g. hashtag
    log-probabilities); what makes it differ belongs in ``key_extra`` (the cache's identity).
    With ``max_bad_fraction``, more skipped images than that (or all) is a one-line
    :class:`SwagError` naming ``what`` (``data.train``), the count and the first bad file."""
    from swagcli.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
    from swagcli.train.models import Normalizer

    device = device or torch.device("cpu")
    cache.mkdir(parents=True, exist_ok=True)
    key = {"format": "swag-features/2", "source": source.fingerprint, "split": split.fingerprint(),
           "images": len(split), "resolution": resolution, "chunk": CHUNK, "max_pixels": max_pixels,
           **(key_extra or {})}
    meta = cache / "meta.json"
    if _read_json(meta) != key:
        for old in [*cache.glob("chunk-*.npy"), *cache.glob("chunk-*.json")]:
            old.unlink()
        atomic_write_text(meta, json.dumps(key, indent=1) + "\n")
    model = source.model.to(device).eval()
    norm = Normalizer(model.backbone).to(device)
    done = 0
    feats, kept, skipped = [], [], []
    for c, lo in enumerate(range(0, len(split), CHUNK)):
        n = min(CHUNK, len(split) - lo)
        f, s = cache / f"chunk-{c:05d}.npy", cache / f"chunk-{c:05d}.skipped.json"
        got = _read_chunk(f, s, lo, n)
        if got is None:
            rows, bad = [], []
            ds = ImageSet(split.subset(np.arange(lo, lo + n)), resolution, train=False, max_pixels=max_pixels,
                          skip=True)
            with torch.no_grad():
                for x, _, _, worse in loader(ds, batch_size, workers):
                    bad += [{"index": lo + i, "file": split.name(lo + i), "reason": r, "error": e} for i, r, e in worse]
                    if x is not None:
                        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                            xb = norm(x.to(device))
                            rows.append((fn(model, xb) if fn else model.features(xb)).float().cpu().numpy())
                    done += (0 if x is None else len(x)) + len(worse)
                    if progress:
                        progress(stage, done, len(split))
            arr = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
            buf = io.BytesIO()
            np.save(buf, arr)
            atomic_write_json(s, {"format": "swag-skipped/1", "skipped": bad})
            atomic_write_bytes(f, buf.getvalue())
            got = arr, bad
        else:
            done += n
        arr, bad = got
        gone = {b["index"] for b in bad}
        feats.append(arr)
        kept += [i for i in range(lo, lo + n) if i not in gone]
        skipped += bad
    if progress:
        progress(stage, len(split), len(split))
    rows = [a for a in feats if len(a)]
    out = Extracted(np.concatenate(rows) if rows else np.zeros((0, 0), np.float32),
                    np.asarray(kept, dtype=np.int64), skipped, len(split))
    if max_bad_fraction is not None:
        check_skipped(out.report(), what, max_bad_fraction, max_pixels)
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_chunk(f: Path, s: Path, lo: int, n: int):
    """(features, skipped) of a cached chunk, or None when it is missing, damaged or inconsistent."""
    doc = _read_json(s)
    if not isinstance(doc, dict) or not isinstance(doc.get("skipped"), list) or not f.is_file():
        return None
    try:
        arr = np.load(f)
        gone = {int(b["index"]) for b in doc["skipped"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if arr.ndim != 2 or len(arr) != n - len(gone) or not all(lo <= i < lo + n for i in gone):
        return None
    return arr, doc["skipped"]
