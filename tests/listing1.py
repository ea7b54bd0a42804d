"""Listing 1 of the SWAG paper (Appendix A), verbatim: the reference that ``swagcli.prep.canon``
must reproduce exactly.

The only changes from the printed listing: the WordNet reader and the allowed senses are
arguments (instead of the module globals ``wordnet`` and ``ALLOWED_SENSES``), and the missing
comma after ``"noun.object"`` in the printed ``ALLOWED_SENSES`` is restored (the printed set
would concatenate it with ``"noun.plant"``).
"""

ALLOWED_SENSES = {
    "noun.animal",
    "noun.artifact",
    "noun.food",
    "noun.object",
    "noun.plant",
    "noun.event",
}


def get_synsets(wordnet, hashtag, allowed_senses=ALLOWED_SENSES):
    """Listing 1's ``get_synsets``: the set of nltk ``Synset`` objects for ``hashtag``."""
    if len(hashtag) < 3:
        return set()
    candidates = {wordnet.morphy(hashtag, wordnet.NOUN)}
    for i in range(3, len(hashtag) - 3 + 1):
        candidates.add(wordnet.morphy(hashtag[:i] + "_" + hashtag[i:]))
    synsets = set()
    for word in candidates:
        if word is None:
            continue
        for synset in wordnet.synsets(word):
            if synset._lexname in allowed_senses:
                synsets.add(synset)
    return synsets


def get_synset_names(wordnet, hashtag, allowed_senses=ALLOWED_SENSES):
    """The same, as a frozenset of synset names (what ``Canonicalizer`` returns)."""
    return frozenset(s.name() for s in get_synsets(wordnet, hashtag, allowed_senses))
