"""`swag vocab build`: hashtag dumps -> canonical hashtag vocabulary (SPEC.md §1, SWAG App. A).

Two streaming passes over the shards, each shard independent, so they run in parallel here
(``workers``) and as job arrays on a cluster:

1. :func:`count_tags` counts, per raw tag, the images carrying it (an image counts once), only
   over posts of ``countries`` if given. Shard counts merge by addition (:func:`merge_counts`).
2. The tags on at least ``min_count`` images are canonicalized (Listing 1); tags with equal
   synset sets form one canonical hashtag; tags with none are dropped.
3. :func:`count_canonical` counts, per canonical hashtag, the images (of every country) that
   carry at least one of its raw tags -- f(h) -- again per shard, merged by addition.

Memory grows with the number of distinct tags, never with the number of images.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from contextlib import closing
from pathlib import Path

from swagcli.errors import SwagError
from swagcli.prep.canon import Canonicalizer, synset_key
from swagcli.prep.dumps import (Labels, ReadSpec, ReadStats, expand_dumps, no_posts_error, read_report,
                                read_spec, sources_info)
from swagcli.prep.parallel import gc_paused, map_shards

VOCAB_FORMAT = "swag-vocab/1"


# -- pass 1 and 3, one shard each ------------------------------------------------------------------
def count_tags(path: str, fmt: "str | ReadSpec" = "auto", countries: list[str] | None = None,
               caption_hashtags: bool = True, spill: str | None = None) -> tuple["TagCounts", ReadStats]:
    """Images per raw tag in one dump (posts of ``countries`` only, if given), counted on the
    blocks of :func:`~swagcli.prep.blocks.iter_blocks` (tags are distinct per post). ``spill``: also
    write every post's tags there (arrow IPC), for :func:`count_canonical` to read instead of the
    dump (given up, the file removed, where it cannot be written)."""
    import numpy as np
    import pyarrow as pa

    from swagcli.prep.blocks import iter_blocks

    stats = ReadStats()
    spec = fmt if isinstance(fmt, ReadSpec) else ReadSpec(fmt, caption_hashtags)
    allowed = set(countries) if countries else None
    parts = TagCounts.empty()
    writer = _Spill(spill)
    for block in iter_blocks(Path(path), spec, stats, country=allowed is not None):
        writer.write(block)
        tags = block.tags
        if allowed is not None:
            mine = np.fromiter((c in allowed for c in block.country), dtype=bool, count=len(block))
            tags = tags[np.repeat(mine, np.diff(block.ptr))]
        counts = np.bincount(tags, minlength=len(block.names))
        some = np.flatnonzero(counts)
        parts = parts.add(TagCounts(block.names.take(pa.array(some)), counts[some]))
    writer.close()
    return parts, stats  # summed by name where it is read (merge_counts), or pickled


class _Spill:
    """Pass 1's blocks (names, codes, tags a post) to an arrow IPC file, one record batch a block."""

    def __init__(self, path: str | None):
        self.path, self.w, self.f, self.posts = path, None, None, 0
        if path is not None:
            try:
                import pyarrow as pa
                import pyarrow.ipc as ipc

                self.f = open(path, "wb")
                self.schema = pa.schema([("names", pa.list_(pa.string())), ("tags", pa.list_(pa.int32())),
                                         ("lens", pa.list_(pa.int32()))])
                self.w = ipc.new_stream(self.f, self.schema)
            except OSError:
                self._drop()

    def write(self, block) -> None:
        if self.w is None:
            return
        import numpy as np
        import pyarrow as pa

        def one(a):
            return pa.ListArray.from_arrays(pa.array([0, len(a)], type=pa.int32()), a)

        try:
            self.w.write_batch(pa.record_batch(
                [one(block.names), one(pa.array(block.tags.astype(np.int32))),
                 one(pa.array(np.diff(block.ptr).astype(np.int32)))], schema=self.schema))
            self.posts += len(block)
        except OSError:
            self._drop()

    def close(self) -> None:
        if self.w is not None:
            try:  # the end: no posts, lens [-1, posts written] (a spill without it was cut short)
                import pyarrow as pa

                self.w.write_batch(pa.record_batch(
                    [pa.array([[]], type=pa.list_(pa.string())), pa.array([[]], type=pa.list_(pa.int32())),
                     pa.array([[-1, self.posts]], type=pa.list_(pa.int32()))], schema=self.schema))
                self.w.close()
                self.f.close()
            except OSError:
                self._drop()

    def _drop(self) -> None:
        import contextlib
        import os

        with contextlib.suppress(Exception):
            if self.f is not None:
                self.f.close()
        with contextlib.suppress(OSError):
            os.remove(self.path)
        self.w = self.f = None


