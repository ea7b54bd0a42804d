"""Caption labelling throughput against the plain hashtag counting pass on the same posts.

    .venv/bin/python bench/bench_captions.py [--posts 20000] [--repeat 5] [--glosses 0] [--cold]

Writes a synthetic world's dump shards (`swag synth`, tiny images: every post has an English
caption naming its concepts), warms the caption labeller once (its WordNet tables from the disk
cache; the load is reported apart), then measures in one run, single process, repeats interleaved
so that every measurement sees the same load, median of `--repeat`:
  * (a) `count_tags` over the JSONL shards with `labels: hashtags` (the default: the peer),
  * (b) the same with `labels: caption` (every caption labelled by `CaptionLabeller`),
  * (d) the same with `labels: both`,
  * (c) `CaptionLabeller.label` alone on the same caption strings, in memory,
  * (g) `CaptionLabeller.label` on WordNet's noun glosses (definitions, read from data.noun) as
    captions: longer, real English sentences (`--glosses N`: the first N; 0 = all ~82k).
Prints posts/s and the ratios (b)/(a), (d)/(a); captions/s and words/s (words as the labeller
splits them) of (c) and (g). `--cold` also times one labeller build without the disk cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swagcli.prep.canon import ALLOWED_SENSES, Canonicalizer  # noqa: E402
from swagcli.prep.captions import CaptionConfig, CaptionLabeller, labeller  # noqa: E402
from swagcli.prep.dumps import ReadSpec, detect_format, expand_dumps  # noqa: E402
from swagcli.prep.synth import run as synth  # noqa: E402
from swagcli.prep.vocab import count_tags  # noqa: E402
from swagcli.recipes import SynthRecipe  # noqa: E402


def read_captions(paths) -> list[str]:
    out = []
    for p in paths:
        with (gzip.open(p) if p.suffix == ".gz" else open(p, "rb")) as fp:
            for line in fp:
                try:
                    cap = json.loads(line).get("caption")
                except (ValueError, AttributeError):  # UnicodeDecodeError is a ValueError
                    continue  # the world's corrupt lines
                if isinstance(cap, str) and cap.strip():
                    out.append(cap)
    return out


def read_glosses(limit: int = 0) -> list[str]:
    """WordNet's noun definitions (the gloss after ' | ', up to its first quoted example)."""
    from swagcli.wordnet import get_wordnet

    root = Path(str(get_wordnet().root))
    out = []
    with open(root / "data.noun", encoding="utf8") as fp:
        for line in fp:
            if line.startswith("  "):  # the licence header
                continue
            gloss = line.partition(" | ")[2]
            text = gloss.split('"', 1)[0].strip().rstrip(";").strip()
            if text:
                out.append(text)
                if limit and len(out) >= limit:
                    break
    return out


def count_all(paths, spec) -> int:
    posts = 0
    for p in paths:
        posts += count_tags(str(p), spec)[1].posts
    return posts


def label_all(lab: CaptionLabeller, texts) -> int:
    n = 0
    for t in texts:
        n += len(lab.label(t))
    return n


