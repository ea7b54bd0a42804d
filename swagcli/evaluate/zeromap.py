"""Target classes -> hashtags for zero-shot transfer (SWAG App. D): a many-to-many mapping.

Each hashtag stands for all WordNet synsets of its canonical key (the vocabulary's ``synsets``),
and each class is mapped to the hashtag(s) with the highest WordNet path similarity between the
class synset and any of the hashtag's synsets; every hashtag reaching that maximum is kept. So a
hashtag may serve several classes (#crane: the bird and the machine) and a class several hashtags
(the synset {porcupine, hedgehog}: #porcupine and #hedgehog).

The scores are exactly nltk's ``Synset.path_similarity`` (``1 / (d + 1)``, ``d`` the fewest
hypernym steps from both synsets up to a common ancestor, instance hypernyms included, with nltk's
fake root for non-noun pairs), but found without calling it per pair: the hyponym graph is
restricted to the ancestors of the hashtag synsets, and from each class a breadth-first search goes
up the hypernyms and down this graph in order of distance, stopping at the first distance at which
a hashtag synset is reached. Mapping all 1000 ImageNet classes against all 82k noun synsets of
WordNet takes about 2 s, where the 82 million pairwise nltk calls would take hours.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from swagcli.errors import SwagError

IMAGENET_SYNSETS = "data/_info/imagenet_synsets.txt"  # inside the installed timm package


# -- the taxonomy ----------------------------------------------------------------------------------
class _Taxonomy:
    """Synsets as integer nodes: hypernym edges (read from nltk on demand) and the hyponym edges
    among the ancestors of the hashtag synsets."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.synsets: list = []
        self._parents: list[list[int] | None] = []
        self.children: dict[int, list[int]] = {}  # only nodes above some hashtag synset
        self._max_up: dict[int, int] = {}
        self.by_max_up: dict[int, list[int]] | None = None  # all hashtag synsets, for non-noun classes
        self._versions: dict[int, str] = {}

    def node(self, synset) -> int:
        i = self.index.get(synset._name)
        if i is None:
            i = self.index[synset._name] = len(self.synsets)
            self.synsets.append(synset)
            self._parents.append(None)
        return i

    def parents(self, i: int) -> list[int]:
        p = self._parents[i]
        if p is None:
            s = self.synsets[i]
            p = self._parents[i] = [self.node(h) for h in s._hypernyms() + s._instance_hypernyms()]
        return p

    def up(self, i: int) -> dict[int, int]:
        """Ancestor -> fewest hypernym steps (nltk's ``_shortest_hypernym_paths`` without root)."""
        dist = {i: 0}
        frontier = [i]
        d = 0
        while frontier:
            d += 1
            nxt = []
            for v in frontier:
                for p in self.parents(v):
                    if p not in dist:
                        dist[p] = d
                        nxt.append(p)
            frontier = nxt
        return dist

    def needs_root(self, i: int) -> bool:
        """nltk's ``Synset._needs_root`` (a fake root for all but WordNet >= 1.7 nouns), without
        its cost: nltk re-reads the version from the data file on every call."""
        s = self.synsets[i]
        if s._pos != "n":
            return True
        reader = s._wordnet_corpus_reader
        version = self._versions.get(id(reader))
        if version is None:
            version = self._versions[id(reader)] = reader.get_version()
        return version == "1.6"

    def max_up(self, i: int) -> int:
        """The fake root's distance minus one, as nltk puts it: the largest of :meth:`up`."""
        m = self._max_up.get(i)
        if m is None:
            m = self._max_up[i] = max(self.up(i).values())
        return m


def _build(hashtag_synsets: list[list]) -> tuple[_Taxonomy, dict[int, list[int]], dict[int, list[int]]]:
    """The taxonomy, node -> hashtag ids, and (for non-noun synsets, whose pairs get nltk's fake
    root) max_up -> node list."""
    from swagcli.wordnet import get_wordnet

    wn = None
    tax = _Taxonomy()
    tags_of: dict[int, list[int]] = {}
    for h, names in enumerate(hashtag_synsets):
        for name in names:
            if isinstance(name, str):
                if wn is None:
                    wn = get_wordnet()
                try:
                    s = wn.synset(name)
                except Exception as e:  # nltk: WordNetError / ValueError
                    raise SwagError(f"hashtag {h}: no WordNet synset {name!r}") from e
            else:
                s = name
            ids = tags_of.setdefault(tax.node(s), [])
            if not ids or ids[-1] != h:
                ids.append(h)
    # hyponym edges within the union of the hashtag synsets' ancestor closures: enough to go
    # down from any ancestor of a class to every hashtag synset below it, by its shortest way
    seen: set[int] = set()
    todo = list(tags_of)
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        for p in tax.parents(v):
            tax.children.setdefault(p, []).append(v)
            todo.append(p)
    rooted: dict[int, list[int]] = {}
    for v in tags_of:
        if tax.needs_root(v):
            rooted.setdefault(tax.max_up(v), []).append(v)
    return tax, tags_of, rooted


