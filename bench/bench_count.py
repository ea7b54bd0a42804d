"""Counting throughput of `swag vocab build`'s passes 1 and 3 against DuckDB on the same shards.

    .venv/bin/python bench/bench_count.py [--posts 1000000] [--shards 4] [--repeat 3] [--gzip] [--json]

Writes ``--posts`` generated hashtag posts into ``--shards`` plain files (``--gzip``: .gz files),
once as JSONL dumps (``{"id": "p0_17", "hashtags": ["#tag3", ...], "country": "US"}``, 20% with a
``caption``) and once as TSV dumps holding the same posts (``id<TAB>#tag3 #tag40<TAB>US``). A post has
1-6 tags drawn (with replacement: a post may repeat a tag) Zipf-like (weight 1/(rank+1)^1.1) from
20,000 tags ``#tagN``; ids are unique (``p{shard}_{i}``). Then measures in one run, single-threaded,
per format, repeats interleaved (duckdb, duckdb join, swag pass 1, swag pass 3, floor; then the
other format), best of ``--repeat``:
  * the peer, DuckDB (``SET threads=1``): images per raw tag,
    ``SELECT tag, count(DISTINCT id) FROM (SELECT id, unnest(hashtags) AS tag FROM read_json(FILES,
    format='newline_delimited', columns={'id': 'VARCHAR', 'hashtags': 'VARCHAR[]'})) GROUP BY tag``,
    for TSV the same over ``read_csv(FILES, delim='\\t', header=false, quote='', escape='',
    columns={'id': 'VARCHAR', 'tags': 'VARCHAR', 'country': 'VARCHAR'})`` and
    ``unnest(string_split(tags, ' '))``;
  * swag's pass 1, ``count_tags(str(p), fmt)`` over every file in this process, each repeat
    starting cold (``blocks._NORM`` cleared: the raw tags Python normalizes; it stays warm across the files, as
    in one ``swag vocab build -j 1`` process); JSONL blocks are read by the compiled scanner
    (``swagcli.prep.jsonscan``), and once more without numba (``SWAG_NUMBA=0``: pyarrow's JSON
    reader and arrow's kernels, as before the compiled ones: reported, not in the ratios);
  * swag's pass 3, ``count_canonical(str(p), tag_to_id, fmt)`` over every file, right after pass 1
    (in the same process, as in the build), ``tag_to_id`` mapping the 20,000 tags to
    10,000 hashtag ids, two tags each (``tag2k``, ``tag2k+1`` -> k), so that a post carrying both
    counts once for its hashtag;
  * DuckDB's answer to pass 3 (timed, reported, not in the ratios): the same read joined with a
    mapping table (raw tag -> hashtag id), ``count(DISTINCT id)`` per hashtag id, and over all;
  * the floor, ``cat FILES | wc -l`` (``zcat`` for --gzip): reading and line splitting in C.
The answers are checked: DuckDB's ``{tag.lstrip('#'): n}`` must equal pass 1's Counter (ids are
unique, so count(DISTINCT id) is the images a tag is on), and pass 3's (Counter, images) must
equal the join query's; the script exits with status 1 if any differs. The ratio reported per
swag pass is DuckDB's time / swag's time (>= 1.0: swag at least as fast as DuckDB: the goal).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swagcli.prep import blocks, jsonscan  # noqa: E402
from swagcli.prep.vocab import count_canonical, count_tags  # noqa: E402

N_TAGS = 20_000
COUNTRIES = ["US", "GB", "IN", "BR", "DE", "FR", "JP", "MX"]


def write_shards(d: Path, posts: int, shards: int, gz: bool = False, seed: int = 0):
    """Both layouts of the same posts: ({'jsonl': [paths], 'tsv': [paths]}, tags drawn)."""
    rng = np.random.default_rng(seed)
    names = [f"#tag{i}" for i in range(N_TAGS)]
    cdf = np.cumsum(1.0 / np.arange(1, N_TAGS + 1) ** 1.1)
    cdf /= cdf[-1]
    out = {"jsonl": [], "tsv": []}
    drawn = 0
    for s in range(shards):
        n = posts // shards + (s < posts % shards)
        k = rng.integers(1, 7, n)
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(k, out=ptr[1:])
        draws = np.minimum(np.searchsorted(cdf, rng.random(int(ptr[-1]))), N_TAGS - 1)
        drawn += len(draws)
        toks = [names[j] for j in draws.tolist()]
        country = [COUNTRIES[c] for c in rng.integers(0, len(COUNTRIES), n).tolist()]
        caption = (rng.random(n) < 0.2).tolist()
        bounds = ptr.tolist()
        jl, tl = [], []
        for i in range(n):
            tags = toks[bounds[i]:bounds[i + 1]]
            pid, c = f"p{s}_{i}", country[i]
            cap = f',"caption":"a day out {" ".join(tags[:2])}"' if caption[i] else ""
            jl.append('{"id":"' + pid + '","hashtags":["' + '","'.join(tags) + '"],"country":"' + c
                      + '"' + cap + "}\n")
            tl.append(pid + "\t" + " ".join(tags) + "\t" + c + "\n")
        for fmt, lines in (("jsonl", jl), ("tsv", tl)):
            data = "".join(lines).encode()
            p = d / f"posts-{s:05d}.{fmt}" if not gz else d / f"posts-{s:05d}.{fmt}.gz"
            p.write_bytes(gzip.compress(data, compresslevel=6, mtime=0) if gz else data)
            out[fmt].append(p)
    return out, drawn


def tag_mapping() -> dict[str, int]:
    """Normalized tag -> hashtag id: tag2k and tag2k+1 -> k."""
    return {f"tag{i}": i // 2 for i in range(N_TAGS)}


def source_sql(fmt: str, paths: list[Path]) -> str:
    """(id, tag) rows of the files, one per tag occurrence."""
    files = "[" + ", ".join(f"'{p}'" for p in paths) + "]"
    if fmt == "jsonl":
        return (f"SELECT id, unnest(hashtags) AS tag FROM read_json({files}, format='newline_delimited', "
                "columns={'id': 'VARCHAR', 'hashtags': 'VARCHAR[]'})")
    return (f"SELECT id, unnest(string_split(tags, ' ')) AS tag FROM read_csv({files}, delim='\\t', "
            "header=false, quote='', escape='', columns={'id': 'VARCHAR', 'tags': 'VARCHAR', "
            "'country': 'VARCHAR'})")


def duckdb_count(con, fmt: str, paths: list[Path]) -> Counter:
    rows = con.execute(f"SELECT tag, count(DISTINCT id) FROM ({source_sql(fmt, paths)}) GROUP BY tag").fetchall()
    return Counter({t.lstrip("#"): n for t, n in rows})


def duckdb_canonical(con, fmt: str, paths: list[Path]) -> tuple[Counter, int]:
    """Pass 3's answer: images per hashtag id (joined through the registered table ``mapping``),
    and images with any vocabulary tag."""
    src = f"SELECT s.id, m.hid FROM ({source_sql(fmt, paths)}) s JOIN mapping m ON s.tag = m.tag"
    rows = con.execute(f"SELECT hid, count(DISTINCT id) FROM ({src}) GROUP BY hid").fetchall()
    images = con.execute(f"SELECT count(DISTINCT id) FROM ({src})").fetchone()[0]
    return Counter(dict(rows)), images


def swag_pass1(fmt: str, paths: list[Path]) -> Counter:
    blocks._NORM.clear()  # cold: no raw tag normalized yet in this process
    total: Counter = Counter()
    for p in paths:
        total.update(count_tags(str(p), fmt)[0])
    return total


def swag_pass3(fmt: str, paths: list[Path], tag_to_id: dict) -> tuple[Counter, int]:
    total: Counter = Counter()
    images = 0
    for p in paths:
        c, n = count_canonical(str(p), tag_to_id, fmt)
        total.update(c)
        images += n
    return total, images


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def diff_counts(a: Counter, b: Counter, limit: int = 5) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return f"{len(keys)} keys differ, e.g. " + ", ".join(f"{k!r}: {a.get(k)} vs {b.get(k)}" for k in keys[:limit])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gzip", action="store_true", help="write .gz files instead of plain ones")
    ap.add_argument("--no-floor", action="store_true", help="skip the cat | wc -l floor")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    a = ap.parse_args(argv)

    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.execute("SET threads=1")
    tag_to_id = tag_mapping()
    mapping = pa.table({"tag": ["#" + t for t in tag_to_id], "hid": list(tag_to_id.values())})
    con.register("mapping", mapping)

    bad = []
    res: dict = {"posts": a.posts, "shards": a.shards, "gzip": a.gzip, "repeat": a.repeat,
                 "duckdb": duckdb.__version__, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files, drawn = write_shards(Path(tmp), a.posts, a.shards, a.gzip)
        res["generate_s"] = round(time.perf_counter() - t0, 2)
        res["tag_occurrences"] = drawn
        cat = "zcat" if a.gzip else "cat"
        for fmt, paths in files.items():
            times = {k: [] for k in ("duckdb", "duckdb_join", "pass1", "pass1_pyarrow", "pass3", "floor")}
            answers = {}
            before = dict(blocks.PATHS)
            scanned = dict(jsonscan.TAKEN)

            def timed(key, fn):
                t = time.perf_counter()
                got = fn()
                times[key].append(time.perf_counter() - t)
                answers[key] = got  # the last repeat's answer is checked

            for _ in range(a.repeat):
                timed("duckdb", lambda: duckdb_count(con, fmt, paths))
                timed("duckdb_join", lambda: duckdb_canonical(con, fmt, paths))
                timed("pass1", lambda: swag_pass1(fmt, paths))
                timed("pass3", lambda: swag_pass3(fmt, paths, tag_to_id))
                if fmt == "jsonl":  # without the compiled kernels, for the record
                    os.environ["SWAG_NUMBA"] = "0"
                    try:
                        timed("pass1_pyarrow", lambda: swag_pass1(fmt, paths))
                    finally:
                        del os.environ["SWAG_NUMBA"]
                if not a.no_floor:
                    cmd = f"{cat} " + " ".join(map(str, paths)) + " | wc -l"
                    timed("floor", lambda: int(subprocess.run(cmd, shell=True, check=True,
                                                              capture_output=True).stdout))
            used = {k: blocks.PATHS[k] - before[k] for k in before}
            used.update({f"jsonscan_{k}": jsonscan.TAKEN[k] - scanned[k] for k in scanned})
            ref, got = answers["duckdb"], answers["pass1"]
            if got != ref:
                bad.append(f"{fmt} pass 1: swag vs DuckDB: {diff_counts(got, ref)}")
            if "pass1_pyarrow" in answers and answers["pass1_pyarrow"] != ref:
                bad.append(f"{fmt} pass 1 (pyarrow's reader): swag vs DuckDB: {diff_counts(answers['pass1_pyarrow'], ref)}")
            (ref3, ref_n), (got3, got_n) = answers["duckdb_join"], answers["pass3"]
            if got3 != ref3:
                bad.append(f"{fmt} pass 3: swag vs DuckDB join: {diff_counts(got3, ref3)}")
            if got_n != ref_n:
                bad.append(f"{fmt} pass 3: images with a vocabulary tag: swag {got_n}, DuckDB {ref_n}")
            if not a.no_floor and answers["floor"] != a.posts:
                bad.append(f"{fmt}: {cat} | wc -l counted {answers['floor']} lines, not {a.posts}")
            best = {k: min(v) for k, v in times.items() if v}
            res["formats"][fmt] = {
                "bytes": sum(p.stat().st_size for p in paths),
                "seconds": {k: round(v, 4) for k, v in best.items()},
                "posts_per_s": {k: round(a.posts / v) for k, v in best.items()},
                "ratio_pass1": round(best["duckdb"] / best["pass1"], 3),
                **({"ratio_pass1_pyarrow": round(best["duckdb"] / best["pass1_pyarrow"], 3)}
                   if "pass1_pyarrow" in best else {}),
                "ratio_pass3": round(best["duckdb"] / best["pass3"], 3),
                "ratio_pass3_vs_join": round(best["duckdb_join"] / best["pass3"], 3),
                "blocks": used,
                "distinct_tags": len(got),
                "images_with_vocab_tag": got_n,
            }

    kind = "gzip" if a.gzip else "plain"
    print(f"{a.posts:,} posts ({drawn:,} tags) in {a.shards} {kind} shards per format, generated in "
          f"{res['generate_s']:.1f}s; 1 thread, best of {a.repeat}, DuckDB {duckdb.__version__}")
    labels = {"floor": f"{cat} | wc -l (floor)", "duckdb": "DuckDB count (peer)",
              "duckdb_join": "DuckDB join -> hashtag ids", "pass1": "swag pass 1 count_tags",
              "pass1_pyarrow": "  the same, SWAG_NUMBA=0",
              "pass3": "swag pass 3 count_canonical"}
    for fmt, r in res["formats"].items():
        print(f"{fmt} ({r['bytes'] / 1e6:.1f} MB, {r['distinct_tags']:,} distinct tags; swag blocks read, all passes and repeats: "
              f"fast {r['blocks']['fast']} (jsonscan {r['blocks']['jsonscan_blocks']}) / rows {r['blocks']['rows']}):")
        for k in ("floor", "duckdb", "duckdb_join", "pass1", "pass1_pyarrow", "pass3"):
            if k not in r["seconds"]:
                continue
            extra = {"pass1": f"   ratio {r['ratio_pass1']:.3f}",
                     "pass1_pyarrow": f"   ratio {r.get('ratio_pass1_pyarrow', 0):.3f}",
                     "pass3": f"   ratio {r['ratio_pass3']:.3f} (vs join {r['ratio_pass3_vs_join']:.3f})"}.get(k, "")
            print(f"  {labels[k]:<30}{r['seconds'][k]:>8.3f}s {r['posts_per_s'][k]:>12,} posts/s{extra}")
    res["answers_identical"] = not bad
    if a.json:
        print(json.dumps(res))
    f = res["formats"]
    print(f"count: jsonl pass1 ratio {f['jsonl']['ratio_pass1']:.3f} pass3 ratio {f['jsonl']['ratio_pass3']:.3f}; "
          f"tsv pass1 ratio {f['tsv']['ratio_pass1']:.3f} pass3 ratio {f['tsv']['ratio_pass3']:.3f} "
          f"({a.posts} posts, {kind}, answers {'identical' if not bad else 'DIFFER'})")
    for b in bad:
        print("MISMATCH:", b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
