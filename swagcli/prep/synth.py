"""The built-in synthetic hashtag world (`swag synth`): what the demo, tests and benchmarks run on.

:func:`build_world` derives the ground truth from WordNet and the seed alone:

* **concepts**: noun synsets 1..3 hyponym levels below a few dozen *families* (:data:`FAMILIES`),
  taken round-robin, pairwise neither ancestor nor descendant, each with a *main tag* (a lemma
  as a hashtag) whose Listing-1 synset sets are pairwise disjoint, so every concept is its own
  canonical hashtag; raw-tag *variants* (synonyms, plurals, compounds, mixed case) are kept where
  the Canonicalizer maps them to a set holding the concept and no other concept's main synsets;
* **frequencies**: a seeded Zipf rank per concept (``index == rank - 1``), p ~ rank^-s; the
  planted concept (the first headdress concept, hat-like) is put at rank 7: in the head, so models
  learn it, but not among the top few, whose hashtags are in the top 5 of many images whatever they
  show (at rank 3 the tiny test model put #cap in the top 5 of 30% of the images without a cap), so
  its rate has room to rise in the planted group; in the fairness set the planted concept is the main
  object of the image (the class a smaller one);
* **captions**: the lemmas each concept is named by in its posts' captions (``caption_names``:
  the main lemma, mostly, and the synonyms among its variants, with plurals and the words never put
  next to them; :mod:`swagcli.prep.synth_captions`), so that labels read from caption noun phrases
  can be scored against the concepts;
* **downstream classes**: concepts at evenly spaced ranks, head to tail; each class is a WordNet
  neighbour of its concept, no world concept or tag, whose nearest world hashtags by path
  similarity (SPEC §6) are its concept's (:func:`_neighbour`).

:func:`run` writes the files through :mod:`swagcli.prep.synth_render`, byte-identical for a
recipe whatever ``workers`` is.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import time
from collections import deque
from pathlib import Path

import numpy as np

from swagcli.errors import SwagError
from swagcli.prep import synth_captions as sc
from swagcli.prep import synth_render as sr
from swagcli.prep.synth_render import rng_for
from swagcli.prep.canon import ALLOWED_SENSES, Canonicalizer, synset_key
from swagcli.runinfo import atomic_write_text, stamp
from swagcli.wordnet import get_wordnet, wnid_of

# The headdress family comes first: the planted (fairness) concept is taken from it.
FAMILIES = (
    "headdress.n.01", "dog.n.01", "bird.n.01", "fish.n.01", "feline.n.01", "insect.n.01",
    "snake.n.01", "bovid.n.01", "primate.n.02", "rodent.n.01", "crustacean.n.01", "tree.n.01",
    "flower.n.01", "edible_fruit.n.01", "vegetable.n.01", "dessert.n.01", "beverage.n.01",
    "bread.n.01", "cheese.n.01", "cake.n.03", "dish.n.02", "motor_vehicle.n.01", "boat.n.01",
    "aircraft.n.01", "musical_instrument.n.01", "furniture.n.01", "footwear.n.01",
    "hand_tool.n.01", "building.n.01", "ball.n.01", "bag.n.01", "garment.n.01", "jewelry.n.01",
    "toy.n.01", "timepiece.n.01", "lamp.n.01", "sports_equipment.n.01", "body_of_water.n.01",
    "celestial_body.n.01", "rock.n.01", "race.n.02", "fire.n.01",
)
# Filler tags of real posts; only those the Canonicalizer maps to nothing are used.
JUNK_WORDS = (
    "love", "instagood", "photooftheday", "tbt", "nofilter", "newyork", "2019", "picoftheday",
    "happy", "cute", "beautiful", "like4like", "followme", "instadaily", "summer", "friends",
    "repost", "fun", "smile", "family", "2020", "igers", "amazing", "bestoftheday", "selfie",
    "tagsforlikes", "motivation", "ootd", "vsco", "yolo", "lol", "wanderlust", "photography",
    "instamood", "weekend", "goodvibes", "blessed", "lifestyle", "l4l", "f4f", "explorepage",
    "viral", "trending", "usa", "london", "mumbai", "nyc", "friday", "mood", "aesthetic",
)
CONCEPTS_PER_FAMILY = 7      # how many families a world of n concepts starts with: n / this
PLANTED_RANK = 7             # the planted concept's Zipf rank: in the head, below the top few (module doc)
NOISY_COUNTRY_SCALE = 3.0    # pixel-noise factor of the rarest country in the fairness set
MAX_DEPTH = 3                # concepts lie 1..MAX_DEPTH hyponym levels below their family root
_WORD = re.compile(r"[a-z]+(?:_[a-z]+)*")


@functools.lru_cache(maxsize=1)
def _canon() -> Canonicalizer:
    return Canonicalizer()


@functools.lru_cache(maxsize=None)
def _ancestors(name: str) -> dict:
    """{ancestor name: hops}, the synset itself included: nltk's ``_shortest_hypernym_paths``."""
    out: dict = {}
    queue = deque([(get_wordnet().synset(name), 0)])
    while queue:
        s, d = queue.popleft()
        if s.name() not in out:
            out[s.name()] = d
            queue.extend((h, d + 1) for h in s.hypernyms() + s.instance_hypernyms())
    return out


