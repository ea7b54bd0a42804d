"""`swag sample`: a vocabulary + hashtag dumps -> a sample plan (SPEC.md §2, SWAG App. A, WSL §3.1).

Every image gets its canonical hashtags (raw tags outside the vocabulary discarded; an image with
none is dropped and counted), an importance ``I_i = max_h f(h)^-1/2`` and a part: tail if any of
its hashtags is a tail hashtag, else head. Then M samples are drawn with replacement:

* ``head_tail`` (SWAG): ``alpha*M`` from head images and ``(1-alpha)*M`` from tail images, each
  with probability proportional to ``I_i`` within its part;
* ``sqrt`` (WSL): proportional to ``I_i`` over all images;
* ``natural``: every image alike (images as they come);
* ``uniform`` (WSL): a hashtag uniformly at random, then an image carrying it uniformly at
  random, i.e. ``P(i) = sum_{h in i} 1 / (|C| f(h))``;
* ``balanced`` (MetaCLIP, SPEC.md §9): first a cap ``t``: a hashtag with ``f(h) > t`` keeps each
  of its images with probability ``t / f(h)``, an image survives when any of its hashtags keeps it
  (``P(keep i) = 1 - prod_{h in i} (1 - min(1, t / f(h)))``), then every survivor alike. Each
  (image, hashtag) decision is a hash of (seed, image id, hashtag id), not a draw from a stream:
  the survivors are the same whatever the sharding, the order or the number of workers.

The draw is an exact multinomial taken in a stream: pass 1 sums each shard's weights; the samples
of each part are split over shards by a multinomial on those sums; within a shard, images are read
in chunks, each chunk's share is a binomial of what remains (``Binomial(R, W_chunk / W_rest)``) and
is spread over the chunk's images by a multinomial. Memory holds one chunk and per-shard sums;
every shard draws from its own seed, so the plan is the same for any number of workers.

Label noise (WSL §3.1.3): each hashtag of a planned image is replaced with probability ``p`` by a
hashtag drawn from the marginal distribution f(h)/sum f, redrawn while it equals the one replaced.

The plan is one ``part-NNNNN.npz`` per dump shard: sorted ``ids``, ``mult`` (times sampled),
``label_ptr``/``labels`` (CSR of hashtag ids after noise) and ``tail`` flags; ``plan.json`` lists
the parts with their id ranges so the training stream can join image-shard keys to the plan.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from contextlib import closing
from pathlib import Path

import numpy as np

from swagcli.errors import SwagError
from swagcli.prep.blocks import offsets as _offsets, ranges as _ranges, sorted_distinct
from swagcli.prep.dumps import (Labels, ReadSpec, ReadStats, expand_dumps, no_posts_error, read_report,
                                read_spec, sources_info)
from swagcli.prep.parallel import map_shards
from swagcli.prep.vocab import Vocab

PLAN_FORMAT = "swag-plan/1"
STRATEGIES = ("head_tail", "sqrt", "natural", "uniform", "balanced")
# strategies whose weights add or multiply over an image's hashtags: in sorted order, so the floating
# point sums are the same in every run (the others take a max or an or: any order gives the same)
ORDERED = ("uniform", "balanced")


@dataclass
class Weights:
    """What the draw needs of the vocabulary, as arrays indexed by hashtag id."""

    importance: np.ndarray  # f(h)^-1/2
    tail: np.ndarray  # bool
    uniform: np.ndarray  # 1 / (|C| f(h))
    marginal: np.ndarray  # f(h) / sum f
    keep: np.ndarray | None = None  # balanced: min(1, t / f(h)), the chance h keeps one of its images
    seed: int = 0  # balanced: the key of the keep decisions

    @classmethod
    def of(cls, vocab: Vocab, t: int | None = None, seed: int = 0) -> "Weights":
        f = np.maximum(np.asarray(vocab.counts, dtype=np.float64), 1.0)
        keep = np.minimum(1.0, t / f) if t is not None else None
        return cls(f ** -0.5, ~np.asarray(vocab.head, dtype=bool), 1.0 / (len(f) * f), f / f.sum(), keep, seed)


def is_held_out(post_id: str, fraction: float) -> bool:
    """Deterministic hold-out by id (CRC32), the same in every run and process."""
    return fraction > 0 and zlib.crc32(post_id.encode()) % 1_000_000 < fraction * 1_000_000


# -- balancing (MetaCLIP): keep decisions by hash ------------------------------------------------
_U64 = np.uint64


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 arrays (multiplication wraps mod 2^64)."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _id_hashes(ids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each image id (BLAKE2b: the same in every process, run and platform)."""
    from hashlib import blake2b

    return np.frombuffer(b"".join(blake2b(i.encode(), digest_size=8, person=b"swag-bal").digest()
                                  for i in ids.tolist()), dtype="<u8").astype(np.uint64)


