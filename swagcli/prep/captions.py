"""Labels from captions (SPEC.md §8): a caption's noun phrases as a post's raw tags.

For image-text data without hashtags (DataComp, LAION, CC3M/CC12M, COCO, YFCC100M titles and
descriptions) a caption is turned into raw tags that the rest of swag treats exactly as hashtags:

1. **Text.** HTML tags removed and entities decoded (``&amp;``, ``&#39;``), URLs and e-mail
   addresses removed,
   the text lower-cased; words are runs of letters and digits, with inner hyphens and apostrophes
   (``t-shirt``, ``dog's``). A possessive ``'s`` (or a plural's ``s'``) is dropped; a hyphenated
   word that is not itself a WordNet lemma is read as its parts (``dog-friendly`` -> dog,
   friendly). A ``#tag`` is read as the word ``tag`` (with ``labels: both`` it is also a hashtag).
   No nltk data beyond WordNet is needed (no tokenizer models, no tagger).
2. **Phrases.** Word n-grams of up to ``max_words`` words, longest match first, left to right:
   at each word the longest n-gram whose ``_``-joined form is a WordNet noun form with an allowed
   noun sense (:func:`swagcli.prep.canon.build_phrases`: plurals and other inflections through
   morphy, ``golden retrievers`` -> ``golden_retriever``) is taken and the words it covers are
   skipped. English function words (:data:`FUNCTION_WORDS`: ``can``, ``may``, ``will``, ``one``,
   ...) are never a one-word phrase (they are nouns in WordNet: ``can.n.01``); they may be inside
   a longer lemma (``man of war``).
3. **The medium.** A phrase whose lemma is in the stop list (:data:`MEDIUM_WORDS` by default:
   ``photo``, ``image``, ``picture``, ``illustration``, ``vector``, ``stock``, ``background``, ...)
   names the medium, not the content: it is dropped and counted.
4. **As a hashtag.** Each phrase is joined as a hashtag is written (``golden retrievers`` ->
   ``goldenretrievers``): Listing 1 then canonicalizes it exactly as it would the hashtag, so
   caption and hashtag labels of one concept merge. Where Listing 1 finds nothing for the joined
   form (it splits a tag once: ``chocolatechipcookie`` is out of its reach), the raw tag is the
   phrase in WordNet's own spelling (``chocolate_chip_cookies``), which Listing 1 maps to the
   phrase's own synsets (its morphy candidate). A phrase shorter than Listing 1's ``min_len``
   maps to nothing, as such a hashtag would.

Known limits, without a part-of-speech tagger: a word that is a noun lemma is read as one wherever
it stands (``time flies`` gives ``fly``); the lexname filter and the function-word list keep most
such readings out. :class:`CaptionStats` says what was kept and dropped, so a user sees it.
"""

from __future__ import annotations

import functools
import html
import re
from collections import Counter
from dataclasses import dataclass, field

# Nouns that name the medium or the layout of an image rather than what it shows: the boilerplate
# of stock-photo and web captions (LAION's "Stock Photo - ...", "vector illustration isolated on
# white background", "close-up photo of", "3d render"). Lemmas: "photo" drops "photos" too.
MEDIUM_WORDS = (
    "photo", "photograph", "photography", "image", "picture", "pic", "snapshot", "shot", "selfie",
    "closeup", "close-up", "illustration", "vector", "clipart", "clip_art", "stock", "stock_photo",
    "background", "backdrop", "wallpaper", "texture", "pattern", "template", "mockup", "icon",
    "logo", "banner", "drawing", "sketch", "painting", "artwork", "render", "rendering", "graphic",
    "screenshot", "view", "copy_space", "royalty", "video", "footage",
)
# English function words, which WordNet also lists as nouns (can.n.01, may.n.01, will.n.02,
# one.n.01, ...): never a one-word phrase. Pronouns, determiners, prepositions, conjunctions,
# auxiliaries and modals, number words, and common adverbs.
FUNCTION_WORDS = frozenset("""
a an the this that these those my your his her its our their mine yours hers ours theirs
i me you he him she it we us they them myself yourself himself herself itself ourselves themselves
who whom whose which what whatever whoever where when why how there here
and or but nor so yet for if then than because while although though unless until since as
of in on at by with without within into onto upon from to toward towards over under above below
between among through throughout during before after about around against along across behind
beyond beside besides near off out up down per via
is am are was were be been being do does did done doing have has had having
can could may might must shall should will would ought need dare
not no yes all any both each either neither every some such other another few many much more most
less least several own same just only also very too quite rather even still again ever never
one two three four five six seven eight nine ten first second third next last
oh hey wow ok okay please thanks lol
""".split())

_HTML_TAG = re.compile(r"<[^<>]{0,500}>")
_URL = re.compile(r"(?:https?://|ftp://|www\.)\S+|\S+@\S+\.\w+")
_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")
_APOS = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})


@dataclass(frozen=True)
class CaptionConfig:
    """What a labeller is built from: hashable, so every process builds one once."""

    allowed_senses: tuple
    min_len: int = 3
    max_words: int = 3
    stop: tuple = MEDIUM_WORDS
    function_words: bool = True

    @classmethod
    def of(cls, spec, allowed_senses, min_len: int) -> "CaptionConfig":
        """From a recipe's :class:`~swagcli.recipes.CaptionSpec` (None = the defaults)."""
        if spec is None:
            return cls(tuple(sorted(allowed_senses)), min_len)
        stop = MEDIUM_WORDS if spec.stop is None else tuple(spec.stop)
        stop = tuple(dict.fromkeys(_lemma_key(s) for s in (*stop, *spec.stop_extra) if s.strip()))
        return cls(tuple(sorted(allowed_senses)), min_len, spec.max_words, stop, spec.function_words)

    def as_dict(self) -> dict:
        """What vocabularies record (``sources.caption``); :meth:`from_dict` reads it back."""
        return {"max_words": self.max_words, "stop": list(self.stop), "function_words": self.function_words}

    @classmethod
    def from_dict(cls, d: dict, allowed_senses, min_len: int) -> "CaptionConfig":
        """The configuration :meth:`as_dict` recorded (missing keys: the defaults)."""
        base = cls(tuple(sorted(allowed_senses)), min_len)
        return cls(base.allowed_senses, min_len, d.get("max_words", base.max_words),
                   tuple(d.get("stop", base.stop)), d.get("function_words", base.function_words))


