"""Figures people would rather look at than read (matplotlib, Agg; no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from swagcli.fileio import savefig


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def zipf_plot(tag_counts, hashtags: list[dict], head_min_images: int, path: str | Path) -> Path:
    """Like SWAG Fig. 1: left, images per raw hashtag by rank; right, images per canonical
    hashtag by rank with the head/tail cut."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    raw = np.sort(np.asarray(tag_counts.counts, dtype=np.int64) if hasattr(tag_counts, "counts")
                  else np.fromiter(tag_counts.values(), dtype=np.int64))[::-1]
    if raw.size:  # at ~4,000 log-spaced ranks: the same curve, drawn fast for millions of tags
        ranks = np.unique(np.geomspace(1, raw.size, min(raw.size, 4000)).astype(np.int64))
        a.loglog(ranks, raw[ranks - 1], color="0.3")
    a.set(title=f"All hashtags ({raw.size:,})", xlabel="rank", ylabel="images")
    counts = np.array(sorted((h["count"] for h in hashtags), reverse=True), dtype=np.int64)
    if counts.size:
        ranks = np.arange(1, counts.size + 1)
        head = counts >= head_min_images
        b.loglog(ranks[head], counts[head], ".", ms=3, color="tab:blue", label=f"head ({head.sum():,})")
        b.loglog(ranks[~head], np.maximum(counts[~head], 1), ".", ms=3, color="tab:orange",
                 label=f"tail ({(~head).sum():,})")
        b.axhline(head_min_images, color="k", lw=0.8, ls="--")
        b.text(1, head_min_images, f" head: >= {head_min_images:,} images", va="bottom", fontsize=8)
        b.legend(loc="lower left")
    b.set(title=f"Canonical hashtags ({counts.size:,})", xlabel="rank", ylabel="images")
    for ax in (a, b):
        ax.grid(True, which="major", alpha=0.3)
    path = Path(path)
    savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def resampling_plot(hist_images, hist_samples, head_mask, path: str | Path) -> Path:
    """Share of images (before) and of samples (after resampling) per canonical hashtag, by the
    hashtag's natural frequency rank; head and tail shaded."""
    plt = pyplot()
    hist_images = np.asarray(hist_images, dtype=np.float64)
    hist_samples = np.asarray(hist_samples, dtype=np.float64)
    order = np.argsort(-hist_images, kind="stable")
    ranks = np.arange(1, len(order) + 1)
    before = hist_images[order] / max(hist_images.sum(), 1)
    after = hist_samples[order] / max(hist_samples.sum(), 1)
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    ax.loglog(ranks, np.where(before > 0, before, np.nan), ".", ms=3, label="before: share of images")
    ax.loglog(ranks, np.where(after > 0, after, np.nan), ".", ms=3, label="after: share of samples")
    tail = ~np.asarray(head_mask, dtype=bool)[order]
    if tail.any() and (~tail).any():
        cut = int(np.argmax(tail)) + 1
        ax.axvline(cut, color="k", lw=0.8, ls="--")
        ax.text(cut, ax.get_ylim()[1], " tail ->", va="top", fontsize=8)
    ax.set(xlabel="hashtag rank (natural frequency)", ylabel="share",
           title="Hashtag distribution before and after resampling")
    ax.legend(loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    path = Path(path)
    savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def lowshot_plot(summary: list[dict], path: str | Path, title: str, key: str = "top1") -> Path:
    """Accuracy against the fraction of training labels (log x), mean +- std over seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6), constrained_layout=True)
    fr = np.array([s["fraction"] for s in summary])
    acc = np.array([s[key] for s in summary]) * 100
    err = np.array([s.get(key + "_std", 0.0) for s in summary]) * 100
    ax.errorbar(fr, acc, yerr=err, marker="o", capsize=3, color="tab:blue")
    for f, a in zip(fr, acc):
        ax.annotate(f"{a:.1f}", (f, a), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    if len(fr) > 1:
        ax.set_xscale("log")
    ax.set_xticks(fr, [f"{f:g}" for f in fr])
    ax.set(title=title, xlabel="fraction of training labels", ylabel=f"{key} accuracy (%)")
    ax.grid(True, alpha=0.3)
    savefig(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def class_histogram_plot(series: dict[str, list[int]], path: str | Path, title: str) -> Path:
    """Predicted images per class (classes sorted by the first series, most predicted first), one
    line per series, against the uniform count: how skewed the predictions are before and after a
    correction such as Platt scaling."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    first = np.asarray(next(iter(series.values())))
    order = np.argsort(-first, kind="stable")
    x = np.arange(1, len(first) + 1)
    for (name, counts), color in zip(series.items(), ("tab:red", "tab:blue", "tab:green")):
        ax.step(x, np.asarray(counts)[order], where="mid", label=name, color=color)
    ax.axhline(first.sum() / len(first), color="gray", ls="--", lw=1, label="uniform")
    ax.set(title=title, xlabel="class (by predictions without correction)", ylabel="images predicted")
    if len(first) > 50:
        ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    savefig(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def association_plot(attribute: str, groups: list[dict], path: str | Path, top_k: int, confidence: float) -> Path:
    """Like SWAG Fig. 7: per group, its hashtags with the largest difference in top-k prediction rate
    to the other groups' mean (percentage points, bootstrap interval as whiskers), the relative
    difference written at the end of each bar."""
    plt = pyplot()
    cols = min(2, len(groups))
    rows = (len(groups) + cols - 1) // cols
    height = max(2.2, 0.22 * max(len(g["top"]) for g in groups) + 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, height * rows), constrained_layout=True,
                             squeeze=False)
    for ax, g in zip(axes.ravel(), groups):
        top = g["top"]
        y = np.arange(len(top))[::-1]
        d = np.array([r["abs_diff"] for r in top]) * 100
        faint = [r["significant"] is False for r in top]  # the interval includes 0: drawn faint
        bars = ax.barh(y, d, color=["tab:blue" if v >= 0 else "tab:red" for v in d], height=0.7)
        for patch, f in zip(bars, faint):
            patch.set_alpha(0.4 if f else 1.0)
        if all(r["ci_low"] is not None for r in top):
            lo = d - np.array([r["ci_low"] for r in top]) * 100
            hi = np.array([r["ci_high"] for r in top]) * 100 - d
            ax.errorbar(d, y, xerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt="none", ecolor="0.25", lw=0.8,
                        capsize=2)
        for yi, v, r in zip(y, d, top):
            rel = "new" if r["rel_diff"] is None else f"{r['rel_diff']:+.0%}"
            end = v if r["ci_low"] is None else 100 * (r["ci_high"] if v >= 0 else r["ci_low"])
            ax.annotate(rel, (end, yi), xytext=(3 if v >= 0 else -3, 0), textcoords="offset points", va="center",
                        ha="left" if v >= 0 else "right", fontsize=7, color="0.3")
        ax.set_yticks(y, ["#" + r["hashtag"] for r in top], fontsize=8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(title=f"{attribute} = {g['group']} ({g['images']:,} images) vs the other groups",
               xlabel=f"difference in top-{top_k} rate (points; {confidence:.0%} bootstrap interval; "
                      "faint: includes 0)")
        ax.margins(x=0.18)
        ax.grid(True, axis="x", alpha=0.3)
    for ax in axes.ravel()[len(groups):]:
        ax.axis("off")
    savefig(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)


def country_accuracy_plot(geo: dict, path: str | Path) -> Path:
    """Like SWAG Fig. 5, as bars: zero-shot accuracy per country (Wilson 95% interval), the overall
    accuracy as a dashed line, the image count under each country."""
    plt = pyplot()
    cs = sorted(geo["countries"], key=lambda c: -(c["accuracy"] or 0))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(cs) + 2), 3.8), constrained_layout=True)
    x = np.arange(len(cs))
    acc = np.array([c["accuracy"] for c in cs]) * 100
    err = [acc - np.array([c["ci_low"] for c in cs]) * 100, np.array([c["ci_high"] for c in cs]) * 100 - acc]
    ax.bar(x, acc, color="tab:green", alpha=0.8)
    ax.errorbar(x, acc, yerr=err, fmt="none", ecolor="0.2", capsize=3, lw=0.9)
    ax.axhline(geo["overall"] * 100, color="k", ls="--", lw=0.9, label=f"all images {geo['overall']:.1%}")
    ax.set_xticks(x, [f"{c['country']}\n{c['images']:,}" for c in cs], fontsize=8)
    ax.set(ylabel="zero-shot top-1 accuracy (%)", ylim=(0, 100),
           title=f"Zero-shot accuracy per country\n({geo['classes']} classes; 95% Wilson intervals)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)
    savefig(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def eighty_rule_plot(geo: dict, path: str | Path) -> Path:
    """Like SWAG Fig. 6: for row country r and column country c, the share of classes recognised
    substantially worse in r (accuracy below ratio x that in c)."""
    plt = pyplot()
    names, m = geo["country_names"], np.array(geo["eighty_rule"]) * 100
    size = max(3.8, 0.5 * len(names) + 2.2)
    fig, ax = plt.subplots(figsize=(size + 0.8, size), constrained_layout=True)
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=max(1.0, float(m.max())))
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 8 else 0, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 20:
        for r in range(len(names)):
            for c in range(len(names)):
                ax.text(c, r, f"{m[r, c]:.0f}", ha="center", va="center", fontsize=7,
                        color="w" if m[r, c] < 0.6 * max(1.0, m.max()) else "k")
    ax.set(xlabel="country c (better)", ylabel="country r (worse)",
           title=f"Classes with accuracy in r < {geo['ratio']:g} x accuracy in c (%)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of classes")
    savefig(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)