def keep_uniforms(ids: np.ndarray, hashtags: np.ndarray, seed: int) -> np.ndarray:
    """A uniform in [0, 1) per (image id, hashtag id) pair, a pure function of (seed, id, hashtag)."""
    key = _mix64(np.full(1, seed & ((1 << 64) - 1), dtype=np.uint64))
    x = _mix64(_id_hashes(ids) ^ key)
    x = _mix64(x + hashtags.astype(np.uint64) * _U64(0xD1B54A32D192ED03))
    return (x >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def balance_keep(ids: np.ndarray, labels: np.ndarray, ptr: np.ndarray, keep: np.ndarray, seed: int) -> np.ndarray:
    """Which images survive the cap: image j (hashtags ``labels[ptr[j]:ptr[j+1]]``, at least one)
    survives when one of its hashtags keeps it, hashtag h keeping it with probability ``keep[h]``
    (a hashed decision: :func:`keep_uniforms`; hashtags under the cap keep without one)."""
    own = np.ones(len(labels), dtype=bool)
    capped = np.flatnonzero(keep[labels] < 1.0)
    if len(capped):
        img = np.repeat(np.arange(len(ids)), np.diff(ptr))[capped]
        own[capped] = keep_uniforms(ids[img], labels[capped], seed) < keep[labels[capped]]
    return np.logical_or.reduceat(own, ptr[:-1]) if len(ids) else np.zeros(0, dtype=bool)


def keep_probability(labels: np.ndarray, ptr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``P(keep i) = 1 - prod_{h in i} (1 - keep[h])`` per image."""
    return 1.0 - np.multiply.reduceat(1.0 - keep[labels], ptr[:-1]) if len(ptr) > 1 else np.zeros(0)


class _ChunkIds:
    """A chunk's ids (of the posts ``rows`` of its block), made a numpy str array only where asked
    (the draw's picks, the balancing's capped images), as wide as the chunk's longest id."""

    def __init__(self, block, rows: np.ndarray, width: int):
        self.block, self.rows, self.width = block, rows, width

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        return self.block.id_array(self.rows[index], self.width)

    def all(self) -> np.ndarray:
        """Every id, as bytes (``S``) where they are ASCII (a quarter of the size), else as str."""
        return self.block.id_array(self.rows, self.width, as_bytes=True)


# -- the spill: what the draw needs of a shard, written by pass 1 -----------------------------------
# Pass 1 writes each chunk it weighed (ids, labels, weights, tail flags) to a spill file per shard,
# so the draw reads arrays back instead of parsing the dump again (it reads the dump where the
# spill could not be written, e.g. on a full disk, or does not read back). Records: np.save arrays,
# no pickles; [0] then the chunk's five arrays; [1] then the held-out images (ids, counts, labels);
# [2] the end.
def _spill_chunk(f, ids, labels, ptr, weights, tails) -> None:
    for a in (np.zeros(1, np.int64), ids.all(), labels.astype(np.int32), np.diff(ptr).astype(np.int32),
              weights, tails):
        np.save(f, a, allow_pickle=False)


def _spill_held(f, held: list) -> None:
    ids = np.array([i for i, _ in held], dtype=np.str_)
    for a in (np.ones(1, np.int64), ids, np.array([len(x) for _, x in held], dtype=np.int64),
              np.array([h for _, x in held for h in x], dtype=np.int64)):
        np.save(f, a, allow_pickle=False)


class _BytesIds:
    """ASCII ids spilled as bytes, made str (the plan's type) only where the draw picks them."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index) -> np.ndarray:
        return self.ids[index].astype(f"<U{self.ids.dtype.itemsize}")


def _spilled(path: str, held: list):
    """The chunks of a spill file, as :func:`_chunks` yields them; its held-out images into ``held``."""
    with open(path, "rb") as f:
        while True:
            kind = np.load(f, allow_pickle=False)  # EOFError before the end record: cut short
            if kind[0] == 2:
                return
            if kind[0] == 0:
                ids, lab, cnt, weights, tails = (np.load(f, allow_pickle=False) for _ in range(5))
                yield (_BytesIds(ids) if ids.dtype.kind == "S" else ids), lab.astype(np.int64), \
                    _offsets(cnt.astype(np.int64)), weights, tails
            else:
                ids, cnt, lab = (np.load(f, allow_pickle=False) for _ in range(3))
                ptr = _offsets(cnt)
                held.extend((str(i), lab[ptr[j]:ptr[j + 1]].tolist()) for j, i in enumerate(ids.tolist()))


def _chunks(path: str, fmt: "str | ReadSpec", tag_to_id: dict, w: Weights, strategy: str, chunk: int,
            stats: ReadStats | None = None, drops: list | None = None, holdout: float = 0.0,
            held: list | None = None):
    """Yield (ids, labels, ptr, weights, tails) per chunk of ``chunk`` read posts (the last: the
    rest), keeping those with vocabulary hashtags: ``ids[index]`` gives their ids as a numpy str
    array, ``labels[ptr[j]:ptr[j+1]]`` are image j's distinct hashtag ids (sorted for
    the strategies in :data:`ORDERED`, else in first-seen order); weights and tail flags are
    computed for the whole chunk at once. Held-out images are left out (and appended as (id,
    hashtag ids) to ``held`` if given)."""
    from swagcli.prep.blocks import exact_chunks, first_distinct, iter_blocks, vocabulary_ids

    stats = stats if stats is not None else ReadStats()
    for block in exact_chunks(iter_blocks(Path(path), fmt, stats, distinct=False), chunk):
        canon = vocabulary_ids(block.names, tag_to_id)
        lens = np.diff(block.ptr)
        if strategy in ORDERED:
            lab, cnt = sorted_distinct(canon[block.tags], lens)
        else:
            post = np.repeat(np.arange(len(block), dtype=np.int64), lens)
            lab, _, cnt = first_distinct(canon[block.tags], post, len(block))
        has = cnt > 0
        if drops is not None:
            drops[0] += int((~has).sum())
        if holdout:
            ids = block.id_list()
            out_mask = np.fromiter((is_held_out(i, holdout) for i in ids), dtype=bool, count=len(ids)) & has
            if out_mask.any():
                ptr = _offsets(cnt)
                if held is not None:
                    held.extend((ids[j], sorted(lab[ptr[j]:ptr[j + 1]].tolist())) for j in np.flatnonzero(out_mask))
                lab = lab[np.repeat(~out_mask, cnt)]
                has &= ~out_mask
        rows = np.flatnonzero(has)
        cnt = cnt[rows]
        if not len(cnt):
            continue
        ids = _ChunkIds(block, rows, block.id_width())
        ptr = _offsets(cnt)
        starts = ptr[:-1]
        tails = np.logical_or.reduceat(w.tail[lab], starts)
        if strategy == "natural":
            weights = np.ones(len(cnt))
        elif strategy == "balanced":  # every survivor alike; the others can never be drawn
            weights = balance_keep(ids, lab, ptr, w.keep, w.seed).astype(np.float64)
        elif strategy == "uniform":
            weights = np.add.reduceat(w.uniform[lab], starts)
        else:
            weights = np.maximum.reduceat(w.importance[lab], starts)
        yield ids, lab, ptr, weights, tails


# -- pass 1: per-shard sums ------------------------------------------------------------------------
def shard_sums(path: str, fmt: "str | ReadSpec", tag_to_id: dict, w: Weights, strategy: str, chunk: int,
               holdout: float = 0.0, spill: str | None = None) -> dict:
    """Pass 1 over one shard: its weight sums and counts; its chunks written to ``spill`` if given
    (``out["spill"]``: the file, or None where it could not be written)."""
    stats, drops, held = ReadStats(), [0], []
    sf = _open_spill(spill)
    out = {"w_head": 0.0, "w_tail": 0.0, "n_head": 0, "n_tail": 0,
           "hist_images": np.zeros(len(w.tail), dtype=np.int64)}
    balanced = strategy == "balanced"
    if balanced:  # survivors (the weights are 0/1) and what the cap makes of them, per hashtag
        out.update(expected=0.0, variance=0.0, hist_survivors=np.zeros(len(w.tail), dtype=np.int64),
                   hist_expected=np.zeros(len(w.tail)))
    for ids, labels, ptr, weights, tails in _chunks(path, fmt, tag_to_id, w, strategy, chunk, stats, drops,
                                                    holdout, held):
        out["w_head"] += float(weights[~tails].sum())
        out["w_tail"] += float(weights[tails].sum())
        out["n_tail"] += int(tails.sum())
        out["n_head"] += int((~tails).sum())
        out["hist_images"] += np.bincount(labels, minlength=len(w.tail))
        if sf is not None:
            sf = _write_spill(sf, spill, _spill_chunk, ids, labels, ptr, weights, tails)
        if balanced:
            cnt = np.diff(ptr)
            p = keep_probability(labels, ptr, w.keep)
            out["expected"] += float(p.sum())
            out["variance"] += float((p * (1 - p)).sum())
            out["hist_survivors"] += np.bincount(labels, weights=np.repeat(weights, cnt),
                                                 minlength=len(w.tail)).astype(np.int64)
            out["hist_expected"] += np.bincount(labels, weights=np.repeat(p, cnt), minlength=len(w.tail))
    if sf is not None:
        sf = _write_spill(sf, spill, _spill_held, held)
    if sf is not None:
        sf = _write_spill(sf, spill, np.save, np.full(1, 2, dtype=np.int64))
    if sf is not None:
        try:
            sf.close()
        except OSError:
            sf = _drop_spill(sf, spill)
    out["spill"] = spill if sf is not None else None
    out["dropped"] = drops[0]
    out["held_out"] = len(held)
    out["stats"] = stats
    return out


def _open_spill(path: str | None):
    if path is None:
        return None
    try:
        return open(path, "wb", buffering=1 << 20)
    except OSError:
        return None


def _write_spill(f, path: str, write, *args):
    """``write(f, *args)``; on an error (a full disk), the spill is given up: None."""
    try:
        write(f, *args)
        return f
    except OSError:
        return _drop_spill(f, path)


def _drop_spill(f, path: str):
    import contextlib
    import os

    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(OSError):
        os.remove(path)
    return None


# -- pass 2: the draw ------------------------------------------------------------------------------
def _draw_part(rng, remaining: int, w_rest: float, n_rest: int, weights: np.ndarray):
    """Draw this chunk's share of ``remaining`` samples (a binomial of what is left; all of it
    when the chunk holds the part's last images, so no sample is lost to rounding), then spread
    it over the chunk's images by a multinomial."""
    total = float(weights.sum())
    n_rest -= len(weights)
    if remaining <= 0 or total <= 0:
        return np.zeros(len(weights), dtype=np.int64), remaining, w_rest - total, n_rest
    p = 1.0 if n_rest == 0 or w_rest <= total else total / w_rest
    k = int(rng.binomial(remaining, p))
    mult = rng.multinomial(k, weights / total) if k else np.zeros(len(weights), dtype=np.int64)
    return mult, remaining - k, w_rest - total, n_rest


def _noisy(labels: np.ndarray, ptr: np.ndarray, rng, p: float, marginal_cdf: np.ndarray):
    """Replace each label with probability ``p`` by a hashtag drawn from the marginal, redrawn
    while it equals the one it replaces; returns (labels, ptr) with each image's ids sorted and
    distinct again, and the number of labels replaced."""
    labels = labels.copy()
    hit = np.flatnonzero(rng.random(len(labels)) < p)
    last = len(marginal_cdf) - 1

    def draw(k):
        return np.minimum(np.searchsorted(marginal_cdf, rng.random(k) * marginal_cdf[-1], side="right"), last)

    new = draw(len(hit))
    same = np.flatnonzero(new == labels[hit])
    while len(same):
        new[same] = draw(len(same))
        same = same[new[same] == labels[hit][same]]
    labels[hit] = new
    lab, cnt = sorted_distinct(labels, np.diff(ptr))
    return lab, _offsets(cnt), len(hit)


def plan_shard(index: int, path: str, fmt: "str | ReadSpec", tag_to_id: dict, w: Weights, strategy: str,
               chunk: int, quota: tuple[int, int], sums: tuple[float, float],
               counts: tuple[int, int], seed: int, noise: float, out_path: str,
               holdout: float = 0.0, holdout_path: str | None = None, spill: str | None = None) -> dict:
    """Draw the plan of one dump shard and write it to ``out_path`` (npz). Part 0 is the head
    (every image, for strategies without a head/tail split), part 1 the tail. The sampled images
    are kept as compact numpy arrays per chunk (an id, a count, a tail flag and the labels each).
    The chunks come from pass 1's ``spill`` file where there is one (removed after), else from the
    dump; a spill that does not read back whole is passed over for the dump (the same draw)."""
    args = (index, path, fmt, tag_to_id, w, strategy, chunk, quota, sums, counts, seed, noise, out_path,
            holdout, holdout_path)
    if spill is not None:
        import contextlib
        import os

        try:
            return _plan_shard(*args, spill)
        except (OSError, ValueError, EOFError):
            pass
        finally:
            with contextlib.suppress(OSError):
                os.remove(spill)
    return _plan_shard(*args, None)


def _plan_shard(index, path, fmt, tag_to_id, w, strategy, chunk, quota, sums, counts, seed, noise, out_path,
                holdout, holdout_path, spill) -> dict:
    rng = np.random.default_rng([seed, 1, index])
    noise_rng = np.random.default_rng([seed, 2, index])
    cdf = np.cumsum(w.marginal)
    split = strategy == "head_tail"
    left = {False: quota[0], True: quota[1]}
    w_left = {False: sums[0], True: sums[1]}
    n_left = {False: counts[0], True: counts[1]}
    keep: list[tuple] = []
    hist = np.zeros(len(w.tail), dtype=np.int64)
    replaced = total_labels = 0
    held: list = []
    chunks = (_spilled(spill, held) if spill is not None
              else _chunks(path, fmt, tag_to_id, w, strategy, chunk, holdout=holdout, held=held))
    for ids, flat, ptr, weights, tails in chunks:
        mult = np.zeros(len(ids), dtype=np.int64)
        parts = tails if split else np.zeros_like(tails)
        for part in (False, True):
            sel = parts == part
            if sel.any():
                mult[sel], left[part], w_left[part], n_left[part] = _draw_part(
                    rng, left[part], w_left[part], n_left[part], weights[sel])
        picked = np.flatnonzero(mult)
        if not len(picked):
            continue
        cnt = np.diff(ptr)[picked]
        labs = flat[np.repeat(ptr[picked], cnt) + _ranges(cnt)]
        if strategy not in ORDERED:
            labs = sorted_distinct(labs, cnt)[0]
        lptr = _offsets(cnt)
        if noise > 0:
            total_labels += len(labs)
            labs, lptr, r = _noisy(labs, lptr, noise_rng, noise, cdf)
            replaced += r
        m = mult[picked]
        hist += np.bincount(labs, weights=np.repeat(m, np.diff(lptr)), minlength=len(hist)).astype(np.int64)
        keep.append((ids[picked], m, tails[picked], np.diff(lptr), labs))
    if keep:
        cat = [np.concatenate(x) for x in zip(*keep)]
    else:
        cat = [np.array([], dtype=np.str_), np.zeros(0, np.int64), np.zeros(0, bool),
               np.zeros(0, np.int64), np.zeros(0, np.int64)]
    del keep
    out = write_part_arrays(out_path, *cat)
    out.update(hist_samples=hist, noise_replaced=replaced, noise_labels=total_labels,
               left=(left[False], left[True]))
    if holdout_path:
        out["holdout"] = write_part(holdout_path, [i for i, _ in held], [1] * len(held),
                                    [hs for _, hs in held], [bool(w.tail[hs].any()) for _, hs in held])
    return out


def write_part_arrays(path: str, ids: np.ndarray, mult: np.ndarray, tails: np.ndarray,
                      counts: np.ndarray, labels: np.ndarray) -> dict:
    """Write one plan part (sorted by id) atomically; return its entry for plan.json."""
    order = np.argsort(ids, kind="stable")
    cnt = counts[order]
    ptr = _offsets(cnt)
    src = _offsets(counts)
    arrays = {
        "ids": ids[order].astype(np.str_),
        "mult": mult[order].astype(np.uint32),
        "tail": tails[order].astype(bool),
        "label_ptr": ptr,
        "labels": labels[np.repeat(src[:-1][order], cnt) + _ranges(cnt)].astype(np.int32),
    }
    from swagcli.fileio import atomic_file

    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)
    ids_sorted = arrays["ids"]
    return {
        "path": Path(path).name,
        "images": int(len(ids_sorted)),
        "samples": int(arrays["mult"].sum()),
        "tail_samples": int(arrays["mult"][arrays["tail"]].sum()),
        "first_id": str(ids_sorted[0]) if len(ids_sorted) else None,
        "last_id": str(ids_sorted[-1]) if len(ids_sorted) else None,
    }


