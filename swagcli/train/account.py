"""Planned versus found: what the image shards held of a plan, epoch by epoch.

Every training stream, when it has read its shards of an epoch, writes what it met into
``RUN/stream/G<streams>-s<seed>/e<epoch>/s<stream>.json`` (planned samples met, samples read,
not planned, bad shards). The run directory is shared by every rank, so the files add up to the
whole epoch once every stream that has shards has written one:

* rank 0 checks each complete epoch (:func:`verdict`): samples of the plan that no shard held
  beyond ``max_bad_fraction`` stop the run in one line (a deleted shard, shards of another plan);
* a stream whose epoch gave it nothing looks there too (:func:`nothing_anywhere`) and stops the run
  when every stream's epoch came up empty: the shards hold none of the plan's ids (it used to spin
  without end);
* a run that ends before every stream finished its first epoch, while some stream already
  wrapped around (a sign that samples are missing), completes the count by reading the keys of the
  remaining shards (:func:`complete_by_scan`; tar headers only).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from swagcli.errors import SwagError


def account_dir(out: str | os.PathLike, streams: int, seed: int) -> Path:
    return Path(out) / "stream" / f"G{streams}-s{seed}"


def expected_streams(streams: int, shards: int) -> int:
    """Streams that get shards: stream k's share of an epoch is ``perm[k::streams]``."""
    return min(streams, shards)


def write(root: Path, epoch: int, index: int, counts: dict) -> None:
    from swagcli.fileio import atomic_write_json

    d = root / f"e{epoch:05d}"
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / f"s{index:05d}.json", counts, indent=None)


def epoch_total(root: Path, epoch: int, expected: int) -> dict | None:
    """The counts of ``epoch`` summed over its streams, or None while some stream is not done."""
    d = root / f"e{epoch:05d}"
    try:
        names = [n for n in os.listdir(d) if n.startswith("s") and n.endswith(".json")]
    except FileNotFoundError:
        return None
    if len(names) < expected:
        return None
    total: dict = {"epoch": epoch, "streams": len(names)}
    for n in names:
        try:
            doc = json.loads((d / n).read_text())
        except (OSError, ValueError):
            return None
        for k, v in doc.items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return total


def verdict(total: dict, plan_samples: int, max_bad_fraction: float) -> str | None:
    """The one-line error for an epoch whose shards held too little of the plan, or None."""
    found = total.get("planned", 0)
    missing = plan_samples - found
    if missing <= max_bad_fraction * plan_samples:
        return None
    if found == 0:
        return (f"training stream: none of the plan's {plan_samples:,} samples is in the image shards "
                f"({total.get('read', 0):,} samples read in {total.get('shards', 0):,} shards, none planned): "
                "are these the shards the plan was drawn from? (data.shards)")
    return (f"training stream: epoch {total['epoch']}: the image shards hold {found:,} of the plan's "
            f"{plan_samples:,} samples ({missing / plan_samples:.1%} missing, > data.max_bad_fraction "
            f"{max_bad_fraction:g}): was a shard deleted, or are these not all the shards the plan was "
            "drawn from? (the other shards would have been repeated to fill the run)")


def nothing_anywhere(root: Path, epoch: int, expected: int, wait_s: float = 20.0) -> bool:
    """After an epoch that gave this stream nothing: True when every stream's epoch ``epoch`` came
    up empty too (waiting up to ``wait_s`` for the others to finish reading it)."""
    deadline = time.monotonic() + wait_s
    while True:
        total = epoch_total(root, epoch, expected)
        if total is not None:
            return total.get("planned", 0) == 0
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def needs_scan(root: Path, streams_now: dict, streams: int, shards: int, plan_samples: int,
               max_bad_fraction: float) -> bool:
    """At the end of a run whose epoch 0 is not complete in the account: whether the samples
    could be short of the plan. Streams that finished epoch 0 count exactly; the others count
    what they had met of it when the run ended (``streams_now``: stream -> (epoch, planned met in
    that epoch)), a lower bound; only when that bound is short is the rest counted from keys."""
    expected = expected_streams(streams, shards)
    if epoch_total(root, 0, expected) is not None:
        return False
    d = root / "e00000"
    done = {}
    if d.is_dir():
        for n in os.listdir(d):
            if n.startswith("s") and n.endswith(".json"):
                try:
                    done[int(n[1:6])] = json.loads((d / n).read_text()).get("planned", 0)
                except (OSError, ValueError):
                    pass
    if not done:
        return False  # no stream finished epoch 0: none wrapped round, nothing can be missing unseen
    lower = sum(done.values()) + sum(v[1] for k, v in streams_now.items() if k not in done and v[0] == 0)
    return plan_samples - lower > max_bad_fraction * plan_samples


def complete_by_scan(root: Path, shards: list[str], lookup, seed: int, streams: int) -> dict | None:
    """Epoch 0's count with the streams that did not finish it counted from their shards' keys."""
    from swagcli.tario import BadTar, tar_keys
    from swagcli.train.data import stream_shards

    expected = expected_streams(streams, len(shards))
    d = root / "e00000"
    have = {int(n[1:6]) for n in os.listdir(d) if n.startswith("s") and n.endswith(".json")} if d.is_dir() else set()
    if not have or len(have) >= expected:
        return epoch_total(root, 0, expected)
    for k in range(expected):
        if k in have:
            continue
        planned = read = 0
        for url in stream_shards(shards, 0, seed, k, streams):
            try:
                with open(url, "rb", buffering=1 << 16) as f:
                    for key in tar_keys(f):
                        read += 1
                        hit = lookup.get(key)
                        if hit is not None:
                            planned += hit[0]
            except (BadTar, OSError):
                pass
        write(root, 0, k, {"planned": planned, "read": read, "shards": len(stream_shards(shards, 0, seed, k, streams)),
                           "counted_from_keys": 1})
    return epoch_total(root, 0, expected)


class Auditor:
    """Rank 0's check of the epochs as their accounts complete."""

    def __init__(self, root: Path, streams: int, shards: int, plan_samples: int, max_bad_fraction: float,
                 start_epoch: int = 0):
        self.root, self.plan_samples, self.max_bad = root, plan_samples, max_bad_fraction
        self.expected = expected_streams(streams, shards)
        self.next_epoch = start_epoch
        self.epochs: list[dict] = []

    def poll(self) -> str | None:
        """Check every newly complete epoch; the error line if one is short of the plan."""
        while True:
            total = epoch_total(self.root, self.next_epoch, self.expected)
            if total is None:
                return None
            self.next_epoch += 1
            total["plan"] = self.plan_samples
            total["missing"] = max(0, self.plan_samples - total.get("planned", 0))
            self.epochs.append(total)
            bad = verdict(total, self.plan_samples, self.max_bad)
            if bad:
                return bad

    def summary(self) -> list[dict]:
        return self.epochs


def raise_if_short(total: dict | None, plan_samples: int, max_bad_fraction: float) -> None:
    if total is not None:
        bad = verdict(total, plan_samples, max_bad_fraction)
        if bad:
            raise SwagError(bad)
