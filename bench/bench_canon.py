"""Benchmark: Listing 1 (SWAG paper, Appendix A) against ``swagcli.prep.canon.Canonicalizer``.

    .venv/bin/python bench/bench_canon.py [--tags N] [--seed S]

The tag mix (N distinct, normalized hashtag candidates, deterministic for a given seed) mimics the
distinct hashtags of a social network, most of which are not WordNet nouns (the paper keeps ~75k
raw tags out of all hashtags used more than once). Shares of N:

WordNet-derived, 12% in all:
  lemma      4%   noun lemmas written as hashtags: '_', '-', ' ' and '.' removed ('brownbear',
                  'eggplant', 'ursusarctos'), lower-cased
  plural     3%   plurals of noun lemmas: +s / +es / y->ies, and the irregular ones of noun.exc
                  ('geese', 'mice', 'aardwolves')
  inflected  2%   verb and adjective lemmas, inflected ('running', 'baked', 'tastiest')
  compound   3%   two noun lemmas concatenated ('dogpark', 'beachhouse', 'catlover')
Junk, 88% in all:
  words     40%   1-3 common social-media words concatenated ('sunsetlover', 'loveit',
                  'photooftheday', 'beachday', 'love')
  digits    15%   words with digits ('nyc2019', 'summer2020', 'love4ever', '2019', 'cat22')
  random    18%   random letter strings of 4-16 letters, a few with digits
  names     11%   person and brand-like names ('johnsmith', 'mariagarcia', 'annaphotography')
  other      4%   tags of length 1-3, digits only, non-Latin scripts and emoji, tags with '_' or '-'

What is measured, in one run, each side on its own fresh WordNet reader (so that neither side
benefits from the other's nltk caches):
  * Listing 1 (``tests/listing1.py``), tag by tag, per-tag times summed per category;
  * the Canonicalizer: its construction (init, reported separately), one bulk
    ``canonicalize(tags)`` (the headline numbers), and per category (one bulk call per category
    on the same instance, best of 3: a lookup table has no state to warm up, and calls of a few
    milliseconds are otherwise mostly scheduler noise);
  * the per-tag API ``Canonicalizer.synsets(tag)`` over all tags.
The outputs must be identical (as sets of synset names), or the script exits with status 1.

The Canonicalizer keeps its answer table in a disk cache (``$SWAG_CACHE``/``~/.cache/swag``,
``canon/``); ``--cache cold`` measures a build from the WordNet files (the cache is not read),
``--cache warm`` (default) whatever the cache holds (it is written if missing, so the second run
is warm). Reader construction (nltk's, the same for both) is reported separately.
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swagcli.wordnet import find_wordnet_root  # noqa: E402

MIX = [  # (category, share of N)
    ("lemma", 0.04),
    ("plural", 0.03),
    ("inflected", 0.02),
    ("compound", 0.03),
    ("words", 0.40),
    ("digits", 0.15),
    ("random", 0.18),
    ("names", 0.11),
    ("other", 0.04),
]
WORDNET_CATEGORIES = ("lemma", "plural", "inflected", "compound")

COMMON = """
love instagood photooftheday fashion beautiful happy cute tbt like follow me selfie summer art
instadaily friends repost nature girl fun style smile food instalike family travel fitness igers
nofilter life beauty amazing instagram photography photo vsco sun music beach bestoftheday sky
dog cat sunset night party pretty swag model hair girls baby wedding makeup cool lol yummy
christmas holiday winter spring autumn fall rain snow coffee tea cake pizza burger sushi
breakfast lunch dinner healthy vegan gym workout run running yoga motivation inspiration quote
quotes goals blessed mood vibes weekend friday monday sunday today tonight throwback memories
home house city street urban architecture landscape mountain mountains lake river ocean sea
flowers flower tree trees garden park forest hike hiking adventure explore wanderlust trip
vacation roadtrip car cars bike moto football soccer basketball baseball game gaming gamer
nba nfl team win champion sport sports boy boys man men woman women kids kid mom dad mother
father sister brother bff bestfriend couple wife husband birthday bday anniversary newyear
halloween easter valentine nyc la london paris tokyo berlin rome miami usa uk india brazil
mexico italy france spain japan canada australia dubai hot cold red blue green black white
pink gold silver black white new old best good great big little small top super mega ultra
my our your his her the a an of in on at to for with and or is it this that day days time
life lover lovers addict addiction squad gang crew club lovers vibes style goals diaries
daily weekly post pic pics picture pictures shot shots edit edits art artist artwork design
designer drawing painting sketch tattoo tattoos ink nails lashes lips skin skincare outfit ootd
shoes dress jeans shirt bag watch jewelry ring rings earrings luxury shopping sale shop store
business entrepreneur success money rich hustle work office job boss life official page fan
fans fanpage account world global local insta gram tag tags likes follower followers foryou
fyp viral trending trend tiktok youtube youtuber blogger blog vlog podcast live stream
""".split()

FIRST = """
john james robert michael william david richard joseph thomas charles mary patricia jennifer
linda elizabeth barbara susan jessica sarah karen maria anna sofia lucas liam noah emma olivia
ava mia isabella mohammed ali ahmed fatima aisha wei li chen yuki hiro raj priya arjun carlos
juan jose luis ana pedro pablo diego sergio marco luca giulia francesca hans klaus ingrid olga
ivan dmitri natasha kevin brian jason justin taylor jordan chris alex sam max leo jack harry
george oliver charlie amelia grace lily chloe ella zoe nina sara lisa kim jenny tom ben dan
""".split()
LAST = """
smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez
gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white harris
sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen hill
flores green adams nelson baker hall rivera campbell mitchell carter roberts kumar singh patel
sharma khan wang zhang liu muller schmidt schneider fischer weber rossi russo ferrari esposito
silva santos oliveira costa dubois moreau laurent petrov ivanov tanaka suzuki sato kim park
""".split()
NAME_SUFFIX = """
photography official music art design studio fitness style makeup films tv fc band
designs creations bakery kitchen home shop store boutique salon beauty tattoo travels world
""".split()

NON_LATIN = [
    "東京", "ラーメン", "猫", "사랑", "서울", "любовь", "москва", "привет", "καλημέρα", "αθήνα",
    "حب", "مصر", "שלום", "नमस्ते", "भारत", "ประเทศไทย", "café", "españa", "zürich", "smørrebrød",
    "😍", "❤️", "🔥", "🌅", "🐶", "🍕", "☕", "✨", "🎉", "😂",
]


def _index_words(root: Path, fileid: str) -> list:
    """Lemmas of a WordNet index file, read directly (no nltk reader involved)."""
    words = []
    with open(root / fileid, encoding="utf8") as fp:
        for line in fp:
            if not line.startswith(" "):
                words.append(line.split(" ", 1)[0])
    return words


def _exc_pairs(root: Path, fileid: str) -> list:
    with open(root / fileid, encoding="utf8") as fp:
        return [tuple(line.split()[:2]) for line in fp if line.strip()]


def _as_tag(lemma: str) -> str:
    return "".join(ch for ch in lemma.lower() if ch not in "_- .")


def _plural(word: str, rng: random.Random) -> str:
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("man") and rng.random() < 0.5:
        return word[:-3] + "men"
    return word + "s"


def _inflect_verb(word: str, rng: random.Random) -> str:
    form = rng.choice(("ing", "ed", "s", "es", "ing"))
    if form in ("ing", "ed") and word.endswith("e"):
        return word[:-1] + form
    return word + form


def _inflect_adj(word: str, rng: random.Random) -> str:
    form = rng.choice(("er", "est", ""))
    if form and word.endswith("e"):
        return word + form[1:]
    if form and word.endswith("y"):
        return word[:-1] + "i" + form
    return word + form


def build_mix(n: int, seed: int = 0, root: Path | None = None) -> list:
    """[(tag, category)], n distinct tags, shuffled; deterministic for (n, seed, WordNet)."""
    if root is None:
        root = Path(str(find_wordnet_root()[0]))
    rng = random.Random(seed)
    nouns = sorted(set(_index_words(root, "index.noun")))
    verbs = [w for w in sorted(set(_index_words(root, "index.verb"))) if "_" not in w]
    adjs = [w for w in sorted(set(_index_words(root, "index.adj"))) if "_" not in w]
    simple_nouns = [w for w in nouns if "_" not in w and "-" not in w and w.isalpha()]
    short_nouns = [w for w in simple_nouns if len(w) <= 7]
    noun_exc = sorted(_exc_pairs(root, "noun.exc"))
    letters = string.ascii_lowercase

    def common_words(k):
        return "".join(rng.choice(COMMON) for _ in range(k))

    gens = {
        "lemma": lambda: _as_tag(rng.choice(nouns)),
        "plural": lambda: (_as_tag(rng.choice(noun_exc)[0]) if rng.random() < 0.15
                           else _as_tag(_plural(rng.choice(nouns), rng))),
        "inflected": lambda: (_inflect_verb(rng.choice(verbs), rng) if rng.random() < 0.6
                              else _inflect_adj(rng.choice(adjs), rng)),
        "compound": lambda: rng.choice(short_nouns) + rng.choice(
            short_nouns + ["lover", "life", "love", "day", "time", "shop", "art"]),
        "words": lambda: common_words(rng.choices((1, 2, 3), (1, 6, 3))[0]),
        "digits": lambda: rng.choice((
            lambda: common_words(rng.choice((1, 1, 2))) + str(rng.choice((
                rng.randrange(10), rng.randrange(100), rng.randrange(1990, 2030)))),
            lambda: (common_words(1) + rng.choice(("4", "2", "4ever", "4life", "2day", "247"))
                     + common_words(1)),
            lambda: str(rng.randrange(10 ** rng.randrange(1, 9))),
            lambda: str(rng.randrange(1990, 2030)) + common_words(1),
        ))(),
        "random": lambda: "".join(rng.choice(letters if rng.random() < 0.97 else "0123456789")
                                  for _ in range(rng.randrange(4, 17))),
        "names": lambda: rng.choice((
            lambda: rng.choice(FIRST) + rng.choice(LAST),
            lambda: rng.choice(FIRST) + rng.choice(NAME_SUFFIX).rstrip("_"),
            lambda: rng.choice(FIRST) + rng.choice(LAST) + rng.choice(NAME_SUFFIX).rstrip("_"),
            lambda: rng.choice(LAST) + rng.choice(NAME_SUFFIX).rstrip("_"),
            lambda: rng.choice(FIRST) + "_" + rng.choice(LAST),
        ))(),
        "other": lambda: rng.choice((
            lambda: "".join(rng.choice(letters) for _ in range(rng.randrange(1, 4))),
            lambda: "".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 12))),
            lambda: rng.choice(NON_LATIN) + rng.choice(("", rng.choice(NON_LATIN), common_words(1),
                                                         str(rng.randrange(100)))),
            lambda: common_words(1) + rng.choice("_-") + common_words(1),
            lambda: rng.choice(nouns),  # raw lemma, '_' and '-' kept
        ))(),
    }
    seen: set = set()
    out = []
    for cat, share in MIX:
        want = round(n * share)
        got = 0
        tries = 0
        while got < want:
            tries += 1
            if tries > 100 * want + 1000:
                raise RuntimeError(f"cannot make {want} distinct {cat!r} tags")
            t = gens[cat]()
            if t in seen:
                continue
            seen.add(t)
            out.append((t, cat))
            got += 1
    # top up rounding losses with random strings
    while len(out) < n:
        t = "".join(rng.choice(letters) for _ in range(rng.randrange(5, 15)))
        if t not in seen:
            seen.add(t)
            out.append((t, "random"))
    rng.shuffle(out)
    return out[:n]


def fresh_reader():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root, _ = find_wordnet_root()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(str(root), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", type=int, default=100_000, help="number of distinct tags")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm",
                    help="cold: build the Canonicalizer's table from WordNet (cache not read)")
    args = ap.parse_args(argv)

    from swagcli.prep.canon import Canonicalizer
    from tests.listing1 import ALLOWED_SENSES, get_synsets

    pc = time.perf_counter
    t0 = pc()
    items = build_mix(args.tags, args.seed)
    tags = [t for t, _ in items]
    cats = [c for c, _ in MIX]
    by_cat = {c: [t for t, k in items if k == c] for c in cats}
    print(f"mix: {len(tags)} distinct tags in {pc() - t0:.1f}s: "
          + ", ".join(f"{c} {len(by_cat[c])}" for c in cats))

    # -- Listing 1 on its own reader --------------------------------------------------------
    t0 = pc()
    wn1 = fresh_reader()
    reader1_s = pc() - t0
    ref = {}
    l1_cat = dict.fromkeys(cats, 0.0)
    l1_total = 0.0
    for t, c in items:
        a = pc()
        s = get_synsets(wn1, t, ALLOWED_SENSES)
        dt = pc() - a
        l1_cat[c] += dt
        l1_total += dt
        if s:
            ref[t] = frozenset(x.name() for x in s)
    del wn1

    # -- the Canonicalizer on its own reader ------------------------------------------------
    t0 = pc()
    wn2 = fresh_reader()
    reader2_s = pc() - t0
    use_cache = args.cache == "warm"
    t0 = pc()
    canon = Canonicalizer(wn=wn2, cache=use_cache)
    init_s = pc() - t0
    t0 = pc()
    fast = canon.canonicalize(tags)
    bulk_s = pc() - t0

    fast_cat = dict.fromkeys(cats, float("inf"))
    fast_by_cat = {}
    for _ in range(3):  # best of 3: single calls of a few ms are at the mercy of the scheduler
        for c in cats:
            a = pc()
            fast_by_cat[c] = canon.canonicalize(by_cat[c])
            fast_cat[c] = min(fast_cat[c], pc() - a)

    canon2 = Canonicalizer(wn=wn2, cache=use_cache)
    t0 = pc()
    per_tag = {}
    for t in tags:
        s = canon2.synsets(t)
        if s:
            per_tag[t] = s
    per_tag_s = pc() - t0

    # -- identical? -------------------------------------------------------------------------
    bad = []
    merged = {k: v for d in fast_by_cat.values() for k, v in d.items()}
    for name, got in (("canonicalize", fast), ("canonicalize per category", merged),
                      ("synsets", per_tag)):
        if got != ref:
            diff = sorted(set(got.items()) ^ set(ref.items()))[:10]
            bad.append(f"{name} differs from Listing 1 on {len(set(got) ^ set(ref))} tags"
                       f" or their sets, e.g. {diff}")

    # -- report -----------------------------------------------------------------------------
    n = len(tags)
    print(f"readers (nltk WordNetCorpusReader, built twice): {reader1_s:.2f}s, {reader2_s:.2f}s")
    print(f"tags with a non-empty synset set: {len(ref)} ({100 * len(ref) / n:.1f}%)")
    print(f"Canonicalizer init ({'cache allowed' if use_cache else 'cold, no cache'}): "
          f"{init_s:.3f}s; source: {canon.source}")
    print()
    print(f"{'category':<11}{'tags':>8}{'hits':>7}{'listing1 us/tag':>17}{'swag us/tag':>13}"
          f"{'ratio':>9}")
    for c in cats:
        k = len(by_cat[c])
        hits = sum(1 for t in by_cat[c] if t in ref)
        a, b = l1_cat[c] / k * 1e6, fast_cat[c] / k * 1e6
        print(f"{c:<11}{k:>8}{hits:>7}{a:>17.2f}{b:>13.3f}{a / b:>9.0f}")
    wn_k = sum(len(by_cat[c]) for c in WORDNET_CATEGORIES)
    for label, group in (("wordnet", WORDNET_CATEGORIES),
                         ("junk", tuple(c for c in cats if c not in WORDNET_CATEGORIES))):
        k = sum(len(by_cat[c]) for c in group)
        a = sum(l1_cat[c] for c in group) / k * 1e6
        b = sum(fast_cat[c] for c in group) / k * 1e6
        print(f"{label:<11}{k:>8}{'':>7}{a:>17.2f}{b:>13.3f}{a / b:>9.0f}")
    print(f"({wn_k} of {n} tags are WordNet-derived)")
    print()
    l1_rate = n / l1_total
    print(f"listing1:              {l1_total:8.3f}s  {l1_rate:12,.0f} tags/s")
    print(f"swag canonicalize:     {bulk_s:8.3f}s  {n / bulk_s:12,.0f} tags/s"
          f"  ratio {l1_total / bulk_s:7.1f}")
    print(f"swag init+canonicalize:{init_s + bulk_s:8.3f}s  {n / (init_s + bulk_s):12,.0f} tags/s"
          f"  ratio {l1_total / (init_s + bulk_s):7.1f}")
    print(f"swag synsets per tag:  {per_tag_s:8.3f}s  {n / per_tag_s:12,.0f} tags/s"
          f"  ratio {l1_total / per_tag_s:7.1f}")
    print()
    print(f"canon: {n} tags, listing1 {l1_rate:,.0f} tags/s, swag {n / bulk_s:,.0f} tags/s, "
          f"ratio {l1_total / bulk_s:.1f} (incl. init {l1_total / (init_s + bulk_s):.1f})")
    if bad:
        for b in bad:
            print("MISMATCH:", b, file=sys.stderr)
        return 1
    print("outputs identical: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
