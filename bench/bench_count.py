"""Counting throughput of `swag vocab build`'s first pass against `zcat | wc -l` on the same shards.

    .venv/bin/python bench/bench_count.py [--posts 400000] [--shards 8] [--workers 2]

Writes gzip-compressed JSONL shards of hashtag posts (ids, 1-6 tags drawn Zipfian from 20k tags,
a country, sometimes a caption), then measures in one run:
  * `zcat SHARDS | wc -l` (decompression + line split in C: the floor any reader pays),
  * `count_tags` over every shard in this process (JSON parsing, normalization, counting),
  * the same with `--workers` processes (what `swag vocab build -j N` does),
and prints lines/s and the ratios swag / zcat|wc.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swagcli.prep.parallel import map_shards  # noqa: E402
from swagcli.prep.vocab import count_tags, merge_counts  # noqa: E402


def write_shards(d: Path, posts: int, shards: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    vocab = [f"tag{i}" for i in range(20000)]
    weights = [1 / (i + 1) ** 1.1 for i in range(len(vocab))]
    countries = ["US", "GB", "IN", "BR"]
    paths = []
    per = posts // shards
    for s in range(shards):
        lines = []
        for i in range(per):
            tags = ["#" + t for t in rng.choices(vocab, weights, k=rng.randint(1, 6))]
            post = {"id": f"p{s}_{i}", "hashtags": tags, "country": rng.choice(countries)}
            if rng.random() < 0.2:
                post["caption"] = "a day out " + " ".join(tags[:2])
            lines.append(json.dumps(post))
        p = d / f"posts-{s:05d}.jsonl.gz"
        p.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0))
        paths.append(p)
    return paths


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=400_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_shards(Path(tmp), a.posts, a.shards)
        n = a.posts // a.shards * a.shards
        size = sum(p.stat().st_size for p in paths)
        cmd = "zcat " + " ".join(map(str, paths)) + " | wc -l"
        t_zcat = best_of(lambda: subprocess.run(cmd, shell=True, check=True, capture_output=True), a.repeat)
        t_one = best_of(lambda: merge_counts(count_tags(str(p)) for p in paths), a.repeat)
        jobs = [(str(p),) for p in paths]
        t_par = best_of(lambda: merge_counts(map_shards(count_tags, jobs, a.workers)), a.repeat)
    rate = lambda t: n / t  # noqa: E731
    print(f"{n:,} posts in {a.shards} gzip shards ({size / 1e6:.1f} MB), best of {a.repeat}")
    print(f"  zcat | wc -l        {rate(t_zcat):>12,.0f} lines/s")
    print(f"  swag count, 1 proc  {rate(t_one):>12,.0f} lines/s   ratio {t_zcat / t_one:.3f}")
    print(f"  swag count, {a.workers} procs {rate(t_par):>12,.0f} lines/s   ratio {t_zcat / t_par:.3f}")
    print(f"count: {n} lines, zcat|wc {rate(t_zcat):.0f}/s, swag {rate(t_one):.0f}/s "
          f"(ratio {t_zcat / t_one:.3f}), -j{a.workers} {rate(t_par):.0f}/s (ratio {t_zcat / t_par:.3f})")


if __name__ == "__main__":
    main()