def write_part(path: str, ids: list, mult: list, labels: list, tails: list) -> dict:
    """:func:`write_part_arrays` from Python lists (``labels``: a list of id lists)."""
    counts = np.array([len(x) for x in labels], dtype=np.int64)
    flat = np.array([h for x in labels for h in x], dtype=np.int64)
    return write_part_arrays(path, np.array(ids, dtype=np.str_), np.asarray(mult, dtype=np.int64),
                             np.asarray(tails, dtype=bool), counts, flat)


def _check_shard_keys(paths: list[str], fmts: list) -> None:
    """img2dataset keys start with the shard number, so two folders with a shard of the same number
    repeat keys: the training stream could not tell their images apart."""
    seen: dict[str, Path] = {}
    for p, f in zip(paths, fmts):
        if f.fmt != "img2dataset":
            continue
        path = Path(p).resolve()
        stem = path.name.split(".")[0]
        other = seen.setdefault(stem, path)
        if other.parent != path.parent:
            raise SwagError(f"{other.parent} and {path.parent}: both hold img2dataset shard {stem}, whose keys "
                            "repeat: download into one folder (img2dataset numbers new shards on) or draw "
                            "a plan per folder")


# -- the whole plan --------------------------------------------------------------------------------
def _allocate(rng, total: int, sums: list[float]) -> list[int]:
    s = float(sum(sums))
    if total == 0 or s <= 0:
        return [0] * len(sums)
    return [int(x) for x in rng.multinomial(total, np.asarray(sums) / s)]


