"""``swagcli.prep.canon`` against Listing 1 of the SWAG paper (``tests/listing1.py``).

Listing 1 runs on its own, freshly built nltk reader, so that nothing the Canonicalizer does to
the shared reader (``get_wordnet()``) can make the two agree by accident.
"""

from __future__ import annotations

import random
import string
import warnings

import pytest

from swagcli.prep.canon import (ALLOWED_SENSES, Canonicalizer, Morphology, normalize_tag,
                                synset_key)
from swagcli.wordnet import find_wordnet_root, get_wordnet
from tests.listing1 import get_synset_names

SEED = 20220401


@pytest.fixture(scope="module")
def ref_wn():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root, _ = find_wordnet_root()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(str(root), None)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("canon-cache")


@pytest.fixture(scope="module")
def canon(cache_dir):
    """Built from WordNet (the cache directory starts empty), and written to the cache."""
    c = Canonicalizer(cache=cache_dir)
    assert c.source == "built from WordNet"
    return c


def listing1(wn, tag, senses=ALLOWED_SENSES):
    return get_synset_names(wn, tag, set(senses))


# first, so that Listing 1 later finds the reference reader's synset cache warm (speed only)
def test_names_are_nltks(canon, ref_wn):
    names = canon.morphology.names
    expected = {("n", s.offset()): s.name() for s in ref_wn.all_synsets("n")
                if s._lexname in ALLOWED_SENSES}
    assert len(expected) > 25_000
    assert {k: v for k, v in names.items() if k[0] == "n"} == expected


def test_adjective_names_are_nltks(ref_wn):
    """Adjectives carry syntactic markers and satellites ('s') are ranked separately."""
    morph = Morphology(get_wordnet(), ("adj.all", "adj.pert", "adj.ppl"))
    expected = {("a", s.offset()): s.name() for s in ref_wn.all_synsets("a")}
    assert any(name.split(".")[1] == "s" for name in expected.values())
    assert morph.names == expected


def _as_tag(lemma: str) -> str:
    return lemma.replace("_", "").replace("-", "")


