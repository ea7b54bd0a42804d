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
