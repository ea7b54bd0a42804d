"""Association statistics at the paper's scale (`swag fairness`): 178,448 images (SWAG App. F's
skin-tone set), 6 groups, a 27,000-hashtag vocabulary, top-5 per image, 1,000 bootstrap resamples.

    .venv/bin/python bench/bench_fairness.py [--n 178448] [--groups 6] [--vocab 27000] [--bootstrap 1000]

Timed: :func:`swagcli.evaluate.fairness_stats.associations` (rates, differences, ranking and the
bootstrap intervals of the ranked hashtags). The peer, in the same run, is the point estimate
alone (``bootstrap=0``): the ratio is what the intervals cost. Also: the same bootstrap with
numpy's multinomial draws (the first version), and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from swagcli.evaluate import fairness_stats as F  # noqa: E402


def multinomial_weights(rng, m: int, k: int) -> np.ndarray:
    """The first version's resampling: numpy multinomial draws with equal cell probabilities."""
    return rng.multinomial(m, np.full(m, 1.0 / m), size=k).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=178_448)
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=27_000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    # top-5 lists drawn from 5,000 distinct ones, Zipf-like reuse; group 0 gets one hashtag more often
    pool = np.stack([rng.choice(a.vocab, size=5, replace=False) for _ in range(5000)])
    topk = pool[np.minimum(rng.zipf(1.3, a.n), 5000) - 1]
    groups = rng.integers(0, a.groups, a.n)
    topk[(groups == 0) & (rng.random(a.n) < 0.2), 4] = a.vocab - 1
    names = [str(i) for i in range(a.groups)]

    t = time.perf_counter()
    F.associations(topk, groups, names, a.vocab, bootstrap=0)
    peer = time.perf_counter() - t
    t = time.perf_counter()
    out = F.associations(topk, groups, names, a.vocab, bootstrap=a.bootstrap)
    full = time.perf_counter() - t
    orig = F._resample_weights
    F._resample_weights = multinomial_weights
    try:
        t = time.perf_counter()
        F.associations(topk, groups, names, a.vocab, bootstrap=a.bootstrap)
        first = time.perf_counter() - t
    finally:
        F._resample_weights = orig
    top = out[0]["top"][0]
    print(f"{a.n:,} images, {a.groups} groups, {a.vocab:,} hashtags, {a.bootstrap} resamples")
    print(f"point estimate only (peer)         {peer:7.2f} s   1.0x")
    print(f"with bootstrap intervals           {full:7.2f} s   {full / peer:.1f}x")
    print(f"  multinomial resampling (first)   {first:7.2f} s   {first / peer:.1f}x")
    print(f"group 0's first hashtag: id {top['hashtag_id']} (planted {a.vocab - 1}), "
          f"{top['abs_diff'] * 100:+.1f} points [{top['ci_low'] * 100:+.1f}, {top['ci_high'] * 100:+.1f}]")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