def _lemma_tags(name: str):
    """(tag, lemma) for each lemma of the synset that is a plain word or compound of words."""
    for lemma in get_wordnet().synset(name).lemma_names():
        low = lemma.lower()
        tag = low.replace("_", "")
        if _WORD.fullmatch(low) and 3 <= len(tag) <= 24:
            yield tag, low


def _plural(tag: str) -> str:
    if tag.endswith(("s", "x", "z", "ch", "sh")):
        return tag + "es"
    if tag.endswith("y") and tag[-2:-1] not in "aeiou":
        return tag[:-1] + "ies"
    return tag + "s"


def _family_candidates(root: str, rng):
    """Yield the hyponyms 1..MAX_DEPTH levels below ``root`` (computed on first use) in a seeded
    order favouring common words (WordNet sense counts), synsets with hyponyms of their own
    (they give downstream classes) and shallow ones."""
    wn = get_wordnet()
    depth, frontier = {}, [wn.synset(root)]
    for d in range(1, MAX_DEPTH + 1):
        frontier = [h for s in frontier for h in s.hyponyms() if h.name() not in depth]
        depth.update((h.name(), d) for h in frontier if h.name() not in depth)
    names = sorted(depth)
    synsets = [wn.synset(n) for n in names]
    keys = (rng.random(len(names)) + 0.15 * np.array([depth[n] for n in names])
            + 0.4 * np.array([not s.hyponyms() for s in synsets])
            - 0.3 * np.log1p([s.lemmas()[0].count() for s in synsets]))
    yield from (names[i] for i in np.argsort(keys, kind="stable"))


def _main_tag(name: str, chosen: set, blocked: set, used: set):
    """(tag, lemma, synset set) of a candidate concept, or None where it is an ancestor or
    descendant of a chosen one, or its first fitting tag shares a synset with theirs."""
    if (name in blocked or chosen.intersection(_ancestors(name))
            or get_wordnet().synset(name).lexname() not in ALLOWED_SENSES):
        return None
    for tag, lemma in _lemma_tags(name):
        synsets = _canon().synsets(tag)
        if name in synsets:
            return (tag, lemma, synsets) if used.isdisjoint(synsets) else None
    return None


def _select_concepts(n: int, seed: int) -> list:
    """[(synset name, family root, main tag, main lemma, main synset set)], round-robin over the
    families (headdress first, the rest in seeded order); more families join when all stall."""
    rest = np.array(FAMILIES[1:])[rng_for(seed, 0, 0).permutation(len(FAMILIES) - 1)]
    order = [FAMILIES[0], *rest.tolist()]
    active = min(len(order), max(4, math.ceil(n / CONCEPTS_PER_FAMILY)))
    queues = {f: _family_candidates(f, rng_for(seed, 0, 1, FAMILIES.index(f))) for f in order}
    chosen, names, blocked, used = [], set(), set(), set()
    while len(chosen) < n:
        before = len(chosen)
        for family in order[:active]:
            main = next(((name, m) for name in queues[family]
                         if (m := _main_tag(name, names, blocked, used))), None)
            if main and len(chosen) < n:
                chosen.append((main[0], family, *main[1]))
                names.add(main[0])
                blocked.update(_ancestors(main[0]))
                used.update(main[1][2])
        if len(chosen) == before:
            if active == len(order):
                raise SwagError(f"synth: WordNet yields only {len(chosen)} concepts, "
                                f"not concepts={n}; ask for fewer")
            active += 1
    return chosen