def _spilled_blocks(path: str):
    """The blocks a :class:`_Spill` wrote (names, codes, ptr)."""
    import numpy as np
    import pyarrow.ipc as ipc

    from swagcli.prep.blocks import offsets

    posts = 0
    with open(path, "rb") as f, ipc.open_stream(f) as r:
        for batch in r:
            names, tags, lens = (batch.column(k).values for k in range(3))
            lens = lens.to_numpy().astype(np.int64)
            if len(lens) == 2 and lens[0] == -1:
                if lens[1] != posts:
                    raise ValueError(f"{path}: {posts} posts, {lens[1]} written")
                return
            posts += len(lens)
            yield names, tags.to_numpy().astype(np.int64), offsets(lens)
    raise ValueError(f"{path}: cut short")


class TagCounts(Mapping):
    """Images per raw tag as two arrays, ``names`` (a pyarrow string array) and ``counts``: a
    read-only mapping, cheap to make, pickle and add up for millions of tags (a Counter is not).
    :meth:`add` gathers parts; they are summed by name in arrow when they are read (and every few
    million rows gathered)."""

    FOLD = 1 << 22

    def __init__(self, names, counts):
        self._parts = [(names, counts)]
        self._rows = len(names)
        self._index: dict | None = None
        self._list: list | None = None

    @classmethod
    def empty(cls) -> "TagCounts":
        import numpy as np
        import pyarrow as pa

        return cls(pa.array([], type=pa.string()), np.zeros(0, dtype=np.int64))

    def add(self, other: "TagCounts") -> "TagCounts":
        """This plus ``other`` (this object, grown)."""
        self._parts.extend(other._parts)
        self._rows += other._rows
        self._index = self._list = None
        if self._rows >= self.FOLD and len(self._parts) > 1:
            self._fold()
        return self

    def _fold(self) -> None:
        if len(self._parts) > 1:
            import pyarrow as pa

            t = pa.table({"tag": pa.chunked_array([n for n, _ in self._parts], type=pa.string()),
                          "n": pa.chunked_array([pa.array(c, type=pa.int64()) for _, c in self._parts])})
            g = t.group_by("tag", use_threads=False).aggregate([("n", "sum")])
            self._parts = [(g.column("tag").combine_chunks(), g.column("n_sum").to_numpy())]
            self._rows = len(self._parts[0][0])

    @property
    def names(self):
        self._fold()
        return self._parts[0][0]

    @property
    def counts(self):
        self._fold()
        return self._parts[0][1]

    def tag_list(self) -> list[str]:
        if self._list is None:
            self._list = self.names.to_pylist()
        return self._list

    def __getitem__(self, tag: str) -> int:
        if self._index is None:
            self._index = dict(zip(self.tag_list(), range(len(self.names))))
        return int(self.counts[self._index[tag]])

    def lookup(self, tags: list[str]) -> list[int]:
        """The counts of ``tags`` (all present), by a hash lookup in arrow."""
        import pyarrow as pa
        import pyarrow.compute as pc

        pos = pc.index_in(pa.array(tags, type=pa.string()), value_set=self.names).to_numpy(zero_copy_only=False)
        return self.counts[pos.astype("int64")].tolist()

    def __iter__(self):
        return iter(self.tag_list())

    def __len__(self) -> int:
        return len(self.names)

    def items(self):
        return zip(self.tag_list(), self.counts.tolist())

    def values(self):
        return self.counts.tolist()

    def at_least(self, n: int):
        """The tags on at least ``n`` images (a pyarrow string array)."""
        import pyarrow as pa

        return self.names.filter(pa.array(self.counts >= n))

    def __getstate__(self):
        return {"names": self.names, "counts": self.counts}

    def __setstate__(self, state):
        self.__init__(state["names"], state["counts"])


