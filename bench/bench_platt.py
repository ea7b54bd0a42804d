"""Platt scaling fit time (`swag zeroshot`): N x C zero-shot class log-scores on the CPU.

    .venv/bin/python bench/bench_platt.py [--n 50000] [--classes 1000] [--threads 2] [--repeats 2]

The scores are SPEC §6's toy, scaled up: balanced classes, a noisy signal on the true class and a
Zipfian prior (exponent 1.1) that skews the predictions towards the head, as hashtag frequencies
skew a hashtag head. Timed: `platt_fit` with the recipe defaults (log form, w held near 1: bias
fixed point, then L-BFGS) and `platt_apply`. The peer, in the same run, is one pass of the work
every evaluation does, a float64 softmax over the whole N x C matrix in the same row blocks: the
ratio says how many passes over the predictions the fit costs. Also printed: top-1 before/after,
the mean per-image top probability after (collapse check), and the peak RSS.
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
import torch  # noqa: E402

from swagcli.evaluate.zeroshot import ROWS, platt_apply, platt_fit  # noqa: E402


def toy(n: int, c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    logits = rng.normal(size=(n, c)).astype(np.float64) * 1.5
    logits[np.arange(n), y] += 7.0
    logits += np.log(1.0 / np.arange(1, c + 1) ** 1.1)  # ~37% top-1 before Platt at 1000 classes
    return torch.log_softmax(torch.from_numpy(logits), dim=1), y


def one_pass(x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    s = x.new_zeros(x.shape[1])
    for lo in range(0, len(x), ROWS):
        s += torch.softmax(x[lo:lo + ROWS], dim=1).sum(0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x, y = toy(a.n, a.classes)
    before = float((x.argmax(1).numpy() == y).mean())
    passes, fits = [], []
    for _ in range(a.repeats):  # interleaved, best of each kept
        passes.append(one_pass(x))
        t0 = time.perf_counter()
        fit = platt_fit(x)
        logq = platt_apply(x, fit)
        fits.append(time.perf_counter() - t0)
    after = float((logq.argmax(1).numpy() == y).mean())
    top = float(logq.exp().max(1).values.mean())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{a.n:,} x {a.classes:,} predictions, {a.threads} threads")
    print(f"  one softmax pass   {min(passes):.3f} s")
    print(f"  platt fit + apply  {min(fits):.3f} s  ({fit['bias_rounds']} bias rounds, {fit['iterations']} L-BFGS "
          f"iterations)  = {min(fits) / min(passes):.1f} passes")
    print(f"  top-1 {100 * before:.2f}% -> {100 * after:.2f}%   mean max p' {top:.3f} (uniform: {1 / a.classes:.3f})"
          f"   w in [{float(fit['w'].min()):.4f}, {float(fit['w'].max()):.4f}]   peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
