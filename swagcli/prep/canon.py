"""Hashtag -> WordNet synsets, exactly as Listing 1 of the SWAG paper (Appendix A), only faster.

Listing 1 (``tests/listing1.py``) maps a tag ``t`` with ``len(t) >= 3`` to

    L(t) = A(morphy(t, NOUN))  ∪  ⋃_{3 <= i <= len(t)-3}  A(morphy(t[:i] + "_" + t[i:]))

where ``A(w)`` is the set of synsets of ``wordnet.synsets(w)`` whose lexname is allowed (A(None)
is empty). Almost every tag maps to the empty set, so instead of asking these questions per tag,
:class:`Canonicalizer` builds once the *answer table*: every tag whose answer is non-empty, with
its answer. A lookup is then a dict lookup, and a bulk call one comprehension.

Building the table (:func:`build_table`), with nltk's ``_morphy(form, pos)`` written ``M_p(form)``:

1. ``M_p(f)`` is ``[f] + <f's exception entries, or else nltk's suffix rewrites of f>`` kept where
   it is a lemma of ``p``. So ``w ∈ M_p(f)`` implies that ``f`` is in ``pre_p({w})``: ``w``
   itself, an exception key listing ``w``, or ``w`` with a suffix ``new`` of a rule
   ``(old, new)`` replaced by ``old`` (the rule run backwards, :meth:`Morphology.preimages`).
2. ``A(w)`` is non-empty only if some ``f ∈ M_p(w)`` is a lemma of ``p`` with an allowed synset
   (``wordnet.synsets`` is the union of the lemma index over ``M_p(w)`` for every ``p``). Such
   ``w`` lie in ``pre_p(good_p)``; we keep the lemmas among them whose ``A`` is non-empty: ``W``.
3. ``morphy(c)`` is the first entry of ``M_p(c)`` for the first ``p`` that has one, so it can
   be in ``W`` only if ``c ∈ pre_p(W ∩ lemmas_p)`` for some ``p`` (``p`` = noun only, for the
   whole tag). Every candidate with a non-empty contribution is therefore among these forms
   ``C_p``; the tag it comes from is the form itself (whole tag, ``C_n``), or the form with one
   of its ``_`` removed (a split at that ``_``).
4. For each tag found this way, its answer is the union of the contributions of the candidates
   found for it (each checked to be a genuine candidate: ``len >= 3``, split index in range),
   each computed like Listing 1 does: ``A(morphy(c))``. A candidate of the tag that was not
   found has an empty contribution (3.), and a tag that was not found has an empty answer.

``morphy`` and ``A`` are computed on nltk's own tables (the reader's lemma index, exception lists
and ``MORPHOLOGICAL_SUBSTITUTIONS``), as nltk's ``morphy``/``_morphy``/``synsets`` do: see
:class:`Morphology`. Synset names are read from the data files (first lemma, lower-cased, part of
speech, 1-based rank in that lemma's index entry), as nltk names them. Nothing here assumes what
the tags look like (case, digits, '_', '-', other scripts): the argument holds for any string.
``tests/prep/test_canon.py`` checks equality with Listing 1 on real and junk tags.

For the default senses the table has about 195k tags (the lemmas, their inflections and their
splits) and takes 1-2 s of CPU to build once the nltk reader exists (itself ~5 s). It is kept
in a disk cache (``$SWAG_CACHE`` or ``~/.cache/swag``, under ``canon/``; JSON, never a pickle:
~4 MB, ~0.15 s to load) keyed by this module's source, nltk's version and substitution rules,
the WordNet files' path/sizes/mtimes, the allowed senses and ``min_len``; with it, no nltk
reader is built at all.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
from itertools import chain, repeat
from pathlib import Path
from urllib.parse import unquote_plus

MIN_LEN = 3
# Listing 1 as printed drops the comma after "noun.object" (making "noun.objectnoun.plant" one
# string); the intent, and our default, is these six senses.
ALLOWED_SENSES = (
    "noun.animal",
    "noun.artifact",
    "noun.food",
    "noun.object",
    "noun.plant",
    "noun.event",
)

POS_LIST = ("n", "v", "a", "r")  # nltk's POS_LIST, in its order (satellites 's' are not in it)
_LEX_PREFIX = {"n": "noun.", "v": "verb.", "a": "adj.", "r": "adv."}
_FILE_SUFFIX = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_WORDNET_FILES = ("lexnames",) + tuple(
    f"{kind}.{s}" for kind in ("index", "data") for s in _FILE_SUFFIX.values()
) + tuple(f"{s}.exc" for s in _FILE_SUFFIX.values())
_SYNTACTIC_MARKER = re.compile(r"(.*?)(\([^()]*\))?$")  # nltk's, for adjectives like "big(a)"
CACHE_FORMAT = 2
_EMPTY: frozenset = frozenset()


def normalize_tag(raw: str) -> str:
    """A raw tag as a hashtag is written: URL-decoded where it holds ``+`` or ``%`` (YFCC100M's
    ``brown+bear``, ``caf%C3%A9``; neither character can be part of a hashtag), the leading '#'
    stripped, lower-cased, and the words of a multi-word tag joined (``new york`` -> ``newyork``,
    which Listing 1 splits again into ``new_york``). Other characters are kept (``t-shirt``)."""
    if "+" in raw or "%" in raw:
        raw = unquote_plus(raw)
    return "".join(raw.lstrip().lstrip("#").lower().split())


def synset_key(synsets) -> str:
    """The canonical hashtag's identity: its sorted synset names joined by '+'."""
    return "+".join(sorted(synsets))