def count_canonical(path: str, tag_to_id: dict[str, int], fmt: "str | ReadSpec" = "auto",
                    caption_hashtags: bool = True, spill: str | None = None) -> tuple[Counter, int]:
    """Images per canonical hashtag id in one dump, and the images with any vocabulary tag; from
    pass 1's ``spill`` where there is one that reads back whole (removed after), else the dump."""
    import contextlib
    import os

    from swagcli.prep.blocks import iter_blocks

    if spill is not None:
        try:
            if os.path.exists(spill):
                return _count_canonical(_spilled_blocks(spill), tag_to_id)
        except Exception:  # noqa: BLE001 -- a spill that does not read back: the dump again
            pass
        finally:
            with contextlib.suppress(OSError):
                os.remove(spill)
    spec = fmt if isinstance(fmt, ReadSpec) else ReadSpec(fmt, caption_hashtags)
    return _count_canonical(((b.names, b.tags, b.ptr) for b in iter_blocks(Path(path), spec, ReadStats(),
                                                                           distinct=False)), tag_to_id)


def _count_canonical(blocks, tag_to_id: dict[str, int]) -> tuple[Counter, int]:
    import numpy as np

    from swagcli.prep.blocks import first_distinct, vocabulary_ids

    counts = np.zeros(max(tag_to_id.values(), default=-1) + 1, dtype=np.int64)
    images = 0
    for names, tags, ptr in blocks:
        canon = vocabulary_ids(names, tag_to_id)
        n = len(ptr) - 1
        post = np.repeat(np.arange(n, dtype=np.int64), np.diff(ptr))
        lab, _, cnt = first_distinct(canon[tags], post, n)  # dog and dogs: one hashtag
        images += int((cnt > 0).sum())
        counts += np.bincount(lab, minlength=len(counts))
    return Counter({i: c for i, c in enumerate(counts.tolist()) if c}), images


def merge_counts(parts) -> tuple[TagCounts, list[ReadStats]]:
    """Counts added up by tag; each shard's read stats, in shard order."""
    import numpy as np
    import pyarrow as pa

    total = TagCounts.empty()
    stats = []
    for counts, st in parts:
        if not isinstance(counts, TagCounts):
            counts = TagCounts(pa.array(list(counts), type=pa.string()),
                               np.fromiter(counts.values(), dtype=np.int64, count=len(counts)))
        total = total.add(counts)
        stats.append(st)
    total._fold()
    return total, stats


# -- canonicalization ------------------------------------------------------------------------------
@dataclass
class Canonical:
    key: str
    synsets: list[str]
    tags: list[str]  # raw tags, most frequent first
    counts: list[int] = field(default_factory=list)  # images per raw tag, as ``tags``


def canonical_groups(tag_counts: Counter, min_count: int, canon: Canonicalizer) -> tuple[list[Canonical], dict]:
    """Candidates (>= min_count images) -> canonical hashtags sorted by key, plus stats."""
    if isinstance(tag_counts, TagCounts):
        mapped = canon.canonicalize(tag_counts.at_least(min_count))
        count_of = dict(zip(mapped, tag_counts.lookup(list(mapped))))
        candidates = int((tag_counts.counts >= min_count).sum())
    else:
        mapped = canon.canonicalize([t for t, n in tag_counts.items() if n >= min_count])
        count_of = {t: tag_counts[t] for t in mapped}
        candidates = sum(1 for n in tag_counts.values() if n >= min_count)
    by_key: dict[str, list[str]] = {}
    sets: dict[str, frozenset] = {}
    for tag, syn in mapped.items():
        key = synset_key(syn)
        by_key.setdefault(key, []).append(tag)
        sets[key] = syn
    groups = [
        Canonical(key, sorted(sets[key]), sorted(tags, key=lambda t: (-count_of[t], len(t), t)))
        for key, tags in sorted(by_key.items())
    ]
    for g in groups:
        g.counts = [count_of[t] for t in g.tags]
    stats = {
        "distinct_tags": len(tag_counts),
        "candidate_tags": candidates,
        "kept_tags": len(mapped),
        "dropped_no_synset": candidates - len(mapped),
        "canonical_hashtags": len(groups),
    }
    return groups, stats


