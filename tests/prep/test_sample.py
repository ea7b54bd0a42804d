"""`swag sample`: the plan follows the target distribution (goodness-of-fit tests), label noise
is as asked and never self-replacing, plans are reproducible whatever the worker count."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from swagcli import recipes
from swagcli.errors import SwagError
from swagcli.prep import sample as S


def make_world(tmp_path, n_tags=30, images=6000, shards=3, multi=True, seed=0):
    """Dumps of `images` posts with Zipfian tags t0..t{n-1} plus a vocabulary of them with the
    exact image counts f(h); head = the 6 most frequent hashtags. Returns (vocab path, dump glob,
    {post id: sorted hashtag ids})."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_tags + 1) ** 1.2
    p /= p.sum()
    posts, truth = [], {}
    for i in range(images):
        k = rng.integers(1, 4) if multi else 1
        hs = sorted(set(rng.choice(n_tags, size=k, p=p).tolist()))
        pid = f"p{i:06d}"
        truth[pid] = hs
        posts.append({"id": pid, "hashtags": [f"#t{h}" for h in hs] + ["#junk"]})
    for j in range(50):  # images with no vocabulary hashtag: dropped
        posts.append({"id": f"q{j:04d}", "hashtags": ["#junk", "#other"]})
    counts = Counter(h for hs in truth.values() for h in hs)
    head = {h for h, _ in counts.most_common(6)}
    vocab = {"format": "swag-vocab/1", "hashtags": [
        {"id": h, "name": f"t{h}", "key": f"t{h}.n.01", "synsets": [f"t{h}.n.01"], "tags": [f"t{h}"],
         "count": counts[h], "head": h in head} for h in range(n_tags)]}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    d = tmp_path / "dumps"
    d.mkdir()
    for s in range(shards):
        (d / f"s{s}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in posts[s::shards]))
    return tmp_path / "vocab.json", str(d / "*.jsonl"), truth, counts, head


def plan(tmp_path, vocab, dumps, name="plan", **kw):
    r = recipes.load("sample", flags={"vocab": str(vocab), "dumps": [dumps], "out": str(tmp_path / name),
                                      **kw})
    summary = S.build(r)
    got = {}
    doc = S.load_plan(tmp_path / name)
    for part in doc["parts"]:
        a = S.load_part(doc, part)
        for j, pid in enumerate(a["ids"].tolist()):
            got[pid] = (int(a["mult"][j]), a["labels"][a["label_ptr"][j]:a["label_ptr"][j + 1]].tolist())
    return summary, got


def _gof(observed: np.ndarray, expected: np.ndarray, min_expected=20) -> float:
    """Chi-square p-value, pooling cells (sorted by expectation) to >= min_expected each."""
    order = np.argsort(expected)
    obs_b, exp_b, o, e = [], [], 0.0, 0.0
    for i in order:
        o += observed[i]
        e += expected[i]
        if e >= min_expected:
            obs_b.append(o)
            exp_b.append(e)
            o = e = 0.0
    if e:
        obs_b[-1] += o
        exp_b[-1] += e
    return stats.chisquare(obs_b, np.asarray(exp_b) * sum(obs_b) / sum(exp_b)).pvalue


def test_head_tail_follows_alpha_and_importance(tmp_path):
    vocab, dumps, truth, counts, head = make_world(tmp_path)
    M = 60000
    summary, got = plan(tmp_path, vocab, dumps, samples=M, alpha=0.7, workers=2)
    assert summary["total_samples"] == M
    assert summary["head_samples"] == round(0.7 * M) and summary["tail_samples"] == M - round(0.7 * M)
    assert summary["dropped_images"] == 50
    assert summary["unique_images"] == len(got) < M  # tail images repeat
    imp = {pid: max(counts[h] ** -0.5 for h in hs) for pid, hs in truth.items()}
    is_tail = {pid: any(h not in head for h in hs) for pid, hs in truth.items()}
    for part, m in ((False, summary["head_samples"]), (True, summary["tail_samples"])):
        pids = [p for p in truth if is_tail[p] == part]
        w = np.array([imp[p] for p in pids])
        observed = np.array([got.get(p, (0, None))[0] for p in pids], dtype=float)
        assert observed.sum() == m
        assert _gof(observed, m * w / w.sum()) > 1e-3
        # and it is not the natural distribution: importance matters
        assert _gof(observed, np.full(len(pids), m / len(pids))) < 1e-6
    for pid, (_, labels) in got.items():
        assert labels == truth[pid]  # no noise: the image's own hashtags


@pytest.mark.parametrize("strategy", ["sqrt", "natural"])
def test_sqrt_and_natural(tmp_path, strategy):
    vocab, dumps, truth, counts, _ = make_world(tmp_path)
    M = 40000
    summary, got = plan(tmp_path, vocab, dumps, samples=M, strategy=strategy)
    pids = list(truth)
    w = np.array([max(counts[h] ** -0.5 for h in truth[p]) if strategy == "sqrt" else 1.0 for p in pids])
    observed = np.array([got.get(p, (0, None))[0] for p in pids], dtype=float)
    assert observed.sum() == M == summary["total_samples"]
    assert _gof(observed, M * w / w.sum()) > 1e-3


def test_uniform_is_uniform_over_hashtags(tmp_path):
    vocab, dumps, truth, counts, _ = make_world(tmp_path, multi=False)
    M = 30000
    _, got = plan(tmp_path, vocab, dumps, samples=M, strategy="uniform")
    per_tag = np.zeros(30)
    for pid, (m, labels) in got.items():
        per_tag[labels[0]] += m
    assert stats.chisquare(per_tag).pvalue > 1e-3
    # natural sampling of the same world is far from uniform over hashtags
    _, nat = plan(tmp_path, vocab, dumps, name="nat", samples=M, strategy="natural")
    nat_tag = np.zeros(30)
    for pid, (m, labels) in nat.items():
        nat_tag[labels[0]] += m
    assert stats.chisquare(nat_tag).pvalue < 1e-9


def test_label_noise_rate_and_never_self_replacing(tmp_path):
    vocab, dumps, truth, counts, _ = make_world(tmp_path, n_tags=8, multi=False)
    p = 0.25
    summary, got = plan(tmp_path, vocab, dumps, samples=20000, strategy="natural", label_noise=p, seed=3)
    changed = [pid for pid, (_, labels) in got.items() if labels != truth[pid]]
    n = len(got)
    # replaced at rate p, and every replacement changes the label (never self-replacing): with a
    # dominant hashtag, replacement allowing itself would change far fewer labels than p
    assert abs(len(changed) / n - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert abs(summary["noise_replaced_fraction"] - p) < 4 * np.sqrt(p * (1 - p) / n)
    # replacements follow the marginal with the replaced hashtag left out
    f = np.array([counts[h] for h in range(8)], dtype=float)
    obs = np.zeros(8)
    exp = np.zeros(8)
    for pid in changed:
        old, new = truth[pid][0], got[pid][1][0]
        assert new != old
        obs[new] += 1
        q = f.copy()
        q[old] = 0
        exp += q / q.sum()
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_reproducible_whatever_the_workers(tmp_path):
    vocab, dumps, *_ = make_world(tmp_path, images=2000)
    _, a = plan(tmp_path, vocab, dumps, name="a", samples=5000, workers=1, label_noise=0.1)
    _, b = plan(tmp_path, vocab, dumps, name="b", samples=5000, workers=2, label_noise=0.1)
    _, c = plan(tmp_path, vocab, dumps, name="c", samples=5000, workers=1, label_noise=0.1, seed=1)
    assert a == b and a != c


def test_small_chunks_keep_every_quota(tmp_path):
    vocab, dumps, *_ = make_world(tmp_path, images=3000)
    summary, got = plan(tmp_path, vocab, dumps, samples=7777, chunk=7)
    assert summary["total_samples"] == sum(m for m, _ in got.values()) == 7777
    assert summary["head_samples"] == round(0.7 * 7777)


def test_export_and_bad_inputs(tmp_path, swag):
    vocab, dumps, *_ = make_world(tmp_path, images=500)
    res = swag("sample", "--vocab", vocab, dumps, "--out", tmp_path / "p", "-m", "1000", check=True)
    assert "total samples" in res.stdout
    exp = swag("sample", "export", tmp_path / "p", check=True).stdout.splitlines()
    assert sum(int(line.split("\t")[1]) for line in exp) == 1000
    assert len(exp) == json.loads((tmp_path / "p" / "summary.json").read_text())["unique_images"]
    assert (tmp_path / "p" / "resampling.png").stat().st_size > 5000
    res = swag("sample", "--vocab", tmp_path / "nope", dumps, "--out", tmp_path / "q", "-m", "10")
    assert res.returncode == 2 and "no vocabulary here" in res.stderr and res.stderr.count("\n") == 1
    res = swag("sample", "--vocab", vocab, dumps, "--out", tmp_path / "q")
    assert res.returncode == 2 and "samples" in res.stderr
    res = swag("sample", "export", tmp_path)
    assert res.returncode == 2 and "no sample plan here" in res.stderr
    with pytest.raises(SwagError, match="no image carries"):
        (tmp_path / "other.jsonl").write_text('{"id": "x", "hashtags": ["#zzz"]}\n')
        plan(tmp_path, vocab, str(tmp_path / "other.jsonl"), name="o", samples=10)
