"""Captions of the synthetic world's posts (`swag synth`): a plain English sentence per post naming
the concepts its image shows by their WordNet lemmas, for testing labels taken from caption noun
phrases (SPEC.md §8) against a known ground truth.

* :func:`caption_names` (world build, WordNet at hand): the lemmas a concept is named by in
  captions, with weights, a plural where English and nltk's ``morphy`` agree on one, and the
  context words never put next to it (where the pair would start or end a longer WordNet noun
  lemma: ``hot`` before ``dog``, ``and`` before ``chips`` after ``fish``), recorded in world.json.
* :func:`sentence` (file writing, no WordNet): one caption from the post's own stream
  (:data:`STREAM`), never from the stream its hashtags are drawn from, so a world's hashtag side
  is the same with or without captions.

Every word a caption holds besides the concepts' names is either a *distractor* (adjectives, verbs,
prepositions, nouns of other lexnames: 'day', 'friends', 'sunshine', 'weekend'; none is a WordNet
noun of an allowed lexname), a *medium word* (photo, picture, ... : a caption labeller's stop list
drops them) or one of :data:`FUNCTION_WORDS` ('two' is WordNet's deuce, a playing card). No caption
holds a '#' (a caption-only post's #tags follow the sentence).
"""

from __future__ import annotations

import re

STREAM = 9                  # rng_for(seed, STREAM, shard): the captions of one dump shard
NAME_PROB = 0.9             # a shown concept is named in its post's caption
MAIN_LEMMA_PROB = 0.75      # named by its main lemma (else another lemma of its synset, where it has one)
PLURAL_PROB = 0.25          # in the plural (where it has one)
MEDIUM_PROB = 0.5           # "a photo of", "stock image:", ...
ADJECTIVE_PROB = 0.35       # "a cute dog"
PARTICIPLE_PROB = 0.2       # "a dog sleeping"
TAIL_PROB = 0.5             # "in the sunshine", "this weekend"
POSSESSIVE_PROB = 0.12      # "my sister's dog", "my dog's big day"
ENTITY_PROB = 0.08          # an HTML entity (&amp; between two names, &quot; around the filler phrase)
URL_PROB = 0.05             # a short link after the sentence
TITLE_NAME_PROB = 0.08      # a name in title case ("Golden Retriever")

# The post's filler phrase (drawn with its hashtags, swagcli.prep.synth_render.CAPTIONS) opens or
# closes the sentence this often; otherwise it is left out.
PHRASE_AT_START, PHRASE_AT_END = 0.35, 0.2
# Case of the whole caption.
CASES = (("sentence", 0.79), ("lower", 0.12), ("upper", 0.03), ("title", 0.06))

MEDIUM = ("a photo of", "photo of", "picture of", "a picture of", "stock image:", "stock photo:",
          "an illustration of", "close-up photograph of", "vector background with", "image of",
          "photograph of", "illustration:")
# the words of MEDIUM that are WordNet nouns of an allowed lexname, or would be once joined
# (close-up -> closeup): a caption labeller's stop list must hold them
MEDIUM_WORDS = ("photo", "picture", "image", "stock", "illustration", "photograph", "close-up",
                "closeup", "vector", "background")
# words of captions that WordNet reads as allowed nouns but English does not: 'two' (deuce.n.04)
FUNCTION_WORDS = ("two",)

