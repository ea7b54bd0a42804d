"""Which checkpoint a training run continues from, and whether it may.

``resume`` in a recipe (``--resume``):

* ``auto`` (default): the newest intact checkpoint of the run directory, if any; damaged ones are
  passed over and named. The recipe must be the one the checkpoint was trained with, apart from
  what does not change what is trained (:data:`MAY_CHANGE`): a changed one is refused in one line
  listing the changes.
* ``force``: the same, accepting recipe changes (they are listed in ``metrics.jsonl``).
* ``never``: a fresh run; refused when the directory already holds a run's checkpoints (the two
  would mix: pruning would delete one's checkpoints, ``result.json`` would name the other's).
* a path: that checkpoint (or run directory), checked the same way as ``auto``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from swagcli.errors import SwagError
from swagcli.train import checkpoint as ckpt_io

# dotted recipe keys (and sections) a resumed run may change: how it is logged, checkpointed,
# evaluated, where it runs; never what it trains on or how
MAY_CHANGE = {
    "pretrain": ("out", "resume", "launcher", "log_every", "checkpoint_every", "keep_checkpoints",
                 "eval_every", "eval_samples", "tensorboard", "device", "init", "stages", "data.holdout",
                 "data.max_bad_fraction", "data.max_pixels", "speed", "data.workers", "data.decode",
                 "data.log_keys", "data.streams", "micro_batch"),
    "finetune": ("out", "resume", "launcher", "log_every", "checkpoint_every", "keep_checkpoints",
                 "eval_every", "tensorboard", "device", "data.workers", "data.batch_size", "data.val",
                 "data.max_bad_fraction", "data.max_pixels", "lr_grid", "grid_updates", "speed"),
}


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_changes(ckpt: Path, recipe_yaml: str, kind: str) -> list[str]:
    """``key: old -> new`` for every recipe key that differs from the checkpoint's recipe and may
    not change on a resume."""
    try:
        then = yaml.safe_load((ckpt / "recipe.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SwagError(f"{ckpt / 'recipe.yaml'}: unreadable ({type(e).__name__})") from None
    now = yaml.safe_load(recipe_yaml) or {}
    a, b = _flat(then), _flat(now)
    free = MAY_CHANGE.get(kind, ())
    out = []
    for key in sorted(set(a) | set(b)):
        if key == "kind" or any(key == f or key.startswith(f + ".") for f in free):
            continue
        if a.get(key) != b.get(key):
            out.append(f"{key}: {_show(a.get(key))} -> {_show(b.get(key))}")
    return out


def _show(v) -> str:
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def find(how: str, out: Path, total_steps: int | None = None) -> tuple[Path | None, list]:
    """The checkpoint to continue from (or None: a fresh run) and the damaged ones passed over,
    as (checkpoint, file, why)."""
    root = out / "checkpoints"
    if how == "never":
        have = [p for p in ckpt_io.steps(root) if (p / "meta.json").exists()]
        if have:
            raise SwagError(f"{out}: holds a run (checkpoints up to step {int(have[-1].name.split('-')[1])}); "
                            "--resume never would mix a new run into it: choose another --out, or delete "
                            f"{root} to start over")
        return None, []
    if how in ("auto", "force"):
        skipped: list = []
        return ckpt_io.latest(root, resume=True, skipped=skipped), skipped
    try:
        return ckpt_io.resolve(how, resume=True), []
    except SwagError as e:
        raise SwagError(f"--resume {how}: {e}") from None


def check(path: Path, how: str, recipe_yaml: str, kind: str) -> list[str]:
    """The recipe changes since ``path`` was written; refused (one line) unless ``how`` is force."""
    changes = recipe_changes(path, recipe_yaml, kind)
    if changes and how != "force":
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise SwagError(f"{path}: the recipe changed since this checkpoint was written ({shown}): resuming "
                        "would continue another run; pass --resume force to accept, or choose another --out")
    return changes


def resume(how: str, out: Path, model, opt, sched, scaler, recipe_yaml: str | None = None,
           kind: str = "pretrain", found=None):
    """Restore a run (``how``: auto | force | never | a checkpoint path) into model, optimizer,
    scheduler and scaler; returns (the checkpoint resumed from, its train state, the recipe changes
    accepted) or (None, None, []). ``found``: (path, changes) from :func:`find_resume` already."""
    path, changes = found if found is not None else find_resume(how, out, recipe_yaml, kind)
    if path is None:
        return None, None, []
    st = ckpt_io.load_train_state(path)
    sharded = isinstance(st.get("optimizer"), dict) and st["optimizer"].get("sharded")
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule) and not sharded:
        raise SwagError(f"{path}: written by strategy ddp (one file, not shards): resume it with strategy ddp")
    if sharded:  # any number of processes wrote it; this run's shards are read
        from swagcli.train import sharding

        sharding.load_state(path, model, opt, st["optimizer"]["other"])
    else:
        ckpt_io.load_weights(model, path)
    try:
        if not sharded:
            opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise SwagError(f"{path}: its optimizer state does not fit this run "
                        f"({str(e).splitlines()[0][:120]})") from None
    return path, st, changes


def find_resume(how: str, out: Path, recipe_yaml: str | None, kind: str, quiet: bool = False):
    """(checkpoint to continue from or None, accepted recipe changes); damaged checkpoints passed
    over are said on stderr (unless ``quiet``)."""
    path, skipped = find(how, out)
    if skipped and not quiet:
        from swagcli.ui import err_console, note

        for ck, f, why in skipped:
            err_console.print(note(f"{ck.name} is damaged ({Path(f).name}: {why}); "
                                   f"resuming from {path.name if path else 'the start'}"))
    if path is None:
        return None, []
    return path, (check(path, how, recipe_yaml, kind) if recipe_yaml else [])


def _played(p: dict | None) -> str:
    if not p:
        return "?"
    return f"{p['processes']} process{'es' if p['processes'] != 1 else ''} x {p['workers']} worker{'s' if p['workers'] != 1 else ''}"


def progress(out: Path) -> list[tuple[str, str]]:
    """Where a pretraining run directory stands, as (what, value) rows: its newest intact
    checkpoint, how its epochs are dealt and who plays them, every resume on another layout
    (from ``metrics.jsonl``), and its result's status."""
    out = Path(out)
    rows: list[tuple[str, str]] = []
    skipped: list = []
    ck = ckpt_io.latest(out / "checkpoints", resume=True, skipped=skipped)
    if ck is None:
        rows.append(("checkpoint", "none yet" + (f" ({len(skipped)} damaged)" if skipped else "")))
    else:
        meta = ckpt_io.load_meta(ck)
        total = meta.get("total_steps")
        rows.append(("checkpoint", f"{ck} (step {meta['step']:,}" + (f" of {total:,}" if total else "")
                     + f", {meta.get('samples', 0):,} samples)"))
        try:
            lay = ckpt_io.load_train_state(ck).get("layout")
        except Exception:  # noqa: BLE001 - a state this swag cannot read: say so, show the rest
            lay = None
        if lay:
            rows.append(("streams", f"{lay['streams']} (shuffle buffer {lay['shuffle_buffer']:,} each), played by "
                         f"{_played(lay.get('played_by'))}"))
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("resumed_on"):
            m = e["resumed_on"]
            rows.append(("resumed on another layout", f"at step {e.get('step', '?')}: {_played(m.get('was'))} -> "
                         f"{_played(m.get('now'))}"))
    try:
        res = json.loads((out / "result.json").read_text())
        rows.append(("result", f"{res.get('status')} at step {res.get('step')}"))
    except (OSError, ValueError):
        pass
    return rows