def make_tags(wn, canon, seed=SEED) -> list:
    """A deterministic mix (> 20k distinct tags) of real and junk hashtags."""
    rng = random.Random(seed)
    index = wn._lemma_pos_offset_map
    lemmas = {p: sorted(w for w, by in index.items() if p in by) for p in "nvar"}
    nouns = lemmas["n"]
    exc = {p: sorted(wn._exception_map[p]) for p in "nvar"}
    simple = [w for w in nouns if w.isalpha()]
    short = [w for w in simple if len(w) <= 6]
    tags = ["running", "geese", "mice", "aardwolves", "eggplant", "aubergines", "brownbears",
            "ursusarctos", "hotdogs", "icecream", "teddybears", "newyork", "sunsetlover", "loveit",
            "nyc2019", "catlover", "dogsofinstagram", "instagood", "photooftheday"]
    add = tags.extend
    # WordNet lemmas written as hashtags, some with '_' or '-' kept
    sample = rng.sample(nouns, 4000)
    add(_as_tag(w) for w in sample)
    add(w for w in sample[:600])
    add(_as_tag(w) for w in rng.sample(lemmas["v"], 500) + rng.sample(lemmas["a"], 500)
        + lemmas["r"][:300])
    # multi-word lemmas with a short part: the split index at or beyond the range ends
    multi = [w for w in nouns if "_" in w]
    edge = [w for w in multi if min(len(x) for x in w.split("_")) <= 3]
    add(_as_tag(w) for w in rng.sample(edge, min(1500, len(edge))))
    # plurals, regular and irregular
    for w in rng.sample(nouns, 2500):
        t = _as_tag(w)
        forms = [t + "s", t + "es", (t[:-1] + "ies") if t.endswith("y") else t + "ies"]
        add(forms[:rng.randrange(1, 4)])
    add(exc["n"])  # geese, mice, aardwolves, ... (all of noun.exc)
    add(_as_tag(k) for k in exc["n"] if "_" in k or "-" in k)
    add(rng.sample(exc["v"], 800) + rng.sample(exc["a"], 500) + exc["r"])
    add(k + "s" for k in rng.sample(exc["n"], 300))
    # verb forms and adjectives
    for w in rng.sample([w for w in lemmas["v"] if w.isalpha()], 1200):
        forms = [w + "ing", w[:-1] + "ing" if w.endswith("e") else w + "ed", w + "s"]
        add(forms[:rng.randrange(1, 4)])
    for w in rng.sample([w for w in lemmas["a"] if w.isalpha()], 800):
        forms = [w + "er", w + "est", w[:-1] + "iest" if w.endswith("y") else w + "ly"]
        add(forms[:rng.randrange(1, 4)])
    # compounds of two words, and words with junk around them
    for _ in range(3000):
        a = rng.choice(short if rng.random() < 0.7 else simple)
        b = rng.choice(short + ["lover", "love", "life", "day", "s", "es", "ing", "ed"])
        add([a + b])
    for _ in range(1000):
        w = _as_tag(rng.choice(nouns))
        add([rng.choice(["my", "the", "i", "love", "best", "x"]) + w,
             w + str(rng.randrange(3000)), w + rng.choice(["gram", "life", "lover", "xoxo"])])
    # the implementation's own positives (inputs only: their answers come from Listing 1)
    positives = sorted(t for t, _ in canon.items())
    add(rng.sample(positives, 2000))
    # junk: random strings, digits, other scripts and emoji, short tags, '_' and '-'
    letters = string.ascii_lowercase
    for _ in range(3000):
        add(["".join(rng.choice(letters) for _ in range(rng.randrange(1, 16)))])
    add(str(rng.randrange(10 ** rng.randrange(1, 10))) for _ in range(500))
    add(rng.choice(letters) + str(rng.randrange(100)) + rng.choice(short) for _ in range(300))
    exotic = ["東京", "猫", "사랑", "любовь", "καλημέρα", "حب", "שלום", "नमस्ते", "café", "zürich",
              "😍", "❤️", "🔥", "🐶🐶", "🍕pizza", "dog🐶", "ñandú", "straße", "\u200bdog", " ", "#"]
    add(exotic)
    add(a + b for a in exotic[:10] for b in ["", "dog", "s", "2019"])
    add(["", "a", "ox", "ax", "us", "go", "cat", "dog", "axe", "oxen", "ox_", "_ox", "___", "a_b"])
    add("".join(p) for p in zip(letters, letters[3:]))  # length 2
    add("".join(rng.choice(letters) for _ in range(3)) for _ in range(1500))  # length 3
    for _ in range(600):
        a, b = rng.choice(short), rng.choice(short)
        add([a + rng.choice("_-") + b, "_" + a, a + "_", a + "__" + b])
    # mixed case, normalized as the pipeline does, and raw
    for w in rng.sample(nouns, 800):
        raw = "#" + "".join(ch.upper() if rng.random() < 0.4 else ch for ch in _as_tag(w)) + " "
        add([normalize_tag(raw), raw.strip().lstrip("#")])
    return list(dict.fromkeys(tags))


@pytest.fixture(scope="module")
def tags(ref_wn, canon):
    t = make_tags(ref_wn, canon)
    assert len(t) >= 20_000
    return t


@pytest.fixture(scope="module")
def reference(ref_wn, tags):
    return {t: listing1(ref_wn, t) for t in tags}


def test_synsets_equal_listing1(canon, tags, reference):
    bad = {t: (canon.synsets(t), reference[t]) for t in tags if canon.synsets(t) != reference[t]}
    assert not bad, list(bad.items())[:10]
    hits = sum(1 for v in reference.values() if v)
    assert hits > 5000, hits  # the mix does exercise the non-empty answers


def test_canonicalize_equals_listing1(canon, tags, reference):
    expected = {t: s for t, s in reference.items() if s}
    assert canon.canonicalize(tags) == expected
    assert canon.canonicalize(iter(tags + tags[:100])) == expected  # any iterable, duplicates
    assert canon.canonicalize([]) == {}


def test_cache_roundtrip(canon, cache_dir, tmp_path):
    again = Canonicalizer(cache=cache_dir)
    assert again.source.startswith("cache")
    assert dict(again.items()) == dict(canon.items())
    # other senses are another cache entry; a damaged cache file is rebuilt, not trusted
    senses = ("noun.event",)
    built = Canonicalizer(senses, cache=tmp_path)
    assert built.source == "built from WordNet"
    assert 0 < len(built) < len(canon)
    (path,) = tmp_path.glob("*.json")
    assert Canonicalizer(senses, cache=tmp_path).source.startswith("cache")
    path.write_bytes(b"not a pickle")
    rebuilt = Canonicalizer(senses, cache=tmp_path)
    assert rebuilt.source == "built from WordNet"
    assert dict(rebuilt.items()) == dict(built.items())
    assert Canonicalizer(senses, cache=tmp_path).source.startswith("cache")