SINGULAR_DETS = (("a", 0.6), ("the", 0.15), ("my", 0.15), ("this", 0.1))
PLURAL_DETS = (("two", 0.35), ("some", 0.25), ("my", 0.1), ("these", 0.1), ("", 0.2))
OWNERS = ("my sister's", "my friend's", "grandma's", "dad's", "my brother's")
OWNED = ("big day", "day out", "lazy afternoon", "new friends")  # "my dog's big day"
ADJECTIVES = {
    "noun.animal": ("cute", "sleepy", "fluffy", "lazy", "curious", "hungry", "adorable", "wild",
                    "proud", "happy", "little", "beautiful", "tiny"),
    "noun.food": ("tasty", "yummy", "homemade", "fresh", "perfect", "warm", "cold", "hot"),
    "noun.plant": ("beautiful", "lovely", "wild", "tiny", "tall", "fresh", "colourful", "blooming"),
    "noun.artifact": ("new", "old", "shiny", "favourite", "beautiful", "little", "big", "tiny",
                      "colourful", "rare", "huge", "small"),
    "noun.object": ("beautiful", "stunning", "peaceful", "quiet", "huge", "bright", "dark", "lonely"),
    "noun.event": ("amazing", "big", "huge", "wonderful", "incredible"),
}
PARTICIPLES = {"noun.animal": ("sleeping", "playing", "posing", "resting", "waiting", "relaxing",
                               "sitting"),
               "": ("spotted", "found", "captured")}
TAILS = ("in the evening", "at night", "on a sunny day", "this weekend", "with friends",
         "after the rain", "in the sunshine", "in winter", "today", "on saturday",
         "yesterday afternoon", "with my family", "on holiday", "on vacation", "at noon",
         "in the rain", "all day")
CONNECTORS = ((" and ", 0.6), (" with ", 0.25), (" next to ", 0.15))
ENDINGS = ((".", 0.35), ("!", 0.25), ("", 0.2), ("!!", 0.05), ("...", 0.1), (" :)", 0.05))
NO_NAME = ("what a weekend", "lazy afternoon with friends", "sunshine all day",
           "best day ever", "out and about")  # a caption that names nothing
FILLER_PHRASES = ("what a day", "look at this", "weekend mood", "so happy now", "new in",
                  "cannot get enough", "remember this day", "guess what", "best one yet", "today")

# Zero plurals: the plural is the singular ("two deer"); compounds in -craft and -fish too.
_SAME_PLURAL = {"deer", "sheep", "moose", "bison", "salmon", "trout", "cod", "swine", "elk",
                "fish", "series", "species", "offspring", "squid", "shrimp", "grouse", "carp"}
# Where WordNet's exception list has only a learned plural and English mostly says the regular one.
_REGULAR = {"iris": "irises", "cicada": "cicadas", "cicala": "cicalas", "octopus": "octopuses",
            "bus": "buses", "hippopotamus": "hippopotamuses", "platypus": "platypuses",
            "rhinoceros": "rhinoceroses", "virus": "viruses", "bonus": "bonuses"}
_ENTITY = re.compile(r"&[a-z]+;|https?://\S+")

# Context words: every word that may stand right before a name (LEFT) or right after it (RIGHT),
# with the tokens a possessive or an entity may leave ('s', 'amp').
LEFT = ({d for d, _ in SINGULAR_DETS + PLURAL_DETS if d} | {w for a in ADJECTIVES.values() for w in a}
        | {w for o in OWNERS for w in re.findall(r"[a-z]+", o)}
        | {m.split()[-1].rstrip(":") for m in MEDIUM} | {"and", "with", "to", "amp", "quot"}
        | {p.split()[-1] for p in FILLER_PHRASES})
RIGHT = ({t.split()[0] for t in TAILS} | {w for p in PARTICIPLES.values() for w in p}
         | {"and", "with", "next", "s", "amp", "quot", "https", "http"}
         | {p.split()[0] for p in FILLER_PHRASES})


# -- ground truth (world build) -------------------------------------------------------------------
def _article(word: str) -> str:
    w = word.lower()
    if w.startswith(("hour", "honest", "heir")):
        return "an"
    if w[:1] in "aeiou" and not w.startswith(("uni", "use", "usu", "uti", "eu", "ewe", "one", "ure", "ura")):
        return "an"
    return "a"


