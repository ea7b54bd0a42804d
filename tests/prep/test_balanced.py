"""`swag sample --strategy balanced` (MetaCLIP, SPEC.md §9): a hashtag on n > t images keeps each
with probability t / n, an image survives when any of its hashtags keeps it; the survivors follow
``1 - prod (1 - min(1, t / n))``, are the same whatever the workers or the sharding, and only they
are drawn."""

from __future__ import annotations

import json

import numpy as np

from swagcli import recipes
from swagcli.prep import sample as S
from swagcli.prep.vocab import Vocab

# (id prefix, tags, images): dog on 1020 images, cat on 500, tree on 80
GROUPS = [("a", ["dog"], 600), ("b", ["dog", "cat"], 400), ("c", ["cat"], 100),
          ("d", ["tree"], 60), ("e", ["tree", "dog"], 20)]
T = 100  # caps dog (keep 100/1020) and cat (100/500), not tree


def make_world(tmp_path, cli, shards=3):
    """Dumps of GROUPS in ``shards`` JSONL files and their vocabulary from the real `swag vocab
    build`; returns (vocab dir, dumps dir, {tag: f(h)}, {tag: id})."""
    posts = [{"id": f"{g}{i:04d}", "hashtags": [f"#{t}" for t in tags]} for g, tags, n in GROUPS for i in range(n)]
    d = tmp_path / f"dumps{shards}"
    d.mkdir()
    for s in range(shards):
        (d / f"s{s}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in posts[s::shards]))
    vocab = tmp_path / "vocab"
    if not (vocab / "vocab.json").is_file():
        res = cli("vocab", "build", d, "--out", vocab)
        assert res.code == 0, res
    v = Vocab.load(vocab)
    ids = {t: v.tag_to_id[t] for t in ("dog", "cat", "tree")}
    return vocab, d, {t: v.counts[ids[t]] for t in ids}, ids


def draw(tmp_path, vocab, dumps, name, **kw):
    """A balanced plan: (summary, {id: (multiplicity, labels)})."""
    r = recipes.load("sample", flags={"vocab": str(vocab), "dumps": [str(dumps)], "out": str(tmp_path / name),
                                      "strategy": "balanced", "t": T, **kw})
    summary = S.build(r)
    doc = S.load_plan(tmp_path / name)
    got = {}
    for part in doc["parts"]:
        a = S.load_part(doc, part)
        for j, pid in enumerate(a["ids"].tolist()):
            got[pid] = (int(a["mult"][j]), a["labels"][a["label_ptr"][j]:a["label_ptr"][j + 1]].tolist())
    return summary, got


def p_keep(tags, f) -> float:
    return 1 - float(np.prod([1 - min(1, T / f[t]) for t in tags]))


def test_survivors_follow_the_formula_and_the_summary(tmp_path, cli):
    vocab, dumps, f, _ = make_world(tmp_path, cli)
    assert f == {"dog": 1020, "cat": 500, "tree": 80}
    expected = sum(n * p_keep(tags, f) for _, tags, n in GROUPS)
    var = sum(n * p_keep(tags, f) * (1 - p_keep(tags, f)) for _, tags, n in GROUPS)
    seeds = 4
    kept = {g: 0 for g, _, _ in GROUPS}
    for seed in range(seeds):
        # ~270 survivors, 20,000 draws: every survivor is drawn (a miss has chance ~e^-70)
        summary, got = draw(tmp_path, vocab, dumps, f"s{seed}", samples=20000, seed=seed)
        b = summary["balanced"]
        assert b["t"] == T and b["capped_hashtags"] == 2
        assert b["expected_survivors"] == round(expected, 2) and b["survivors_sd"] == round(var ** 0.5, 2)
        assert summary["total_samples"] == 20000 and summary["unique_images"] == b["survivors"] == len(got)
        assert abs(b["survivors"] - expected) < 4 * var ** 0.5
        dog = next(x for x in b["largest"] if x["name"] == "dog")
        assert dog["count"] == dog["images"] == 1020 and dog["survivors"] == sum(
            1 for pid in got if pid[0] in "abe")
        assert dog["expected_survivors"] == round(sum(n * p_keep(tags, f) for _, tags, n in GROUPS
                                                      if "dog" in tags), 2)
        # an image whose hashtags are all under t always survives (tree: 80 <= t)
        assert all(f"{g}{i:04d}" in got for g in "de" for i in range(dict((x, n) for x, _, n in GROUPS)[g]))
        for pid in got:
            kept[pid[0]] += 1
    for g, tags, n in GROUPS:  # inclusion frequency per hashtag set, within a binomial margin
        p, trials = p_keep(tags, f), n * seeds
        assert abs(kept[g] / trials - p) <= 4 * (p * (1 - p) / trials) ** 0.5 + 1e-12, (g, kept[g] / trials, p)


def test_keep_decisions_are_hashed_independent_uniforms():
    """Many images with the same three capped hashtags: P(keep) = 1 - 0.9 * 0.8 * 0.7; each
    hashtag's own keep rate is its keep probability (decisions independent across hashtags)."""
    n = 40000
    ids = np.array([f"img{i}" for i in range(n)], dtype=np.str_)
    labels = np.tile(np.array([0, 1, 2]), n)
    ptr = np.arange(0, 3 * n + 1, 3)
    keep = np.array([0.1, 0.2, 0.3, 1.0])
    p = 1 - 0.9 * 0.8 * 0.7
    got = S.balance_keep(ids, labels, ptr, keep, seed=5)
    assert abs(got.mean() - p) < 4 * (p * (1 - p) / n) ** 0.5
    assert np.allclose(S.keep_probability(labels, ptr, keep), p)
    u = S.keep_uniforms(ids[np.repeat(np.arange(n), 3)], labels, seed=5).reshape(n, 3)
    for h in range(3):
        assert abs((u[:, h] < keep[h]).mean() - keep[h]) < 4 * (keep[h] * (1 - keep[h]) / n) ** 0.5
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    # a pure function of (seed, id, hashtag): any order, any split; another seed differs
    perm = np.random.default_rng(0).permutation(n)[:1000]
    again = S.keep_uniforms(ids[perm], np.full(1000, 1), seed=5)
    assert np.array_equal(again, u[perm, 1])
    assert not np.array_equal(S.keep_uniforms(ids[perm], np.full(1000, 1), seed=6), again)


def test_same_plan_whatever_the_workers_and_the_sharding(tmp_path, cli):
    vocab, dumps, *_ = make_world(tmp_path, cli)
    _, a = draw(tmp_path, vocab, dumps, "a", samples=3000, workers=1)
    _, b = draw(tmp_path, vocab, dumps, "b", samples=3000, workers=2)
    _, c = draw(tmp_path, vocab, dumps, "c", samples=3000, workers=1, seed=1)
    assert a == b and a != c
    # the survivors do not depend on how the images are split into shards (the draw does)
    one_dumps = make_world(tmp_path, cli, shards=1)[1]
    s3, big3 = draw(tmp_path, vocab, dumps, "big3", samples=20000)
    s1, big1 = draw(tmp_path, vocab, one_dumps, "big1", samples=20000)
    assert set(big3) == set(big1) and s3["balanced"]["survivors"] == s1["balanced"]["survivors"] == len(big1)
    assert set(a) <= set(big3)  # dropped-by-balancing images never appear in a plan