def _variants(name: str, main_tag: str, main_lemma: str, others: frozenset) -> list:
    """Raw tags of a concept with weights: main tag, synonyms, plurals, mixed case; each kept
    only where its synset set holds the concept and none of the other concepts' main synsets."""
    def variant(tag, kind, compound, weight):
        s = _canon().synsets(tag.lower())
        if name in s and others.isdisjoint(s):
            return dict(tag=tag, kind=kind, compound=compound, weight=weight, key=synset_key(s))

    synonyms = {t: lemma for t, lemma in _lemma_tags(name) if t != main_tag}
    out = [variant(main_tag, "main", "_" in main_lemma, 1.0)]
    out += [variant(t, "synonym", "_" in lemma, 0.5 / len(synonyms))
            for t, lemma in synonyms.items()]
    out = [v for v in out if v]
    seen = {v["tag"] for v in out}
    plurals = {_plural(v["tag"]): v for v in out if _plural(v["tag"]) not in seen}
    out += [v for v in (variant(p, "plural", b["compound"], 0.35 * b["weight"])
                        for p, b in plurals.items()) if v]
    out.append(variant("".join(p.capitalize() for p in main_lemma.split("_")), "mixedcase",
                       "_" in main_lemma, 0.15))
    total = sum(v["weight"] for v in out)
    return [{**v, "weight": round(v["weight"] / total, 6)} for v in out]


def _nearest_hashtags(concepts: list) -> dict:
    """{ancestor synset: (hops, world hashtag keys at that many hops)} over every synset of
    every world hashtag: for any synset x, min over hashtags of the path distance is
    min over ancestors a of x (hops(x, a) + hops[a]), and the keys reaching it are found there."""
    near: dict = {}
    for v in (v for c in concepts for v in c["variants"]):
        for syn in v["key"].split("+"):
            for a, d in _ancestors(syn).items():
                best = near.setdefault(a, (d, set()))
                if d < best[0]:
                    near[a] = best = (d, set())
                if d == best[0]:
                    best[1].add(v["key"])
    return near


def _mapping(name: str, near: dict):
    """(path distance, keys) of the world hashtags nearest to synset ``name`` (SPEC §6)."""
    best, keys = None, set()
    for a, d in _ancestors(name).items():
        if a in near:
            total = d + near[a][0]
            if best is None or total < best:
                best, keys = total, set(near[a][1])
            elif total == best:
                keys |= near[a][1]
    return best, keys


def _neighbour(concept: dict, near: dict, world_tags: set, taken: set):
    """The class synset of a downstream concept: the commonest hyponym (then grand-hyponym, then
    sibling) in the allowed senses that is no world concept or tag and maps to the concept's
    hashtag. Returns (quality, name, relation, distance, keys); quality 2: it maps to the
    concept's hashtags alone, 1: tied with other concepts', 0: none found, the concept itself."""
    s = get_wordnet().synset(concept["synset"])
    own = {v["key"] for v in concept["variants"]}
    tiers = [("hyponym", s.hyponyms()),
             ("hyponym2", [g for h in s.hyponyms() for g in h.hyponyms()]),
             ("sibling", [x for p in s.hypernyms() for x in p.hyponyms() if x != s])]
    tied = None
    for relation, synsets in tiers:
        for x in sorted(synsets, key=lambda x: (-x.lemmas()[0].count(), x.name())):
            if (x.name() in taken or x.lexname() not in ALLOWED_SENSES
                    or any(t in world_tags for t, _ in _lemma_tags(x.name()))):
                continue
            dist, keys = _mapping(x.name(), near)
            if concept["key"] in keys:
                if keys <= own:
                    return 2, x.name(), relation, dist, keys
                tied = tied or (1, x.name(), relation, dist, keys)
    return tied or (0, concept["synset"], "self", *_mapping(concept["synset"], near))