def plural(lemma: str, wn) -> str | None:
    """A correct English plural of a noun lemma (``golden_retriever`` -> ``golden retrievers``,
    spaced) that nltk's ``morphy`` maps back to the lemma, or None (then captions use the
    singular): WordNet's exception list first (mice, geese, cacti), zero plurals, -man -> -men
    where the rest is a word (snowmen, not ottomen), pluralia tantum left alone."""
    words = lemma.split("_")
    last = words[-1]
    irregular = _inverse_exceptions(wn).get(last)
    if last in _REGULAR:
        form = _REGULAR[last]
    elif last in _SAME_PLURAL or last.endswith(("craft", "fish")):
        form = last
    elif irregular:
        form = sorted(irregular, key=lambda f: (f.endswith("s"), f))[0]  # cacti before cactuses
    elif last.endswith("s") and not last.endswith(("ss", "us", "is", "as")):
        return None  # jeans, trousers, scissors: already plural, or no plural in -s
    elif last.endswith("man") and len(last) > 5 and wn.lemmas(last[:-3], "n"):
        form = last[:-3] + "men"  # snowman, fireman
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        form = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        form = last[:-1] + "ies"
    else:
        form = last + "s"
    joined = "_".join(words[:-1] + [form])
    return joined.replace("_", " ") if wn.morphy(joined, "n") == lemma else None


_INVERSE: dict = {}


def _inverse_exceptions(wn) -> dict:
    """{noun lemma: [its irregular plurals]} from WordNet's noun.exc."""
    if not _INVERSE:
        for form, bases in wn._exception_map["n"].items():
            for base in bases:
                if base != form:
                    _INVERSE.setdefault(base, []).append(form)
    return _INVERSE


_BIGRAMS: set = set()


def lemma_bigrams(wn) -> set:
    """Every pair of adjacent words in a WordNet noun lemma (split at '_' and '-')."""
    if not _BIGRAMS:
        for name in wn.all_lemma_names("n"):
            words = re.split(r"[_-]", name)
            _BIGRAMS.update(zip(words, words[1:]))
    return _BIGRAMS


def _bases(word: str, wn) -> set:
    return {word, *wn._morphy(word, "n")}


def _binomial(lemma: str, wn) -> bool:
    """A Latin name (``Panthera_tigris``: a genus, then a lower-case word): no caption says it."""
    words = lemma.split("_")
    return (len(words) == 2 and words[0][:1].isupper() and words[1].islower()
            and any("genus" in h.name() for s in wn.synsets(words[0], "n")
                    for h in s.closure(lambda x: x.hypernyms())))


def caption_names(synset: str, main_lemma: str, synonyms: list, wn) -> list:
    """The names of concept ``synset`` in captions: its main lemma (weight
    :data:`MAIN_LEMMA_PROB`, or 1 alone) and its other lemmas that are plain words or compounds
    and canonicalize to it (``synonyms``, lower-case, sharing the rest; Latin names left out),
    each with its plural or None, and the context words never put right before
    (``avoid_before``) or after it (``avoid_after``)."""
    original = {n.lower(): n for n in wn.synset(synset).lemma_names()}
    names = [main_lemma, *[s for s in synonyms
                           if s != main_lemma and not _binomial(original.get(s, s), wn)]]
    rest = len(names) - 1
    weights = [1.0] if not rest else [MAIN_LEMMA_PROB] + [(1 - MAIN_LEMMA_PROB) / rest] * rest
    pairs = lemma_bigrams(wn)
    out = []
    for lemma, weight in zip(names, weights):
        many = plural(lemma, wn)
        firsts = {lemma.split("_")[0], *([many.split()[0]] if many else [])}
        lasts = {lemma.split("_")[-1], *([many.split()[-1]] if many else [])}
        before = sorted(w for w in LEFT for first in firsts if (w, first) in pairs)
        after = sorted(w for w in RIGHT for last in lasts for b in _bases(w, wn) if (last, b) in pairs)
        entry = {"lemma": lemma, "text": lemma.replace("_", " "), "plural": many, "weight": round(weight, 6)}
        if before:
            entry["avoid_before"] = sorted(set(before))
        if after:
            entry["avoid_after"] = sorted(set(after))
        out.append(entry)
    return out