@functools.lru_cache(maxsize=2)
def _canonicalizer(senses: tuple, min_len: int) -> Canonicalizer:
    return Canonicalizer(senses, min_len)


# -- the whole build -------------------------------------------------------------------------------
def build(recipe, progress=None, mapper=map_shards) -> dict:
    """Run `swag vocab build` for a validated :class:`~swagcli.recipes.VocabRecipe`; returns the
    vocabulary document (also written to ``recipe.out/vocab.json`` with a report and a plot)."""
    if not recipe.out:
        raise SwagError("vocab build: no output directory (--out DIR or 'out:' in the recipe)")
    t0 = time.time()
    paths = [str(p) for p in expand_dumps(recipe.dumps)]
    labels = Labels.of_vocab_recipe(recipe)
    specs = [read_spec(Path(p), recipe, labels) for p in paths]
    from swagcli.fileio import scratch_dir

    out = Path(recipe.out)
    with scratch_dir(out) as spills, gc_paused():  # spills: what pass 1 writes for pass 3 (removed after)
        return _build(recipe, progress, mapper, t0, paths, labels, specs, out, spills)


def _build(recipe, progress, mapper, t0, paths, labels, specs, out: Path, spills: Path) -> dict:
    from swagcli.runinfo import atomic_write_text, stamp
    from swagcli.wordnet import wordnet_info

    spill = [str(spills / f"part-{i:05d}.arrow") for i in range(len(paths))]
    jobs = [(p, s, recipe.countries, True, f) for p, s, f in zip(paths, specs, spill)]
    with closing(mapper(count_tags, jobs, recipe.workers, progress, "count tags")) as results:
        tag_counts, shard_stats = merge_counts(results)
    read = read_report(shard_stats, [s.fmt for s in specs])
    if read["posts"] == 0:
        raise no_posts_error(paths, read, labels.labels)
    if recipe.countries and not tag_counts:
        hint = ("YFCC100M metadata has no country field: countries: null" if any(s.fmt == "yfcc" for s in specs)
                else "a post's country is the JSONL 'country' key, a third TSV column or the field "
                     "named by fields.country")
        raise SwagError(f"countries {','.join(recipe.countries)}: no post of these dumps is from them ({hint})")
    if progress:
        progress("canonicalize", 0, 1)
    canon = _canonicalizer(tuple(recipe.allowed_senses), recipe.min_len)
    groups, cstats = canonical_groups(tag_counts, recipe.min_count, canon)
    if progress:
        progress("canonicalize", 1, 1)
    tag_to_id = {t: i for i, g in enumerate(groups) for t in g.tags}
    jobs2 = [(p, tag_to_id, s, True, f) for p, s, f in zip(paths, specs, spill)]
    canon_counts: Counter = Counter()
    images_in_vocab = 0
    with closing(mapper(count_canonical, jobs2, recipe.workers, progress, "count hashtags")) as results:
        for counts, n in results:  # (closing: an error here ends the worker pool at once)
            canon_counts.update(counts)
            images_in_vocab += n
    hashtags = []
    for i, g in enumerate(groups):
        n = canon_counts.get(i, 0)
        hashtags.append({
            "id": i,
            "name": g.tags[0],
            "key": g.key,
            "synsets": g.synsets,
            "tags": g.tags,
            "tag_counts": dict(zip(g.tags, g.counts)),
            "count": n,
            "head": n >= recipe.head_min_images,
        })
    n_head = sum(h["head"] for h in hashtags)
    from swagcli import __version__

    doc = {
        "format": VOCAB_FORMAT,
        "swag_version": __version__,
        "params": {k: getattr(recipe, k) for k in (
            "min_count", "countries", "allowed_senses", "min_len", "head_min_images")},
        "sources": sources_info(specs, recipe),
        "wordnet": wordnet_info()["version"],
        "stats": {
            "dumps": len(paths),
            **read,
            **cstats,
            "head_hashtags": n_head,
            "tail_hashtags": len(hashtags) - n_head,
            "images_with_vocab_tag": images_in_vocab,
            "seconds": round(time.time() - t0, 2),
        },
        "hashtags": hashtags,
    }
    stamp(out, "vocab", recipe)
    atomic_write_text(out / "vocab.json", dumps_indented(doc) + "\n")
    from swagcli.plots import zipf_plot

    zipf_plot(tag_counts, hashtags, recipe.head_min_images, out / "zipf.png")
    return doc


