"""The linear-probe solver (SPEC.md §5): L2-regularized multinomial logistic regression on frozen features.

Objective, on features standardized with the training mean and std: mean cross-entropy over the samples
+ (l2 / 2) * ||W||^2, the bias not penalized: scikit-learn's ``LogisticRegression(C=1 / (l2 * N))`` with
lbfgs. Solved full-batch with L-BFGS (strong-Wolfe line search) in float64, as sklearn does, to a max-abs
gradient below ``tol``; on the device the features are on. Classes absent from the training labels are
left out of the optimization (their optimum is at bias -> -inf) and get a zero weight row and a bias far
below every training logit, so they are never predicted and nothing turns NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DTYPE = torch.float64
HISTORY = 10          # L-BFGS memory, as scipy's (20 took no fewer iterations); 2 * 10 * C * (D + 1) floats
ABSENT_MARGIN = 30.0  # absent classes: bias this far below the lowest training logit (p < e^-30)
CHUNK = 16384         # rows per block when applying a fitted model


@dataclass
class LogReg:
    """A fitted probe: ``logits(X) = ((X - mean) / std) @ weight.T + bias``."""

    weight: torch.Tensor  # [C, D], on the standardized features
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D] feature standardization fitted on train
    std: torch.Tensor  # [D]
    l2: float
    iterations: int
    converged: bool

    def logits(self, X) -> torch.Tensor:
        """[N, C] logits (float64, on the weight's device) of raw features X [N, D] (tensor or array)."""
        X = torch.as_tensor(X)
        out = [torch.addmm(self.bias, (X[i:i + CHUNK].to(self.weight.device, self.weight.dtype) - self.mean)
                           / self.std, self.weight.t()) for i in range(0, len(X), CHUNK)]
        return torch.cat(out) if out else X.new_zeros((0, len(self.bias)), dtype=self.weight.dtype)

    def state_dict(self) -> dict:
        """Tensors (on the CPU) and plain numbers: ``torch.load(weights_only=True)`` reads it back."""
        return {"weight": self.weight.cpu(), "bias": self.bias.cpu(), "mean": self.mean.cpu(),
                "std": self.std.cpu(), "l2": float(self.l2), "iterations": int(self.iterations),
                "converged": bool(self.converged)}

    @classmethod
    def from_state(cls, state: dict) -> LogReg:
        keys = ("weight", "bias", "mean", "std", "l2", "iterations", "converged")
        return cls(**{k: state[k] for k in keys})


class _Problem:
    """Standardized float64 training features and labels, shared by the fits along an l2 path."""

    def __init__(self, X, y, num_classes: int, standardize: bool = True):
        X = torch.as_tensor(X)
        y = torch.as_tensor(y, device=X.device).long()
        if X.ndim != 2 or y.shape != (len(X),) or len(X) == 0:
            raise ValueError(f"need X [N, D] and y [N] with N > 0, got {tuple(X.shape)} and {tuple(y.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes})")
        self.X = X.to(DTYPE, copy=True)
        if standardize:
            std, mean = torch.std_mean(self.X, dim=0, correction=0)
            std[std == 0] = 1.0  # constant features stay 0
            self.X.sub_(mean).div_(std)
        else:
            mean, std = self.X.new_zeros(X.shape[1]), self.X.new_ones(X.shape[1])
        self.mean, self.std, self.C = mean, std, num_classes
        self.present = torch.bincount(y, minlength=num_classes).nonzero().flatten()
        remap = torch.full((num_classes,), -1, dtype=torch.long, device=X.device)
        remap[self.present] = torch.arange(len(self.present), device=X.device)
        self.y = remap[y][:, None]  # [N, 1] in 0..len(present)-1

    def start(self, init: LogReg | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting (W, b) on the present classes: zeros, or ``init`` moved to this standardization."""
        N, D = self.X.shape
        if init is None:
            return self.X.new_zeros((len(self.present), D)), self.X.new_zeros(len(self.present))
        if tuple(init.weight.shape) != (self.C, D):
            raise ValueError(f"init has weight {tuple(init.weight.shape)}, expected {(self.C, D)}")
        W0, b0, m0, s0 = (t.to(self.X.device, DTYPE) for t in (init.weight, init.bias, init.mean, init.std))
        # ((x - m0) / s0) W0^T + b0 == ((x - m) / s) W^T + b with W = W0 * s / s0, b = b0 + W0 ((m - m0) / s0)
        W, b = W0 * (self.std / s0), b0 + W0 @ ((self.mean - m0) / s0)
        W, b = W[self.present].contiguous(), b[self.present].clone()
        b[(W == 0).all(dim=1)] = 0.0  # classes the init never saw (zero row, very low bias): start afresh
        return W, b

    def solve(self, l2: float, W: torch.Tensor, b: torch.Tensor, max_iter: int, tol: float) -> LogReg:
        """Minimize the objective from (W, b) with L-BFGS; returns the model over all C classes.

        L-BFGS sees the objective times N (the summed loss): torch's L-BFGS skips curvature pairs with
        y.s <= 1e-10 (absolute), which near a mean-loss optimum drops it to gradient descent.
        """
        N, D = self.X.shape
        X, y = self.X, self.y
        W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
        W.grad, b.grad = torch.zeros_like(W), torch.zeros_like(b)
        Z = X.new_empty((N, len(b)))

        @torch.no_grad()
        def closure():  # N * (mean cross-entropy + l2/2 ||W||^2) and its gradient
            torch.addmm(b, X, W.t(), out=Z)
            m = Z.amax(dim=1, keepdim=True)
            Z.sub_(m)
            picked = Z.gather(1, y)  # z_y - max
            Z.exp_()
            s = Z.sum(dim=1, keepdim=True)
            loss = s.log().sum() - picked.sum() + 0.5 * N * l2 * W.square().sum()
            Z.div_(s).scatter_add_(1, y, Z.new_full((N, 1), -1.0))  # softmax - onehot
            torch.mm(Z.t(), X, out=W.grad)
            W.grad.add_(W, alpha=N * l2)
            torch.sum(Z, dim=0, out=b.grad)
            return loss

        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter + 50,
                                tolerance_grad=N * tol, tolerance_change=N * 64 * torch.finfo(DTYPE).eps,
                                history_size=HISTORY, line_search_fn="strong_wolfe")
        opt.step(closure)
        iterations = opt.state[W].get("n_iter", 0)
        with torch.no_grad():
            closure()  # the gradient at the point L-BFGS stopped at
            gmax = max(float(W.grad.abs().max()), float(b.grad.abs().max())) / N
            weight, bias = X.new_zeros((self.C, D)), X.new_zeros(self.C)
            if len(self.present) < self.C:
                bias.fill_(float(torch.addmm(b, X, W.t(), out=Z).amin()) - ABSENT_MARGIN)
            weight[self.present], bias[self.present] = W.detach(), b.detach()
        return LogReg(weight, bias, self.mean, self.std, float(l2), int(iterations), gmax <= tol)


def fit(X, y, num_classes: int, l2: float, init: LogReg | None = None, max_iter: int = 1000,
        tol: float = 1e-6, standardize: bool = True) -> LogReg:
    """Fit the probe on X [N, D] (tensor or array, any float dtype) and labels y [N] in [0, num_classes).

    ``init`` warm-starts from another fit (e.g. the previous l2 of a path; its standardization may differ).
    ``converged``: the max-abs gradient of the (mean) objective reached ``tol`` within ``max_iter`` L-BFGS
    iterations; a fit that stops earlier because the loss no longer moves in float64 reports False.
    """
    prob = _Problem(X, y, num_classes, standardize)
    return prob.solve(l2, *prob.start(init), max_iter=max_iter, tol=tol)


def select_l2(Xtr, ytr, Xval, yval, num_classes: int, grid=None, max_iter: int = 1000,
              tol: float = 1e-6) -> tuple[float, list[dict]]:
    """Fit along ``grid`` (default 1e-1 .. 1e-6 in half decades), strongest first, each fit warm-started
    from the previous; returns the l2 with the best held-out top-1 (ties: the larger l2) and the table
    of ``{l2, val_top1, iterations, converged}``."""
    grid = sorted((float(v) for v in (np.logspace(-1, -6, 11) if grid is None else grid)), reverse=True)
    if not grid:
        raise ValueError("empty l2 grid")
    prob = _Problem(Xtr, ytr, num_classes)
    yval = torch.as_tensor(yval).long()
    W, b = prob.start(None)
    table, best, best_hits = [], None, -1
    for l2 in grid:
        model = prob.solve(l2, W, b, max_iter=max_iter, tol=tol)
        W, b = model.weight[prob.present], model.bias[prob.present]
        hits = int((model.logits(Xval).argmax(dim=1).cpu() == yval).sum())
        table.append({"l2": l2, "val_top1": hits / max(1, len(yval)), "iterations": model.iterations,
                      "converged": model.converged})
        if hits > best_hits:
            best, best_hits = l2, hits
    return best, table


def topk_accuracy(logits: torch.Tensor, y, ks=(1, 5)) -> dict:
    """``{"top1": ..., "top5": ...}``: fractions of rows whose label is among the k highest logits
    (k capped at the number of classes)."""
    y = torch.as_tensor(y, device=logits.device).long()
    if len(y) == 0:
        raise ValueError("no samples")
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices == y[:, None]
    return {f"top{k}": float(top[:, :min(k, logits.shape[1])].any(dim=1).float().mean()) for k in ks}


def _by_class(y: np.ndarray, seed: int):
    """(class count, that class's indices in a seeded random order) for each class, in label order."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError("need a non-empty 1-d label array")
    order = np.argsort(y, kind="stable")
    _, counts = np.unique(y[order], return_counts=True)
    rng = np.random.default_rng(seed)
    return [(len(idx), rng.permutation(idx)) for idx in np.split(order, np.cumsum(counts)[:-1])]


def _half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, heldout_idx), sorted: round(fraction * n_c) of each class held out, at least one when
    fraction > 0 and the class has >= 2 examples, never the class's last one (singletons stay in train)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    train, held = [], []
    for n, idx in _by_class(y, seed):
        k = min(n - 1, max(1, _half_up(fraction * n))) if fraction > 0 else 0
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(held)).astype(np.int64)


def stratified_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified subset with max(1, round(fraction * n_c)) examples of each class
    (the low-shot training sets of SWAG Table 2)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
    parts = [idx[:min(n, max(1, _half_up(fraction * n)))] for n, idx in _by_class(y, seed)]
    return np.sort(np.concatenate(parts)).astype(np.int64)
