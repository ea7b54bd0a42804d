"""Hashtag -> WordNet synsets, exactly as Listing 1 of the SWAG paper (Appendix A), only faster.

Listing 1 calls ``morphy(tag, NOUN)`` and then ``morphy(tag[:i] + "_" + tag[i:])`` (all parts of
speech) for every i in 3..len-3, and ``synsets(word)`` for every word found. Almost all of those
calls find nothing. :class:`Canonicalizer` asks nltk the same questions, but only when a cheap
test says the answer can be non-empty, and caches every answer:

* ``morphy(form, pos)`` returns something only if ``form`` is in that part of speech's exception
  list or one of ``[form] + rules(form)`` is a WordNet lemma. The rules only rewrite a suffix of at
  most four letters without ``_``, so for a split candidate ``tag[:i] + "_" + tag[i:]`` (whose tail
  is at least three letters long) every such form still starts with ``tag[:i] + "_"``: unless
  ``tag[:i]`` is the part before some ``_`` of some lemma, or the candidate is an exception key,
  nltk's morphy must return None and is not called.
* For the whole tag, the noun forms are built with nltk's own substitution table and looked up
  in the noun lemma set; nltk's morphy is called only when one of them is there.

The answers that survive come from nltk itself, so the result is Listing 1's by construction;
``tests/prep/test_canon.py`` checks equality against Listing 1 on real and junk tags.
"""

from __future__ import annotations

from swagcli.wordnet import get_wordnet

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


_LEX_PREFIX = {"n": "noun.", "v": "verb.", "a": "adj.", "r": "adv."}
_FILE_SUFFIX = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


POS_LIST = ("n", "v", "a", "r")  # nltk's order


def _maybe(form: str, targets, subs_by_last) -> bool:
    """Is ``form``, or a suffix substitution of it, in ``targets``?"""
    if form in targets:
        return True
    for old, new in subs_by_last.get(form[-1:], ()):
        if form.endswith(old) and form[: len(form) - len(old)] + new in targets:
            return True
    return False
_EMPTY: frozenset = frozenset()
_MISSING = object()


def normalize_tag(raw: str) -> str:
    """Lower-case and strip the leading '#' (and surrounding white space)."""
    return raw.strip().lstrip("#").lower()


def synset_key(synsets) -> str:
    """The canonical hashtag's identity: its sorted synset names joined by '+'."""
    return "+".join(sorted(synsets))


