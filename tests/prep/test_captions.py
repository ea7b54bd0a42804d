"""Labels from captions (SPEC.md §8): the rules on hand-written captions, then on real English
written by others without a download: WordNet's own usage examples and glosses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from swagcli.prep.canon import ALLOWED_SENSES
from swagcli.prep.captions import (FUNCTION_WORDS, MEDIUM_WORDS, CaptionConfig, CaptionLabeller, CaptionStats)
from swagcli.prep.dumps import ReadSpec, ReadStats, hashtags_in, make_post, split_tags

CFG = CaptionConfig(tuple(sorted(ALLOWED_SENSES)))


@pytest.fixture(scope="module")
def lab(canon):
    return CaptionLabeller(CFG, canon)


@pytest.mark.parametrize("caption,expected", [
    # plurals and multi-word lemmas, longest match first; joined as a hashtag is written
    ("Two Golden Retrievers playing with a ball", ["goldenretrievers", "ball"]),
    # HTML entities, possessives, URLs, punctuation, mixed case
    ("My dog's new BALL &amp; a beagle!!! https://example.com/dog/cat.jpg", ["dog", "ball", "beagle"]),
    ("beagle&#39;s bowl (see www.cat-pics.example/horse)", ["beagle", "bowl"]),
    # a hyphenated lemma is kept whole; another hyphenated word is read as its parts
    ("a t-shirt and a dog-friendly horse-drawn carriage", ["t-shirt", "dog", "horse", "carriage"]),
    # the medium is dropped: photo(s), stock, vector illustration, background
    ("Stock Photos: a cat on white background, vector illustration", ["cat", "white"]),
    # function words are never one-word nouns (can.n.01, may.n.01, will.n.02)
    ("Can you see it? It may rain, and we will go.", []),
    # Listing 1 splits once: a 3-word lemma keeps WordNet's spelling
    ("chocolate chip cookies", ["chocolate_chip_cookies"]),
    # #tags are words of the caption ('#dog#beagle': both)
    ("#dog#beagle on the beach", ["dog", "beagle", "beach"]),
    ("", []), ("   ", []), ("!!! ??? 123 456", []),
])
def test_caption_rules(lab, caption, expected):
    assert lab.label(caption) == expected


def test_tags_are_what_listing_1_maps_as_hashtags(lab, canon):
    """A caption phrase and the hashtag of the same concept are one canonical hashtag."""
    for caption, hashtag in [("golden retrievers", "goldenretriever"), ("a hot dog", "hotdog"),
                             ("ice cream", "icecream"), ("geese", "goose"), ("new t-shirts", "t-shirt")]:
        (tag,) = lab.label(caption)
        assert canon.synsets(tag) and canon.synsets(tag) == canon.synsets(hashtag), (caption, tag)
    (tag,) = lab.label("chocolate chip cookie")  # out of Listing 1's reach as a hashtag ...
    assert not canon.synsets("chocolatechipcookie")
    assert canon.synsets(tag) == {"chocolate_chip_cookie.n.01"}  # ... its own synset as a phrase


def test_configuration(canon):
    keep_all = CaptionLabeller(CaptionConfig(CFG.allowed_senses, stop=()), canon)
    assert keep_all.label("a photo of a cat") == ["photo", "cat"]
    one_word = CaptionLabeller(CaptionConfig(CFG.allowed_senses, max_words=1), canon)
    assert one_word.label("golden retriever") == ["retriever"]  # 'golden' is no noun of an allowed sense
    no_fw = CaptionLabeller(CaptionConfig(CFG.allowed_senses, function_words=False), canon)
    assert "can" in no_fw.label("a can of beans")
    extra = CaptionConfig.of(type("S", (), {"stop": None, "stop_extra": ["White", "golden retriever"],
                                            "max_words": 3, "function_words": True})(), ALLOWED_SENSES, 3)
    assert "white" in extra.stop and "golden_retriever" in extra.stop and "photo" in extra.stop
    assert CaptionLabeller(extra, canon).label("a white golden retriever and a cat") == ["cat"]
    for cfg in (CFG, extra, CaptionConfig(CFG.allowed_senses, max_words=2, stop=(), function_words=False)):
        assert CaptionConfig.from_dict(cfg.as_dict(), ALLOWED_SENSES, 3) == cfg  # as vocab.json records it


def test_stats_say_what_was_kept_and_dropped(lab):
    st = CaptionStats()
    for c in ("a photo of a cat", "photos of cats and dogs", "nothing here at all"):
        lab.label(c, st)
    r = st.report()
    assert (r["captions"], r["labelled"], r["labels"]) == (3, 2, 3)
    assert r["top_kept"][0] == ("cat", 2) and ("photo", 2) in r["top_dropped"]
    assert (st + st).kept["cat"] == 4


def test_read_rules_for_tags():
    """Rules from running the real img2dataset: a declared separator; '#a#b' is two hashtags."""
    assert split_tags("dog|golden retriever| beagle", "|") == ["dog", "golden retriever", "beagle"]
    assert split_tags("dog,cat") == ["dog", "cat"] and split_tags("#dog #cat") == ["#dog", "#cat"]
    assert hashtags_in("sunny #dog#beagle #cat &#39;x#y") == ["dog", "beagle", "cat"]
    spec = ReadSpec("jsonl", tags_sep=";")
    post = make_post("1", "dog; new york;;beagle", None, None, ReadStats(), spec)
    assert post.tags == ["dog", "newyork", "beagle"]


def test_labels_modes_in_one_post(canon):
    st = ReadStats()
    both = ReadSpec("jsonl", labels="both", captions=CFG)
    cap = ReadSpec("jsonl", labels="caption", captions=CFG)
    args = ("1", ["#cookie"], "a beagle with a ball", None)
    assert make_post(*args, st, both).tags == ["cookie", "beagle", "ball"]
    assert make_post(*args, st, cap).tags == ["beagle", "ball"]  # the hashtags field is not read
    assert make_post(*args, st, ReadSpec("jsonl")).tags == ["cookie"]
    assert make_post("2", None, "a photo", None, st, cap) is None and st.no_tags == 1
    assert st.caption.captions == 3


# -- real English written by others ----------------------------------------------------------------
@dataclass
class Gloss:
    name: str          # the synset's name, as nltk names it
    lemmas: list       # its lemmas, lower-cased
    definition: str
    examples: list


@pytest.fixture(scope="module")
def allowed(wn, canon):
    """The noun synsets of the allowed senses (~32k), read from WordNet's data.noun directly:
    nltk's Synset objects take ~50 s to make for all of them (the definition and the usage
    examples are the gloss after '|': 'definition; "example"; "example"')."""
    names = canon.morphology.names  # {(pos, offset): name} of the allowed synsets
    out = []
    with open(wn.abspath("data.noun").path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(" "):
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            name = names.get(("n", int(fields[0])))
            if name is None:
                continue
            n = int(fields[3], 16)
            lemmas = [re.sub(r"\(.*\)$", "", w).lower() for w in fields[4:4 + 2 * n:2]]
            examples = re.findall(r'"([^"]+)"', gloss)
            definition = gloss.split('"')[0].strip().rstrip(";").strip()
            out.append(Gloss(name, lemmas, definition, examples))
    return out


@pytest.fixture(scope="module")
def examples(allowed):
    """(synset, lemma, example) where a lemma of the synset stands as words in the example."""
    out = []
    for s in allowed:
        for ex in s.examples:
            low = " " + re.sub(r"[^\w'-]+", " ", ex.lower()) + " "
            for lemma in s.lemmas:
                if f" {lemma.replace('_', ' ')} " in low:
                    out.append((s, lemma, ex))
                    break
    return out


def test_wordnet_usage_examples_recall(lab, canon, examples):
    """A synset's lemma in its own usage example is found: measured recall with a margin. The
    lemmas that are meant to be dropped (the medium, function words, too short for Listing 1)
    are counted apart, and must be dropped."""
    found = meant_dropped = dropped_ok = 0
    misses = []
    for s, lemma, ex in examples:
        stop = lemma in CFG.stop or lemma in FUNCTION_WORDS or len(lemma.replace("_", "")) < 3
        st = CaptionStats()
        tags = lab.label(ex, st)
        hit = any(s.name in canon.synsets(t) for t in tags)
        if stop:  # never kept as itself (a longer lemma holding it may be: 'background signal')
            meant_dropped += 1
            dropped_ok += lemma not in st.kept
        elif hit:
            found += 1
        else:
            misses.append((lemma, ex))
    n = len(examples) - meant_dropped
    recall = found / n
    print(f"\nWordNet usage examples: {len(examples)} with the lemma in them, recall {recall:.3f} "
          f"({found}/{n}); meant dropped {meant_dropped}; misses e.g. {misses[:5]}")
    assert n > 1000
    assert recall > 0.85
    assert dropped_ok == meant_dropped


def test_wordnet_glosses_hold_the_rules(lab, canon, allowed):
    """Glosses as captions (punctuation, parentheses, semicolons, quotes, hyphens): every raw tag
    is one Listing 1 maps, none is a medium word or a function word, none holds punctuation; most
    glosses of concrete things name some other concrete thing."""
    synsets = allowed[::7]
    st = CaptionStats()
    for s in synsets:
        for t in lab.label(s.definition, st):
            assert canon.synsets(t), t
            assert re.fullmatch(r"[^\W_]+(?:[-'_][^\W_]+)*", t), t
            assert t not in FUNCTION_WORDS and t not in MEDIUM_WORDS, t
    r = st.report()
    print(f"\nglosses: {r['captions']} read, {r['labelled_share']:.1%} yielded labels, "
          f"{r['mean_labels']} per gloss; kept most {r['top_kept'][:8]}; dropped {r['top_dropped'][:5]}")
    assert r["captions"] == len(synsets) and r["labelled_share"] > 0.6
    assert not set(dict(r["top_kept"])) & set(MEDIUM_WORDS)


def test_stop_list_effect_on_glosses(canon, allowed):
    """The medium stop list removes what glosses say of pictures ('a photograph of ...')."""
    glosses = [s.definition for s in allowed]
    with_stop, without = CaptionStats(), CaptionStats()
    a, b = CaptionLabeller(CFG, canon), CaptionLabeller(CaptionConfig(CFG.allowed_senses, stop=()), canon)
    for g in glosses:
        a.label(g, with_stop)
        b.label(g, without)
    medium = {w for w in without.kept if w in CFG.stop}
    assert medium and not medium & set(with_stop.kept)
    removed = without.labels - with_stop.labels
    print(f"\nstop list on {len(glosses)} glosses: {removed} labels ({removed / without.labels:.2%}) removed, "
          f"{without.labelled - with_stop.labelled} glosses left without one; most: {with_stop.dropped.most_common(6)}")
    assert 0 < removed < 0.02 * without.labels  # glosses seldom speak of the medium


def test_vocab_from_captions_cli(cli, tmp_path):
    """`swag vocab build --labels caption`: hashtags and caption phrases of one concept merge;
    the report says what the captions yielded."""
    posts = [{"id": 1, "caption": "A photo of two golden retrievers"},
             {"id": 2, "hashtags": ["#goldenretriever"], "caption": "my dog"},
             {"id": 3, "caption": "golden retriever puppy, stock image"},
             {"id": 4, "caption": "nothing to see"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(p) + "\n" for p in posts))
    res = cli("vocab", "build", tmp_path / "d.jsonl", "-o", tmp_path / "v", "--labels", "both",
              "--min-count", "1", "--head-min-images", "2")
    assert res.code == 0, res
    doc = json.loads((tmp_path / "v" / "vocab.json").read_text())
    gr = next(h for h in doc["hashtags"] if h["synsets"] == ["golden_retriever.n.01"])
    assert gr["count"] == 3 and set(gr["tags"]) == {"goldenretriever", "goldenretrievers"}
    assert doc["sources"]["labels"] == "both" and doc["stats"]["caption"]["captions"] == 4
    assert doc["stats"]["caption"]["labelled"] == 3 and ["photo", 1] in doc["stats"]["caption"]["top_dropped"]
    assert "Captions -> noun phrases" in res.out and "dropped most (stop list): photo 1" in res.out
    bad = cli("vocab", "build", tmp_path / "d.jsonl", "-o", tmp_path / "w", "--labels", "nouns")
    assert bad.code == 2 and "labels" in bad.err


def test_every_layout_reads_its_captions(cli, layouts, tmp_path):
    """YFCC100M's title + description give the same phrases as the JSONL captions of the same
    posts, img2dataset's captions (which also hold every post's #tags, read as words) nearly the
    same; the report counts them per format."""
    root, _ = layouts
    docs = {}
    for name, src in (("jsonl", root / "dumps"), ("yfcc", root / "yfcc"), ("i2d", root / "img2dataset")):
        res = cli("vocab", "build", src, "-o", tmp_path / name, "--labels", "caption", "--min-count", "1")
        assert res.code == 0, res
        docs[name] = json.loads((tmp_path / name / "vocab.json").read_text())
    keys = {n: {h["key"] for h in d["hashtags"]} for n, d in docs.items()}
    assert keys["jsonl"] == keys["yfcc"] and len(keys["jsonl"]) > 20
    assert len(keys["i2d"] & keys["jsonl"]) > 0.8 * len(keys["jsonl"])
    for n, d in docs.items():
        (fmt,) = d["stats"]["by_format"]
        assert d["stats"]["by_format"][fmt]["caption"]["captions"] == d["stats"]["caption"]["captions"] > 0


def test_hostile_captions(cli, lab, tmp_path):
    """No caption, captions that are not strings, a megabyte caption, control characters and
    emoji: skipped and counted, or labelled in linear time; a source without captions is one line."""
    tsv = tmp_path / "d.tsv"
    tsv.write_text("1\t#dog #cat\n2\t#beagle\n")
    res = cli("vocab", "build", tsv, "-o", tmp_path / "v", "--labels", "caption")
    assert res.code == 2 and "no post has a caption" in res.err.strip().splitlines()[-1]
    assert not (tmp_path / "v").exists()
    rows = [{"id": 1, "caption": 123}, {"id": 2, "caption": ["a dog"]}, {"id": 3, "caption": None},
            {"id": 4, "caption": "\x00dog\u200b \U0001F436 beagle\x1b[31m cat"}, {"id": 5, "caption": "a photo"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = cli("vocab", "build", tmp_path / "d.jsonl", "-o", tmp_path / "w", "--labels", "caption", "--min-count", "1")
    assert res.code == 0, res
    doc = json.loads((tmp_path / "w" / "vocab.json").read_text())
    assert doc["stats"]["no_tags"] == 4 and doc["stats"]["caption"]["captions"] == 2
    assert {h["name"] for h in doc["hashtags"]} == {"dog", "beagle", "cat"}
    big = "a golden retriever and a beagle near the lake " * 25000  # 1.2 MB
    assert lab.label(big) == ["goldenretriever", "beagle", "lake"]
    only_stop = tmp_path / "s.jsonl"
    only_stop.write_text(json.dumps({"id": 1, "caption": "stock photo"}) + "\n")
    res = cli("vocab", "build", only_stop, "-o", tmp_path / "x", "--labels", "caption")
    assert res.code == 2 and "none of 1 captions names a WordNet noun" in res.err