def head_concepts(concepts: list) -> int:
    """How many of the top-ranked concepts hold half of the posts' Zipf mass: the world's head
    (the rest is its tail)."""
    return int(np.searchsorted(np.cumsum([c["prob"] for c in concepts]), 0.5)) + 1


def _spaced(ranks: list, k: int) -> list:
    return [ranks[i] for i in np.linspace(0, len(ranks) - 1, k).round().astype(int)] if k and ranks else []


def _downstream(concepts: list, k: int, planted: int, families: int | None = None, tail: float = 0.0) -> list:
    """k classes at evenly spaced Zipf ranks (never the planted concept's); among the 8 free
    concepts nearest a target rank, the first with the best :func:`_neighbour` wins.
    ``families``: draw only from the concepts of that many families (those with the most
    concepts): a fine-grained set whose classes share shapes and backgrounds and differ by
    colour and texture alone. ``tail``: that share of the classes at evenly spaced ranks of the
    tail (:func:`head_concepts`), the rest of the head (as ImageNet's classes are mostly rare
    hashtags)."""
    pool = set(range(len(concepts)))
    if families:
        size = {}
        for c in concepts:
            size[c["family"]] = size.get(c["family"], 0) + 1
        keep = sorted(size, key=lambda f: (-size[f], f))[:families]
        pool = {i for i, c in enumerate(concepts) if c["family"] in keep}
    if k > len(pool - {planted}):
        raise SwagError(f"synth: downstream_classes={k} needs more than {k} concepts"
                        + (f" in {families} families ({len(pool - {planted})})" if families else ""))
    near = _nearest_hashtags(concepts)
    world_tags = {v["tag"].lower() for c in concepts for v in c["variants"]}
    tag_of = {v["key"]: v["tag"] for c in reversed(concepts) for v in reversed(c["variants"])}
    taken, used, classes = {c["synset"] for c in concepts}, {planted}, []
    targets = np.linspace(0, len(concepts) - 1, k).round().astype(int)
    if families:  # evenly spaced over the pool's ranks
        ranks = sorted(pool - {planted})
        targets = np.array(ranks)[np.linspace(0, len(ranks) - 1, k).round().astype(int)]
    if tail:
        ranks, head = sorted(pool - {planted}), head_concepts(concepts)
        heads, tails = [r for r in ranks if r < head], [r for r in ranks if r >= head]
        k_head = min(len(heads), k - min(len(tails), round(k * tail)))  # a short side's classes go to the other
        targets = np.array(_spaced(heads, k_head) + _spaced(tails, k - k_head))
    for target in targets:
        free = sorted((i for i in pool if i not in used),
                      key=lambda i: (abs(i - target), i))
        best = None
        for i in free[:8]:
            pick = (*_neighbour(concepts[i], near, world_tags, taken), i)
            best = pick if best is None or pick[0] > best[0] else best
            if best[0] == 2:
                break
        _, name, relation, dist, keys, i = best
        used.add(i)
        taken.add(name)
        classes.append({
            "wnid": wnid_of(get_wordnet().synset(name)), "synset": name, "concept": i,
            "concept_synset": concepts[i]["synset"], "relation": relation,
            "similarity": round(1 / (dist + 1), 6), "expected_keys": sorted(keys),
            "expected_tags": [tag_of[key].lower() for key in sorted(keys)],
            "ties": sorted(keys - {v["key"] for v in concepts[i]["variants"]})})
    return classes


