"""Zero-shot class -> hashtag mapping (SWAG App. D) against nltk's own ``path_similarity``, pair by
pair, on real WordNet; the paper's #crane and {porcupine, hedgehog} examples; ImageNet's class list."""

from __future__ import annotations

import random

import numpy as np
import pytest

from swagcli.errors import SwagError
from swagcli.evaluate import zeromap as Z
from swagcli.wordnet import synset_from_wnid

CRANE_BIRD, CRANE_MACHINE, PORCUPINE = "n02012849", "n03126707", "n02346627"


def brute_force(wn, classes, hashtag_synsets):
    """The definition, literally: max nltk path_similarity over each hashtag's synsets, all ties."""
    synsets = [[wn.synset(n) for n in names] for names in hashtag_synsets]
    out = []
    for c in classes:
        if c is None:
            out.append({"hashtags": [], "similarity": 0.0})
            continue
        per_tag = {}
        for h, ss in enumerate(synsets):
            sims = [s for s in (c.path_similarity(x) for x in ss) if s is not None]
            if sims:
                per_tag[h] = max(sims)
        best = max(per_tag.values(), default=0.0)
        out.append({"hashtags": sorted(h for h, s in per_tag.items() if s == best),
                    "similarity": best})
    return out


def noun_synsets(wn, lemma):
    return [s.name() for s in wn.synsets(lemma, pos="n")]


@pytest.fixture(scope="module")
def imagenet():
    return Z.imagenet_class_synsets()


def test_equals_brute_force_nltk(wn, imagenet):
    rng = random.Random(1234)
    classes = [imagenet[i] for i in rng.sample(range(1000), 17)]
    classes += [synset_from_wnid(w) for w in (CRANE_BIRD, CRANE_MACHINE, PORCUPINE)]
    classes += [wn.synset(n) for n in ("einstein.n.01", "paris.n.01")]  # instance hypernyms only
    lemmas = sorted(wn.all_lemma_names("n"))
    tags: list[list[str]] = []
    # random nouns: a first sense alone, or every noun sense of a lemma (a canonical key)
    for lemma in rng.sample(lemmas, 260):
        names = noun_synsets(wn, lemma)
        tags.append(names[:1] if rng.random() < 0.6 else names)
    # near the classes: parents (distance 1), siblings (ties at distance 2), grandparents, and only
    # some of the classes themselves, so that the nearest hashtag is sometimes a few steps away
    for i, c in enumerate(classes):
        parents = c.hypernyms() + c.instance_hypernyms()
        if i % 4 == 0:
            tags.append([c.name()])
        if i % 4 == 1:
            tags += [[p.name()] for p in parents]
        if i % 4 in (1, 2):
            sibs = [s for p in parents for s in p.hyponyms() if s != c]
            tags += [[s.name()] for s in rng.sample(sibs, min(4, len(sibs)))]
        if i % 4 == 3:
            tags += [[g.name()] for p in parents for g in p.hypernyms()]
    tags += [["crane.n.04", "crane.n.05"], ["porcupine.n.01"], ["hedgehog.n.02", "porcupine.n.01"],
             ["heron.n.02", "crane.n.05"], ["derrick.n.01", "derrick.n.02"], noun_synsets(wn, "bird"),
             ["london.n.01"], ["france.n.01"], ["physicist.n.01"]]
    rng.shuffle(tags)
    assert 300 <= len(tags) <= 400
    classes.insert(5, None)

    fast = Z.class_hashtags(classes, tags)
    slow = brute_force(wn, classes, tags)
    assert fast == slow
    # the comparison covered what matters: exact hits, ties, classes far from every hashtag
    assert any(m["similarity"] == 1.0 for m in fast)
    assert any(len(m["hashtags"]) >= 2 for m in fast)
    assert any(0 < m["similarity"] <= 1 / 3 for m in fast)
    assert fast[5] == {"hashtags": [], "similarity": 0.0}


