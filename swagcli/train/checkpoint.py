"""Checkpoints: written atomically, read back without unpickling anything, checked before use.

A checkpoint is a directory ``RUN/checkpoints/step-00001000/`` holding

* ``model.safetensors``: the weights, hashtag head included;
* ``train_state.safetensors``: optimizer, scheduler, grad scaler, RNG, step, samples seen and every
  data stream's position, as a tensor tree (:mod:`swagcli.safetree`: tensors and a JSON
  structure; nothing in it is code);
* ``vocab.json`` (the vocabulary the head predicts), ``recipe.yaml`` (resolved) and ``meta.json``.

It is written into a hidden temporary directory (:func:`swagcli.fileio.atomic_dir`) and renamed
into place, then ``RUN/checkpoints/latest`` is replaced (also by rename): a crash or a full disk
mid-write leaves the previous checkpoint and pointer intact and no partial files. Every file is
checked before a checkpoint is used (:func:`damage`): a truncated or garbled one is named in one
line; ``resume: auto`` falls back to the newest intact checkpoint and says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from swagcli.errors import SwagError

CKPT_FORMAT = "swag-checkpoint/1"
TRAIN_STATE = "train_state.safetensors"


def save(root: str | Path, step: int, model: torch.nn.Module, train_state: dict, vocab_doc: dict | None,
         recipe_yaml: str, meta: dict, keep: int = 2, files: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_model

    from swagcli.fileio import atomic_dir, clean_stale_temps, out_dir, write_error

    root = out_dir(root, "checkpoints")
    clean_stale_temps(root)  # what a killed writer left (never a live writer's: pids are checked)
    final = root / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        try:
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": CKPT_FORMAT, "step": str(step)})
        except Exception as e:  # noqa: BLE001 - safetensors wraps OS errors in its own type
            err = write_error(e, final / "model.safetensors")
            if err is None:
                raise
            raise err from None
        _write_rest(tmp, final, step, train_state, vocab_doc, recipe_yaml, meta, files)
    _point_and_prune(root, final, keep)
    return final


def save_sharded(root: str | Path, step: int, env, tensors: dict, train_state: dict, vocab_doc: dict | None,
                 recipe_yaml: str, meta: dict, keep: int = 2, files: dict[str, str] | None = None) -> Path | None:
    """A sharded checkpoint (:mod:`swagcli.train.sharding`), called on every rank: each writes its
    shards of ``tensors`` (fsynced by torch.distributed.checkpoint) into the temporary directory
    rank 0's :func:`~swagcli.fileio.atomic_dir` made; rank 0 then writes the consolidated
    ``model.safetensors``, the train state and the texts, and the directory is published by rename
    as :func:`save`'s is (a failure on any rank leaves the previous checkpoint and pointer as they
    were). Returns the checkpoint on rank 0, None elsewhere."""
    import contextlib

    import torch.distributed as dist

    from swagcli.fileio import atomic_dir, clean_stale_temps, out_dir, write_error
    from swagcli.train import sharding

    if env.is_main:
        root = out_dir(root, "checkpoints")
        clean_stale_temps(root)
    final = Path(root) / f"step-{step:08d}"
    with atomic_dir(final) if env.is_main else contextlib.nullcontext() as tmp:
        if env.distributed:  # every rank writes into rank 0's temporary directory
            box = [str(tmp) if tmp else None]
            dist.broadcast_object_list(box, src=0)
            tmp = Path(box[0])
        try:
            sharding.write(tensors, tmp / sharding.SHARDED)
        except Exception as e:  # noqa: BLE001 - torch.distributed.checkpoint wraps every rank's OSError
            err = write_error(_first_cause(e), final / sharding.SHARDED)
            raise (err or SwagError(f"{final}: writing the shards failed "
                                    f"({str(e).strip().splitlines()[-1][:200]})")) from None
        if not env.is_main:
            return None
        try:
            sharding.consolidate(tmp / sharding.SHARDED, tmp / "model.safetensors",
                                 {"format": CKPT_FORMAT, "step": str(step)})
        except OSError as e:
            raise (write_error(e, final / "model.safetensors") or e) from None
        _write_rest(tmp, final, step, train_state, vocab_doc, recipe_yaml,
                    {**meta, "sharded": {"processes": env.world}}, files)
    _point_and_prune(Path(root), final, keep)
    return final


def _first_cause(e: BaseException) -> BaseException:
    """The OSError inside a checkpoint exception (torch.distributed.checkpoint keeps each rank's
    failure), or ``e``."""
    seen = [e]
    for f in getattr(e, "failures", {}).values() if isinstance(getattr(e, "failures", None), dict) else []:
        seen.append(f[0] if isinstance(f, tuple) else f)
    for x in seen:
        while x is not None:
            if isinstance(x, OSError):
                return x
            x = x.__cause__ or x.__context__
    return e


def _write_rest(tmp: Path, final: Path, step: int, train_state: dict, vocab_doc, recipe_yaml: str, meta: dict,
                files) -> None:
    from swagcli.fileio import os_error, write_error
    from swagcli.safetree import save_tree

    try:
        save_tree(train_state, tmp / TRAIN_STATE)
    except Exception as e:  # noqa: BLE001 - safetensors wraps OS errors in its own type
        err = write_error(e, final / TRAIN_STATE)
        if err is None:
            raise
        raise err from None
    texts = dict(files or {})
    if vocab_doc is not None:
        texts["vocab.json"] = json.dumps(vocab_doc, ensure_ascii=False) + "\n"
    texts["recipe.yaml"] = recipe_yaml
    texts["meta.json"] = json.dumps({"format": CKPT_FORMAT, "step": step, **meta}, indent=1) + "\n"
    for fname, text in texts.items():
        try:
            (tmp / fname).write_text(text)
        except OSError as e:
            raise os_error(e, final / fname) from None


def _point_and_prune(root: Path, final: Path, keep: int) -> None:
    from swagcli.fileio import atomic_write_text

    atomic_write_text(root / "latest", final.name + "\n")
    if keep > 0:  # the newest `keep` by step, and never the one just written
        for old in [p for p in steps(root) if p != final][: max(0, len(steps(root)) - keep)]:
            shutil.rmtree(old, ignore_errors=True)


def steps(root: str | Path) -> list[Path]:
    """The checkpoint directories under ``root``, oldest step first (complete or not)."""
    root = Path(root)
    return sorted(p for p in root.glob("step-*") if p.is_dir()) if root.is_dir() else []


def _safetensors_damage(f: Path) -> str | None:
    """Why a safetensors file cannot be whole (header unreadable, data cut short), or None."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"truncated or not safetensors ({size:,} bytes, header of {n:,})"
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"not readable ({type(e).__name__})"
    if 8 + n + end != size:
        return f"truncated ({size:,} of {8 + n + end:,} bytes)"
    return None