class Canonicalizer:
    """Maps hashtags to frozensets of synset names, equal to Listing 1's ``get_synsets``."""

    def __init__(self, allowed_senses=ALLOWED_SENSES, min_len: int = MIN_LEN):
        wn = get_wordnet()
        self.wn = wn
        self.allowed = frozenset(allowed_senses)
        self.min_len = min_len
        index = wn._lemma_pos_offset_map
        self._lemmas = {p: set() for p in POS_LIST}
        for lemma, by_pos in index.items():
            for p in by_pos:
                if p in self._lemmas:
                    self._lemmas[p].add(lemma)
        self._exceptions = {p: wn._exception_map[p] for p in POS_LIST}
        # nltk's suffix substitutions per part of speech, grouped by the suffix's last letter
        self._subs = {}
        for p in POS_LIST:
            by_last: dict[str, list] = {}
            for old, new in wn.MORPHOLOGICAL_SUBSTITUTIONS[p]:
                by_last.setdefault(old[-1], []).append((old, new))
            self._subs[p] = by_last
        # every lemma or exception entry with an underscore, split at each underscore:
        # head -> the set of what follows "head_"
        tails: dict[str, set] = {}
        words = {w for by in self._lemmas.values() for w in by}
        words.update(w for exc in self._exceptions.values() for w in exc)
        for w in words:
            j = w.find("_")
            while j != -1:
                tails.setdefault(w[:j], set()).add(w[j + 1:])
                j = w.find("_", j + 1)
        self._split_tails = tails
        self._any_subs: dict[str, list] = {}
        for p in POS_LIST:
            for last, rules in self._subs[p].items():
                self._any_subs.setdefault(last, []).extend(rules)
        self._split_memo: dict[str, str | None] = {}
        self._word_synsets: dict[str, frozenset] = {}
        # (part of speech, offset) -> synset name, for the synsets whose lexname is allowed;
        # read straight from the data files instead of building nltk Synset objects.
        self._allowed_pos = [p for p in POS_LIST if any(
            sense.startswith(_LEX_PREFIX[p]) for sense in self.allowed)]
        self._names = {}
        for p in self._allowed_pos:
            self._names.update(self._scan_data_file(p))

    def _scan_data_file(self, pos: str) -> dict:
        """{(pos, offset): name} of the allowed synsets in data.<pos>, named as nltk names them:
        first lemma, lower-cased, its part of speech, and the synset's 1-based rank among that
        lemma's senses."""
        wn = self.wn
        lexnames = wn._lexnames
        index = wn._lemma_pos_offset_map
        out = {}
        with wn.open("data." + _FILE_SUFFIX[pos]) as fp:
            for line in fp:
                if line.startswith("  "):  # licence header
                    continue
                off, lexnum, ss_type, _, lemma, _rest = line.split(" ", 5)
                if lexnames[int(lexnum)] not in self.allowed:
                    continue
                paren = lemma.find("(")
                if paren > 0 and lemma.endswith(")"):  # adjective syntactic marker
                    lemma = lemma[:paren]
                lemma = lemma.lower()
                offset = int(off)
                rank = index[lemma][ss_type].index(offset) + 1
                out[(pos, offset)] = f"{lemma}.{ss_type}.{rank:02d}"
        return out

    # -- nltk's morphology, on nltk's own tables -------------------------------------------------
    def _forms(self, form: str, pos: str) -> list:
        """nltk's ``_morphy(form, pos)``: the form, then its exception entries or its suffix
        substitutions, kept where they are lemmas of that part of speech (in that order)."""
        exc = self._exceptions[pos]
        if form in exc:
            forms = [form, *exc[form]]
        else:
            forms = [form]
            for old, new in self._subs[pos].get(form[-1:], ()):
                if form.endswith(old):
                    forms.append(form[: len(form) - len(old)] + new)
        lemmas = self._lemmas[pos]
        return [f for f in forms if f in lemmas]

    def morphy(self, form: str, pos: str | None = None):
        """nltk's ``morphy``: the first base form of the first part of speech that has one."""
        for p in (pos,) if pos else POS_LIST:
            forms = self._forms(form, p)
            if forms:
                return forms[0]
        return None

    def _synsets_of(self, word: str) -> frozenset:
        """``{s.name() for s in wn.synsets(word) if s._lexname in allowed}``, computed as nltk's
        ``synsets`` does (``_morphy`` per part of speech, then the lemma index), skipping the
        parts of speech that have no allowed lexname."""
        got = self._word_synsets.get(word)
        if got is None:
            index = self.wn._lemma_pos_offset_map
            names = self._names
            found = set()
            lower = word.lower()
            for p in self._allowed_pos:
                for form in dict.fromkeys(self._forms(lower, p)):
                    for offset in index[form].get(p, ()):
                        name = names.get((p, offset))
                        if name is not None:
                            found.add(name)
            got = self._word_synsets[word] = frozenset(found)
        return got

    # -- the public mapping ---------------------------------------------------------------------
    def synsets(self, tag: str) -> frozenset:
        """Listing 1's ``get_synsets(tag)`` as a frozenset of synset names."""
        n = len(tag)
        lo = self.min_len
        if n < lo:
            return _EMPTY
        words = []
        if _maybe(tag, self._lemmas["n"], self._subs["n"]) or tag in self._exceptions["n"]:
            base = self.morphy(tag, "n")
            if base is not None:
                words.append(base)
        split_tails = self._split_tails
        any_subs = self._any_subs
        memo = self._split_memo
        for i in range(lo, n - lo + 1):
            tails = split_tails.get(tag[:i])
            if tails is None:
                continue  # no lemma or exception starts with head + "_": morphy finds nothing
            tail = tag[i:]
            if not _maybe(tail, tails, any_subs):
                continue  # no rule turns head_tail into a lemma, and it is no exception entry
            cand = tag[:i] + "_" + tail
            base = memo.get(cand, _MISSING)
            if base is _MISSING:
                base = memo[cand] = self.morphy(cand)
            if base is not None:
                words.append(base)
        if not words:
            return _EMPTY
        out = self._synsets_of(words[0])
        for w in words[1:]:
            out = out | self._synsets_of(w)
        return out

    def _may_match(self, tags: list) -> set:
        """The tags whose synset set can be non-empty, found in bulk (comprehensions over the
        whole list instead of a call per tag): a noun form or a split candidate passes the
        same tests :meth:`synsets` applies. Every other tag maps to the empty set."""
        lo = self.min_len
        tags = [t for t in tags if len(t) >= lo]
        nouns, noun_exc = self._lemmas["n"], self._exceptions["n"]
        hits = {t for t in tags if t in nouns or t in noun_exc}
        for last, rules in self._subs["n"].items():
            ending = [t for t in tags if t[-1] == last]
            for old, new in rules:
                k = len(old)
                hits.update(t for t in ending if t.endswith(old) and t[:-k] + new in nouns)
        split_tails, any_subs, get = self._split_tails, self._any_subs, self._split_tails.get
        heads = [(t, i) for t in tags for i in range(lo, len(t) - lo + 1) if t[:i] in split_tails]
        hits.update(t for t, i in heads if _maybe(t[i:], get(t[:i]), any_subs))
        return hits

    def canonicalize(self, tags) -> dict[str, frozenset]:
        """{tag: synset set} for the tags with a non-empty set (tags already normalized)."""
        out = {}
        for t in self._may_match(list(tags)):
            s = self.synsets(t)
            if s:
                out[t] = s
        return out