def _open_text(wn, fileid: str):
    """A WordNet file as text: directly when it is a plain file (nltk's own stream reader is
    several times slower line by line), else through the reader."""
    from nltk.data import FileSystemPathPointer

    ptr = wn.abspath(fileid)
    if isinstance(ptr, FileSystemPathPointer):
        return open(ptr.path, encoding=wn._ENCODING)
    return wn.open(fileid)


class Morphology:
    """nltk's ``morphy`` and ``synsets`` on the reader's own tables, restricted to allowed senses.

    ``forms(form, pos)`` is ``wn._morphy(form, pos)``: ``[form]`` plus the form's exception
    entries if it has any, else its rewrites by nltk's suffix rules, kept where they are lemmas
    of ``pos``, first occurrence first.
    """

    def __init__(self, wn, allowed_senses):
        self.wn = wn
        self.allowed = frozenset(allowed_senses)
        index = wn._lemma_pos_offset_map
        self.index = index
        self.lemmas = {p: set() for p in POS_LIST}
        for lemma, by_pos in index.items():
            for p in by_pos:
                if p in self.lemmas:
                    self.lemmas[p].add(lemma)
        self.exceptions = {p: wn._exception_map[p] for p in POS_LIST}
        self.rules = {p: list(wn.MORPHOLOGICAL_SUBSTITUTIONS[p]) for p in POS_LIST}
        # (an empty suffix would apply to every form: the grouping below and preimages() assume
        # there is none, as in every nltk so far)
        assert all(old for p in POS_LIST for old, _ in self.rules[p]), self.rules
        # the same rules grouped by the last letter of their suffix, in nltk's order: only those
        # can apply to a form ending in that letter
        self.rules_by_last: dict = {}
        for p in POS_LIST:
            by_last = self.rules_by_last[p] = {}
            for old, new in self.rules[p]:
                by_last.setdefault(old[-1:], []).append((old, new))
        # the parts of speech with an allowed lexname, and {(pos, offset): name} of those synsets
        self.allowed_pos = [p for p in POS_LIST
                            if any(s.startswith(_LEX_PREFIX[p]) for s in self.allowed)]
        self.names: dict = {}
        for p in self.allowed_pos:
            self.names.update(self._scan_data_file(p))
        self._synsets_memo: dict = {}

    def _scan_data_file(self, pos: str) -> dict:
        """{(pos, offset): name} of the allowed synsets in data.<pos>, named as nltk names them:
        first lemma (syntactic marker removed), lower-cased, the synset's type, and the synset's
        1-based rank in that lemma's index entry for that type."""
        lexnames = self.wn._lexnames
        index = self.index
        out = {}
        with _open_text(self.wn, "data." + _FILE_SUFFIX[pos]) as fp:
            for line in fp:
                if line.startswith(" "):  # licence header
                    continue
                off, lexnum, ss_type, _, lemma, _rest = line.split(" ", 5)
                if lexnames[int(lexnum)] not in self.allowed:
                    continue
                if pos == "a":
                    lemma = _SYNTACTIC_MARKER.match(lemma).group(1)
                lemma = lemma.lower()
                offset = int(off)
                rank = index[lemma][ss_type].index(offset) + 1
                out[(pos, offset)] = f"{lemma}.{ss_type}.{rank:02d}"
        return out

    def forms(self, form: str, pos: str) -> list:
        """nltk's ``_morphy(form, pos)`` (check_exceptions=True)."""
        exc = self.exceptions[pos]
        if form in exc:
            candidates = [form, *exc[form]]
        else:
            candidates = [form]
            for old, new in self.rules_by_last[pos].get(form[-1:], ()):
                if form.endswith(old):
                    candidates.append(form[: -len(old)] + new)
        lemmas = self.lemmas[pos]
        return [f for f in dict.fromkeys(candidates) if f in lemmas]

    def morphy(self, form: str, pos: str | None = None):
        """nltk's ``morphy``: the first entry of ``forms(form, p)`` for the first part of speech
        ``p`` that has one (the same steps as :meth:`forms`, stopping at the first lemma)."""
        for p in (pos,) if pos else POS_LIST:
            lemmas = self.lemmas[p]
            if form in lemmas:
                return form
            bases = self.exceptions[p].get(form)
            if bases is not None:
                for f in bases:
                    if f in lemmas:
                        return f
            else:
                for old, new in self.rules_by_last[p].get(form[-1:], ()):
                    if form.endswith(old):
                        f = form[: -len(old)] + new
                        if f in lemmas:
                            return f
        return None

    def synsets_of(self, word) -> frozenset:
        """``A(word)``: ``{s.name() for s in wn.synsets(word) if s._lexname in allowed}``,
        computed as nltk's ``synsets`` does (``_morphy`` per part of speech, then the lemma
        index), skipping the parts of speech without an allowed lexname. ``A(None)`` is empty."""
        if word is None:
            return _EMPTY
        got = self._synsets_memo.get(word)
        if got is None:
            names = self.names
            found = set()
            for p in self.allowed_pos:
                for form in self.forms(word.lower(), p):
                    for offset in self.index[form].get(p, ()):
                        name = names.get((p, offset))
                        if name is not None:
                            found.add(name)
            got = self._synsets_memo[word] = frozenset(found)
        return got

    def preimages(self, words, pos: str) -> set:
        """Every form ``f`` whose ``forms(f, pos)`` can contain one of ``words``: the words,
        the exception keys listing one of them, and the words with a rule run backwards (a
        word ending in ``new`` gets ``old`` in its place, for each rule ``(old, new)``)."""
        words = set(words)
        out = set(words)
        out.update(key for key, bases in self.exceptions[pos].items()
                   if not words.isdisjoint(bases))
        by_last: dict = {}
        for w in words:
            by_last.setdefault(w[-1:], []).append(w)
        for old, new in self.rules[pos]:
            if new:
                k = len(new)
                out.update(w[:-k] + old for w in by_last.get(new[-1], ()) if w.endswith(new))
            else:
                out.update(w + old for w in words)
        return out