def damage(ckpt: Path, resume: bool = False) -> tuple[str, str] | None:
    """(file, why) for the first file of ``ckpt`` that is missing or damaged, or None when it is
    whole. ``resume`` also checks the training state (evaluation does not read it)."""
    meta = ckpt / "meta.json"
    try:
        doc = json.loads(meta.read_text())
        if not isinstance(doc, dict) or doc.get("format") != CKPT_FORMAT:
            return str(meta), f"not a swag checkpoint (format {doc.get('format') if isinstance(doc, dict) else doc!r})"
    except FileNotFoundError:
        return str(meta), "missing (the checkpoint was not completed)"
    except (OSError, ValueError) as e:
        return str(meta), f"not valid JSON ({type(e).__name__})"
    if resume and isinstance(doc.get("sharded"), dict):
        from swagcli.train.sharding import shard_damage

        bad = shard_damage(ckpt, doc["sharded"].get("processes"))
        if bad:
            return bad
    files = ["model.safetensors"] + ([TRAIN_STATE] if resume else [])
    for name in files:
        f = ckpt / name
        if name == TRAIN_STATE and not f.exists() and (ckpt / "train_state.pt").exists():
            return str(ckpt / "train_state.pt"), "written by an older swag as a pickle, which swag no longer reads"
        if not f.is_file():
            return str(f), "missing"
        why = _safetensors_damage(f)
        if why:
            return str(f), why
    for name in ("vocab.json", "recipe.yaml", "classes.json"):
        f = ckpt / name
        if not f.exists():
            if name == "recipe.yaml" or (name == "vocab.json" and doc.get("hashtags")):
                return str(f), "missing"
            continue
        try:
            text = f.read_text()
            if name.endswith(".json"):
                json.loads(text)
            else:
                import yaml

                yaml.safe_load(text)
        except (OSError, ValueError, UnicodeDecodeError, Exception) as e:  # noqa: BLE001 - yaml's errors
            return str(f), f"not readable ({type(e).__name__})"
    return None