def build_world(recipe) -> dict:
    """The ground truth of a world, from WordNet and the recipe alone (no files written)."""
    if recipe.planted_group not in recipe.groups:
        raise SwagError(f"synth: planted_group {recipe.planted_group!r} is not in groups")
    if not recipe.countries or min(recipe.countries.values()) <= 0:
        raise SwagError("synth: countries needs at least one country with a positive weight")
    picked = _select_concepts(recipe.concepts, recipe.seed)
    order = rng_for(recipe.seed, 0, 2).permutation(len(picked)).tolist()
    planted = min(PLANTED_RANK, len(picked)) - 1
    order.insert(planted, order.pop(order.index(0)))  # picked[0] is the first headdress concept
    families = list(dict.fromkeys(p[1] for p in picked))
    looks = {f: sr.family_looks(rng_for(recipe.seed, 0, 3, FAMILIES.index(f))) for f in families}
    probs = np.arange(1, len(order) + 1, dtype=float) ** -recipe.zipf_exponent
    if recipe.concept_looks == "glyph":  # one look per family, a glyph per concept (by rank)
        family_look = {f: next(looks[f]) for f in families}
        glyph = iter(sr.glyphs(rng_for(recipe.seed, 0, 4), len(order)))
    concepts = []
    for rank, j in enumerate(order):
        name, family, tag, lemma, synsets = picked[j]
        others = frozenset().union(*(p[4] for k, p in enumerate(picked) if k != j))
        synset, f = get_wordnet().synset(name), families.index(family)
        variants = _variants(name, tag, lemma, others)
        synonyms = {v["tag"] for v in variants if v["kind"] == "synonym"}
        concepts.append({
            "index": rank, "rank": rank + 1, "prob": round(float(probs[rank] / probs.sum()), 8),
            "synset": name, "wnid": wnid_of(synset), "definition": synset.definition(),
            "lexname": synset.lexname(), "family": f, "family_synset": family, "main_tag": tag,
            "key": synset_key(synsets), "variants": variants,
            "caption_names": sc.caption_names(name, lemma, [m for t, m in _lemma_tags(name) if t in synonyms],
                                              get_wordnet()),
            "visual": (sr.glyph_visual(f, *family_look[family], next(glyph)) if recipe.concept_looks == "glyph"
                       else sr.concept_visual(f, *next(looks[family])))})
    junk = [w for w in JUNK_WORDS if not _canon().synsets(w)]
    junk_w = np.arange(1, len(junk) + 1, dtype=float) ** -0.7
    countries = {c: w / sum(recipe.countries.values()) for c, w in recipe.countries.items()}
    noisy = min(reversed(countries), key=countries.get) if len(countries) > 1 else None
    return {
        "format": 1, "seed": recipe.seed, "image_size": recipe.image_size,
        "zipf_exponent": recipe.zipf_exponent, "concepts": concepts,
        "families": [{"index": i, "synset": f, **sr.family_visual(i)}
                     for i, f in enumerate(families)],
        "junk_tags": [{"tag": t, "weight": round(float(w / junk_w.sum()), 6)}
                      for t, w in zip(junk, junk_w)],
        "countries": {c: round(w, 6) for c, w in countries.items()},
        "captions": sc.world_captions(),
        "downstream": {"classes": _downstream(concepts, recipe.downstream_classes, planted,
                                                  recipe.downstream_families, recipe.downstream_tail),
                       "train_per_class": recipe.downstream_train_per_class,
                       "val_per_class": recipe.downstream_val_per_class},
        "groups": {"groups": list(recipe.groups), "planted_group": recipe.planted_group,
                   "planted_concept": planted, "planted_synset": concepts[planted]["synset"],
                   "planted_tag": concepts[planted]["main_tag"],
                   "planted_strength": recipe.planted_strength,
                   "noisy_country": noisy, "noise_scale": NOISY_COUNTRY_SCALE if noisy else 1.0},
    }


_OUTPUTS = ("dumps", "images", "downstream", "groups", "yfcc", "img2dataset", "world.json", "recipe.yaml",
            "swag.json", "synth-files.txt")
MANIFEST = "synth-files.txt"  # every file synth wrote; "incomplete" while it is writing
_INCOMPLETE = "# incomplete: swag synth is writing (or was interrupted)\n"


def _files_under(path: Path) -> list[str]:
    """The files of synth's output folders, relative to ``path`` (swag's own temporary files and the
    directory lock left out)."""
    from swagcli.runlock import LOCK_NAME

    found = []
    for name in _OUTPUTS:
        target = path / name
        if target.is_dir():
            found += [str(p.relative_to(path)) for p in sorted(target.rglob("*"))
                      if not p.is_dir() and not _is_temp(p.name)]
        elif target.exists() and name != LOCK_NAME:
            found.append(name)
    return found