def test_default_constructor_same_table(canon):
    """``Canonicalizer()`` as the pipeline builds it (default cache directory, read or written):
    a stale or foreign cache file there would show up here."""
    assert dict(Canonicalizer().items()) == dict(canon.items())


def test_paper_examples(canon, ref_wn):
    assert canon.synsets("eggplant") == canon.synsets("aubergine") != frozenset()
    assert canon.synsets("eggplant") == listing1(ref_wn, "eggplant")
    assert canon.synsets("brownbear") == canon.synsets("ursusarctos") == {"brown_bear.n.01"}
    for t in ("newyork", "love", "instagood"):
        assert canon.synsets(t) == frozenset() == listing1(ref_wn, t)
    assert canon.synsets("geese") == listing1(ref_wn, "geese") == {"goose.n.01", "goose.n.03"}
    assert synset_key(canon.synsets("eggplant")) == "eggplant.n.01+eggplant.n.02"


def test_normalize_tag():
    assert normalize_tag("#BrownBear ") == "brownbear"
    assert normalize_tag("  ##Love") == "love"
    assert normalize_tag("Ñandú") == "ñandú"


def test_morphy_is_nltks(canon, ref_wn, tags):
    for t in tags[::10]:
        assert canon.morphy(t) == ref_wn.morphy(t), t
        assert canon.morphy(t, "n") == ref_wn.morphy(t, "n"), t


@pytest.mark.parametrize("senses", [
    ("noun.person", "verb.motion", "noun.animal"),
    ("adj.all", "adv.all", "noun.location"),
])
def test_other_senses_equal_listing1(senses, ref_wn, tags):
    c = Canonicalizer(senses, cache=False)
    sample = tags[::8]
    expected = {t: listing1(ref_wn, t, senses) for t in sample}
    assert sum(1 for v in expected.values() if v) > 50
    bad = {t: (c.synsets(t), e) for t, e in expected.items() if c.synsets(t) != e}
    assert not bad, list(bad.items())[:10]
    assert c.canonicalize(sample) == {t: e for t, e in expected.items() if e}


def direct_listing1(m, tag, min_len=3):
    """Listing 1 transcribed onto canon's Morphology (no nltk calls), MIN_LEN a parameter."""
    if len(tag) < min_len:
        return frozenset()
    words = {m.morphy(tag, "n")}
    words.update(m.morphy(tag[:i] + "_" + tag[i:]) for i in range(min_len, len(tag) - min_len + 1))
    return frozenset().union(*(m.synsets_of(w) for w in words))


def test_table_equals_direct_listing1_on_every_lemma(canon, ref_wn):
    """The table against Listing 1 on the same morphology: cheap enough for a third of the
    lemmas of every part of speech written as hashtags (~50k), and plurals, so it checks the table's
    enumeration (steps 1-4 of canon's docstring) at scale."""
    m = canon.morphology
    lemmas = sorted({_as_tag(w) for w in ref_wn._lemma_pos_offset_map})
    tags = lemmas[::3] + [t + "s" for t in lemmas[1::9]]
    bad = [t for t in tags if canon.synsets(t) != direct_listing1(m, t)]
    assert not bad, [(t, canon.synsets(t), direct_listing1(m, t)) for t in bad[:10]]


def test_other_min_len(canon, tags, ref_wn):
    """Recipes may change Listing 1's MIN_LEN (3; they allow >= 1): more split points."""
    min_len = 1
    c = Canonicalizer(min_len=min_len, cache=False)
    m = c.morphology
    sample = tags[::8] + sorted({_as_tag(w) for w in ref_wn._lemma_pos_offset_map})[::16]
    bad = [t for t in sample if c.synsets(t) != direct_listing1(m, t, min_len)]
    assert not bad, [(t, c.synsets(t), direct_listing1(m, t, min_len)) for t in bad[:10]]
    assert c.synsets("ox") == direct_listing1(m, "ox", min_len)
