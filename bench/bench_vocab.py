"""`swag vocab build` end to end against Listing 1 (SWAG paper, Appendix A), per distinct tag.

    .venv/bin/python bench/bench_vocab.py [--tags 400000] [--sample 5000] [--shards 4] [--repeat 3] [--json]

Setup: ``--tags`` distinct tags, the mix of ``bench_canon.py`` (12% WordNet-derived: lemmas,
plurals, inflections, compounds; 88% junk: word concatenations, digits, random strings, names,
short/unicode tags), each written as ``#tag`` on exactly 2 posts (two shuffled passes over the
tags, cut into posts of 1-5 tags; a post never repeats a tag), so every tag reaches the default
``min_count`` 2 and is canonicalized. The posts (unique ids, no country) go into ``--shards``
plain JSONL dump files, in random order.

Measured in one run:
  (a) Listing 1 (``tests/listing1.py``, nltk) over ``--sample`` tags drawn at random from the
      distinct tags, tag by tag, on its own fresh WordNet reader (its construction not timed):
      Listing 1's tags/s;
  (b) ``swag vocab build DUMPS --out OUT -j 1`` in a fresh subprocess (``swag`` next to
      ``sys.executable``), wall time (and the child's CPU time, user + sys), twice: first with
      the Canonicalizer's disk cache empty (``$SWAG_CACHE`` pointed at a new empty directory: the
      answer table is built from the WordNet files, and written there), then with that cache
      warm (the table read from it: the normal state on a user's machine after the first run).
      Whether each build found the table in the cache is read off the cache directory (the
      table file exists before the run, and is not rewritten by it). ``--repeat`` runs of each
      (each cold one on its own new empty cache), best wall time kept;
  (c) the start-up cost, measured the same way: the same command, the same cache state (a second
      empty directory for the cold one), on a 2-post dump (both posts ``#dog``: one hashtag).
      It holds the interpreter, imports, the WordNet reader that ``vocab build`` loads for the
      WordNet version, the Canonicalizer's table (built or read), the output files and plot.
      ``swag vocab build --help`` (interpreter and imports only) is timed too, for scale, and not
      subtracted.
The ratio = (distinct tags / (build seconds - start-up seconds)) / Listing 1's tags/s, per cache
state; also shown including the start-up (distinct tags / build seconds). The goal: >= 25x.

The answers are checked (exit status 1 if any check fails): for each sampled tag, a non-empty
Listing-1 synset set means the tag is in exactly one hashtag of vocab.json, whose synsets equal
that set; an empty one means it is in no hashtag. Also: ``distinct_tags`` and ``candidate_tags``
are ``--tags``, every raw tag's count is 2, each hashtag's ``count`` (images carrying any of its
tags) and ``images_with_vocab_tag`` equal what the generated posts give, and the two builds'
hashtags are identical.

If WordNet is found in a plain directory, the subprocesses get it as ``$SWAG_WORDNET`` (so that an
empty ``$SWAG_CACHE`` does not also mean re-assembling WordNet from Debian's files).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_canon import build_mix, fresh_reader  # noqa: E402


def make_posts(tags: list[str], rng: random.Random) -> list[list[str]]:
    """Posts of 1-5 tags, every tag on exactly 2 of them, never twice on one."""
    posts = []
    for _ in range(2):  # each pass puts every tag on one post
        order = tags[:]
        rng.shuffle(order)
        i = 0
        while i < len(order):
            k = rng.randint(1, 5)
            posts.append(order[i:i + k])
            i += k
    rng.shuffle(posts)
    return posts


def write_dumps(d: Path, posts: list[list[str]], shards: int) -> list[Path]:
    paths = []
    for s in range(shards):
        lines = [json.dumps({"id": f"p{i}", "hashtags": ["#" + t for t in posts[i]]}, ensure_ascii=False)
                 for i in range(s, len(posts), shards)]
        p = d / f"dump-{s:05d}.jsonl"
        p.write_text("\n".join(lines) + "\n", encoding="utf8")
        paths.append(p)
    return paths


def child_env(cache: Path) -> dict:
    env = dict(os.environ, SWAG_CACHE=str(cache))
    if "SWAG_WORDNET" not in env:
        from swagcli.wordnet import _is_complete, find_wordnet_root

        root = Path(str(find_wordnet_root()[0]))
        if root.is_dir() and _is_complete(root):
            env["SWAG_WORDNET"] = str(root)
    return env


def table_files(cache: Path) -> dict:
    """{name: mtime_ns} of the Canonicalizer's answer tables in a cache directory."""
    d = cache / "canon"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("table-*.json")} if d.is_dir() else {}