def build(recipe, progress=None, mapper=map_shards) -> dict:
    """Run `swag sample` for a validated :class:`~swagcli.recipes.SampleRecipe`; writes the plan,
    ``summary.json``, a report plot and the stamp into ``recipe.out``; returns the summary."""
    if not recipe.out:
        raise SwagError("sample: no output directory (--out DIR or 'out:' in the recipe)")
    if not recipe.vocab:
        raise SwagError("sample: no vocabulary (--vocab DIR/vocab.json or 'vocab:' in the recipe)")
    t0 = time.time()
    vocab = Vocab.load(recipe.vocab)
    w = Weights.of(vocab, recipe.t if recipe.strategy == "balanced" else None, recipe.seed)
    paths = [str(p) for p in expand_dumps(recipe.dumps)]
    labels = Labels.of_sample_recipe(recipe, vocab.doc)
    fmts = [read_spec(Path(p), recipe, labels) for p in paths]
    _check_shard_keys(paths, fmts)
    import contextlib

    from swagcli.fileio import clean_stale_temps, scratch_dir

    out = Path(recipe.out)
    with scratch_dir(out) if recipe.spill else contextlib.nullcontext() as spills:
        try:
            return _build(recipe, progress, mapper, t0, vocab, w, paths, labels, fmts, out, spills)
        except BaseException:  # workers killed mid-part (SIGTERM, an error): no temporary file stays
            clean_stale_temps(out, recursive=True)
            raise


