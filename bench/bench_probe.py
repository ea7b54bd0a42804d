"""Linear-probe solver against scikit-learn: `swagcli.evaluate.logreg.fit` vs LogisticRegression(lbfgs).

    .venv/bin/python bench/bench_probe.py [--n 20000] [--d 512] [--classes 100] [--l2 1e-4] [--repeats 2]
    .venv/bin/python bench/bench_probe.py --sizes 20000x512x100,40000x768x200 [--threads 2]

For each size NxDxC: Gaussian-blob features (C centres, overlapping: ~70-80% val top-1), N train and
N/4 val rows, float32. Both solvers minimise the same objective, mean cross-entropy + l2/2 ||W||^2 on
the same standardized features (sklearn: C = 1 / (l2 * N), multinomial, float64, the same max-abs
gradient tolerance --tol and --max-iter); sklearn gets the features already standardized in float64,
ours standardizes inside the timed call. Repeats are interleaved (ours, sklearn, ours, ...) and the
best time of each is kept (after a warm-up fit: torch.optim imports torch._dynamo on first use, a few
seconds once per process); torch and the BLAS under numpy both get --threads threads. Prints both
times, iterations, val top-1, the objective and its max-abs gradient at each solution (sklearn's
"converged" = no ConvergenceWarning: scipy also stops on a relative loss change < 64 eps), the ratio
sklearn_time / our_time, and a one-line summary per size.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from swagcli.evaluate.logreg import fit  # noqa: E402


def blobs(n: int, d: int, classes: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows: a random class centre (scaled so classes overlap) + unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * (sep / np.sqrt(2 * d))  # centres ~sep apart
    y = rng.permutation(np.arange(n) % classes)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def objective(W: np.ndarray, b: np.ndarray, Xs: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, float]:
    """(mean cross-entropy + l2/2 ||W||^2, the max-abs entry of its gradient) at (W, b), in float64."""
    z = Xs @ W.T + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    s = p.sum(axis=1)
    rows = np.arange(len(y))
    f = float((np.log(s) - z[rows, y]).mean() + 0.5 * l2 * (W * W).sum())
    p /= s[:, None]
    p[rows, y] -= 1
    gW, gb = p.T @ Xs / len(y) + l2 * W, p.mean(axis=0)
    return f, max(float(np.abs(gW).max()), float(np.abs(gb).max()))


def run(n: int, d: int, classes: int, a) -> None:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X, y = blobs(n + n // 4, d, classes, a.sep, a.seed)
    Xtr, ytr, Xv, yv = X[:n], y[:n], X[n:], y[n:]
    mean = Xtr.astype(np.float64).mean(axis=0)
    std = Xtr.astype(np.float64).std(axis=0)
    Xs, Xvs = (Xtr - mean) / std, (Xv - mean) / std  # float64
    ours_t, sk_t = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        m = fit(Xtr, ytr, classes, a.l2, max_iter=a.max_iter, tol=a.tol)
        ours_t.append(time.perf_counter() - t0)
        sk = LogisticRegression(C=1.0 / (a.l2 * n), tol=a.tol, max_iter=a.max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            t0 = time.perf_counter()
            sk.fit(Xs, ytr)
            sk_t.append(time.perf_counter() - t0)
        sk_conv = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    ours_acc = float((m.logits(Xv).argmax(dim=1).numpy() == yv).mean())
    sk_acc = float((sk.predict(Xvs) == yv).mean())
    f_ours, g_ours = objective(m.weight.numpy(), m.bias.numpy(), Xs, ytr, a.l2)
    f_sk, g_sk = objective(sk.coef_, sk.intercept_, Xs, ytr, a.l2)
    to, ts = min(ours_t), min(sk_t)
    print(f"N={n} D={d} C={classes} l2={a.l2:g} tol={a.tol:g}, {torch.get_num_threads()} threads, "
          f"{a.repeats} interleaved repeats (best kept)")
    for name, t, runs, it, conv, acc, f, g in (
            ("swag logreg.fit", to, ours_t, m.iterations, m.converged, ours_acc, f_ours, g_ours),
            ("sklearn lbfgs", ts, sk_t, int(sk.n_iter_[0]), sk_conv, sk_acc, f_sk, g_sk)):
        print(f"  {name:16s} {t:8.2f} s  ({', '.join(f'{r:.2f}' for r in runs)})  {it:4d} it  "
              f"converged {conv!s:5s}  val top-1 {100 * acc:.2f}%  objective {f:.10f}  max|grad| {g:.1e}")
    print(f"probe: N={n} D={d} C={classes}: swag {to:.2f}s, sklearn {ts:.2f}s, ratio sklearn/swag "
          f"{ts / to:.2f}; val top-1 {100 * ours_acc:.2f}% vs {100 * sk_acc:.2f}%; "
          f"objective rel. diff {(f_ours - f_sk) / abs(f_sk):+.1e}")

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--sizes", default=None, help="NxDxC,... (overrides --n/--d/--classes)")
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sep", type=float, default=5.5, help="distance between class centres (noise sd 1)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    fit(np.eye(4, dtype=np.float32), np.arange(4), 4, 1e-2)  # torch.optim's first use imports torch._dynamo
    print(f"first-use cost of torch.optim (excluded below): {time.perf_counter() - t0:.2f} s")
    sizes = ([tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")] if a.sizes
             else [(a.n, a.d, a.classes)])
    with threadpool_limits(limits=a.threads):
        for n, d, c in sizes:
            run(n, d, c, a)


if __name__ == "__main__":
    main()
