"""The linear-probe solver: the optimum scikit-learn finds for the same objective, l2 chosen on held-out
data, classes missing from train, warm starts, and the class-stratified splits and low-shot subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swagcli.evaluate.logreg import (LogReg, fit, select_l2, stratified_split, stratified_subset,
                                     topk_accuracy)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small problems on 2 shared cores: a second thread only waits at OpenMP barriers."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


def blobs(n: int, d: int, classes: int, sep: float, seed: int, nuisance: int = 0,
          scale: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """n float32 rows: a class centre (centres ~sep apart) + unit Gaussian noise + ``nuisance`` shared
    random directions with Gaussian amplitude ``scale``; balanced labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * (sep / np.sqrt(2 * d))
    y = rng.permutation(np.arange(n) % classes)
    X = centres[y] + rng.normal(size=(n, d))
    if nuisance:
        X += scale * rng.normal(size=(n, nuisance)) @ rng.normal(size=(nuisance, d))
    return X.astype(np.float32), y


def objective(W, b, Xs, y, l2) -> float:
    """Mean cross-entropy + l2/2 ||W||^2, in float64 numpy (independent of the solver)."""
    W, b, Xs = (np.asarray(a, dtype=np.float64) for a in (W, b, Xs))
    z = Xs @ W.T + b
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float((lse - z[np.arange(len(y)), y]).mean() + 0.5 * l2 * (W * W).sum())


@pytest.fixture(scope="module")
def data():
    X, y = blobs(4000, 64, 30, 4.5, seed=0)
    return X[:3000], y[:3000], X[3000:], y[3000:]


@pytest.mark.parametrize("l2", [1e-1, 1e-3, 1e-5])
def test_same_optimum_as_sklearn(data, l2):
    from sklearn.linear_model import LogisticRegression

    Xtr, ytr, Xv, yv = data
    m = fit(Xtr, ytr, 30, l2)
    assert m.converged and 0 < m.iterations < 1000 and m.l2 == l2
    mean, std = Xtr.astype(np.float64).mean(axis=0), Xtr.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(m.mean.numpy(), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.std.numpy(), std, rtol=1e-12)
    Xs, Xvs = (Xtr - mean) / std, (Xv - mean) / std
    sk = LogisticRegression(C=1.0 / (l2 * len(ytr)), max_iter=5000, tol=1e-8).fit(Xs, ytr)
    ours = m.logits(Xv).argmax(dim=1).numpy()
    theirs = sk.predict(Xvs)
    acc, sk_acc = (ours == yv).mean(), (theirs == yv).mean()
    assert 0.6 <= sk_acc <= 0.9  # overlapping classes: the optimum matters
    assert abs(acc - sk_acc) <= 0.005
    assert (ours == theirs).mean() >= 0.99
    # the objective: at tol=1e-6 a weak l2 leaves a few 1e-6 of it (a flat valley); at sklearn's
    # tol=1e-8 (where float64 allows: a strong l2 stops on a loss that no longer moves) ~1e-10
    f_sk = objective(sk.coef_, sk.intercept_, Xs, ytr, l2)
    assert -1e-9 * f_sk <= objective(m.weight, m.bias, Xs, ytr, l2) - f_sk <= 1e-5 * f_sk
    tight = fit(Xtr, ytr, 30, l2, init=m, tol=1e-8)
    assert tight.iterations < 1000  # stopped by itself
    f = objective(tight.weight, tight.bias, Xs, ytr, l2)
    assert abs(f - f_sk) <= 1e-9 * f_sk
    f_zero = objective(np.zeros_like(sk.coef_), np.zeros(30), Xs, ytr, l2)
    assert f < f_zero - 0.1  # (not a trivial agreement)


