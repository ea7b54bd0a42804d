"""The statistics of `swag fairness` (SPEC.md §7), free of models and files: attribute groups
(numeric columns in buckets), association rates with bootstrap intervals, per-country accuracy
with Wilson intervals and the 80%-rule matrix. :mod:`swagcli.evaluate.fairness` runs them."""

from __future__ import annotations

import math
import warnings

import numpy as np

from swagcli.errors import SwagError

CELLS = 4_000_000  # resample weights held at once (32 MB of int64)
MAX_GROUPS = 50  # more distinct values than this in an attribute column: bucket it or choose another
MISSING = ("", "na", "n/a", "nan", "none", "null", "unknown", "?")


def attribute_groups(values: list[str], column: str, width: float | None) -> tuple[np.ndarray, list[str]]:
    """([N] group index, -1 where the value is missing; group names). With a bucket ``width`` the
    values are numbers cut into [lo, lo + width) buckets named ``lo-hi``."""
    missing = np.array([v.lower() in MISSING for v in values])
    if width:
        nums = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            if missing[i]:
                continue
            try:
                nums[i] = float(v)
            except ValueError:
                raise SwagError(f"associations.buckets: column {column!r}: {v!r} (row {i + 1}) is not a "
                                "number") from None
        lo = np.floor(nums / width) * width
        keys = sorted({float(x) for x in lo[~missing]})
        names = [f"{k:g}-{k + width:g}" for k in keys]
        index = {k: j for j, k in enumerate(keys)}
        g = np.array([-1 if m else index[float(x)] for m, x in zip(missing, lo)], dtype=np.int64)
        return g, names
    names = sorted({v for v, m in zip(values, missing) if not m}, key=_natural)
    if len(names) > MAX_GROUPS:
        numeric = all(_is_number(v) for v in names)
        hint = f"bucket it (--set associations.buckets.{column}=10)" if numeric else "choose another column"
        raise SwagError(f"associations: column {column!r} has {len(names)} distinct values (more than "
                        f"{MAX_GROUPS} groups); {hint}")
    index = {v: j for j, v in enumerate(names)}
    return np.array([-1 if m else index[v] for v, m in zip(values, missing)], dtype=np.int64), names


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _natural(v: str):
    return (0, float(v), "") if _is_number(v) else (1, 0.0, v.lower())


