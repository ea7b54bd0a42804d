"""`swag zeroshot`: classify a WordNet-labelled set with the hashtag head alone (SWAG §4.4, App. D;
SPEC.md §6).

1. Each class is mapped to the hashtag(s) of highest WordNet path similarity (:mod:`zeromap`).
2. The hashtag log-probabilities ``log p_h`` (softmax over the whole vocabulary, as pretrained) of
   the mapped hashtags are computed once per image and cached (``predictions/``): every later
   aggregation or Platt variant on the same model, data and classes is instant. Images that do
   not decode or are over ``data.max_pixels`` are skipped (with their labels) and counted under
   ``skipped_images``, up to ``data.max_bad_fraction``.
3. A class scores ``sum`` or ``mean`` of its hashtags' ``p_h``, or ``max`` of ``p_h / N_h`` (``N_h``:
   the classes hashtag h serves). The paper's best: RegNetY ``mean`` (``sum`` with Platt), ViT ``max``.
4. Platt scaling (transductive): ``p' = softmax(w * x + b)`` with per-class ``w``, ``b`` fitted on the
   unlabelled predictions so that the mean ``p'`` over the images is uniform (cross-entropy from the
   uniform distribution to it). Taken literally (``x`` the score as printed) the objective is also
   minimized by ``w = 0`` (every ``p'`` uniform). The default is the documented choice of SPEC §6:
   ``x = log`` of the class score and the penalty ``w_penalty * mean_c (w_c - 1)^2``. With ``w = 1``
   the ``C`` biases alone can match the ``C`` marginals, so the optimum keeps ``w`` near 1 and the
   per-image predictions stay as sharp as the model made them: it cannot collapse. The literal form
   stays available (``platt.form: prob``) for comparison.

Classes no hashtag reaches score ``-inf`` (never predicted; they count as errors) and are left out of
the Platt fit. Test labels are used only for the reported accuracies.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from swagcli.errors import SwagError

ROWS = 8192  # rows per block in the Platt objective (float64: 64 MB for 1000 classes)
FIXED_POINT_ROUNDS = 100  # bias rounds before L-BFGS (each a pass over the predictions)


# -- classes and the map -------------------------------------------------------------------------------
def class_names(split, spec: str | None) -> list[str]:
    """The WordNet name (wnid or synset name) of each class of ``split``, in label order."""
    if spec is None:
        return list(split.classes)
    if spec == "imagenet":
        from swagcli.evaluate.zeromap import imagenet_wnids

        names = imagenet_wnids()
        if all(c.isdigit() for c in split.classes):
            if len(split.classes) > len(names):
                raise SwagError(f"data.classes: imagenet has 1000 classes, the data has labels up to "
                                f"{len(split.classes) - 1}")
            return names[:len(split.classes)]
        known = set(names)
        unknown = [c for c in split.classes if c not in known]
        if unknown:
            raise SwagError(f"data.classes: imagenet: {unknown[0]} is not an ImageNet-1k wnid")
        return list(split.classes)
    path = Path(spec)
    if not path.is_file():
        raise SwagError(f"data.classes: {spec}: no such file (or 'imagenet')")
    names = [line.split()[0] for line in path.read_text(errors="replace").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if len(names) < len(split.classes) or (len(names) != len(split.classes)
                                            and not all(c.isdigit() for c in split.classes)):
        raise SwagError(f"data.classes: {spec}: {len(names)} class names for {len(split.classes)} classes "
                        "(one per line, in label order)")
    return names[:len(split.classes)]


def class_map(names: list[str], vocab) -> list[dict]:
    """Per class: its synset, the hashtags it maps to (ids and names) and their path similarity."""
    from swagcli.evaluate.transfer import class_synsets
    from swagcli.evaluate.zeromap import class_hashtags, vocab_hashtag_synsets

    syns = class_synsets(names)
    mapping = class_hashtags(syns, vocab_hashtag_synsets(vocab))
    return [{"class": n, "synset": s.name() if s is not None else None, "hashtag_ids": m["hashtags"],
             "hashtags": [vocab.hashtags[h]["name"] for h in m["hashtags"]], "similarity": m["similarity"]}
            for n, s, m in zip(names, syns, mapping)]


def default_aggregation(model: str, platt: bool) -> str:
    """SWAG App. D: RegNetY is best with ``mean`` (``sum`` with Platt), ViT with ``max``."""
    if model.startswith("regnet"):
        return "sum" if platt else "mean"
    return "max"


# -- scores -----------------------------------------------------------------------------------------------
def aggregate(logp: np.ndarray, columns: list[int], mapping: list[dict], how: str) -> torch.Tensor:
    """[N, C] float64 log class scores from [N, U] hashtag log-probabilities (``columns[u]`` is the
    hashtag id of column u); ``-inf`` for classes no hashtag reaches."""
    lp = torch.from_numpy(np.asarray(logp)).double()
    col = {h: u for u, h in enumerate(columns)}
    fanout: dict[int, int] = {}
    for m in mapping:
        for h in m["hashtag_ids"]:
            fanout[h] = fanout.get(h, 0) + 1
    out = lp.new_full((lp.shape[0], len(mapping)), -float("inf"))
    for c, m in enumerate(mapping):
        ids = m["hashtag_ids"]
        if not ids:
            continue
        x = lp[:, [col[h] for h in ids]]
        if how == "sum":
            out[:, c] = torch.logsumexp(x, dim=1)
        elif how == "mean":
            out[:, c] = torch.logsumexp(x, dim=1) - np.log(len(ids))
        elif how == "max":
            out[:, c] = (x - torch.tensor([np.log(fanout[h]) for h in ids], dtype=x.dtype)).amax(dim=1)
        else:
            raise SwagError(f"aggregation: {how!r} is not sum, mean or max")
    return out


def _reachable(x: torch.Tensor) -> torch.Tensor:
    """[C] bool: classes with a finite score somewhere (one reduction, no [N, C] mask)."""
    return x.amax(dim=0) > -float("inf")


def _inputs(x: torch.Tensor, reach: torch.Tensor, form: str) -> torch.Tensor:
    """What Platt's w multiplies, over the reachable classes: the log score (``log``) or the score
    (``prob``), float64, with stray ``-inf`` made finite (no copy when nothing needs changing)."""
    X = (x if bool(reach.all()) else x[:, reach]).double()
    if form != "log":
        X = X.exp()
    if float(X.min()) == -float("inf"):
        X = X.nan_to_num(neginf=torch.finfo(X.dtype).min / 4)
    return X


def _objective(X: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lam: float):
    """Cross-entropy from uniform to the mean of softmax(w * X + b) plus lam * mean (w - 1)^2, with its
    gradient (two passes over row blocks; nothing [N, C] is kept)."""
    N, C = X.shape
    msum = X.new_zeros(C)
    for lo in range(0, N, ROWS):
        msum += torch.softmax(X[lo:lo + ROWS] * w + b, dim=1).sum(dim=0)
    m = (msum / N).clamp_min(torch.finfo(X.dtype).tiny)
    loss = -m.log().mean() + lam * (w - 1).square().mean()
    g = -1.0 / (C * N * m)  # d loss / d p'_ic, the same for every image
    gw, gb = torch.zeros_like(w), torch.zeros_like(b)
    for lo in range(0, N, ROWS):
        xb = X[lo:lo + ROWS]
        q = torch.softmax(xb * w + b, dim=1)
        t = q * g
        dz = t - q * t.sum(dim=1, keepdim=True)
        gw += (dz * xb).sum(dim=0)
        gb += dz.sum(dim=0)
    gw += 2 * lam * (w - 1) / C
    return loss, gw, gb


def platt_fit(x: torch.Tensor, form: str = "log", w_penalty: float = 1.0, max_iter: int = 500) -> dict:
    """Fit per-class (w, b) on the [N, C] log class scores ``x`` (unlabelled); classes that are
    ``-inf`` everywhere are left out (w = 1, b = 0, and they stay ``-inf``).

    The biases start from the fixed point that makes the mean prediction uniform with w = 1
    (b_c -= log(C * m_c), a few dozen rounds); L-BFGS then polishes (w, b) on the full objective."""
    reach = _reachable(x)
    if int(reach.sum()) < 2:
        raise SwagError("platt: fewer than two classes are reachable through the hashtag map")
    X = _inputs(x, reach, form)
    N, C = X.shape
    # bias rounds with w = 1: softmax(X + b) = E e^b / (E e^b) with E = exp(X - row max), so the mean
    # prediction is e^b * E^T (1 / E e^b) / N: two matrix-vector products a round
    E = torch.exp(X - X.amax(dim=1, keepdim=True))
    eb = X.new_ones(C)
    rounds = 0
    for rounds in range(1, FIXED_POINT_ROUNDS + 1):
        m = eb * (E.t() @ (1.0 / (E @ eb))) / N
        step = (m.clamp_min(1e-300) * C).log()
        eb /= step.exp()
        eb /= eb.max()  # softmax ignores a common factor; this keeps e^b in range
        if float(step.abs().max()) < 1e-7:
            break
    del E
    w, b = X.new_ones(C), eb.log()
    b -= b.mean()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-8,
                            tolerance_change=1e-12, history_size=10, line_search_fn="strong_wolfe")
    state = {}

    def closure():
        with torch.no_grad():
            loss, gw, gb = _objective(X, w, b, w_penalty)
        w.grad, b.grad = gw, gb
        state["loss"] = float(loss)
        return loss

    opt.step(closure)
    W, B = x.new_ones(x.shape[1]).double(), x.new_zeros(x.shape[1]).double()
    W[reach], B[reach] = w.detach(), b.detach()
    return {"w": W, "b": B, "form": form, "w_penalty": w_penalty, "loss": state.get("loss"),
            "uniform_loss": float(np.log(C)), "bias_rounds": rounds,
            "iterations": int(opt.state[w].get("n_iter", 0))}


def platt_apply(x: torch.Tensor, fit: dict) -> torch.Tensor:
    """log p' [N, C] (float64); unreachable classes stay ``-inf``."""
    reach = _reachable(x)
    z = torch.full(x.shape, -float("inf"), dtype=torch.float64)
    z[:, reach] = _inputs(x, reach, fit["form"]) * fit["w"][reach] + fit["b"][reach]
    return torch.log_softmax(z, dim=1)