def world_captions() -> dict:
    """What world.json records of the captions besides the names of each concept."""
    return {"stream": STREAM, "name_prob": NAME_PROB, "main_lemma_prob": MAIN_LEMMA_PROB,
            "plural_prob": PLURAL_PROB, "medium_prob": MEDIUM_PROB,
            "medium_words": list(MEDIUM_WORDS), "function_words": list(FUNCTION_WORDS),
            "filler_phrases": list(FILLER_PHRASES)}


# -- one caption (file writing) -------------------------------------------------------------------
def _pick(rng, options):
    """One of (value, weight) pairs."""
    u, total = rng.random() * sum(w for _, w in options), 0.0
    for value, w in options:
        total += w
        if u < total:
            return value
    return options[-1][0]


def _one(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _title(text: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))


def _recase(text: str, mode: str) -> str:
    """The caption in one case, HTML entities and links left as they are."""
    parts, keep = _ENTITY.split(text), _ENTITY.findall(text)
    if mode == "lower":
        parts = [p.lower() for p in parts]
    elif mode == "upper":
        parts = [p.upper() for p in parts]
    elif mode == "title":
        parts = [_title(p) for p in parts]
    else:  # sentence case: the first letter (after an opening entity)
        for i, p in enumerate(parts):
            m = re.search(r"[A-Za-z]", p)
            if m:
                parts[i] = p[: m.start()] + p[m.start()].upper() + p[m.start() + 1:]
                break
    return parts[0] + "".join(k + p for k, p in zip(keep, parts[1:]))


def _tokens(text: str) -> list:
    """The words of a piece of caption as a labeller may see them (entities by their names)."""
    return re.findall(r"[a-z]+", text.lower())


def _noun_phrase(rng, concept: dict, left: str | None, first: bool):
    """(text, name entry, plural?) of one named concept: determiner or owner, adjective, name;
    None where every way to say it puts the name next to a word it must not stand next to
    (``left``: the word before the phrase, None at the start)."""
    entry = _pick(rng, [(n, n["weight"]) for n in concept["names"]])
    many = bool(entry["plural"]) and rng.random() < PLURAL_PROB
    text = entry["plural"] if many else entry["text"]
    if rng.random() < TITLE_NAME_PROB:
        text = _title(text)
    avoid = set(entry.get("avoid_before", ()))
    pool = [a for a in ADJECTIVES.get(concept["lexname"], ADJECTIVES["noun.artifact"]) if a not in avoid]
    adjective = _one(rng, pool) if pool and rng.random() < ADJECTIVE_PROB else None
    owner = _one(rng, OWNERS) if first and rng.random() < POSSESSIVE_PROB / 2 else None
    if owner and (adjective or avoid.isdisjoint(_tokens(owner))):
        det = owner
    else:
        dets = [(d, w) for d, w in (PLURAL_DETS if many else SINGULAR_DETS)
                if (d not in avoid if d else adjective or left not in avoid)]
        if not dets:
            return None
        det = _pick(rng, dets)
    if det == "a":
        det = _article(adjective or text)
    return " ".join(w for w in (det, adjective, text) if w), entry, many