def latest(root: str | Path, resume: bool = False, skipped: list | None = None) -> Path | None:
    """The newest whole checkpoint under ``root`` (the ``latest`` pointer's first), or None; the
    damaged ones passed over are appended to ``skipped`` as (checkpoint, file, why)."""
    root = Path(root)
    cands = steps(root)[::-1]
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in cands:
            cands.remove(named)
            cands.insert(0, named)
    for p in cands:
        if not (p / "meta.json").exists():
            continue  # never completed (an older swag's leftovers): not a checkpoint
        bad = damage(p, resume)
        if bad is None:
            return p
        if skipped is not None:
            skipped.append((p, *bad))
    return None


def resolve(path: str | Path, resume: bool = False) -> Path:
    """A whole checkpoint: a checkpoint directory, a run directory (its latest checkpoint) or a
    checkpoints/ dir. A damaged checkpoint is a one-line error naming the file (and the newest
    intact one, if any); it is never passed over silently."""
    p = Path(path)
    if (p / "meta.json").exists():
        bad = damage(p, resume)
        if bad:
            raise SwagError(f"{bad[0]}: damaged checkpoint: {bad[1]}")
        return p
    for cand in (p, p / "checkpoints"):
        if not cand.is_dir():
            continue
        skipped: list = []
        got = latest(cand, resume, skipped)
        if skipped:
            ck, f, why = skipped[0]
            ok = f"; the newest intact one is {got} (pass it explicitly)" if got else ""
            raise SwagError(f"{f}: damaged checkpoint: {why}{ok}")
        if got is not None:
            return got
    raise SwagError(f"{p}: no swag checkpoint here (expected a run or step-N directory with meta.json)")


FORMAT_VERSION = 2  # 2: meta.json describes the model (describe_model); 1: only its recipe.yaml did


def describe_model(model, name: str, kwargs: dict | None, resolution: int, objective: str = "wsp",
                   extra: dict | None = None) -> dict:
    """What rebuilds a checkpoint's model without today's recipe schema (``meta.json``): the timm
    name and kwargs, the pre-logits layer, the head's size, the input (resolution, mean, std), the
    objective, the swag version and this format's version."""
    from swagcli import __version__

    backbone = model.backbone
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    head = getattr(model, "head", None)
    return {"format_version": FORMAT_VERSION, "swag_version": __version__, "model": name,
            "model_kwargs": dict(kwargs or {}), "pre_logits": not isinstance(getattr(model, "pre_logits", None),
                                                                            (type(None), torch.nn.Identity)),
            "num_classes": int(head.out_features) if isinstance(head, torch.nn.Linear) else 0,
            "num_features": int(backbone.num_features), "resolution": int(resolution),
            "mean": [float(x) for x in cfg.get("mean", (0.485, 0.456, 0.406))],
            "std": [float(x) for x in cfg.get("std", (0.229, 0.224, 0.225))], "objective": objective,
            **(extra or {})}


