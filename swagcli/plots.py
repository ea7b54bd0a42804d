"""Figures people would rather look at than read (matplotlib, Agg; no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def zipf_plot(tag_counts, hashtags: list[dict], head_min_images: int, path: str | Path) -> Path:
    """Like SWAG Fig. 1: left, images per raw hashtag by rank; right, images per canonical
    hashtag by rank with the head/tail cut."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    raw = np.sort(np.fromiter(tag_counts.values(), dtype=np.int64))[::-1]
    if raw.size:
        a.loglog(np.arange(1, raw.size + 1), raw, color="0.3")
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def resampling_plot(hist_images, hist_samples, head_mask, path: str | Path) -> Path:
    """Share of images (before) and of samples (after resampling) per canonical hashtag, by the
    hashtag's natural frequency rank; head and tail shaded."""
    plt = _plt()
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lowshot_plot(summary: list[dict], path: str | Path, title: str, key: str = "top1") -> Path:
    """Accuracy against the fraction of training labels (log x), mean +- std over seeds."""
    plt = _plt()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def class_histogram_plot(series: dict[str, list[int]], path: str | Path, title: str) -> Path:
    """Predicted images per class (classes sorted by the first series, most predicted first), one
    line per series, against the uniform count: how skewed the predictions are before and after a
    correction such as Platt scaling."""
    plt = _plt()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
