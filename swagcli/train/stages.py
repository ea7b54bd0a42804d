"""Chained pretraining stages (MAWS, SPEC.md §4): ``stages: [{objective: mae, ...}, {objective: wsp}]``
in one recipe, each run by :func:`swagcli.train.engine.train` in its own directory and initialized
from the stage before."""

from __future__ import annotations

import json
from pathlib import Path

from swagcli.errors import SwagError
from swagcli.train.dist import DistEnv
from swagcli.train.engine import train


def stage_recipes(recipe) -> list:
    """The recipes of ``stages``: each the recipe with the stage's keys over it, run in
    ``OUT/<i>-<objective>`` (or ``OUT/<name>``), initialized from the stage before unless it says
    otherwise. Every stage is validated before the first one starts."""
    from swagcli import recipes as R

    base = json.loads(recipe.model_dump_json(by_alias=True))
    base.pop("stages")
    out, prev = [], None
    for i, stage in enumerate(recipe.stages or []):
        stage = dict(stage)
        name = stage.pop("name", None) or f"{i + 1}-{stage.get('objective', base['objective'])}"
        data = R.merge(base, stage)
        data["out"] = str(Path(recipe.out) / name)
        if prev is not None and not (stage.get("init") or {}).get("from"):
            data["init"] = {**data.get("init", {}), "from": prev}
        out.append(R.validate("pretrain", data, f"stages[{i}] ({name})"))
        prev = data["out"]
    return out


def train_stages(recipe, env: DistEnv, progress: bool = True, on_step=None) -> dict:
    """:func:`train`, or every stage of ``stages`` in turn (a finished stage is not rerun); the
    result is the last stage's, with every stage's under ``stages``."""
    if not recipe.stages:
        return train(recipe, env, progress, on_step)
    if not recipe.out:
        raise SwagError("pretrain: no run directory (--out DIR or 'out:' in the recipe)")
    results = []
    for r in stage_recipes(recipe):
        done = Path(r.out) / "result.json"
        res = json.loads(done.read_text()) if done.is_file() else None
        if not (res and res.get("status") == "finished"):
            res = train(r, env, progress, on_step)
        results.append(res)
        if res["status"] != "finished":
            break
    return {**results[-1], "stages": results}
