"""Captions of the synthetic world: every post's caption names its shown concepts by WordNet
lemmas, among words that are no allowed-sense nouns, and the hashtag side does not depend on them."""

from __future__ import annotations

import bz2
import gzip
import html
import json
import re
import tarfile
from collections import Counter
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote_plus

import numpy as np
import pytest

from swagcli.prep import synth_captions as sc
from swagcli.prep import synth_render as sr
from swagcli.prep.canon import ALLOWED_SENSES
from swagcli.prep.dumps import HASHTAG_RE
from swagcli.prep.synth import load_world

REPO = Path(__file__).resolve().parents[2]


def _posts(root: Path, files) -> list[dict]:
    posts = []
    for rel in files:
        data = (root / rel).read_bytes()
        for line in (gzip.decompress(data) if rel.endswith(".gz") else data).splitlines():
            try:
                posts.append(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass  # the world's corrupt lines
    return posts


def _sentence(post: dict) -> str:
    """The caption without a caption-only post's #tags (which follow the sentence)."""
    if "hashtags" in post:
        return post["caption"]
    words = post["caption"].split(" ")
    while words and words[-1].startswith("#"):
        words.pop()
    return " ".join(words)


@pytest.fixture(scope="module")
def tiny(tiny_world):
    """(world.json, posts, {post id: shown concept indices}) of the session's tiny world."""
    root = tiny_world["world"]
    world = load_world(root)
    shown = {}
    for rel in world["files"]["images"]:
        with tarfile.open(root / rel) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    shown[m.name[:-5]] = json.loads(tar.extractfile(m).read())["concepts"]
    return world, _posts(root, world["files"]["dumps"]), shown


@pytest.fixture(scope="module")
def noun_phrases(wn):
    """A plain reading of caption noun phrases (SPEC §8), stricter than a labeller needs to be:
    entities unescaped, possessive 's dropped, words split at anything but a letter (links too),
    then n-grams of up to 3 words, longest first, that are nouns of an allowed lexname by any of
    nltk's inflection candidates. Returns [(phrase, its allowed synsets)]."""
    @lru_cache(maxsize=None)
    def allowed(form):
        return frozenset(s.name() for s in wn.synsets(form, "n") if s.lexname() in ALLOWED_SENSES)

    def read(caption: str) -> list:
        words = re.findall(r"[a-z]+", re.sub(r"'s\b", "", html.unescape(caption).lower()))
        i, found = 0, []
        while i < len(words):
            for n in (3, 2, 1):
                form = "_".join(words[i:i + n])
                if i + n <= len(words) and allowed(form):
                    found.append((form, allowed(form)))
                    i += n
                    break
            else:
                i += 1
        return found

    return read


# -- the ground truth -----------------------------------------------------------------------------
def test_world_records_the_names_captions_use(tiny, canon):
    world, _, _ = tiny
    assert world["captions"]["name_prob"] == sc.NAME_PROB and world["captions"]["stream"] == sc.STREAM
    texts = Counter()
    for c in world["concepts"]:
        names = c["caption_names"]
        assert names[0]["text"].replace(" ", "") == c["main_tag"]  # the main lemma first, mostly
        assert abs(sum(n["weight"] for n in names) - 1) < 1e-4
        assert len(names) == 1 or names[0]["weight"] == sc.MAIN_LEMMA_PROB
        for n in names:
            assert n["text"] == n["lemma"].replace("_", " ") and re.fullmatch(r"[a-z]+( [a-z]+)*", n["text"])
            # a labeller that reads the phrase and canonicalizes it as a hashtag finds the concept
            assert c["synset"] in canon.synsets(n["lemma"].replace("_", ""))
            if n["plural"]:
                assert canon.morphy(n["plural"].replace(" ", "_"), "n") == n["lemma"]
            texts[n["text"]] += 1
    assert max(texts.values()) == 1  # no two concepts share a name
    assert sum(len(c["caption_names"]) > 1 for c in world["concepts"]) >= 10  # synonyms
    assert sum(n["plural"] is not None for c in world["concepts"] for n in c["caption_names"]) > 0.8 * len(texts)


def test_plurals_are_english_and_morphy_maps_them_back(wn, canon):
    cases = {"mouse": "mice", "goose": "geese", "knife": "knives", "cactus": "cacti", "fox": "foxes",
             "cherry": "cherries", "monkey": "monkeys", "golden_retriever": "golden retrievers",
             "snowman": "snowmen", "ottoman": "ottomans", "doberman": "dobermans", "deer": "deer",
             "whitefish": "whitefish", "aircraft": "aircraft", "iris": "irises", "tomato": "tomatoes",
             "church": "churches", "jeans": None, "trousers": None,
             "glass": None, "field_mouse": None}  # morphy reads 'glasses' as spectacles, 'field_mice' not at all
    for lemma, want in cases.items():
        got = sc.plural(lemma, wn)
        assert got == want, (lemma, got)
        if got:
            assert canon.morphy(got.replace(" ", "_"), "n") == lemma


# -- the captions ---------------------------------------------------------------------------------
def test_every_post_has_a_caption_and_only_tags_have_a_hash(tiny):
    _, posts, _ = tiny
    assert len(posts) == 2000 and all(isinstance(p.get("caption"), str) and p["caption"] for p in posts)
    caption_only = [p for p in posts if "hashtags" not in p]
    assert caption_only
    for p in posts:
        sentence = _sentence(p)
        assert "#" not in sentence and sentence.strip() == sentence and sentence
        if "hashtags" not in p:  # the sentence, then the #tags, as before captions named things
            tags = p["caption"][len(sentence):].split()
            assert all(t.startswith("#") for t in tags)
            assert HASHTAG_RE.findall(p["caption"]) == [t[1:] for t in tags]
        else:
            assert HASHTAG_RE.findall(p["caption"]) == []


def test_shown_concepts_are_named_and_nothing_else_is(tiny, noun_phrases):
    """Measured on the tiny world: 91.0% of the shown concepts named (NAME_PROB 0.9, a name that
    would stand next to a word it must not is left out); no other allowed-sense noun than the
    medium words and 'two'."""
    world, posts, shown = tiny
    allowed_extra = set(world["captions"]["medium_words"]) | set(world["captions"]["function_words"])
    named = total = plural = mentions = 0
    spurious = Counter()
    for p in posts:
        found = noun_phrases(_sentence(p))
        synsets = [world["concepts"][c]["synset"] for c in shown[p["id"]]]
        for s in synsets:
            total += 1
            named += any(s in syn for _, syn in found)
        for form, syn in found:
            if any(s in syn for s in synsets):
                mentions += 1
                lemmas = {n["lemma"] for c in shown[p["id"]] for n in world["concepts"][c]["caption_names"]}
                plural += form not in lemmas
            elif form not in allowed_extra:
                spurious[form] += 1
    assert 0.86 < named / total < 0.95, named / total
    assert not spurious, spurious.most_common(5)
    assert 0.1 < plural / mentions < 0.35  # PLURAL_PROB 0.25 where a plural exists


def test_captions_have_the_features_of_real_ones(tiny):
    """Medium words in about half, and now and then an entity, a link, a possessive, mixed case."""
    _, posts, _ = tiny
    sentences = [_sentence(p) for p in posts]

    def share(test):
        return sum(map(test, sentences)) / len(sentences)

    assert 0.4 < share(lambda s: any(m in s.lower() for m in ("photo", "picture", "image", "illustration",
                                                               "vector background"))) < 0.6
    assert 0.04 < share(lambda s: "&amp;" in s or "&quot;" in s) < 0.2
    assert 0.02 < share(lambda s: "://" in s) < 0.1
    assert 0.04 < share(lambda s: "'s " in s) < 0.2
    assert share(lambda s: s.isupper()) > 0.01 and share(lambda s: s == s.lower()) > 0.05
    assert share(lambda s: s[:1].isupper() and not s.isupper()) > 0.6
    assert share(lambda s: bool(re.search(r"\b(two|some) ", s.lower()))) > 0.05
    assert share(lambda s: s.rstrip()[-1:] in ".!)") > 0.5


def test_distractors_are_no_allowed_nouns(canon, wn):
    """Every word a caption holds besides the names, the medium words and FUNCTION_WORDS maps to
    nothing by Listing 1 and is no noun of an allowed lexname (nor are its 2- and 3-word runs)."""
    pieces = [*(w for ws in sc.ADJECTIVES.values() for w in ws), *(w for ws in sc.PARTICIPLES.values() for w in ws),
              *sc.TAILS, *sc.OWNERS, *sc.OWNED, *sc.NO_NAME, *sc.FILLER_PHRASES, "photo of the day",
              *(c for c, _ in sc.CONNECTORS), *(d for d, _ in sc.SINGULAR_DETS + sc.PLURAL_DETS), "an",
              *sc.MEDIUM, "https t co", "http instagr am p"]
    allowed = set(ALLOWED_SENSES)
    for piece in pieces:
        words = [w for w in re.findall(r"[a-z]+", piece.lower())
                 if w not in sc.MEDIUM_WORDS and w not in sc.FUNCTION_WORDS]
        for w in words:
            assert not canon.synsets(w), (piece, w, canon.synsets(w))
        for n in (1, 2, 3):
            for i in range(len(words) - n + 1):
                form = "_".join(words[i:i + n])
                assert not {s.lexname() for s in wn.synsets(form, "n")} & allowed, (piece, form)
    for w in ("day", "friends", "sunshine", "weekend"):  # nouns, of other lexnames
        assert wn.synsets(w, "n") and not canon.synsets(w)
    # the function and medium words are allowed nouns: a labeller has to know them
    assert all(canon.synsets(w) for w in sc.FUNCTION_WORDS)
    assert all(canon.synsets(w.replace("-", "")) for w in sc.MEDIUM_WORDS)
    assert set(sc.FILLER_PHRASES) == set(sr.CAPTIONS) and len(sr.CAPTIONS) == 10


# -- the hashtag side -----------------------------------------------------------------------------
def test_hashtag_side_does_not_depend_on_the_captions(tiny, monkeypatch):
    """Captions come from their own stream: a caption drawn any other way (here: many draws, or
    none) leaves every post's id, country, hashtags, kind and corrupt line where they were."""
    from swagcli import recipes

    world, _, _ = tiny
    recipe = recipes.load("synth", REPO / "recipes/synth/tiny.yaml", flags={"out": "unused"})
    primary, extra, country = sr.sample_posts(world, recipe)
    country = np.array(list(world["countries"]))[country]
    names = [{"names": c["caption_names"], "lexname": c["lexname"]} for c in world["concepts"]]
    tags = [[(v["tag"], v["weight"]) for v in c["variants"]] for c in world["concepts"]]
    junk = [(j["tag"], j["weight"]) for j in world["junk_tags"]]
    rates = {"missing": recipe.missing_tag_prob, "wrong": recipe.wrong_tag_prob, "junk": recipe.junk_tags_mean,
             "caption_only": recipe.caption_only_prob, "bad_line": 0.2}
    probs = [c["prob"] for c in world["concepts"]]

    def shard(s=1):
        a, b = s * 500, (s + 1) * 500
        out = []
        for post, hashtags, phrase, sentence, caption_only, line, bad in sr._shard_posts(
                a, primary[a:b], extra[a:b], country[a:b].tolist(), tags, junk, names, probs, rates,
                recipe.seed, s, Counter()):
            out.append((post["id"], post["country"], post.get("hashtags"), hashtags, phrase, caption_only,
                        bad is None))
            assert json.loads(line)["caption"].startswith(sentence)
            assert bad is None or not _parses(bad)
        return out

    real = shard()
    assert sum(not r[-1] for r in real) > 50
    for fake in (lambda rng, *a: "x" * int(rng.integers(1, 40)) + str(rng.random(100).sum()), lambda *a: "a"):
        monkeypatch.setattr(sc, "sentence", fake)
        assert shard() == real


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def test_layouts_carry_the_sentence(layouts):
    """YFCC100M: the sentence in the title (URL-encoded as Flickr does); img2dataset: the
    sentence, then the #tags, as caption."""
    out, _ = layouts
    world = load_world(out)
    posts = {int(p["id"][1:]): p for p in _posts(out, world["files"]["dumps"])}
    titles = {}
    for rel in world["files"]["yfcc"]:
        data = (out / rel).read_bytes()
        for line in (bz2.decompress(data) if rel.endswith(".bz2") else data).split(b"\n"):
            f = line.decode("utf-8", "replace").split("\t")
            if len(f) in (23, 25) and f[-1] == "0":
                titles[int(f[0] if len(f) == 23 else f[1]) - 1_000_000] = unquote_plus(f[-17])
    assert titles.keys() == posts.keys()
    assert all(titles[i] == _sentence(p) for i, p in posts.items())
    i2d = 0
    for tar_path in sorted((out / "img2dataset").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                p = posts[int(meta["photoid"]) - 1_000_000]
                want = " ".join([p["caption"], *p["hashtags"]]) if "hashtags" in p else p["caption"]
                assert meta["caption"] == want == members[name[:-5] + ".txt"].decode()
                i2d += 1
    assert i2d > 0.8 * len(posts)


def test_one_caption_is_deterministic_and_draws_only_from_its_rng(tiny):
    world, _, _ = tiny
    names = [{"names": c["caption_names"], "lexname": c["lexname"]} for c in world["concepts"]]
    a = [sc.sentence(np.random.default_rng(3), [0, 5], names, "today") for _ in range(3)]
    assert len(set(a)) == 1
    rng = np.random.default_rng(3)
    many = {sc.sentence(rng, [0, 5], names, "today") for _ in range(200)}
    assert len(many) > 150