def build_table(morph: Morphology, min_len: int = MIN_LEN) -> dict:
    """{tag: frozenset of synset names} for every tag whose Listing-1 answer is non-empty
    (steps 2-4 of the module docstring)."""
    # 2. W: the lemmas w with A(w) non-empty; A(w) needs w in pre_p(good_p), good_p being the
    #    lemmas of p with an allowed synset of part of speech p
    names = morph.names
    pre_good = set()
    for p in morph.allowed_pos:
        allowed_offsets = {o for q, o in names if q == p}
        good = {w for w in morph.lemmas[p]
                if not allowed_offsets.isdisjoint(morph.index[w][p])}
        pre_good |= morph.preimages(good, p)
    words = {w for w in morph.index if w.lower() in pre_good and morph.synsets_of(w)}
    # 3.-4. the candidates whose morphy can be in W, the tag each is a candidate of, and the
    #    union of the contributions of each tag's genuine candidates
    table: dict = {}

    def add(tag, part):
        if part:
            old = table.get(tag)
            table[tag] = part if old is None else old | part

    synsets_of, morphy = morph.synsets_of, morph.morphy
    whole = morph.preimages(words & morph.lemmas["n"], "n")
    for tag in whole:  # the whole tag's candidate: morphy(tag, NOUN)
        if len(tag) >= min_len:
            add(tag, synsets_of(morphy(tag, "n")))
    split = set(whole)
    for p in POS_LIST[1:]:
        split |= morph.preimages(words & morph.lemmas[p], p)
    for c in split:  # c is the split at i of the tag c[:i] + c[i+1:], if i is in range
        last = len(c) - 1 - min_len
        i = c.find("_")
        while i != -1:
            if min_len <= i <= last:
                add(c[:i] + c[i + 1:], synsets_of(morphy(c)))
            i = c.find("_", i + 1)
    return table


