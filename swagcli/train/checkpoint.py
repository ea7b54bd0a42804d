"""Checkpoints: written atomically, loadable without unpickling arbitrary objects.

A checkpoint is a directory ``RUN/checkpoints/step-00001000/`` holding

* ``model.safetensors``: the weights, hashtag head included;
* ``train_state.pt``: optimizer, scheduler, grad scaler, RNG, step, samples seen and every data
  stream's position: tensors and plain containers only, read back with ``weights_only=True``;
* ``vocab.json`` (the vocabulary the head predicts), ``recipe.yaml`` (resolved) and ``meta.json``.

It is written into a hidden ``.step-N.partial`` directory and renamed into place, then
``RUN/checkpoints/latest`` is replaced (also by rename): a crash mid-write leaves the previous
checkpoint and pointer intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from swagcli.errors import SwagError

CKPT_FORMAT = "swag-checkpoint/1"


def save(root: str | Path, step: int, model: torch.nn.Module, train_state: dict, vocab_doc: dict | None,
         recipe_yaml: str, meta: dict, keep: int = 2, files: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_model

    from swagcli.runinfo import atomic_write_text

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": CKPT_FORMAT, "step": str(step)})
    torch.save(train_state, tmp / "train_state.pt")
    if vocab_doc is not None:
        (tmp / "vocab.json").write_text(json.dumps(vocab_doc, ensure_ascii=False) + "\n")
    for fname, text in (files or {}).items():
        (tmp / fname).write_text(text)
    (tmp / "recipe.yaml").write_text(recipe_yaml)
    (tmp / "meta.json").write_text(json.dumps({"format": CKPT_FORMAT, "step": step, **meta}, indent=1) + "\n")
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (following ``latest``), or None."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        p = root / pointer.read_text().strip()
        if (p / "meta.json").is_file():
            return p
    done = sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, a run directory (its latest checkpoint) or a checkpoints/ dir."""
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "meta.json").is_file():
            return cand
        got = latest(cand) if cand.is_dir() else None
        if got is not None:
            return got
    raise SwagError(f"{p}: no swag checkpoint here (expected a run or step-N directory with meta.json)")


def load_meta(ckpt: Path) -> dict:
    meta = json.loads((ckpt / "meta.json").read_text())
    if meta.get("format") != CKPT_FORMAT:
        raise SwagError(f"{ckpt}: not a swag checkpoint (format {meta.get('format')!r})")
    return meta


def load_weights(model: torch.nn.Module, ckpt: Path, strict: bool = True):
    from safetensors.torch import load_model

    try:
        return load_model(model, str(ckpt / "model.safetensors"), strict=strict)
    except (OSError, RuntimeError) as e:
        raise SwagError(f"{ckpt}: cannot load weights ({str(e).splitlines()[0]})") from None


def load_train_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise SwagError(f"{ckpt}: unreadable train state ({str(e).splitlines()[0]})") from None


def load_encoder(model, source: str) -> dict:
    """The encoder (``backbone.*``) of a swag run or checkpoint into ``model``: which keys were
    loaded, which of the model's were not found, which of the checkpoint's were left out."""
    from safetensors.torch import load_file

    try:
        ckpt = resolve(source)
    except SwagError as e:
        raise SwagError(f"init.from: {e}") from None
    weights = load_file(str(ckpt / "model.safetensors"))
    own = model.state_dict()
    enc = {k: v for k, v in weights.items() if k.startswith("backbone.")}
    if not enc:
        raise SwagError(f"init.from: {ckpt} has no encoder weights (backbone.*)")
    shape = [k for k, v in enc.items() if k in own and own[k].shape != v.shape]
    if shape:
        k = shape[0]
        raise SwagError(f"init.from: {k} is {tuple(enc[k].shape)} in {ckpt}, {tuple(own[k].shape)} here "
                        "(another model size or resolution?)")
    load = {k: v for k, v in enc.items() if k in own}
    if not load:
        raise SwagError(f"init.from: none of {ckpt}'s encoder weights fit this model (another architecture?)")
    model.load_state_dict(load, strict=False)
    missing = sorted(k for k in own if k.startswith("backbone.") and k not in load)
    return {"from": str(ckpt), "loaded": len(load), "missing": missing,
            "not_loaded": sorted(k for k in weights if k not in load)}
