"""What every transfer protocol shares: the pretrained model, the downstream sets, features.

* :func:`load_source`: a swag run/checkpoint (backbone + the hashtag head + its vocabulary), a
  local timm weight file (backbone only: e.g. released SWAG backbones), or random weights (the
  baseline every transfer result is compared with). Nothing is downloaded.
* :func:`load_split`: a labelled split, from ImageNet-layout class folders (``train/n01440764/
  x.jpg``) or from webdataset shards (``KEY.jpg`` + ``KEY.cls``: a class index or name), indexed
  once so both give random access.
* :func:`extract`: frozen features of a split, cached on disk in chunks: an interrupted
  extraction resumes at the first missing chunk, and a cache made by another model, resolution or
  image list is never reused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from swagcli.errors import SwagError

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


def _default_resolution(backbone) -> int:
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    img = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    return int(img[0]) if img else int(size[-1])


def load_source(spec, seed: int = 0) -> Source:
    """The model named by a :class:`~swagcli.recipes.SourceSpec`, on the CPU, in eval mode."""
    from swagcli.train.models import build_model

    path = spec.checkpoint
    if path and Path(path).is_dir():
        return _load_swag(Path(path))
    if path and not Path(path).is_file():
        raise SwagError(f"source.checkpoint: {path}: no such file or directory")
    if not spec.model:
        raise SwagError("source.model: a timm model name is needed for a weight file or random weights")
    torch.manual_seed(seed)
    model = build_model(spec.model, 1, spec.kwargs, pre_logits=False)
    if path:
        _load_backbone(model.backbone, Path(path))
        st = Path(path).stat()
        fp = f"timm:{spec.model}:{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    else:
        fp = f"random:{spec.model}:{json.dumps(spec.kwargs, sort_keys=True)}:{seed}"
    return Source(model.eval(), spec.model, "timm" if path else "random", _default_resolution(model.backbone),
                  path, None, fp)


def _load_swag(path: Path) -> Source:
    from swagcli import recipes
    from swagcli.prep.vocab import Vocab
    from swagcli.train import checkpoint as ckpt_io
    from swagcli.train.models import build_model

    ckpt = ckpt_io.resolve(path)
    meta = ckpt_io.load_meta(ckpt)
    rec = recipes.load("pretrain", ckpt / "recipe.yaml")
    if rec.objective == "mae":  # the encoder alone: no hashtag head, no pre-logits layer
        from swagcli.train.checkpoint import load_encoder

        model = build_model(rec.model.name, 1, rec.model.kwargs, pre_logits=False)
        load_encoder(model, str(ckpt))
        return Source(model.eval(), rec.model.name, "swag-mae", rec.data.resolution, str(ckpt), None,
                      f"swag:{ckpt.resolve()}:{meta.get('step')}", meta)
    vocab = Vocab(json.loads((ckpt / "vocab.json").read_text()), str(ckpt / "vocab.json"))
    model = build_model(rec.model.name, len(vocab), rec.model.kwargs, rec.model.pre_logits)
    ckpt_io.load_weights(model, ckpt)
    return Source(model.eval(), rec.model.name, "swag", rec.data.resolution, str(ckpt), vocab,
                  f"swag:{ckpt.resolve()}:{meta.get('step')}", meta)


def _load_backbone(backbone: torch.nn.Module, path: Path) -> None:
    """A timm state dict from a local file into a headless backbone: wrappers (``state_dict``,
    ``model``, ``module.`` prefixes) are unwrapped and classifier weights dropped; every backbone
    weight must be found."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise SwagError(f"{path}: not a readable weight file ({str(e).splitlines()[0][:200]})") from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SwagError(f"{path}: not a state dict of tensors")
    own = backbone.state_dict()
    for prefix in ("module.", "model.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    keep = {k: v for k, v in sd.items() if k in own}
    missing = [k for k in own if k not in keep]
    if missing:
        raise SwagError(f"{path}: {len(missing)} of {len(own)} backbone weights missing (e.g. {missing[0]}); "
                        f"is it a {type(backbone).__name__} checkpoint?")
    bad = [k for k, v in keep.items() if v.shape != own[k].shape]
    if bad:
        raise SwagError(f"{path}: shape mismatch for {bad[0]}: {tuple(keep[bad[0]].shape)} vs "
                        f"{tuple(own[bad[0]].shape)} (another model size or resolution?)")
    backbone.load_state_dict(keep)


# -- downstream splits ------------------------------------------------------------------------------
@dataclass
class Split:
    """A labelled image set: ``items[i]`` is a file path or (tar path, offset, size)."""

    items: list
    labels: np.ndarray
    classes: list[str]
    source: str

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

    def subset(self, idx) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split([self.items[i] for i in idx], self.labels[idx], self.classes, self.source)

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
        raise SwagError(f"data.{what}: {where}: classes not in the training split: {', '.join(unknown[:5])}")
    return classes


def _folder_split(root: Path, what: str, classes: list[str] | None) -> Split:
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not dirs:
        raise SwagError(f"data.{what}: {root}: no class folders (expected ROOT/CLASS/IMAGE.jpg)")
    order = _label_order([d.name for d in dirs], classes, what, str(root))
    index = {c: i for i, c in enumerate(order)}
    items, labels = [], []
    for d in dirs:
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                items.append(str(f))
                labels.append(index[d.name])
    if not items:
        raise SwagError(f"data.{what}: {root}: no images in its class folders")
    return Split(items, np.asarray(labels, dtype=np.int64), order, str(root))


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
    generator keyed by (seed, key, index), so a resumed run redraws the same augmentations."""

    def __init__(self, split: Split, resolution: int, train: bool, seed: int = 0):
        self.split, self.resolution, self.train, self.seed = split, resolution, train, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.item(i, 0)

    def item(self, i: int, key: int):
        """Image ``i`` with the augmentation drawn for ``key`` (e.g. its place in the stream)."""
        from swagcli.train.data import SampleRNG, load_image

        rng = SampleRNG(self.seed, 17, key, i) if self.train else None
        try:
            img = load_image(self.split.read(i), self.resolution, self.train, rng)
        except Exception as e:  # noqa: BLE001 - PIL raises many types
            item = self.split.items[i]
            raise SwagError(f"{item if isinstance(item, str) else item[0]}: undecodable image ({e})") from None
        return img, int(self.split.labels[i])


def collate(batch):
    imgs = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2)
    return imgs, torch.tensor([b[1] for b in batch], dtype=torch.int64)


def loader(ds: ImageSet, batch_size: int, workers: int, sampler=None, shuffle=False, drop_last=False):
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, sampler=sampler,
                                       shuffle=shuffle and sampler is None, drop_last=drop_last,
                                       collate_fn=collate, persistent_workers=False)


# -- features ----------------------------------------------------------------------------------------
def extract(source: Source, split: Split, cache: Path, resolution: int, batch_size: int = 64,
            workers: int = 2, device: torch.device | None = None, dtype=None, progress=None,
            stage: str = "features", fn=None, key_extra: dict | None = None) -> np.ndarray:
    """Features (float32, [N, D]) of every image of ``split`` (eval transform), cached in
    ``cache/chunk-NNNNN.npy``; ``progress(stage, done, total)`` is told as chunks complete.
    ``fn(model, x)`` computes something else per batch (e.g. hashtag log-probabilities); what
    makes it differ belongs in ``key_extra`` (the cache's identity)."""
    from swagcli.runinfo import atomic_write_text
    from swagcli.train.engine import Normalizer

    device = device or torch.device("cpu")
    cache.mkdir(parents=True, exist_ok=True)
    key = {"format": "swag-features/1", "source": source.fingerprint, "split": split.fingerprint(),
           "images": len(split), "resolution": resolution, "chunk": CHUNK, **(key_extra or {})}
    meta = cache / "meta.json"
    if not meta.is_file() or json.loads(meta.read_text()) != key:
        for old in cache.glob("chunk-*.npy"):
            old.unlink()
        atomic_write_text(meta, json.dumps(key, indent=1) + "\n")
    chunks = range(0, len(split), CHUNK)
    model = source.model.to(device).eval()
    norm = Normalizer(model.backbone).to(device)
    done = 0
    for c, lo in enumerate(chunks):
        f = cache / f"chunk-{c:05d}.npy"
        if f.is_file():
            done += min(CHUNK, len(split) - lo)
            continue
        part = split.subset(np.arange(lo, min(lo + CHUNK, len(split))))
        feats = []
        with torch.no_grad():
            for x, _ in loader(ImageSet(part, resolution, train=False), batch_size, workers):
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    xb = norm(x.to(device))
                    feats.append((fn(model, xb) if fn else model.features(xb)).float().cpu().numpy())
                done += len(x)
                if progress:
                    progress(stage, done, len(split))
        tmp = f.with_name(f.name + ".partial.npy")
        np.save(tmp, np.concatenate(feats).astype(np.float32))
        tmp.replace(f)
    if progress:
        progress(stage, len(split), len(split))
    return np.concatenate([np.load(cache / f"chunk-{c:05d}.npy") for c in range(len(chunks))])
