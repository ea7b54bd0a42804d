"""Reading throughput per source format, against the JSONL reader on the same posts.

    .venv/bin/python bench/bench_sources.py [--posts 40000] [--repeat 3]

Writes a synthetic world in every layout (`swag synth --layout yfcc --layout img2dataset`: the same
posts as JSONL dumps, as YFCC100M metadata and as an img2dataset folder), then measures in one run
`count_tags` (the first pass of `swag vocab build`: read, normalize, count) over each:
  * the JSONL dumps (half gzip),
  * the YFCC100M metadata (half bz2; 25 and 23 fields),
  * the img2dataset folder read from its parquet files, and from its tar shards alone,
and `cat | wc -l` over the decompressed YFCC lines as the floor. Prints posts/s and each reader's
ratio to the JSONL reader (> 1: faster).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_count import best_of  # noqa: E402  (bench/ is the script's folder)
from swagcli.prep.dumps import expand_dumps, read_spec  # noqa: E402
from swagcli.prep.synth import run as synth  # noqa: E402
from swagcli.prep.vocab import count_tags  # noqa: E402
from swagcli.recipes import SynthRecipe, VocabRecipe  # noqa: E402


def count_all(paths, recipe) -> int:
    posts = 0
    for p in paths:
        posts += count_tags(str(p), read_spec(p, recipe))[1].posts
    return posts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        synth(SynthRecipe(out=str(world), posts=a.posts, concepts=100, dump_shards=8, image_size=16,
                          downstream_classes=4, downstream_train_per_class=1, downstream_val_per_class=1,
                          group_images=0, layouts=["yfcc", "img2dataset"], workers=2))
        plain = VocabRecipe()
        sources = {
            "jsonl (half .gz)": (expand_dumps([str(world / "dumps")]), plain),
            "yfcc (half .bz2)": (expand_dumps([str(world / "yfcc")]), plain),
            "img2dataset parquet": (expand_dumps([str(world / "img2dataset")]), plain),
            "img2dataset parquet, usertags": (expand_dumps([str(world / "img2dataset")]),
                                              VocabRecipe(fields={"tags": "usertags"})),
            "img2dataset tar": (expand_dumps([str(world / "img2dataset" / "*.tar")]), plain),
        }
        posts = {name: count_all(paths, r) for name, (paths, r) in sources.items()}
        assert len(set(posts.values())) == 1, posts  # every layout holds the same posts
        n = next(iter(posts.values()))
        times = {name: best_of(lambda p=paths, r=r: count_all(p, r), a.repeat)
                 for name, (paths, r) in sources.items()}
        yfcc = " ".join(f"<(bzcat {p})" if p.suffix == ".bz2" else str(p) for p in sources["yfcc (half .bz2)"][0])
        t_floor = best_of(lambda: subprocess.run(f"cat {yfcc} | wc -l", shell=True, check=True,
                                                 capture_output=True, executable="/bin/bash"), a.repeat)
    ref = times["jsonl (half .gz)"]
    print(f"{n:,} posts read from each layout, best of {a.repeat}")
    print(f"  {'cat | wc -l (yfcc lines)':32s} {n / t_floor:>12,.0f} posts/s")
    for name, t in times.items():
        print(f"  {name:32s} {n / t:>12,.0f} posts/s   ratio to jsonl {ref / t:.2f}")
    print("sources: " + ", ".join(f"{k} {n / t:.0f}/s ({ref / t:.2f})" for k, t in times.items()))


if __name__ == "__main__":
    main()