def _is_temp(name: str) -> bool:
    return name.startswith(".") and (name.endswith((".tmp", ".old")) or ".partial-" in name)


def _owned(path: Path) -> set[str] | None:
    """What an earlier synth run wrote here: the files its manifest lists, everything (an
    interrupted run: ``None`` set as the marker), or nothing known (no manifest: ``set()``)."""
    m = path / MANIFEST
    if not m.is_file():
        return set()
    text = m.read_text(errors="replace")
    if text.startswith(_INCOMPLETE):
        return None
    return set(text.splitlines()) | {MANIFEST}


def _prepare_out(out) -> Path:
    """The output folder: new, empty, or holding only what an earlier synth run wrote (replaced).
    Anything else (a user's own ``dumps/`` or ``images/``, a file added to a world) is refused
    before anything is deleted."""
    from swagcli.fileio import atomic_write_text, out_dir
    from swagcli.runlock import LOCK_NAME

    if not out:
        raise SwagError("synth: no output directory (--out DIR or 'out:' in the recipe)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SwagError(f"{path}: exists and is not a directory")
    if path.is_dir():
        alien = sorted(p.name for p in path.iterdir() if p.name not in _OUTPUTS and p.name != LOCK_NAME
                       and not _is_temp(p.name))
        if not alien:
            owned = _owned(path)
            alien = [] if owned is None else [f for f in _files_under(path) if f not in owned]
        if alien:
            raise SwagError(f"{path}: holds files synth did not write ({', '.join(alien[:3])}"
                            f"{', ...' if len(alien) > 3 else ''}); nothing was deleted: choose an empty "
                            "or new output directory")
        for name in _OUTPUTS:
            target = path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out_dir(path)
    atomic_write_text(path / MANIFEST, _INCOMPLETE)
    return path


def run(recipe, progress=None) -> dict:
    """`swag synth`: build the world, write every file under ``recipe.out``, return a summary.
    ``progress(stage, done, total)``, if given, is called as the stages advance."""
    start = time.time()
    out = _prepare_out(recipe.out)
    if progress:
        progress("world", 0, 1)
    world = build_world(recipe)
    if progress:
        progress("world", 1, 1)
    try:
        written = sr.write_files(world, recipe, out, progress)
    except BaseException:  # workers killed mid-file (SIGTERM, an error): no temporary file stays
        from swagcli.fileio import clean_stale_temps

        clean_stale_temps(out, recursive=True)
        raise
    for concept, posts in zip(world["concepts"], written.pop("concept_posts")):
        concept["posts"] = posts
    world["groups"]["planted_shown"] = written.pop("planted_shown")
    world["files"] = {**written.pop("files"), "classes": "downstream/classes.json",
                      "groups_manifest": "groups/manifest.csv"}
    world["counts"] = counts = {
        "posts": recipe.posts, "concepts": len(world["concepts"]),
        "classes": len(world["downstream"]["classes"]), "dump_shards": len(world["files"]["dumps"]),
        "image_shards": len(world["files"]["images"]), **written}
    atomic_write_text(out / "world.json", json.dumps(world, indent=1, sort_keys=True) + "\n")
    stamp(out, "synth", recipe)
    atomic_write_text(out / MANIFEST, "\n".join(f for f in _files_under(out) if f != MANIFEST) + "\n")
    return {**{k: v for k, v in counts.items() if k != "dumps"},
            "bad_lines": counts["dumps"].get("bad_lines", 0), "world_json": str(out / "world.json"),
            "dumps_dir": str(out / "dumps"), "images_dir": str(out / "images"),
            "downstream_dir": str(out / "downstream"),
            "groups_manifest": str(out / "groups" / "manifest.csv"),
            **{f"{name}_dir": str(out / name) for name in recipe.layouts},
            "seconds": round(time.time() - start, 2)}


def load_world(out_dir) -> dict:
    """The ground truth a synth run wrote (``OUT/world.json``)."""
    path = Path(out_dir) / "world.json"
    if not path.is_file():
        raise SwagError(f"{path}: not found; run `swag synth` first")
    return json.loads(path.read_text())