def test_deterministic_and_state_round_trip(data, tmp_path):
    Xtr, ytr, Xv, _ = data
    a = fit(Xtr, ytr, 30, 1e-3)
    b = fit(torch.from_numpy(Xtr), torch.from_numpy(ytr), 30, 1e-3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    torch.save(a.state_dict(), tmp_path / "probe.pt")
    c = LogReg.from_state(torch.load(tmp_path / "probe.pt", weights_only=True))
    assert (c.l2, c.iterations, c.converged) == (a.l2, a.iterations, a.converged)
    assert torch.equal(c.logits(Xv), a.logits(Xv))


def test_warm_start_moves_the_init_to_the_new_standardization(data):
    Xtr, ytr, Xv, _ = data
    sub = fit(Xtr[:500] * 3 + 1, ytr[:500], 30, 1e-2)  # other mean and std than the full set
    moved = fit(Xtr * 3 + 1, ytr, 30, 1e-2, init=sub, max_iter=0)  # no step: the init, re-expressed
    assert not torch.allclose(moved.mean, sub.mean)
    torch.testing.assert_close(moved.logits(Xv * 3 + 1), sub.logits(Xv * 3 + 1), rtol=1e-9, atol=1e-9)
    cold = fit(Xtr, ytr, 30, 1e-3)
    warm = fit(Xtr, ytr, 30, 1e-3, init=fit(Xtr, ytr, 30, 1e-2))
    assert warm.converged and warm.iterations < cold.iterations
    torch.testing.assert_close(warm.weight, cold.weight, rtol=0, atol=1e-3)


def test_select_l2_prefers_stronger_regularization_on_scarce_noisy_labels():
    # strong nuisance directions: the best classifier cancels them, which takes many clean labels and
    # weak regularization; from 20 examples a class with half the labels wrong, shrinking wins
    X, y = blobs(6000, 64, 20, 4.5, seed=1, nuisance=2, scale=2.0)
    Xv, yv = X[4000:], y[4000:]
    grid = [1e-1, 1e-2, 1e-3, 1e-4]
    clean, clean_table = select_l2(X[:4000], y[:4000], Xv, yv, 20, grid=grid)
    rng = np.random.default_rng(0)
    few = stratified_subset(y[:4000], 0.1, seed=0)
    noisy = np.where(rng.random(len(few)) < 0.5, rng.integers(0, 20, len(few)), y[few])
    scarce, scarce_table = select_l2(X[few], noisy, Xv, yv, 20, grid=grid)
    for best, table in ((clean, clean_table), (scarce, scarce_table)):
        assert [r["l2"] for r in table] == grid and all(r["converged"] for r in table)
        top = max(r["val_top1"] for r in table)
        assert best == max(r["l2"] for r in table if r["val_top1"] == top)  # the best; ties: stronger
    assert scarce >= 10 * clean
    assert max(r["val_top1"] for r in clean_table) > 0.75


def test_select_l2_ties_go_to_the_stronger_l2():
    X, y = blobs(800, 32, 10, 12.0, seed=2)  # separable: every l2 gets all of val right
    best, table = select_l2(X[:600], y[:600], X[600:], y[600:], 10, grid=[1e-5, 1e-1, 1e-3])
    assert [r["val_top1"] for r in table] == [1.0, 1.0, 1.0]
    assert best == 1e-1 and [r["l2"] for r in table] == [1e-1, 1e-3, 1e-5]


def test_classes_absent_from_train_are_never_predicted(data):
    Xtr, ytr, Xv, yv = data
    absent = [3, 17, 29]
    keep = ~np.isin(ytr, absent)
    m = fit(Xtr[keep], ytr[keep], 30, 1e-4)
    assert m.converged and m.weight.shape == (30, 64) and m.bias.shape == (30,)
    assert torch.isfinite(m.weight).all() and torch.isfinite(m.bias).all()
    for X in (Xtr, Xv):
        z = m.logits(X)
        assert torch.isfinite(z).all() and torch.isfinite(torch.log_softmax(z, dim=1)).all()
        assert not np.isin(z.argmax(dim=1).numpy(), absent).any()  # not even for rows of those classes
        present = np.setdiff1d(np.arange(30), absent)
        assert (z[:, absent].max() < z[:, present].min()).item()
    # the present classes: the same solution as a 27-class problem
    remap = np.full(30, -1)
    remap[np.setdiff1d(np.arange(30), absent)] = np.arange(27)
    m27 = fit(Xtr[keep], remap[ytr[keep]], 27, 1e-4)
    torch.testing.assert_close(m.weight[np.setdiff1d(np.arange(30), absent)], m27.weight)
    acc = (m.logits(Xv).argmax(dim=1).numpy() == yv)[~np.isin(yv, absent)].mean()
    assert acc > 0.6


def test_topk_accuracy():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    y = torch.tensor([0, 2, 0, 1])
    assert topk_accuracy(logits, y, ks=(1, 2, 5)) == {"top1": 0.25, "top2": 0.5, "top5": 1.0}
    assert topk_accuracy(logits, np.array([0, 1, 2, 0]))["top1"] == 1.0


def label_counts(y, idx) -> dict:
    labels, counts = np.unique(np.asarray(y)[idx], return_counts=True)
    return dict(zip(labels.tolist(), counts.tolist()))


@pytest.fixture
def uneven():
    sizes = {0: 1, 1: 2, 2: 5, 3: 10, 4: 100, 5: 37, 7: 3}
    y = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    return np.random.default_rng(0).permutation(y), sizes


def test_stratified_subset(uneven):
    y, sizes = uneven
    idx = stratified_subset(y, 0.1, seed=0)
    assert label_counts(y, idx) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 10, 5: 4, 7: 1}
    assert np.array_equal(idx, np.unique(idx))  # sorted, no repeats
    assert np.array_equal(idx, stratified_subset(y, 0.1, seed=0))
    assert not np.array_equal(idx, stratified_subset(y, 0.1, seed=1))
    assert label_counts(y, stratified_subset(y, 0.5, seed=3)) == {0: 1, 1: 1, 2: 3, 3: 5, 4: 50, 5: 19, 7: 2}
    assert np.array_equal(stratified_subset(y, 1.0, seed=0), np.arange(len(y)))
    with pytest.raises(ValueError):
        stratified_subset(y, 0.0, seed=0)


def test_stratified_split(uneven):
    y, sizes = uneven
    train, held = stratified_split(y, 0.2, seed=0)
    assert label_counts(y, held) == {1: 1, 2: 1, 3: 2, 4: 20, 5: 7, 7: 1}  # the singleton class stays
    assert label_counts(y, train) == {c: n - label_counts(y, held).get(c, 0) for c, n in sizes.items()}
    assert not np.intersect1d(train, held).size
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(len(y)))
    again = stratified_split(y, 0.2, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], held)
    assert not np.array_equal(stratified_split(y, 0.2, seed=1)[1], held)
    _, small = stratified_split(y, 0.01, seed=0)
    assert label_counts(y, small) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 7: 1}
    train0, held0 = stratified_split(y, 0.0, seed=0)
    assert len(held0) == 0 and np.array_equal(train0, np.arange(len(y)))