def report(logq: torch.Tensor, y: np.ndarray, bins: int) -> dict:
    """Top-1/top-5, expected calibration error, mean top probability and the predicted-class counts
    of the [N, C] log class probabilities ``logq`` against labels ``y``."""
    from swagcli.evaluate.logreg import topk_accuracy

    y_t = torch.as_tensor(y).long()
    acc = topk_accuracy(logq, y_t)
    q = logq.exp()
    conf, pred = q.max(dim=1)
    right = (pred == y_t).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=q.dtype)
    which = torch.bucketize(conf, edges[1:-1], right=True)
    ece = 0.0
    for k in range(bins):
        sel = which == k
        if sel.any():
            ece += float(sel.double().mean() * (right[sel].mean() - conf[sel].mean()).abs())
    counts = torch.bincount(pred, minlength=logq.shape[1])
    return {**acc, "ece": ece, "mean_top_prob": float(conf.mean()),
            "predicted_classes": int((counts > 0).sum()), "largest_class_share": float(counts.max()) / len(pred),
            "counts": counts.tolist()}


# -- the command -------------------------------------------------------------------------------------------
def head_outputs(source, split, cache: Path, resolution: int, recipe, columns: list[int], top_k: int = 0,
                 progress=None, what: str = "data.val"):
    """One cached pass of the hashtag head over ``split`` (softmax over the whole vocabulary):
    ([K, top_k] ids of each usable image's top_k hashtags, or None; [K, len(columns)] float32 log p
    of the hashtags ``columns``; the :class:`~swagcli.evaluate.transfer.Extracted` pass, whose
    ``kept`` are the K images' indices in ``split`` and whose ``report()`` counts the images
    skipped). ``recipe`` gives device, precision and data.batch_size / workers / max_pixels /
    max_bad_fraction (past it: a one-line error naming ``what``)."""
    from swagcli.evaluate.transfer import extract_kept
    from swagcli.train.dist import DistEnv
    from swagcli.train.runtime import amp_dtype, pick_device

    ids = torch.tensor(columns, dtype=torch.long)
    device = pick_device(recipe.device, DistEnv())

    def fn(model, x):
        logp = torch.log_softmax(model(x).float(), dim=1)
        top = [logp.topk(top_k, dim=1).indices.float()] if top_k else []  # ids < 2^24: exact in float32
        return torch.cat(top + [logp[:, ids.to(x.device)]], dim=1)

    key = {"what": "hashtag log-probabilities", "hashtags": hashlib.sha1(json.dumps(columns).encode()).hexdigest(),
           **({"top_k": top_k} if top_k else {})}
    ext = extract_kept(source, split, cache, resolution, batch_size=recipe.data.batch_size,
                       workers=recipe.data.workers, device=device, dtype=amp_dtype(recipe.precision, device),
                       progress=progress, stage="predictions", fn=fn, key_extra=key,
                       max_pixels=recipe.data.max_pixels, max_bad_fraction=recipe.data.max_bad_fraction, what=what)
    out = ext.features
    return (out[:, :top_k].round().astype(np.int64) if top_k else None), out[:, top_k:], ext