def sentence(rng, shown: list, concepts: list, phrase: str) -> str:
    """One caption: the post's filler ``phrase`` (sometimes), a medium (sometimes), the names of
    the ``shown`` concepts (indices into ``concepts``: {"names", "lexname"} each) each with
    probability :data:`NAME_PROB`, joined, then a participle or a possessive, a time or place, an
    ending, a link; in one case. Draws only from ``rng``; a name never stands next to a word of
    its ``avoid_before`` / ``avoid_after`` (that name, or what would follow it, is left out)."""
    at = rng.random()
    phrase_pos = "start" if at < PHRASE_AT_START else "end" if at < PHRASE_AT_START + PHRASE_AT_END else None
    quoted = phrase_pos is not None and rng.random() < ENTITY_PROB
    medium = _one(rng, MEDIUM) if rng.random() < MEDIUM_PROB else None
    named = [c for c in shown if rng.random() < NAME_PROB]
    left = (_tokens(medium)[-1] if medium else _tokens(phrase)[-1] if phrase_pos == "start" else None)
    pieces, last = [], None  # last: (name entry, plural?, concept) of the last name written
    for c in named:
        connector = None
        if last:  # a connector that may follow the last name ...
            after = last[0].get("avoid_after", ())
            options = [(x, w) for x, w in CONNECTORS if _tokens(x)[0] not in after]
            connector = (" &amp; " if "amp" not in after and rng.random() < ENTITY_PROB * 3
                         else _pick(rng, options) if options else None)
            if connector is None:
                continue
            left = _tokens(connector)[-1]
        got = _noun_phrase(rng, concepts[c], left, not pieces)
        if got is None:
            continue
        if connector and left in got[1].get("avoid_before", ()):  # ... and precede this one
            before = got[1]["avoid_before"]
            fits = [x for x, _ in CONNECTORS + ((" &amp; ", 0),)
                    if _tokens(x)[0] not in after and _tokens(x)[-1] not in before]
            if not fits:
                continue
            connector = fits[0]
        pieces += [connector, got[0]] if connector else [got[0]]
        last = (got[1], got[2], c)
    body = "".join(pieces)
    after = set(last[0].get("avoid_after", ())) if last else set()  # what may not follow the last name
    if last:
        if not last[1] and rng.random() < POSSESSIVE_PROB / 2 and "s" not in after:
            body += "'s " + _one(rng, OWNED)  # my dog's big day
            after = set()
        elif rng.random() < PARTICIPLE_PROB:
            verb = _one(rng, PARTICIPLES.get(concepts[last[2]]["lexname"], PARTICIPLES[""]))
            if verb not in after:
                body += " " + verb
                after = set()
        if rng.random() < TAIL_PROB:
            tail = _one(rng, TAILS)
            if _tokens(tail)[0] not in after:
                body += " " + tail
                after = set()
    else:  # nothing named
        body = "photo of the day" if medium and rng.random() < 0.5 else _one(rng, NO_NAME)
        medium = None
    if medium:
        body = medium + " " + body
    said = f"&quot;{phrase}&quot;" if quoted else phrase
    if phrase_pos == "start":
        text = said + _one(rng, ("! ", " - ", ", ", "... ")) + body
    elif phrase_pos == "end" and _tokens(phrase)[0] not in after and "quot" not in after:
        text, after = body + ", " + said, set()
    else:
        text = body
    text = _recase(text + _pick(rng, ENDINGS), _pick(rng, CASES))
    if rng.random() < URL_PROB and not after & {"https", "http"}:
        digits = "".join(str(d) for d in rng.integers(0, 10, 9).tolist())
        text += " " + _one(rng, (f"https://t.co/{digits}", f"http://instagr.am/p/{digits}/"))
    assert "#" not in text, text
    return text


def score_vocab(doc: dict, hashtag_doc: dict, world: dict) -> dict:
    """How a vocabulary (e.g. from captions) recovers a synthetic world's concepts: ``precision``,
    the share of its canonical hashtags whose synsets hold a concept's synset; ``recall``, the
    share of the concepts that ``hashtag_doc`` (the hashtag vocabulary) has that it has too."""
    concepts = {c["synset"] for c in world["concepts"]}

    def found(d):
        return {s for h in d["hashtags"] for s in h["synsets"] if s in concepts}

    good = sum(bool(concepts & set(h["synsets"])) for h in doc["hashtags"])
    mine, theirs = found(doc), found(hashtag_doc)
    return {"hashtags": len(doc["hashtags"]), "correct": good,
            "precision": good / len(doc["hashtags"]) if doc["hashtags"] else 0.0,
            "reference": len(theirs), "recovered": len(mine & theirs),
            "recall": len(mine & theirs) / len(theirs) if theirs else 0.0}
