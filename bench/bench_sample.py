"""Planning throughput and peak memory of `swag sample` on generated plans of N images (no pixels).

    .venv/bin/python bench/bench_sample.py --images 1e6 [--shards K] [--hashtags 27000] [--workers 2]
    .venv/bin/python bench/bench_sample.py --sizes 1e6,1e7,1e8 [--keep DIR]

For each N this
  1. writes N posts as plain TSV dump shards (``id<TAB>#tag #tag``; ``--gzip`` for gzip level 1),
     vectorized with numpy, 1M posts at a time: 12-digit zero-padded ids, 1-4 distinct hashtags per
     post drawn Zipfian (s=1) from H tags ``h00000..`` plus one junk tag ``junk00`` (10% of draws,
     outside the vocabulary; posts with only junk are dropped by the planner), and a matching
     ``vocab.json`` (swag-vocab/1) with the exact image count per hashtag and ``head = count >= cut``,
     the cut leaving ~1.5% of tag occurrences (~3% of images) in the tail. Shards: ``--shards K``,
     or by default one shard per ``--per-shard`` (500k) posts (at least W), as real dumps come;
  2. runs, each in a FRESH subprocess so the figures are its own, in the same run:
       * ``cat|wc -l`` (``zcat`` for gzip) over the shards: the floor any reader pays;
       * the peer: DuckDB's group-by over the same shards, one thread (``read_csv`` + ``unnest(
         string_split(tags, ' '))`` + ``count(*)`` per tag: the posts hold distinct tags, so that is
         images per tag, checked equal to the plan's ``histogram.npz`` images per hashtag);
       * the read floor: one pass of swag's columnar reader (``iter_blocks``), ``-j W`` processes;
       * the planner: ``swag sample --vocab V DUMPS --out P -m M -j W`` (M = N unless ``-m``);
     and prints images/s (N / wall seconds) for each, the planner's images per CPU-second (user+sys
     of its process tree: "per core", the goal being >= 1M at 100M images) and the ratio planner /
     DuckDB by wall and CPU time. The planner reads every shard once (pass 1 weighs and spills
     the arrays the draw needs; pass 2 draws from them). Peak memory, per subprocess: ``max RSS`` =
     its largest single process (/usr/bin/time %M, exact) and ``tree PSS`` = the sum of its tree's
     PSS sampled every 0.2 s (the pool workers together, fork-shared pages counted once);
  3. deletes the generated data unless ``--keep DIR`` (then data lands in DIR/n<N> and stays).
The final table and one-line summaries show whether peak RSS stays flat as N grows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH = 1 << 20  # posts generated per numpy batch
MAXTAGS, IDW, SLOT = 4, 12, 8  # tags per post, id digits, bytes per tag slot ("\t#h01234" / " #h01234")


def generate(d: Path, n: int, shards: int, hashtags: int, gz: bool, seed: int = 0) -> list[Path]:
    """Write the dump shards into ``d/dumps`` and ``d/vocab.json``; memory: one batch + the counts."""
    assert hashtags <= 100_000 and n <= 10 ** IDW
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, hashtags + 1)
    cdf = np.cumsum(np.append(p / p.sum() * 0.9, 0.1))
    names = [f"h{i:05d}" for i in range(hashtags)]
    table = np.frombuffer("".join(" #" + t for t in names + ["junk00", "zzzzzz"]).encode(), np.uint8)
    table = table.reshape(hashtags + 2, SLOT)  # row H = junk, row H+1 = "no tag" (masked out)
    powers = 10 ** np.arange(IDW - 1, -1, -1, dtype=np.int64)
    counts = np.zeros(hashtags + 2, dtype=np.int64)
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    paths = []
    for s in range(shards):
        path = d / "dumps" / f"dump-{s:05d}.tsv{'.gz' if gz else ''}"
        with (gzip.open(path, "wb", compresslevel=1) if gz else open(path, "wb")) as f:
            for lo in range(bounds[s], bounds[s + 1], BATCH):
                m = min(BATCH, bounds[s + 1] - lo)
                k = rng.integers(1, MAXTAGS + 1, m)
                t = np.minimum(np.searchsorted(cdf, rng.random((m, MAXTAGS)), side="right"), hashtags)
                t[np.arange(MAXTAGS) >= k[:, None]] = hashtags + 1
                t.sort(axis=1)  # slot 0 is always a real tag; duplicates end up side by side
                keep = t <= hashtags
                keep[:, 1:] &= t[:, 1:] != t[:, :-1]
                counts += np.bincount(t[keep], minlength=hashtags + 2)
                buf = np.empty((m, IDW + MAXTAGS * SLOT + 1), np.uint8)
                buf[:, :IDW] = (np.arange(lo, lo + m)[:, None] // powers) % 10 + 48
                buf[:, IDW:-1] = table[t].reshape(m, -1)
                buf[:, IDW] = 9  # the first tag follows the tab
                buf[:, -1] = 10
                mask = np.ones(buf.shape, bool)
                mask[:, IDW:-1] = np.repeat(keep, SLOT, axis=1)
                f.write(buf[mask].tobytes())
        paths.append(path)
    c = counts[:hashtags]
    cs = np.cumsum(np.sort(c))
    cut = int(np.sort(c)[min(np.searchsorted(cs, 0.015 * cs[-1], side="right"), hashtags - 1)])
    doc = {"format": "swag-vocab/1", "swag_version": "bench", "params": {"head_min_images": cut},
           "stats": {"dumps": shards, "posts": n, "junk_posts_tags": int(counts[hashtags])},
           "hashtags": [{"id": i, "name": t, "key": t, "synsets": [f"{t}.n.01"], "tags": [t],
                         "count": int(c[i]), "head": bool(c[i] >= cut)} for i, t in enumerate(names)]}
    (d / "vocab.json").write_text(json.dumps(doc))
    return paths


# -- measuring a subprocess ------------------------------------------------------------------------
def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                stat = Path(f"/proc/{e}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(e))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _pss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


def measure(cmd: list[str] | str, log: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time; return wall and CPU seconds (user+sys, the whole tree), max
    single-process RSS (MB) and peak tree PSS (MB, sampled). /usr/bin/time reports the command's
    own peak: a child of this (numpy-holding) process would inherit our high-water mark."""
    cmd = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    tf = log.with_suffix(".time")
    timer = ["/usr/bin/time", "-o", str(tf), "-f", "%M %U %S"] if os.path.exists("/usr/bin/time") else []
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        p = subprocess.Popen(timer + cmd, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _pss_kb(_tree(p.pid)))
            time.sleep(0.2)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n" + log.read_text(errors="replace")[-3000:])
    rss, user, sys_ = (tf.read_text().split()[-3:] if timer else (ru.ru_maxrss, ru.ru_utime, ru.ru_stime))
    return {"s": wall, "cpu": max(float(user) + float(sys_), 0.01), "rss": int(rss) / 1024, "pss": peak / 1024}