def predictions(source, split, mapping: list[dict], cache: Path, resolution: int, recipe, progress=None):
    """([K, U] float32 log p_h of the mapped hashtags for the K usable images, their ids, the
    :class:`~swagcli.evaluate.transfer.Extracted` pass): computed once, cached in ``cache``."""
    columns = sorted({h for m in mapping for h in m["hashtag_ids"]})
    if not columns:
        raise SwagError("zeroshot: no class maps to any hashtag of the vocabulary (are the classes WordNet "
                        "wnids or synset names? see `swag zeroshot map`)")
    _, logp, ext = head_outputs(source, split, cache, resolution, recipe, columns, progress=progress)
    return logp, columns, ext


def load(recipe):
    """(source, split, class names, mapping) of a zeroshot recipe, with one-line errors."""
    from swagcli.evaluate.transfer import load_source, load_split

    if recipe.source.checkpoint is None:
        raise SwagError("zeroshot: no checkpoint (a swag run or checkpoint directory with its hashtag head)")
    split = load_split(recipe.data.val, "val")
    names = class_names(split, recipe.data.classes)
    source = load_source(recipe.source, resolution=recipe.data.resolution)
    if source.vocab is None:
        raise SwagError("zeroshot: needs a swag checkpoint (its hashtag head and vocabulary); "
                        f"{source.path} has no hashtag head")
    return source, split, names, class_map(names, source.vocab)


