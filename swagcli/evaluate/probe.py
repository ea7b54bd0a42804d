"""`swag probe`: a linear classifier on frozen features (WSL §3, SWAG Fig. 3, SPEC.md §5).

Features of the train and validation splits are extracted once (cached, resumable; see
:func:`~swagcli.evaluate.transfer.extract_kept`; images that do not decode or are over
``data.max_pixels`` are skipped, counted under ``skipped_images`` and left out of both splits' rows,
up to ``data.max_bad_fraction``). For every low-shot fraction (and, below 1, every
seed) a class-stratified subset of train is drawn; a held-out part of it chooses the L2 strength
along a warm-started path; the classifier is then refit on the whole subset at that strength
and scored on the validation split (top-1/top-5). Results: ``probe.json`` (every fit and the
mean/std per fraction), ``probe.png`` (accuracy against the fraction of labels) and, for the
full training set, ``classifier.pt``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from swagcli.errors import SwagError


def run(recipe, progress=None) -> dict:
    from swagcli.evaluate import logreg
    from swagcli.evaluate.transfer import (extract_kept, load_source, load_split, require_classes,
                                           require_trained_classes)
    from swagcli.images import combine_reports
    from swagcli.runinfo import atomic_write_text, stamp
    from swagcli.train.dist import DistEnv
    from swagcli.train.runtime import amp_dtype, pick_device

    if not recipe.out:
        raise SwagError("probe: no output directory (--out DIR or 'out:' in the recipe)")
    out = Path(recipe.out)
    t0 = time.time()
    train = load_split(recipe.data.train, "train")
    require_classes(train)
    val = load_split(recipe.data.val, "val", train.classes)
    require_trained_classes(train, val)
    source = load_source(recipe.source, recipe.seed, recipe.data.resolution)
    resolution = recipe.data.resolution or source.resolution
    device = pick_device(recipe.device, DistEnv())
    dtype = amp_dtype(recipe.precision, device)
    stamp(out, "probe", recipe, {"source": source.fingerprint})
    kw = dict(resolution=resolution, batch_size=recipe.data.batch_size, workers=recipe.data.workers,
              device=device, dtype=dtype, progress=progress, max_pixels=recipe.data.max_pixels,
              max_bad_fraction=recipe.data.max_bad_fraction)
    ext_tr = extract_kept(source, train, out / "features" / "train", stage="features train", what="data.train", **kw)
    ext_va = extract_kept(source, val, out / "features" / "val", stage="features val", what="data.val", **kw)
    skipped = combine_reports({"train": ext_tr.report(), "val": ext_va.report()})
    train, val = train.subset(ext_tr.kept), val.subset(ext_va.kept)  # the images the features are of
    xtr, xva = torch.from_numpy(ext_tr.features), torch.from_numpy(ext_va.features)
    ytr, yva = torch.from_numpy(train.labels), torch.from_numpy(val.labels)
    classes = len(train.classes)

    rows = []
    solver = {"tol": recipe.tol, "max_iter": recipe.max_iter}
    fits = [(f, s) for f in recipe.fractions for s in (range(recipe.seeds) if f < 1 else [0])]
    for n, (fraction, seed) in enumerate(fits):
        idx = (np.arange(len(train)) if fraction >= 1 else
               logreg.stratified_subset(train.labels, fraction, recipe.seed * 1000 + seed))
        fit_i, held_i = logreg.stratified_split(train.labels[idx], recipe.heldout, recipe.seed * 1000 + seed)
        fit_i, held_i = idx[fit_i], idx[held_i]
        if len(held_i):
            l2, path = logreg.select_l2(xtr[fit_i], ytr[fit_i], xtr[held_i], ytr[held_i], classes,
                                        recipe.l2_grid, **solver)
        else:  # one image per class, none to hold out: the middle of the recipe's grid, else 1e-3
            grid = recipe.l2_grid or [1e-3]
            l2, path = grid[len(grid) // 2], []
        clf = logreg.fit(xtr[idx], ytr[idx], classes, l2, **solver)
        acc = logreg.topk_accuracy(clf.logits(xva), yva)
        rows.append({"fraction": fraction, "seed": seed, "images": int(len(idx)), "l2": l2,
                     "top1": acc["top1"], "top5": acc["top5"], "iterations": clf.iterations,
                     "converged": clf.converged, "l2_path": path})
        if fraction >= 1:
            torch.save({**clf.state_dict(), "classes": train.classes}, out / "classifier.pt")
        if progress:
            progress("fit classifiers", n + 1, len(fits))

    summary = []
    for fraction in recipe.fractions:
        rs = [r for r in rows if r["fraction"] == fraction]
        t1, t5 = np.array([r["top1"] for r in rs]), np.array([r["top5"] for r in rs])
        summary.append({"fraction": fraction, "images": int(np.mean([r["images"] for r in rs])), "fits": len(rs),
                        "top1": float(t1.mean()), "top1_std": float(t1.std(ddof=1)) if len(rs) > 1 else 0.0,
                        "top5": float(t5.mean()), "top5_std": float(t5.std(ddof=1)) if len(rs) > 1 else 0.0})
    result = {"source": {"kind": source.kind, "model": source.name, "path": source.path},
              "resolution": resolution, "feature_dim": int(xtr.shape[1]), "classes": classes,
              "train_images": len(train), "val_images": len(val), "skipped_images": skipped,
              "empty_class_folders": {"train": train.empty_classes, "val": val.empty_classes},
              "summary": summary, "fits": rows,
              "seconds": round(time.time() - t0, 2), "out": str(out)}
    atomic_write_text(out / "probe.json", json.dumps(result, indent=1) + "\n")
    from swagcli.plots import lowshot_plot

    lowshot_plot(summary, out / "probe.png", f"linear probe: {source.name} ({source.kind})")
    return result