def _count_posts(path: str) -> int:
    from swagcli.prep.blocks import iter_blocks
    from swagcli.prep.dumps import ReadStats

    return sum(len(b) for b in iter_blocks(Path(path), "tsv", ReadStats()))


def duckdb_peer(answer: str, paths: list[str]) -> None:
    """The peer: DuckDB's group-by over the same TSV shards, one thread: images per tag (count(*):
    the generated posts hold distinct tags, so it equals count(DISTINCT id) and is the cheaper
    query). Writes {tag: images} to ``answer``."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads=1")
    con.execute("SET preserve_insertion_order=false")
    rows = con.execute(
        "SELECT tag, count(*) FROM (SELECT unnest(string_split(tags, ' ')) AS tag FROM read_csv(?, delim='\t', "
        "header=false, quote='', escape='', columns={'id': 'VARCHAR', 'tags': 'VARCHAR'})) GROUP BY tag",
        [paths]).fetchall()
    Path(answer).write_text(json.dumps(dict(rows)))


def read_floor(workers: int, paths: list[str]) -> None:
    """The peer: every post parsed by the planner's reader, nothing else (same process layout)."""
    from swagcli.prep.parallel import map_shards

    print(sum(map_shards(_count_posts, [(p,) for p in paths], workers)))


# -- one size --------------------------------------------------------------------------------------
def run_size(n: int, a, root: Path) -> dict:
    shards = a.shards or max(a.workers, -(-n // a.per_shard))
    d = root / f"n{n}"
    shutil.rmtree(d, ignore_errors=True)
    (d / "dumps").mkdir(parents=True)
    t = time.perf_counter()
    g = mp.get_context("fork").Process(target=generate, args=(d, n, shards, a.hashtags, a.gzip))
    g.start()  # in a child, so this process stays small
    g.join()
    if g.exitcode:
        sys.exit(f"generating {n:,} posts failed (exit {g.exitcode})")
    gen = time.perf_counter() - t
    paths = sorted(str(p) for p in (d / "dumps").iterdir())
    disk = sum(os.path.getsize(p) for p in paths) / 1e9
    print(f"\n== N={n:,}: {shards} {'gzip' if a.gzip else 'plain'} TSV shards, {disk:.2f} GB, "
          f"generated in {gen:.0f} s ({n / gen:,.0f} posts/s)", flush=True)
    py, swag = sys.executable, str(Path(sys.executable).with_name("swag"))
    m = a.samples or n
    r = {"n": n, "shards": shards, "gb": disk, "gen_s": gen}
    r["cat"] = measure(f"{'zcat' if a.gzip else 'cat'} {d / 'dumps'}/dump-* | wc -l", d / "cat.log")
    print(f"  cat|wc     {n / r['cat']['s']:>12,.0f} images/s, {n / r['cat']['cpu']:>12,.0f} per CPU-s", flush=True)
    r["read"] = measure([py, __file__, "--_floor", str(a.workers), *paths], d / "read.log")
    print(f"  read floor {n / r['read']['s']:>12,.0f} images/s, {n / r['read']['cpu']:>12,.0f} per CPU-s, "
          f"max RSS {r['read']['rss']:.0f} MB", flush=True)
    cmd = [swag, "sample", "--vocab", str(d / "vocab.json"), str(d / "dumps"),
           "--out", str(d / "plan"), "-m", str(m), "-j", str(a.workers)]
    print("  $ " + " ".join(cmd), flush=True)
    r["duckdb"] = measure([py, __file__, "--_duckdb", str(d / "duckdb.json"), *paths], d / "duckdb.log")
    print(f"  DuckDB     {n / r['duckdb']['s']:>12,.0f} images/s, {n / r['duckdb']['cpu']:>12,.0f} per CPU-s, "
          f"max RSS {r['duckdb']['rss']:.0f} MB (one thread)", flush=True)
    r["plan"] = measure(cmd, d / "plan.log")
    s = json.loads((d / "plan" / "summary.json").read_text())
    assert s["total_samples"] == m, s
    names = [h["name"] for h in json.loads((d / "vocab.json").read_text())["hashtags"]]
    with np.load(d / "plan" / "histogram.npz") as z:
        ours = {t: int(c) for t, c in zip(names, z["images"]) if c}
    theirs = {t.lstrip("#"): c for t, c in json.loads((d / "duckdb.json").read_text()).items()}
    theirs = {t: c for t, c in theirs.items() if t in ours or t.startswith("h")}
    r["same_answer"] = ours == theirs
    if not r["same_answer"]:
        sys.exit(f"swag's images per hashtag differ from DuckDB's: {len(set(ours.items()) ^ set(theirs.items()))} entries")
    r["summary"] = {k: s[k] for k in ("images_with_vocab_tags", "tail_images", "unique_images",
                                      "tail_samples", "dropped_images", "seconds")}
    r["plan_gb"] = sum(f.stat().st_size for f in (d / "plan").rglob("*") if f.is_file()) / 1e9
    print(f"  planner    {n / r['plan']['s']:>12,.0f} images/s, {n / r['plan']['cpu']:>12,.0f} per CPU-s, max RSS {r['plan']['rss']:.0f} MB, "
          f"tree PSS {r['plan']['pss']:.0f} MB; {s['tail_images'] / s['images_with_vocab_tags']:.1%} "
          f"tail images, {s['unique_images']:,} unique sampled, plan {r['plan_gb']:.2f} GB", flush=True)
    if not a.keep:
        shutil.rmtree(d)
    return r


def main() -> None:
    if sys.argv[1:2] == ["--_floor"]:
        return read_floor(int(sys.argv[2]), sys.argv[3:])
    if sys.argv[1:2] == ["--_duckdb"]:
        return duckdb_peer(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=float, default=1e6, help="N posts (images)")
    ap.add_argument("--sizes", default="", help="comma list of N run in sequence, e.g. 1e6,1e7,1e8")
    ap.add_argument("--shards", type=int, default=0, help="dump shards (default: N / --per-shard)")
    ap.add_argument("--per-shard", type=float, default=5e5, help="posts per shard when --shards is 0")
    ap.add_argument("--hashtags", type=int, default=27000)
    ap.add_argument("--workers", "-j", type=int, default=2)
    ap.add_argument("--samples", "-m", type=int, default=0, help="M (default N)")
    ap.add_argument("--gzip", action="store_true", help="gzip level-1 shards instead of plain TSV")
    ap.add_argument("--keep", default="", help="write data under this directory and keep it")
    a = ap.parse_args()
    a.per_shard = int(a.per_shard)
    sizes = [int(float(x)) for x in a.sizes.split(",")] if a.sizes else [int(a.images)]
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_sample_"))
    try:
        rows = [run_size(n, a, root) for n in sizes]
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'images':>11} {'shards':>6} {'GB':>5} {'DuckDB/s':>9} {'read/s':>9} {'plan/s':>9} "
          f"{'plan/core/s':>11} {'plan/DuckDB':>11} {'(CPU)':>6} {'DuckDB RSS':>10} {'plan RSS':>8} {'plan PSS':>8}  (MB)")
    for r in rows:
        n, dk, rd, pl = r["n"], r["duckdb"], r["read"], r["plan"]
        print(f"{n:>11,} {r['shards']:>6} {r['gb']:>5.2f} {n / dk['s']:>9,.0f} {n / rd['s']:>9,.0f} {n / pl['s']:>9,.0f} "
              f"{n / pl['cpu']:>11,.0f} {dk['s'] / pl['s']:>11.2f} {dk['cpu'] / pl['cpu']:>6.2f} {dk['rss']:>10.0f} "
              f"{pl['rss']:>8.0f} {pl['pss']:>8.0f}")
    base = rows[0]["plan"]["rss"]
    for r in rows:
        n, dk, pl = r["n"], r["duckdb"], r["plan"]
        print(f"sample: {n:,} images, {r['shards']} shards, -j {a.workers}: {n / pl['s']:,.0f} images/s, "
              f"{n / pl['cpu']:,.0f} per CPU-second (goal >= 1,000,000); DuckDB's group-by (1 thread) "
              f"{n / dk['s']:,.0f} images/s, ratio planner/DuckDB {dk['s'] / pl['s']:.2f} (CPU {dk['cpu'] / pl['cpu']:.2f}), "
              f"same answer: {r['same_answer']}; peak RSS {pl['rss']:.0f} MB ({pl['rss'] / base:.2f} of the first size's)")


if __name__ == "__main__":
    main()