def _build(recipe, progress, mapper, t0, vocab, w, paths, labels, fmts, out: Path, spills: Path | None) -> dict:
    from swagcli.runinfo import atomic_write_text, stamp

    strategy = recipe.strategy
    balanced = strategy == "balanced"
    jobs = [(p, f, vocab.tag_to_id, w, strategy, recipe.chunk, recipe.holdout,
             str(spills / f"part-{i:05d}.spill") if spills is not None else None)
            for i, (p, f) in enumerate(zip(paths, fmts))]
    hist_images = np.zeros(len(vocab), dtype=np.int64)
    hist_survivors = np.zeros(len(vocab), dtype=np.int64)
    hist_expected = np.zeros(len(vocab))
    sums = []
    with closing(mapper(shard_sums, jobs, recipe.workers, progress, "weigh images")) as results:
        for s in results:  # (closing: an error here ends the worker pool at once)
            hist_images += s.pop("hist_images")  # per-shard histograms are summed as they come
            if balanced:
                hist_survivors += s.pop("hist_survivors")
                hist_expected += s.pop("hist_expected")
            sums.append(s)
    split = strategy == "head_tail"
    if split:
        head_w = [s["w_head"] for s in sums]
        tail_w = [s["w_tail"] for s in sums]
        counts = [(s["n_head"], s["n_tail"]) for s in sums]
    else:
        head_w = [s["w_head"] + s["w_tail"] for s in sums]
        tail_w = [0.0] * len(sums)
        counts = [(s["n_head"] + s["n_tail"], 0) for s in sums]
    images = sum(s["n_head"] + s["n_tail"] for s in sums)
    read = read_report([s["stats"] for s in sums], [f.fmt for f in fmts])
    if read["posts"] == 0:
        raise no_posts_error(paths, read, labels.labels)
    if images == 0:
        raise SwagError(f"{paths[0]}: no image carries a hashtag of {recipe.vocab}")
    if balanced and sum(head_w) == 0:
        raise SwagError(f"sample: strategy balanced: no image survived the cap t={recipe.t} (raise t)")
    m = recipe.samples
    m_head = int(round(recipe.alpha * m)) if split else m
    notes = []
    built = (vocab.doc.get("sources") or {}).get("labels") or "hashtags"
    if labels.labels != built:
        notes.append(f"labels: {labels.labels}, but the vocabulary was counted with labels: {built}")
    if split and sum(tail_w) == 0:
        notes.append("no tail images: all samples drawn from the head")
        m_head = m
    if split and sum(head_w) == 0:
        notes.append("no head images: all samples drawn from the tail")
        m_head = 0
    alloc_rng = np.random.default_rng([recipe.seed, 0])
    q_head = _allocate(alloc_rng, m_head, head_w)
    q_tail = _allocate(alloc_rng, m - m_head, tail_w)
    (out / "plan").mkdir(parents=True, exist_ok=True)
    if recipe.holdout:
        (out / "holdout" / "plan").mkdir(parents=True, exist_ok=True)
    jobs2 = [(i, p, f, vocab.tag_to_id, w, strategy, recipe.chunk, (q_head[i], q_tail[i]),
              (head_w[i], tail_w[i]), counts[i], recipe.seed, recipe.label_noise,
              str(out / "plan" / f"part-{i:05d}.npz"), recipe.holdout,
              str(out / "holdout" / "plan" / f"part-{i:05d}.npz") if recipe.holdout else None, sums[i]["spill"])
             for i, (p, f) in enumerate(zip(paths, fmts))]
    hist_samples = np.zeros(len(vocab), dtype=np.int64)
    parts = []
    with closing(mapper(plan_shard, jobs2, recipe.workers, progress, "draw samples")) as results:
        for p in results:
            hist_samples += p.pop("hist_samples")
            parts.append(p)
    assert all(p["left"] == (0, 0) for p in parts), "every quota is drawn"
    total = sum(p["samples"] for p in parts)
    tail_samples = sum(p["tail_samples"] for p in parts)
    noise_labels = sum(p["noise_labels"] for p in parts)
    summary = {
        "strategy": strategy,
        "alpha": recipe.alpha if split else None,
        "label_noise": recipe.label_noise,
        "seed": recipe.seed,
        "unique_images": sum(p["images"] for p in parts),
        "total_samples": total,
        "head_samples": total - tail_samples,
        "tail_samples": tail_samples,
        "dropped_images": sum(s["dropped"] for s in sums),
        "held_out_images": sum(s["held_out"] for s in sums),
        "images_with_vocab_tags": images,
        "head_images": sum(s["n_head"] for s in sums),
        "tail_images": sum(s["n_tail"] for s in sums),
        "noise_replaced_fraction": (sum(p["noise_replaced"] for p in parts) / noise_labels
                                    if noise_labels else 0.0),
        **({"balanced": _balance_summary(recipe.t, vocab, w.keep, sums, hist_images, hist_survivors,
                                         hist_expected)} if balanced else {}),
        "hashtags": len(vocab),
        "hashtags_sampled": int((hist_samples > 0).sum()),
        "read": read,
        "notes": notes,
        "seconds": round(time.time() - t0, 2),
    }
    plan = {
        "format": PLAN_FORMAT,
        "vocab": str(Path(recipe.vocab).resolve()),
        "hashtags": len(vocab),
        "parts": [{k: p[k] for k in ("path", "images", "samples", "first_id", "last_id")}
                  | {"source": str(Path(src).resolve())} for p, src in zip(parts, paths)],
        "sources": sources_info(fmts, recipe),
        "summary": summary,
    }
    stamp(out, "sample", recipe)
    from swagcli.fileio import atomic_file

    with atomic_file(out / "histogram.npz", "wb") as f:
        np.savez(f, images=hist_images, samples=hist_samples)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "plan.json", json.dumps(plan, indent=1) + "\n")
    if recipe.holdout:
        held = [p["holdout"] for p in parts]
        atomic_write_text(out / "holdout" / "plan.json", json.dumps({
            "format": PLAN_FORMAT, "vocab": plan["vocab"], "hashtags": len(vocab), "parts": held,
            "summary": {"held_out_images": sum(h["images"] for h in held), "holdout": recipe.holdout,
                        "total_samples": sum(h["samples"] for h in held)}}, indent=1) + "\n")
    from swagcli.plots import resampling_plot

    resampling_plot(hist_images, hist_samples, np.asarray(vocab.head), out / "resampling.png")
    return summary