def dumps_indented(obj) -> str:
    """``json.dumps(obj, indent=1, ensure_ascii=False)``, the same bytes, several times faster for
    a vocabulary of a million tags (json's indenting encoder is pure Python, generator by generator).
    Strings, ints, floats, bools and None in dicts with string keys and lists; else json's own."""
    from json.encoder import encode_basestring

    out: list[str] = []
    put = out.append

    def enc(o, pad: str) -> None:
        t = type(o)
        if t is str:
            put(encode_basestring(o))
        elif t is int:
            put(int.__repr__(o))
        elif t is dict:
            if not o:
                put("{}")
                return
            inner = pad + " "
            first = True
            for k, v in o.items():
                if type(k) is not str:
                    raise TypeError(k)
                put(("{\n" if first else ",\n") + inner + encode_basestring(k) + ": ")
                first = False
                enc(v, inner)
            put("\n" + pad + "}")
        elif t is list or t is tuple:
            if not o:
                put("[]")
                return
            inner = pad + " "
            if all(type(v) is str for v in o):  # a list of strings in one go
                sep = ",\n" + inner
                put("[\n" + inner + sep.join(map(encode_basestring, o)) + "\n" + pad + "]")
                return
            first = True
            for v in o:
                put(("[\n" if first else ",\n") + inner)
                first = False
                enc(v, inner)
            put("\n" + pad + "]")
        elif o is True:
            put("true")
        elif o is False:
            put("false")
        elif o is None:
            put("null")
        elif t is float and o == o and o not in (float("inf"), float("-inf")):
            put(float.__repr__(o))
        else:
            raise TypeError(t)

    try:
        enc(obj, "")
    except TypeError:  # something json writes its own way (a subclass, a NaN, a non-string key)
        return json.dumps(obj, indent=1, ensure_ascii=False)
    return "".join(out)


# -- reading a vocabulary back ---------------------------------------------------------------------
class Vocab:
    """A vocabulary as later stages use it: ids, names, raw tag -> id, head mask."""

    def __init__(self, doc: dict, source: str = "vocab"):
        if doc.get("format") != VOCAB_FORMAT or not isinstance(doc.get("hashtags"), list):
            raise SwagError(f"{source}: not a swag vocabulary (format {doc.get('format')!r})")
        self.doc = doc
        self.hashtags = doc["hashtags"]
        self.names = [h["name"] for h in self.hashtags]
        self.counts = [h["count"] for h in self.hashtags]
        self.head = [h["head"] for h in self.hashtags]
        self.tag_to_id = {t: h["id"] for h in self.hashtags for t in h["tags"]}

    def __len__(self) -> int:
        return len(self.hashtags)

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        p = Path(path)
        if p.is_dir():
            p = p / "vocab.json"
        if not p.is_file():
            raise SwagError(f"{p}: no vocabulary here (expected vocab.json from `swag vocab build`)")
        try:
            doc = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise SwagError(f"{p}: not valid JSON ({e})") from None
        return cls(doc, str(p))