def build_phrases(morph: Morphology) -> dict:
    """{form: lemma} for every form with a noun lemma among its morphy forms (nltk's
    ``_morphy(form, NOUN)``, as ``wordnet.synsets(form, NOUN)`` looks them up) that has an allowed
    noun synset; the lemma is the first such: ``flies`` -> ``fly`` (``flies`` is a lemma too, of
    no allowed sense). These are the words and phrases (``golden_retrievers``) a caption's noun
    phrases are matched against (:mod:`swagcli.prep.captions`, SPEC.md §8). Any length:
    ``min_len`` is Listing 1's, applied when the phrase is canonicalized as a hashtag."""
    names = morph.names
    noun_offsets = {o for q, o in names if q == "n"}
    good = {w for w in morph.lemmas["n"] if not noun_offsets.isdisjoint(morph.index[w]["n"])}
    out = {}
    for form in morph.preimages(good, "n"):
        lemma = next((f for f in morph.forms(form, "n") if f in good), None)
        if lemma is not None:
            out[form] = lemma
    return out


# -- the disk cache ------------------------------------------------------------------------------
def _default_cache_dir() -> Path:
    base = os.environ.get("SWAG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "swag")
    return Path(base) / "canon"


def _cache_entry(cache, root, allowed, min_len: int, kind: str = "table"):
    """(path, key) of the cache file for this table (``kind``: ``table``, or ``phrases`` for
    :func:`build_phrases`), or (None, None) if WordNet is not in plain files. The name is
    ``<kind>-<what>-<version>.json``: <what> digests the WordNet directory,
    the allowed senses and ``min_len``; <version> digests everything else the table depends on:
    this module's source, nltk's version and substitution rules, the WordNet files' sizes and
    mtimes. The full key is stored in the file and checked on reading."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = Path(str(root)).resolve()
    if not root.is_dir():
        return None, None  # e.g. inside a zip: no cheap way to tell whether it changed
    what = hashlib.sha256(f"{root}\0{sorted(allowed)}\0{min_len}".encode()).hexdigest()
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{nltk.__version__}\0".encode())
    h.update(repr(sorted(WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS.items())).encode())
    h.update(Path(__file__).read_bytes())
    try:
        for name in _WORDNET_FILES:
            st = (root / name).stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError:
        return None, None
    version = h.hexdigest()
    cache_dir = _default_cache_dir() if cache is True else Path(cache)
    return cache_dir / f"{kind}-{what[:16]}-{version[:16]}.json", f"{kind}-{what}-{version}"


# The cache file is JSON, never a pickle: the cache directory may be shared, and whoever can write
# a file there must not be able to run code in every `swag` that reads it. The layout makes loading
# about as fast as unpickling the dict was: the tags are grouped by their (shared, ~32k distinct)
# answer, all in one string split on newlines, so parsing is a few large strings and short lists
# and the dict is built by one dict(zip(...)):
#   {"format": CACHE_ID, "key": KEY, "sets": [[synset, ...], ...], "counts": [n, ...],
#    "tags": "tag\ntag\n..."}  (the first counts[0] tags have the answer sets[0], and so on)
# Files of the pickle era (``table-*.pickle``) are never opened; writing a table removes them.
CACHE_ID = "swag-canon-cache/2"
_CACHE_MAX_BYTES = 1 << 28  # ~4 MB for the default senses; a far larger file is not ours


def _load_doc(path: Path, format_id: str, key: str):
    """The JSON document of a cache file if it is of ``format_id`` and ``key``, else None.
    Raises what reading or parsing raises (the callers turn that into None)."""
    with open(path, "rb") as fp:
        if os.fstat(fp.fileno()).st_size > _CACHE_MAX_BYTES:
            return None
        doc = json.loads(fp.read())
    if type(doc) is not dict or doc.get("format") != format_id or doc.get("key") != key:
        return None
    return doc


def _store_doc(path: Path, doc: dict, stale: tuple) -> None:
    """Write a cache document atomically, then remove the files matching the ``stale`` globs
    (``{what}``: this file's WordNet/senses digest) but this one. A read-only or full cache is
    no error: the table is just built again next time."""
    from swagcli.errors import SwagError
    from swagcli.fileio import atomic_write_bytes

    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data, fsync=False)
        what = path.name.split("-")[1]
        for old in (q for pattern in stale for q in path.parent.glob(pattern.format(what=what))):
            if old != path:
                old.unlink(missing_ok=True)
    except (OSError, SwagError):
        pass


def _read_cache(path: Path, key: str):
    """The table stored at ``path`` under ``key``, or None (missing, damaged, another key or
    format: the caller builds it again). Nothing in the file is trusted beyond its structure."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # loading makes ~230k objects that hold no cycles: spare the collector
    try:
        doc = _load_doc(path, CACHE_ID, key)
        if doc is None:
            return None
        sets, counts, tags = doc["sets"], doc["counts"], doc["tags"]
        if type(sets) is not list or type(counts) is not list or type(tags) is not str \
                or len(sets) != len(counts):
            return None
        if not all(type(n) is int and n > 0 for n in counts) \
                or not all(type(s) is list and s and all(type(x) is str for x in s) for s in sets):
            return None
        tag_list = tags.split("\n") if tags else []
        if len(tag_list) != sum(counts):
            return None
        table = dict(zip(tag_list, chain.from_iterable(map(repeat, map(frozenset, sets), counts))))
        return table if len(table) == len(tag_list) else None
    except (OSError, ValueError, KeyError, TypeError, RecursionError, MemoryError):
        return None  # missing, truncated, not JSON, or not this layout: build it again
    finally:
        if gc_was_enabled:
            gc.enable()


def _write_cache(path: Path, key: str, table: dict) -> None:
    """Write atomically, then remove the same table's older versions (pickles included)."""
    if any("\n" in t for t in table):  # cannot happen with WordNet's lemmas; then just no cache
        return
    groups: dict = {}
    for tag, synsets in table.items():
        groups.setdefault(synsets, []).append(tag)
    doc = {"format": CACHE_ID, "key": key, "sets": [sorted(s) for s in groups],
           "counts": [len(t) for t in groups.values()],
           "tags": "\n".join(t for ts in groups.values() for t in ts)}
    _store_doc(path, doc, ("table-{what}-*.json", "table-*.pickle"))


PHRASES_ID = "swag-caption-phrases/1"


def _read_phrases(path: Path, key: str):
    """The phrase map stored at ``path`` under ``key``, or None (then it is built again)."""
    try:
        doc = _load_doc(path, PHRASES_ID, key)
        if doc is None:
            return None
        forms, lemmas = doc["forms"], doc["lemmas"]
        if type(forms) is not str or type(lemmas) is not str:
            return None
        forms, lemmas = forms.split("\n"), lemmas.split("\n")
        if len(forms) != len(lemmas):
            return None
        return {f: (lem or f) for f, lem in zip(forms, lemmas)}  # "" = the form is its own lemma
    except (OSError, ValueError, KeyError, TypeError, RecursionError, MemoryError):
        return None


def _write_phrases(path: Path, key: str, phrases: dict) -> None:
    if not phrases or any("\n" in f or "\n" in lem for f, lem in phrases.items()):
        return
    doc = {"format": PHRASES_ID, "key": key, "forms": "\n".join(phrases),
           "lemmas": "\n".join("" if lem == f else lem for f, lem in phrases.items())}
    _store_doc(path, doc, ("phrases-{what}-*.json",))


class Canonicalizer:
    """Maps hashtags to frozensets of synset names, equal to Listing 1's ``get_synsets``.

    ``wn``: the WordNet reader to build from (default :func:`swagcli.wordnet.get_wordnet`, built
    only if the table is not in the cache). ``cache``: True for the default cache directory,
    False for none (neither read nor written), or a directory.
    """

    def __init__(self, allowed_senses=ALLOWED_SENSES, min_len: int = MIN_LEN, *, wn=None,
                 cache=True):
        self.allowed = frozenset(allowed_senses)
        self.min_len = min_len
        self._wn = wn
        self._cache = cache
        self._morph: Morphology | None = None
        self._phrases: dict | None = None
        self._keys = None  # the table's tags as an arrow array (canonicalize's arrow lookup), made once
        self._table = self._cached("table", _read_cache, _write_cache,
                                   lambda: build_table(self.morphology, min_len))

    def _entry(self, kind: str):
        """(path, key) of this canonicalizer's cache file of ``kind``, or (None, None): no cache,
        or WordNet not in plain files. Filed under the reader in use, once there is one."""
        if self._cache is False:
            return None, None
        if self._wn is not None:
            root = self._wn.root
        else:
            from swagcli.wordnet import find_wordnet_root

            root, _ = find_wordnet_root()
        return _cache_entry(self._cache, root, self.allowed, self.min_len, kind)

    def _cached(self, kind: str, read, write, build):
        """``read`` from the cache, else ``build`` (and ``write`` it back, filed under the reader
        that built it); sets ``self.source`` for the table."""
        path, key = self._entry(kind)
        got = read(path, key) if path is not None else None
        if got is not None:
            if kind == "table":
                self.source = f"cache ({path})"
            return got
        got = build()
        if kind == "table":
            self.source = "built from WordNet"
        path, key = self._entry(kind)
        if path is not None:
            write(path, key, got)
        return got

    @property
    def wn(self):
        if self._wn is None:
            from swagcli.wordnet import get_wordnet

            self._wn = get_wordnet()
        return self._wn

    @property
    def morphology(self) -> Morphology:
        if self._morph is None:
            self._morph = Morphology(self.wn, self.allowed)
        return self._morph

    def morphy(self, form: str, pos: str | None = None):
        """nltk's ``morphy`` on this reader's tables."""
        return self.morphology.morphy(form, pos)

    def synsets(self, tag: str) -> frozenset:
        """Listing 1's ``get_synsets(tag)`` as a frozenset of synset names."""
        return self._table.get(tag, _EMPTY)

    def canonicalize(self, tags) -> dict[str, frozenset]:
        """{tag: synset set} for the tags with a non-empty set (tags already normalized; a list, or
        a pyarrow string array, looked up in arrow: no Python string for the tags that map to none)."""
        table = self._table
        if not isinstance(tags, (list, tuple, set, dict)) and hasattr(tags, "to_pylist"):
            import pyarrow as pa
            import pyarrow.compute as pc

            if self._keys is None:
                self._keys = pa.array(list(table), type=pa.string())
            hit = pc.is_in(tags, value_set=self._keys).fill_null(False)
            tags = tags.filter(hit).to_pylist() if len(tags) else []
        return {t: table[t] for t in tags if t in table}

    def __len__(self) -> int:
        """The number of distinct tags with a non-empty synset set."""
        return len(self._table)

    def items(self):
        """Every (tag, synset set) with a non-empty set."""
        return self._table.items()

    def phrases(self) -> dict:
        """{form: noun lemma} (:func:`build_phrases`), from the disk cache where it is there."""
        if self._phrases is None:
            self._phrases = self._cached("phrases", _read_phrases, _write_phrases,
                                         lambda: build_phrases(self.morphology))
        return self._phrases