def run_build(swag: str, dumps: list[Path], out: Path, cache: Path) -> dict:
    """``swag vocab build`` in a fresh process: wall and CPU seconds, and whether the table came
    from the cache."""
    before = table_files(cache)
    cmd = [swag, "vocab", "build", *map(str, dumps), "--out", str(out), "-j", "1"]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=child_env(cache), capture_output=True, text=True)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    after = table_files(cache)
    hit = bool(before) and all(after.get(k) == v for k, v in before.items())
    return {"wall_s": wall, "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "table_from_cache": hit, "table_written": sorted(set(after) - set(before))}


def check(doc: dict, n_tags: int, posts: list[list[str]], ref: dict, sample: list[str]) -> list[str]:
    bad = []
    st = doc["stats"]
    for key in ("distinct_tags", "candidate_tags"):
        if st[key] != n_tags:
            bad.append(f"stats.{key} = {st[key]}, not {n_tags}")
    where: dict = {}
    for h in doc["hashtags"]:
        for t in h["tags"]:
            where.setdefault(t, []).append(h)
        wrong = {t: c for t, c in h["tag_counts"].items() if c != 2}
        if wrong:
            bad.append(f"hashtag {h['name']!r}: tag counts not 2: {dict(list(wrong.items())[:5])}")
    for t in sample:
        s, hs = ref[t], where.get(t, [])
        if s and (len(hs) != 1 or frozenset(hs[0]["synsets"]) != s):
            bad.append(f"{t!r}: Listing 1 {sorted(s)}, vocab.json {[h['synsets'] for h in hs]}")
        elif not s and hs:
            bad.append(f"{t!r}: Listing 1 no synset, vocab.json has it in {[h['name'] for h in hs]}")
    hid = {t: hs[0]["id"] for t, hs in where.items()}
    want: Counter = Counter()
    images = 0
    for post in posts:
        ids = {hid[t] for t in post if t in hid}
        want.update(ids)
        images += bool(ids)
    got = Counter({h["id"]: h["count"] for h in doc["hashtags"] if h["count"]})
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        bad.append(f"hashtag counts differ from the posts' on {len(diff)} hashtags, e.g. "
                   + ", ".join(f"{k}: {got.get(k)} vs {want.get(k)}" for k in diff[:5]))
    if st["images_with_vocab_tag"] != images:
        bad.append(f"images_with_vocab_tag {st['images_with_vocab_tag']}, the posts give {images}")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=400_000, help="distinct tags")
    ap.add_argument("--sample", type=int, default=5000, help="tags Listing 1 is timed (and checked) on")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3,
                    help="start-up and build runs per cache state, interleaved, best kept")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    a = ap.parse_args(argv)

    from tests.listing1 import ALLOWED_SENSES, get_synset_names

    swag = str(Path(sys.executable).with_name("swag"))
    pc = time.perf_counter
    rng = random.Random(a.seed)
    t0 = pc()
    items = build_mix(a.tags, a.seed)
    tags = [t for t, _ in items]
    posts = make_posts(tags, rng)
    mix_s = pc() - t0

    # (a) Listing 1 on a sample, on its own reader
    sample = rng.sample(tags, min(a.sample, len(tags)))
    t0 = pc()
    wn = fresh_reader()
    reader_s = pc() - t0
    ref = {}
    t0 = pc()
    for t in sample:
        ref[t] = get_synset_names(wn, t, ALLOWED_SENSES)
    l1_s = pc() - t0
    del wn
    l1_rate = len(sample) / l1_s

    res: dict = {"tags": a.tags, "posts": len(posts), "shards": a.shards, "sample": len(sample),
                 "listing1": {"seconds": round(l1_s, 3), "tags_per_s": round(l1_rate), "reader_s": round(reader_s, 2),
                              "sample_with_synsets": sum(1 for s in ref.values() if s)}}
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "dumps").mkdir()
        (tmp / "tiny").mkdir()
        t0 = pc()
        dumps = write_dumps(tmp / "dumps", posts, a.shards)
        write_s = pc() - t0
        tiny = write_dumps(tmp / "tiny", [["dog"], ["dog"]], 1)
        res["dump_bytes"] = sum(p.stat().st_size for p in dumps)
        t0 = pc()  # for scale: the interpreter and the CLI's imports alone
        subprocess.run([swag, "vocab", "build", "--help"], env=child_env(tmp / "cache-help"),
                       capture_output=True, check=True)
        res["help_s"] = round(pc() - t0, 3)
        cache = tmp / "cache"  # cold, then warmed by the cold build
        docs = {}
        for state in ("cold", "warm"):
            runs = []
            for r in range(a.repeat):  # interleaved; cold: new empty caches each time
                start_cache = tmp / f"cache-startup-{r}" if state == "cold" else cache
                build_cache = cache if state == "warm" or r == 0 else tmp / f"cache-cold-{r}"
                runs.append((run_build(swag, tiny, tmp / f"out-tiny-{state}-{r}", start_cache),
                             run_build(swag, dumps, tmp / f"out-{state}-{r}", build_cache)))
            startup = min((s for s, _ in runs), key=lambda x: x["wall_s"])
            build = min((b for _, b in runs), key=lambda x: x["wall_s"])
            for r in range(a.repeat):
                doc = json.loads((tmp / f"out-{state}-{r}" / "vocab.json").read_text())
                bad += [f"{state} build {r + 1}: {b}" for b in check(doc, a.tags, posts, ref, sample)]
                docs[f"{state} {r + 1}"] = doc
            docs[state] = doc
            net = build["wall_s"] - startup["wall_s"]
            net_cpu = build["cpu_s"] - startup["cpu_s"]
            res[state] = {
                "build": {k: round(v, 3) if isinstance(v, float) else v for k, v in build.items()},
                "startup": {k: round(v, 3) if isinstance(v, float) else v for k, v in startup.items()},
                "net_s": round(net, 3),
                "tags_per_s": round(a.tags / net) if net > 0 else None,
                "ratio": round(a.tags / net / l1_rate, 1) if net > 0 else None,
                "ratio_cpu": round(a.tags / net_cpu / l1_rate, 1) if net_cpu > 0 else None,
                "ratio_incl_startup": round(a.tags / build["wall_s"] / l1_rate, 1),
                "build_seconds_in_vocab_json": docs[state]["stats"]["seconds"],
            }
            hits = [x["table_from_cache"] for run in runs for x in run]
            if state == "cold" and any(hits):
                bad.append("a cold run found a table in the cache")
            if state == "warm" and not all(hits):
                bad.append("a warm run did not use the cache")
        if any(doc["hashtags"] != docs["cold"]["hashtags"] for doc in docs.values()):
            bad.append("the builds' hashtags differ")
        st = docs["warm"]["stats"]
        res["vocab"] = {k: st.get(k) for k in ("posts", "distinct_tags", "candidate_tags", "kept_tags",
                                               "canonical_hashtags", "images_with_vocab_tag")}

    print(f"{a.tags:,} distinct tags on {len(posts):,} posts (2 each) in {a.shards} JSONL shards "
          f"({res['dump_bytes'] / 1e6:.1f} MB); mix + posts {mix_s:.1f}s, written in {write_s:.1f}s")
    v = res["vocab"]
    print(f"vocab.json: {v['kept_tags']:,} tags kept in {v['canonical_hashtags']:,} hashtags, "
          f"{v['images_with_vocab_tag']:,} images with a vocabulary tag")
    L = res["listing1"]
    print(f"listing1: {len(sample)} sampled tags ({L['sample_with_synsets']} with synsets) in {l1_s:.3f}s: "
          f"{l1_rate:,.0f} tags/s (reader {reader_s:.2f}s, not timed)")
    print(f"(swag vocab build --help: {res['help_s']:.3f}s wall, not subtracted)")
    for state in ("cold", "warm"):
        r = res[state]
        b, s = r["build"], r["startup"]
        how = "table from the cache" if b["table_from_cache"] else "table built from WordNet"
        print(f"swag vocab build, {state} cache ({how}):")
        print(f"  build    {b['wall_s']:8.3f}s wall {b['cpu_s']:8.3f}s cpu")
        print(f"  start-up {s['wall_s']:8.3f}s wall {s['cpu_s']:8.3f}s cpu (same command, 2-post dump)")
        if r["tags_per_s"] is None:
            print(f"  net      {r['net_s']:8.3f}s: the build is within the start-up's noise (use more --tags); "
                  f"incl. start-up ratio {r['ratio_incl_startup']}")
        else:
            print(f"  net      {r['net_s']:8.3f}s: {r['tags_per_s']:,} tags/s, ratio {r['ratio']} "
                  f"(cpu {r['ratio_cpu']}; incl. start-up {r['ratio_incl_startup']})")
    if a.json:
        print(json.dumps(res))
    c, w = res["cold"], res["warm"]
    print(f"vocab: {a.tags} tags, listing1 {l1_rate:,.0f} tags/s, ratio warm {w['ratio']} (incl. start-up "
          f"{w['ratio_incl_startup']}), cold {c['ratio']} (incl. start-up {c['ratio_incl_startup']}); "
          f"goal >= 25; answers {'match' if not bad else 'DIFFER'}")
    for b in bad:
        print("MISMATCH:", b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