def run(recipe, progress=None) -> dict:
    from swagcli.runinfo import atomic_write_text, stamp

    if not recipe.out:
        raise SwagError("zeroshot: no output directory (--out DIR or 'out:' in the recipe)")
    out = Path(recipe.out)
    t0 = time.time()
    source, split, names, mapping = load(recipe)
    resolution = recipe.data.resolution or source.resolution
    stamp(out, "zeroshot", recipe, {"source": source.fingerprint})
    write_mapping(mapping, out)
    logp, columns, ext = predictions(source, split, mapping, out / "predictions", resolution, recipe, progress)
    split = split.subset(ext.kept)  # the labels of the images predicted (bad ones skipped and counted)
    t1 = time.time()
    results = {}
    variants = [("no_platt", False)] + ([("platt", True)] if recipe.platt.enabled else [])
    fits = {}
    for key, platt in variants:
        how = recipe.aggregation if recipe.aggregation != "auto" else default_aggregation(source.name, platt)
        x = aggregate(logp, columns, mapping, how)
        if platt:
            fit = platt_fit(x, recipe.platt.form, recipe.platt.w_penalty, recipe.platt.max_iter)
            logq = platt_apply(x, fit)
            fits[key] = fit
        else:
            logq = torch.log_softmax(x, dim=1)
        r = report(logq, split.labels, recipe.ece_bins)
        if platt:
            w = fit["w"][_reachable(x)]
            r["platt"] = {"form": fit["form"], "w_penalty": fit["w_penalty"], "bias_rounds": fit["bias_rounds"],
                          "iterations": fit["iterations"],
                          "loss": fit["loss"], "uniform_loss": fit["uniform_loss"],
                          "w_mean": float(w.mean()), "w_min": float(w.min()), "w_max": float(w.max())}
        results[key] = {"aggregation": how, **r}
    seconds_scoring = time.time() - t1
    if fits:
        f = fits["platt"]
        atomic_write_text(out / "platt.json", json.dumps({
            "form": f["form"], "w_penalty": f["w_penalty"], "classes": names,
            "w": f["w"].tolist(), "b": [v if np.isfinite(v) else None for v in f["b"].tolist()]}, indent=1) + "\n")
    unreached = [m["class"] for m in mapping if not m["hashtag_ids"]]
    result = {"source": {"kind": source.kind, "model": source.name, "path": source.path},
              "data": split.source, "resolution": resolution, "images": len(split),
              "skipped_images": ext.report(), "classes": len(names),
              "chance_top1": 1.0 / len(names), "unreached_classes": unreached,
              "mapped_hashtags": len(columns), "results": results,
              "seconds": round(time.time() - t0, 2), "seconds_scoring": round(seconds_scoring, 3), "out": str(out)}
    from swagcli.plots import class_histogram_plot

    class_histogram_plot({("without Platt" if k == "no_platt" else "with Platt"): v["counts"]
                          for k, v in results.items()}, out / "histogram.png",
                         f"zero-shot: {source.name}, predicted classes ({len(split):,} images)")
    for v in results.values():
        v.pop("counts")
    atomic_write_text(out / "zeroshot.json", json.dumps(result, indent=1) + "\n")
    return result


def write_mapping(mapping: list[dict], out: Path) -> None:
    """``mapping.json`` (everything) and ``mapping.tsv`` (class, synset, similarity, hashtags)."""
    from swagcli.runinfo import atomic_write_text
    from swagcli.tables import write_csv

    out.mkdir(parents=True, exist_ok=True)
    unreached = [m["class"] for m in mapping if not m["hashtag_ids"]]
    atomic_write_text(out / "mapping.json", json.dumps({"classes": mapping, "unreached": unreached}, indent=1) + "\n")
    write_csv(out / "mapping.tsv", [["class", "synset", "similarity", "hashtags"]] + [
        [m["class"], m["synset"] or "-", m["similarity"], " ".join("#" + h for h in m["hashtags"])]
        for m in mapping], delimiter="\t", float_format=".4f")  # fairness.read_mapping reads it back