def model_spec(ckpt: Path) -> dict:
    """meta.json with what rebuilds the model: as written (format 2), or for a checkpoint of format 1
    from its ``recipe.yaml`` read as plain YAML (never validated against today's schema, so a key
    renamed or removed since does not matter)."""
    import yaml

    from swagcli.train.models import is_vit

    meta = load_meta(ckpt)
    if meta.get("format_version", 1) >= 2 and "model_kwargs" in meta:
        return meta
    try:
        rec = yaml.safe_load((ckpt / "recipe.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SwagError(f"{ckpt / 'recipe.yaml'}: unreadable ({type(e).__name__})") from None
    finetune = meta.get("kind") == "finetune" or rec.get("kind") == "finetune"
    spec = rec.get("source") if finetune else rec.get("model")
    spec = spec if isinstance(spec, dict) else {}
    name = (spec.get("model") if finetune else spec.get("name")) or meta.get("model")
    if not name:
        raise SwagError(f"{ckpt}: its meta.json and recipe.yaml do not say which model it is")
    pre = None if finetune else spec.get("pre_logits")
    return {**meta, "model": name, "model_kwargs": dict(spec.get("kwargs") or {}),
            "pre_logits": is_vit(name) if pre is None else bool(pre),
            "num_classes": meta.get("classes") or meta.get("hashtags") or 0,
            "resolution": meta.get("resolution") or (rec.get("data") or {}).get("resolution") or 224,
            "objective": rec.get("objective", "wsp") if not finetune else "finetune"}


def load_meta(ckpt: Path) -> dict:
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise SwagError(f"{ckpt / 'meta.json'}: unreadable ({type(e).__name__})") from None
    if meta.get("format") != CKPT_FORMAT:
        raise SwagError(f"{ckpt}: not a swag checkpoint (format {meta.get('format')!r})")
    return meta


def load_weights(model: torch.nn.Module, ckpt: Path, strict: bool = True):
    from safetensors.torch import load_model

    try:
        return load_model(model, str(ckpt / "model.safetensors"), strict=strict)
    except (OSError, RuntimeError) as e:
        raise SwagError(f"{ckpt}: cannot load weights ({str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 - safetensors' own errors for a damaged file
        raise SwagError(f"{ckpt / 'model.safetensors'}: unreadable ({str(e).splitlines()[0][:200]})") from None


def load_train_state(ckpt: Path) -> dict:
    from swagcli.safetree import load_tree

    return load_tree(ckpt / TRAIN_STATE)


def load_encoder(model, source: str) -> dict:
    """The encoder (``backbone.*``) of a swag run or checkpoint, or of a weight file in any layout
    :mod:`swagcli.weights` reads (timm, torchvision, the SWAG torch.hub models; its pre-logits
    layer too, where the model has one), into ``model``: which keys were loaded, which of the
    model's were not found, which of the source's were left out."""
    from safetensors.torch import load_file

    if Path(source).is_file():
        from swagcli import weights as W

        conv = W.convert(W.read_state_dict(source))
        weights = {f"backbone.{k}": v for k, v in W.resampled(model.backbone, conv.backbone).items()}
        if conv.pre_logits is not None and isinstance(getattr(model, "pre_logits", None), torch.nn.Sequential):
            weights.update({f"pre_logits.0.{k}": v for k, v in conv.pre_logits.items()})
        ckpt = Path(source)
    else:
        try:
            ckpt = resolve(source)
        except SwagError as e:
            raise SwagError(f"init.from: {e}") from None
        weights = load_file(str(ckpt / "model.safetensors"))
    own = model.state_dict()
    enc = {k: v for k, v in weights.items()  # a file's pre-logits layer (torchvision's heads.pre_logits) too
           if k.startswith(("backbone.", "pre_logits.") if Path(source).is_file() else "backbone.")}
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
    missing = sorted(k for k in own if k.startswith("backbone.") and k not in load and "num_batches" not in k)
    return {"from": str(ckpt), "loaded": len(load), "missing": missing,
            "not_loaded": sorted(k for k in weights if k not in load)}