def test_fake_root_for_non_nouns_equals_nltk(wn):
    """Pairs with a verb or adjective get nltk's simulated root; the mapping must follow it too."""
    classes = [wn.synset(n) for n in ("run.v.01", "eat.v.01", "think.v.01", "red.a.01", "dog.n.01")]
    tags = [[n] for n in ("walk.v.01", "sprint.v.01", "consume.v.02", "reason.v.01", "blue.s.01",
                          "big.a.01", "cat.n.01", "wolf.n.01", "jog.v.01", "chew.v.01")]
    tags.append(["travel.v.01", "canine.n.02"])
    assert Z.class_hashtags(classes, tags) == brute_force(wn, classes, tags)


def test_paper_examples_crane_and_porcupine(wn, canon):
    """#crane stands for the bird and the machine; {porcupine, hedgehog} maps to both hashtags."""
    from swagcli.prep.vocab import VOCAB_FORMAT, Vocab

    words = ["crane", "porcupine", "hedgehog", "heron", "stork", "bird", "derrick", "truck", "animal",
             "machine", "tench", "hedge"]
    hashtags = [{"id": i, "name": w, "synsets": sorted(canon.synsets(w)), "tags": [w],
                 "count": 1, "head": True}
                for i, w in enumerate(words)]
    crane = hashtags[0]["synsets"]
    assert {"crane.n.04", "crane.n.05"} <= set(crane)  # as a canonical key of `swag vocab build`
    vocab = Vocab({"format": VOCAB_FORMAT, "hashtags": hashtags})
    tag_synsets = Z.vocab_hashtag_synsets(vocab)
    classes = [synset_from_wnid(w) for w in (CRANE_BIRD, CRANE_MACHINE, PORCUPINE)]
    assert [c.name() for c in classes] == ["crane.n.05", "crane.n.04", "porcupine.n.01"]

    bird, machine, porcupine = Z.class_hashtags(classes, tag_synsets)
    assert bird == {"hashtags": [0], "similarity": 1.0}
    assert machine == {"hashtags": [0], "similarity": 1.0}
    assert porcupine == {"hashtags": [1, 2], "similarity": 1.0}
    m = Z.mapping_matrix([bird, machine, porcupine], len(words))
    assert Z.hashtag_fanout(m).tolist()[:4] == [2, 1, 1, 0]  # #crane serves two classes

    # without #crane, the bird's nearest hashtags are found by path similarity, as nltk scores them
    rest = tag_synsets[1:]
    assert Z.class_hashtags(classes[:2], rest) == brute_force(wn, classes[:2], rest)


def test_imagenet_wnids():
    wnids = Z.imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"  # tench ... toilet tissue
    assert wnids.index(CRANE_BIRD) == 134 and wnids.index(CRANE_MACHINE) == 517
    synsets = Z.imagenet_class_synsets()
    assert len(synsets) == 1000 and all(s is not None and s.pos() == "n" for s in synsets)
    assert synsets[0].name() == "tench.n.01"
    assert [f"n{s.offset():08d}" for s in synsets] == wnids


def test_mapping_matrix_and_fanout():
    mapping = [{"hashtags": [0, 2], "similarity": 1.0}, {"hashtags": [2], "similarity": 0.5},
               {"hashtags": [], "similarity": 0.0}]
    m = Z.mapping_matrix(mapping, 4)
    assert m.dtype == np.float32 and m.shape == (3, 4)
    assert m.tolist() == [[1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    fan = Z.hashtag_fanout(m)
    assert fan.shape == (4,) and fan.tolist() == [1, 0, 2, 0]
    with pytest.raises(SwagError, match="out of range"):
        Z.mapping_matrix([{"hashtags": [4]}], 4)


def test_edge_cases(wn):
    dog = wn.synset("dog.n.01")
    assert Z.class_hashtags([dog, None], []) == [{"hashtags": [], "similarity": 0.0}] * 2
    assert Z.class_hashtags([], [["dog.n.01"]]) == []
    # a synset in two hashtags, listed twice in one: each hashtag id once
    assert Z.class_hashtags([dog], [["dog.n.01", "dog.n.01"], ["cat.n.01"], ["dog.n.01"]]) == \
        [{"hashtags": [0, 2], "similarity": 1.0}]
    with pytest.raises(SwagError, match="no WordNet synset"):
        Z.class_hashtags([dog], [["dog.n.99"]])