# -- associations --------------------------------------------------------------------------------------------
def associations(topk: np.ndarray, groups: np.ndarray, names: list[str], vocab_size: int, *, top_n: int = 20,
                 min_group: int = 30, bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Per group: its size, whether it is ranked, and its ``top_n`` hashtags by absolute difference
    (rate, the other groups' mean rate, absolute and relative difference, and for a ranked group the
    bootstrap interval and whether it excludes 0; None for the others).

    ``topk`` [N, k] are hashtag ids per image, ``groups`` [N] group indices (-1: left out)."""
    G, V = len(names), vocab_size
    keep = groups >= 0
    g, tk = groups[keep], topk[keep].astype(np.int64)
    n = np.bincount(g, minlength=G)
    count = np.bincount((g[:, None] * V + tk).ravel(), minlength=G * V).reshape(G, V).astype(np.float64)
    rates = count / np.maximum(n, 1)[:, None]
    eligible = n >= min_group
    diff, others = _differences(rates[None], eligible)
    diff, others = diff[0], others[0]
    out, cand = [], []
    for j in range(G):
        if n[j] == 0 or not np.isfinite(diff[j]).any():
            cand.append(np.zeros(0, dtype=np.int64))
            continue
        d = np.where(np.isfinite(diff[j]), diff[j], 0.0)
        order = np.lexsort((np.arange(V), -np.abs(d)))  # largest |difference| first; ties in vocab order
        cand.append(order[:top_n][np.abs(d[order[:top_n]]) > 0])
    lo = hi = None
    if bootstrap and any(len(c) for c in cand):
        cols = np.unique(np.concatenate(cand))
        lo, hi = _bootstrap(tk, g, n, cols, eligible, bootstrap, confidence, seed)
        pos = {int(h): i for i, h in enumerate(cols)}
    for j, name in enumerate(names):
        ranked = bool(eligible[j]) and int(eligible.sum()) >= 2
        rows = []
        for h in cand[j].tolist():
            o = float(others[j, h])
            row = {"hashtag_id": h, "rate": float(rates[j, h]), "others_rate": o, "abs_diff": float(diff[j, h]),
                   "rel_diff": float(diff[j, h] / o) if o > 0 else None, "ci_low": None, "ci_high": None,
                   "significant": None}
            if lo is not None and ranked:  # a group too small to rank gets no interval, no significance
                row["ci_low"], row["ci_high"] = float(lo[j, pos[h]]), float(hi[j, pos[h]])
                row["significant"] = bool(row["ci_low"] > 0 or row["ci_high"] < 0)
            rows.append(row)
        out.append({"group": name, "images": int(n[j]), "ranked": ranked, "top": rows})
    return out


def _differences(rates: np.ndarray, eligible: np.ndarray):
    """[B, G, K] rates -> (rate - mean of the other eligible groups, that mean); NaN where a group has
    no eligible other group."""
    E = eligible.astype(np.float64)[None, :, None]
    total, k = (rates * E).sum(axis=1, keepdims=True), float(eligible.sum())
    m = k - E  # eligible groups other than g
    with np.errstate(invalid="ignore", divide="ignore"):
        others = np.where(m > 0, (total - rates * E) / np.maximum(m, 1), np.nan)
    return rates - others, others


def _bootstrap(tk, g, n, cols, eligible, B, confidence, seed):
    """Percentile intervals [G, K] of the differences at hashtag ids ``cols``: images resampled with
    replacement within every group, B times."""
    rng = np.random.default_rng(seed)
    G, K = len(n), len(cols)
    col = np.full(int(tk.max()) + 1, -1, dtype=np.int64)  # cols are hashtags some image has: all <= max
    col[cols] = np.arange(K)
    draws = np.zeros((B, G, K))
    for j in range(G):
        if n[j] == 0:
            continue
        rows = np.flatnonzero(g == j)
        ind = np.zeros((len(rows), K), dtype=np.float32)
        c = col[tk[rows]]
        r_i, k_i = np.nonzero(c >= 0)
        ind[r_i, c[r_i, k_i]] = 1.0
        m = len(rows)
        step = max(1, min(B, CELLS // m))
        for b0 in range(0, B, step):
            k = min(step, B - b0)
            draws[b0:b0 + k, j] = _resample_weights(rng, m, k) @ ind / m
    diff, _ = _differences(draws, eligible)
    a = (1 - confidence) / 2
    with warnings.catch_warnings():  # groups without an eligible other group: all NaN, never ranked
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(diff, a, axis=0), np.nanquantile(diff, 1 - a, axis=0)


# -- geography ---------------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def geography(countries: list[str], y: np.ndarray, pred: np.ndarray, classes: list[str], ratio: float = 0.8,
              min_images: int = 1) -> dict:
    """Per-country accuracy, per-country-and-class accuracy, and the 80%-rule matrix: entry [r][c] is
    the share of the classes with at least ``min_images`` images in both r and c whose accuracy in r
    is below ``ratio`` x their accuracy in c (``compared[r][c]`` of them)."""
    names = sorted(set(countries), key=_natural)
    ci = {c: i for i, c in enumerate(names)}
    cidx = np.array([ci[c] for c in countries], dtype=np.int64)
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    R, C = len(names), len(classes)
    right = (y == pred).astype(np.int64)
    n = np.zeros((R, C), dtype=np.int64)
    k = np.zeros((R, C), dtype=np.int64)
    np.add.at(n, (cidx, y), 1)
    np.add.at(k, (cidx, y), right)
    acc = np.divide(k, n, out=np.zeros((R, C)), where=n > 0)
    ok = n >= min_images
    below = np.zeros((R, R))
    compared = np.zeros((R, R), dtype=np.int64)
    for r in range(R):
        for c in range(R):
            both = ok[r] & ok[c]
            compared[r, c] = int(both.sum())
            if r != c and compared[r, c]:
                below[r, c] = float((acc[r, both] < ratio * acc[c, both]).mean())
    per_country = []
    for r, name in enumerate(names):
        nr, kr = int(n[r].sum()), int(k[r].sum())
        lo, hi = wilson(kr, nr)
        per_country.append({"country": name, "images": nr, "correct": kr, "accuracy": kr / nr if nr else None,
                            "ci_low": lo, "ci_high": hi, "classes": int((n[r] > 0).sum())})
    return {"countries": per_country, "overall": float(right.mean()) if len(right) else None,
            "ratio": ratio, "min_images": min_images, "country_names": names,
            "eighty_rule": below.tolist(), "compared": compared.tolist(),
            "class_accuracy": [{"country": names[r], "class": classes[c], "images": int(n[r, c]),
                                "correct": int(k[r, c])} for r in range(R) for c in range(C) if n[r, c]]}


def _resample_weights(rng, m: int, k: int) -> np.ndarray:
    """[k, m] float32: how often each of m images is drawn in each of k resamples with replacement
    (a bincount of m uniform picks per resample)."""
    picks = rng.integers(0, m, size=(k, m)) + (np.arange(k) * m)[:, None]
    return np.bincount(picks.ravel(), minlength=k * m).reshape(k, m).astype(np.float32)