def median_times(fns: dict, repeat: int) -> dict:
    """Median seconds of each fn, the repeats interleaved (round r runs every fn once)."""
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--glosses", type=int, default=0, help="WordNet noun glosses to label (0: all)")
    ap.add_argument("--cold", action="store_true", help="also time a labeller build without the disk cache")
    a = ap.parse_args()
    pc = time.perf_counter
    cfg = CaptionConfig(tuple(sorted(ALLOWED_SENSES)))
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        t0 = pc()
        synth(SynthRecipe(out=str(world), posts=a.posts, concepts=100, dump_shards=4, image_size=16,
                          images_per_shard=max(10, a.posts), downstream_classes=4,
                          downstream_train_per_class=1, downstream_val_per_class=1, group_images=0,
                          workers=2))
        synth_s = pc() - t0
        paths = expand_dumps([str(world / "dumps")])
        fmt = detect_format(paths[0], "auto")
        specs = {"hashtags": ReadSpec(fmt), "caption": ReadSpec(fmt, labels="caption", captions=cfg),
                 "both": ReadSpec(fmt, labels="both", captions=cfg)}
        caps = read_captions(paths)

        t0 = pc()
        lab = labeller(cfg)  # the process's labeller, the one count_tags uses
        load_s = pc() - t0
        source = lab.canon.source
        cold_s = None
        if a.cold:
            t0 = pc()
            CaptionLabeller(cfg, Canonicalizer(cfg.allowed_senses, cfg.min_len, cache=False))
            cold_s = pc() - t0
        t0 = pc()
        glosses = read_glosses(a.glosses)
        gloss_read_s = pc() - t0

        # warm-up: one untimed pass of each (page cache, the labeller's per-phrase memo)
        posts = {k: count_all(paths, s) for k, s in specs.items()}
        labels_c = label_all(lab, caps)
        labels_g = label_all(lab, glosses)
        words_c = sum(len(lab.words(t)) for t in caps)
        words_g = sum(len(lab.words(t)) for t in glosses)
        times = median_times({
            "hashtags": lambda: count_all(paths, specs["hashtags"]),
            "caption": lambda: count_all(paths, specs["caption"]),
            "both": lambda: count_all(paths, specs["both"]),
            "label": lambda: label_all(lab, caps),
            "glosses": lambda: label_all(lab, glosses),
        }, a.repeat)

    n = a.posts  # posts written; posts[...] are those with at least one tag (kept by count_tags)
    t_a, t_b, t_d, t_c, t_g = (times[k] for k in ("hashtags", "caption", "both", "label", "glosses"))
    print(f"{n:,} posts in {len(paths)} JSONL shards (synth {synth_s:.1f}s), {len(caps):,} captions "
          f"({words_c / len(caps):.1f} words each), median of {a.repeat} interleaved, 1 process")
    print(f"labeller load (cached tables): {load_s:.2f}s; source: {source}")
    if cold_s is not None:
        print(f"labeller build without the disk cache: {cold_s:.2f}s")
    print(f"  (a) count_tags, labels hashtags  {n / t_a:>10,.0f} posts/s   ({posts['hashtags']:,} posts with tags)")
    print(f"  (b) count_tags, labels caption   {n / t_b:>10,.0f} posts/s   ratio to (a) {t_a / t_b:.3f}"
          f"   ({posts['caption']:,} posts with tags)")
    print(f"  (d) count_tags, labels both      {n / t_d:>10,.0f} posts/s   ratio to (a) {t_a / t_d:.3f}"
          f"   ({posts['both']:,} posts with tags)")
    print(f"      labelling adds {(t_b - t_a) / n * 1e6:.1f} us a post ((b) - (a))")
    print(f"  (c) label(), synthetic captions  {len(caps) / t_c:>10,.0f} captions/s {words_c / t_c:>12,.0f} words/s"
          f"   ({labels_c / len(caps):.2f} tags a caption)")
    print(f"  (g) label(), WordNet glosses     {len(glosses) / t_g:>10,.0f} captions/s {words_g / t_g:>12,.0f} words/s"
          f"   ({len(glosses):,} glosses, {words_g / len(glosses):.1f} words, "
          f"{labels_g / len(glosses):.2f} tags each; read in {gloss_read_s:.2f}s)")
    print(f"captions: {n} posts, hashtags {n / t_a:.0f}/s, caption {n / t_b:.0f}/s (ratio {t_a / t_b:.3f}), "
          f"both {n / t_d:.0f}/s (ratio {t_a / t_d:.3f}), label {len(caps) / t_c:.0f} captions/s, "
          f"glosses {len(glosses) / t_g:.0f} captions/s ({words_g / t_g:.0f} words/s), load {load_s:.2f}s")


if __name__ == "__main__":
    main()