def _lemma_key(text: str) -> str:
    return "_".join(text.lower().split())


@dataclass
class CaptionStats:
    """What labelling captions saw; added up over shards (``+``)."""

    captions: int = 0          # posts with a caption (title/description) that was read
    labelled: int = 0          # of them, those that yielded at least one raw tag
    labels: int = 0            # raw tags yielded, in all (distinct per caption)
    dropped_stop: int = 0      # phrases dropped by the stop list
    kept: Counter = field(default_factory=Counter)     # lemma -> captions it was kept from
    dropped: Counter = field(default_factory=Counter)  # stop-listed lemma -> captions

    def add(self, other: "CaptionStats") -> "CaptionStats":
        self.captions += other.captions
        self.labelled += other.labelled
        self.labels += other.labels
        self.dropped_stop += other.dropped_stop
        self.kept.update(other.kept)
        self.dropped.update(other.dropped)
        return self

    def __add__(self, other):  # ReadStats.add adds its fields with +
        return CaptionStats().add(self).add(other)

    def report(self, top: int = 20) -> dict:
        return {"captions": self.captions, "labelled": self.labelled,
                "labelled_share": round(self.labelled / self.captions, 4) if self.captions else 0.0,
                "labels": self.labels,
                "mean_labels": round(self.labels / self.captions, 3) if self.captions else 0.0,
                "distinct_phrases": len(self.kept), "dropped_stop": self.dropped_stop,
                "top_kept": self.kept.most_common(top), "top_dropped": self.dropped.most_common(top)}


class CaptionLabeller:
    """Caption -> raw tags (the module docstring's steps). Built once per process per config."""

    def __init__(self, cfg: CaptionConfig, canon=None):
        from swagcli.prep.canon import Canonicalizer

        self.cfg = cfg
        self.canon = canon or Canonicalizer(cfg.allowed_senses, cfg.min_len)
        self.phrases = self.canon.phrases()  # form -> lemma
        # the first words of the multi-word forms: n-grams are tried only after one of them
        self.starts = {f.split("_", 1)[0] for f in self.phrases if "_" in f}
        self.stop = frozenset(cfg.stop)
        self.function = FUNCTION_WORDS if cfg.function_words else frozenset()
        self._tag_memo: dict = {}

    def words(self, text: str) -> list[str]:
        """The caption's words (step 1)."""
        if "<" in text:  # YFCC100M descriptions hold HTML: <a href="...">, <b>
            text = _HTML_TAG.sub(" ", text)
        if "&" in text:
            text = html.unescape(text)
        text = _URL.sub(" ", text.translate(_APOS)).lower()
        out = []
        phrases = self.phrases
        for w in _WORD.findall(text):
            if "'" in w:
                if w.endswith("'s"):
                    w = w[:-2]
                w = w.strip("'")
                if "'" in w and w not in phrases:  # don't, o'clock: left as they are but never nouns
                    out.append(w)
                    continue
            if "-" in w and w not in phrases:
                out.extend(p for p in w.split("-") if p)
            elif w:
                out.append(w)
        return out

    def tag_of(self, form: str) -> str | None:
        """The raw tag of a phrase form (step 4), or None where Listing 1 maps it to nothing."""
        got = self._tag_memo.get(form, 0)
        if got == 0:
            joined = form.replace("_", "")
            syn = self.canon.synsets
            got = joined if syn(joined) else (form if syn(form) else None)
            self._tag_memo[form] = got
        return got

    def label(self, text: str, stats: CaptionStats | None = None) -> list[str]:
        """The distinct raw tags of one caption, in order of appearance."""
        words = self.words(text)
        phrases, starts, stop, function = self.phrases, self.starts, self.stop, self.function
        n_max = self.cfg.max_words
        tags: dict = {}
        kept: dict = {}
        dropped: dict = {}
        i, n = 0, len(words)
        while i < n:
            w = words[i]
            hit = None
            if w in starts:
                for k in range(min(n_max, n - i), 1, -1):
                    form = "_".join(words[i:i + k])
                    lemma = phrases.get(form)
                    if lemma is not None:
                        hit = form, lemma, k
                        break
            if hit is None and w not in function:
                lemma = phrases.get(w)
                if lemma is not None:
                    hit = w, lemma, 1
            if hit is None:
                i += 1
                continue
            form, lemma, k = hit
            i += k
            if lemma in stop or form in stop:
                dropped[lemma] = None
                continue
            tag = self.tag_of(form)
            if tag is not None:
                tags[tag] = None
                kept[lemma] = None
        if stats is not None:
            stats.captions += 1
            stats.labels += len(tags)
            stats.labelled += bool(tags)
            stats.dropped_stop += len(dropped)
            stats.kept.update(kept.keys())
            stats.dropped.update(dropped.keys())
        return list(tags)


@functools.lru_cache(maxsize=4)
def labeller(cfg: CaptionConfig) -> CaptionLabeller:
    """The process's labeller for ``cfg`` (WordNet tables from the disk cache: ~0.2 s)."""
    return CaptionLabeller(cfg)
