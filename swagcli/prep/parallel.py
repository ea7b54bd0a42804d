"""Run a function over shards, in this process or in a pool of worker processes.

Results come back in shard order whatever the worker count, so everything merged from them is
identical for 1 or N workers.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
from typing import Callable, Iterator, Sequence


@contextlib.contextmanager
def gc_paused():
    """Python's cycle collector off for a data-preparation pass (and back as it was after). The
    passes make few reference cycles but many containers, and each full collection walks every
    object alive, the Canonicalizer's table of ~200k synset sets among them: in `swag vocab build`
    on 400k tags that was 0.1-0.2 s of a ~0.9 s build (bench/bench_vocab.py)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _call(args):
    fn, job = args
    with gc_paused():
        return fn(*job)


def map_shards(fn: Callable, jobs: Sequence[tuple], workers: int = 1,
               progress: Callable | None = None, stage: str = "shards") -> Iterator:
    """Yield ``fn(*job)`` for each job, in order; ``progress(stage, done, total)`` after each."""
    total = len(jobs)
    if progress:
        progress(stage, 0, total)
    if workers <= 1 or total <= 1:
        for i, job in enumerate(jobs):
            with gc_paused():  # as in a worker (_call): the same pass whatever the worker count
                res = fn(*job)
            yield res
            if progress:
                progress(stage, i + 1, total)
        return
    from swagcli.signals import pool_worker_init

    ctx = mp.get_context("fork")
    with ctx.Pool(min(workers, total), initializer=pool_worker_init) as pool:
        for i, res in enumerate(pool.imap(_call, [(fn, job) for job in jobs])):
            yield res
            if progress:
                progress(stage, i + 1, total)