def _nearest(tax: _Taxonomy, tags_of: dict, rooted: dict, c: int) -> tuple[int | None, list[int]]:
    """Fewest steps from class node ``c`` to any hashtag synset (nltk's shortest_path_distance
    with path_similarity's root rule), and the hashtag synset nodes at that distance."""
    up = tax.up(c)
    # nltk adds a fake root (max up-distance + 1 on each side) when either synset is not a noun
    if tax.needs_root(c):
        pool = tax.by_max_up
        if pool is None:
            pool = tax.by_max_up = {}
            for v in tags_of:
                pool.setdefault(tax.max_up(v), []).append(v)
    else:
        pool = rooted
    top = max(up.values())
    root_cap = top + 1 + min(pool) + 1 if pool else None
    seeds: dict[int, list[int]] = {}
    for a, d in up.items():
        seeds.setdefault(d, []).append(a)
    last_seed = max(seeds)
    children = tax.children
    visited: set[int] = set()
    frontier: list[int] = []
    level = 0
    found: list[int] = []
    while root_cap is None or level <= root_cap:
        cur = []
        for v in frontier + seeds.get(level, []):
            if v not in visited:
                visited.add(v)
                cur.append(v)
        found = [v for v in cur if v in tags_of]
        if found:
            break
        if not cur and level >= last_seed:
            break
        frontier = [ch for v in cur for ch in children.get(v, ())]
        level += 1
    best = level if found else None
    if root_cap is not None and (best is None or root_cap <= best):
        at_root = pool.get(root_cap - top - 2, [])
        if best is None or root_cap < best:
            best, found = root_cap, list(at_root)
        else:
            found = sorted(set(found) | set(at_root))
    return best, found


# -- the mapping -----------------------------------------------------------------------------------
def class_hashtags(class_synsets: list, hashtag_synsets: list[list[str]]) -> list[dict]:
    """Map each class to the hashtag(s) of highest WordNet path similarity (SWAG App. D).

    ``class_synsets``: one nltk Synset per class (None: a class with no synset, mapped to nothing).
    ``hashtag_synsets``: per hashtag id, its synset names (a vocabulary's ``synsets`` lists; nltk
    Synsets are accepted too). Returns per class ``{"hashtags": [ids, ascending], "similarity":
    s}``: every hashtag with a synset at the maximum ``path_similarity`` ``s`` (0 when none).
    """
    tax, tags_of, rooted = _build(hashtag_synsets)
    out = []
    for syn in class_synsets:
        if syn is None or not tags_of:
            out.append({"hashtags": [], "similarity": 0.0})
            continue
        best, nodes = _nearest(tax, tags_of, rooted, tax.node(syn))
        if best is None:
            out.append({"hashtags": [], "similarity": 0.0})
            continue
        ids = sorted({h for v in nodes for h in tags_of[v]})
        out.append({"hashtags": ids, "similarity": 1.0 / (best + 1)})
    return out


def vocab_hashtag_synsets(vocab) -> list[list[str]]:
    """The ``hashtag_synsets`` argument for a :class:`~swagcli.prep.vocab.Vocab` (or its document)."""
    hashtags = vocab["hashtags"] if isinstance(vocab, dict) else vocab.hashtags
    return [list(h["synsets"]) for h in hashtags]


def mapping_matrix(mapping: list[dict], num_hashtags: int) -> np.ndarray:
    """[C, H] float32: 1 where class c maps to hashtag h (to pool hashtag scores into class scores,
    or to initialize a classifier head)."""
    m = np.zeros((len(mapping), num_hashtags), dtype=np.float32)
    for c, entry in enumerate(mapping):
        ids = list(entry["hashtags"])
        if ids and (min(ids) < 0 or max(ids) >= num_hashtags):
            raise SwagError(f"class {c}: hashtag id out of range 0..{num_hashtags - 1}")
        m[c, ids] = 1.0
    return m


def hashtag_fanout(matrix: np.ndarray) -> np.ndarray:
    """[H] int64: N_h, the number of classes each hashtag is mapped to (0 for unused hashtags)."""
    return (np.asarray(matrix) != 0).sum(axis=0).astype(np.int64)


# -- ImageNet-1k -----------------------------------------------------------------------------------
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order, from the list the installed timm ships."""
    spec = importlib.util.find_spec("timm")  # locates the package without importing it (torch)
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / IMAGENET_SYNSETS
        if path.is_file():
            wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if len(wnids) != 1000 or len(set(wnids)) != 1000:
                raise SwagError(f"{path}: expected 1000 distinct wnids, found {len(wnids)}")
            return wnids
    raise SwagError(f"ImageNet class list not found: no timm/{IMAGENET_SYNSETS} (is timm installed?)")


def imagenet_class_synsets() -> list:
    """The nltk synsets of the 1000 ImageNet-1k classes, in class-index order."""
    from swagcli.wordnet import synset_from_wnid

    return [synset_from_wnid(w) for w in imagenet_wnids()]