BALANCE_LARGEST = 5


def _balance_summary(t: int, vocab: Vocab, keep: np.ndarray, sums: list, hist_images, hist_survivors,
                     hist_expected) -> dict:
    """What the cap did: survivors observed and expected, and for the few largest hashtags their
    images, survivors and expected survivors (the full per-hashtag arrays would swamp the summary)."""
    counts = np.asarray(vocab.counts)
    largest = np.argsort(-counts, kind="stable")[:BALANCE_LARGEST]
    return {
        "t": t,
        "survivors": int(sum(s["w_head"] + s["w_tail"] for s in sums)),
        "expected_survivors": round(sum(s["expected"] for s in sums), 2),
        "survivors_sd": round(float(np.sqrt(sum(s["variance"] for s in sums))), 2),  # of the count, by the formula
        "capped_hashtags": int((counts > t).sum()),
        "largest": [{"id": int(h), "name": vocab.names[h], "count": int(counts[h]),
                     "keep": round(float(keep[h]), 6), "images": int(hist_images[h]),
                     "survivors": int(hist_survivors[h]), "expected_survivors": round(float(hist_expected[h]), 2)}
                    for h in largest],
    }


# -- reading a plan back ---------------------------------------------------------------------------
def load_plan(plan_dir: str | Path) -> dict:
    p = Path(plan_dir)
    f = p / "plan.json"
    if not f.is_file():
        raise SwagError(f"{p}: no sample plan here (expected plan.json from `swag sample`)")
    try:
        doc = json.loads(f.read_text())
    except ValueError as e:
        raise SwagError(f"{f}: not valid JSON ({e})") from None
    if doc.get("format") != PLAN_FORMAT:
        raise SwagError(f"{f}: not a swag sample plan (format {doc.get('format')!r})")
    doc["dir"] = str(p)
    return doc


def load_part(plan: dict, part: dict) -> dict:
    f = Path(plan["dir"]) / "plan" / part["path"]
    try:
        with np.load(f) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise SwagError(f"{f}: unreadable plan part ({e})") from None


def iter_plan(plan_dir: str | Path):
    """Yield (ids, multiplicities) per part, in part order."""
    plan = load_plan(plan_dir)
    for part in plan["parts"]:
        arr = load_part(plan, part)
        yield arr["ids"], arr["mult"]
