"""Terminal output: the rich consoles, a progress adapter, and the human reports."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

# Markup is off: hashtags, group names and paths are user text, and ``[...]`` in them is text.
# Styles come from Text objects (:func:`note`, :func:`wrote`, ``Text(x, style=...)``).
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def note(*parts, label: str = "note:") -> Text:
    """A yellow ``note:`` (or ``label``) followed by plain text."""
    return Text.assemble((label, "yellow"), " ", *map(str, parts))


def wrote(first, *rest, tail: str = "") -> Text:
    """``wrote FIRST, REST, ...``: the main output in bold."""
    out = Text.assemble("wrote ", (str(first), "bold"))
    for r in rest:
        out.append(", " + str(r))
    return out.append(tail)


DASH = Text("-", style="dim")


class StageProgress:
    """A ``progress(stage, done, total)`` callable that drives one rich bar per stage."""

    def __init__(self, con: Console | None = None):
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description:<16}", style="bold", markup=False), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=con or err_console, transient=False,
        )
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.tasks:
            self.progress.start()  # lazily: an early error prints nothing but itself
        task = self.tasks.get(stage)
        if task is None:
            task = self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(task, completed=done, total=total)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.tasks:
            self.progress.stop()
        return False


def kv_table(title: str, rows: list[tuple[str, object]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    return t


def read_table(read: dict, shards: int | None = None) -> Table:
    """What reading the sources saw: a column per format, a row per skip rule that applies."""
    from swagcli.prep.dumps import RULE_LABELS, RULES

    by = read.get("by_format") or {"": read}
    cols = list(by) + (["total"] if len(by) > 1 else [])
    title = "Sources" + (f" ({shards:,} file{'s' if shards != 1 else ''})" if shards is not None else "")
    t = Table(title=title, title_justify="left")
    t.add_column("")
    for c in cols:
        t.add_column(c or "count", justify="right")
    rules = [r for r in RULE_LABELS if any(r in RULES.get(f, RULE_LABELS) for f in by)]

    def row(label: str, key: str, applies=lambda f: True):
        vals = [f"{by[f].get(key, 0):,}" if applies(f) else DASH for f in by]
        if len(by) > 1:
            vals.append(f"{read.get(key, 0):,}")
        t.add_row(label, *vals)

    row("lines / records", "lines")
    row("posts read", "posts")
    row("tags from captions", "from_caption")
    for r in rules:
        row(f"skipped: {RULE_LABELS[r]}", r, lambda f, r=r: r in RULES.get(f, RULE_LABELS))
    return t


def caption_report(read: dict, top: int = 10) -> None:
    """What labelling captions saw (labels: caption | both), a column per format, and the most
    frequent phrases kept and dropped: what the vocabulary was made of."""
    if not read.get("caption"):
        return
    by = {f: v["caption"] for f, v in (read.get("by_format") or {}).items() if v.get("caption")}
    if len(by) > 1:
        by["total"] = read["caption"]
    elif not by:
        by = {"count": read["caption"]}
    t = Table(title="Captions -> noun phrases", title_justify="left")
    t.add_column("")
    for c in by:
        t.add_column(c, justify="right")
    t.add_row("captions read", *(f"{c['captions']:,}" for c in by.values()))
    t.add_row("yielded labels", *(f"{c['labelled']:,} ({c['labelled_share']:.1%})" for c in by.values()))
    t.add_row("labels per caption", *(f"{c['mean_labels']:.2f}" for c in by.values()))
    t.add_row("distinct phrases", *(f"{c['distinct_phrases']:,}" for c in by.values()))
    t.add_row("dropped: stop list", *(f"{c['dropped_stop']:,}" for c in by.values()))
    c = read["caption"]
    kept = ", ".join(f"{w.replace('_', ' ')} {n:,}" for w, n in c["top_kept"][:top])
    dropped = ", ".join(f"{w.replace('_', ' ')} {n:,}" for w, n in c["top_dropped"][:top])
    console.print(t)
    console.print(f"kept most: {kept or '-'}", highlight=False)
    console.print(f"dropped most (stop list): {dropped or '-'}", highlight=False)


def vocab_report(doc: dict, out_dir: str | Path | None = None, top: int = 12) -> None:
    s = doc["stats"]
    p = doc["params"]
    console.print(read_table(s, s.get("dumps")))
    caption_report(s)
    _damaged_notes(s)
    countries = ",".join(p["countries"]) if p["countries"] else "all"
    console.print(kv_table("Vocabulary", [
        ("distinct raw tags", s["distinct_tags"]),
        (f"candidates (>= {p['min_count']} images, {countries})", s["candidate_tags"]),
        ("kept (WordNet synsets found)", s["kept_tags"]),
        ("dropped (no allowed synset)", s["dropped_no_synset"]),
        ("canonical hashtags", s["canonical_hashtags"]),
        (f"head (>= {p['head_min_images']:,} images)", s["head_hashtags"]),
        ("tail", s["tail_hashtags"]),
        ("images with a vocabulary tag", s["images_with_vocab_tag"]),
    ]))
    hs = sorted(doc["hashtags"], key=lambda h: -h["count"])
    t = Table(title=f"Most frequent canonical hashtags (of {len(hs):,})", title_justify="left")
    for col, just in (("#", "right"), ("name", "left"), ("images", "right"), ("part", "left"),
                      ("raw tags", "left"), ("synsets", "left")):
        t.add_column(col, justify=just)
    for h in hs[:top]:
        t.add_row(str(h["id"]), h["name"], f"{h['count']:,}", "head" if h["head"] else "tail",
                  _clip(" ".join(h["tags"]), 40), _clip(" ".join(h["synsets"]), 50))
    console.print(t)
    if out_dir:
        out = Path(out_dir)
        console.print(wrote(out / "vocab.json", out / "zipf.png", out / "recipe.yaml"))


def sample_report(summary: dict, out_dir: str | Path | None = None) -> None:
    s = summary
    rows = [("strategy", s["strategy"] + (f", alpha {s['alpha']}" if s["alpha"] is not None else "")),
            ("label noise", s["label_noise"]),
            ("images with vocabulary hashtags", s["images_with_vocab_tags"]),
            ("  head images / tail images", f"{s['head_images']:,} / {s['tail_images']:,}"),
            ("dropped (no vocabulary hashtag)", s["dropped_images"]),
            ("total samples", s["total_samples"]),
            ("  head samples / tail samples", f"{s['head_samples']:,} / {s['tail_samples']:,}"),
            ("unique images sampled", s["unique_images"]),
            ("hashtags sampled", f"{s['hashtags_sampled']:,} of {s['hashtags']:,}")]
    if s["label_noise"]:
        rows.append(("hashtags replaced", f"{s['noise_replaced_fraction']:.2%}"))
    if s.get("balanced"):
        b = s["balanced"]
        rows[4:4] = [(f"  survived the cap t = {b['t']:,}",
                      f"{b['survivors']:,} (expected {b['expected_survivors']:,.0f})"),
                     (f"  hashtags on more than {b['t']:,} images", b["capped_hashtags"])]
    if "read" in s:
        console.print(read_table(s["read"]))
        caption_report(s["read"])
        _damaged_notes(s["read"])
    console.print(kv_table("Sample plan", rows))
    for n in s.get("notes", []):
        console.print(note(n))
    if out_dir:
        out = Path(out_dir)
        console.print(wrote(out / "plan.json", out / "summary.json", out / "resampling.png",
                            tail=f" (parts in {out / 'plan'})"))


def pretrain_report(r: dict) -> None:
    if r.get("stages"):
        for stage in r["stages"]:
            pretrain_report(stage)
        return
    rows = [("objective", r.get("objective", "wsp")), ("status", r["status"]), ("steps", f"{r['step']:,} of {r['total_steps']:,}"),
            ("samples", r["samples"]), ("last loss", f"{r['last_loss']:.4f}" if r.get("last_loss") is not None else "-")]
    if "eval_top1" in r:
        rows += [("held-out hashtag top-1", f"{r['eval_top1']:.2%}"), ("held-out top-5", f"{r['eval_top5']:.2%}"),
                 ("held-out images", r["eval_images"])]
        rows += [(f"held-out top-1, {k}-hashtag images", f"{r[f'eval_{k}_top1']:.2%} of {r[f'eval_{k}_images']:,}")
                 for k in ("head", "tail") if f"eval_{k}_top1" in r]
    t = r.get("throughput")
    if t:
        mfu = f"{t['mfu']:.1%}" if t.get("mfu") is not None else f"unknown (no peak for {t['device']})"
        wait = t["data_wait"]
        rows += [("samples/s (per device)", f"{t['samples_per_s']:,.0f} ({t['samples_per_s_per_device']:,.0f})"),
                 ("waiting on data", f"{wait:.0%} of the time" + (": the loader is the bottleneck" if wait > 0.3 else "")),
                 ("model FLOPs utilization", mfu)]
    sm = r.get("streams")
    if sm:
        pb = sm["played_by"]
        moved = sm.get("resumed_on")
        rows.append(("streams", f"{sm['count']}, played by {pb['processes']} process(es) x {pb['workers']} "
                     "worker(s)" + (f" (resumed from {moved['was']['processes']} x {moved['was']['workers']})"
                                    if moved else "")))
    st = r.get("stream") or {}
    if st:
        rows.append(("skipped samples (bad)", f"{st.get('bad', 0):,}: {st.get('undecodable', 0)} undecodable, "
                     f"{st.get('too_large', 0)} over the pixel budget, {st.get('no_image', 0)} without image, "
                     f"{st.get('bad_shards', 0)} truncated shards"))
    for e in r.get("account") or []:
        rows.append((f"epoch {e['epoch']}: plan vs shards", f"{e.get('planned', 0):,} of {e['plan']:,} planned "
                     f"samples found ({e.get('missing', 0):,} missing)"))
    if r.get("objective") == "mae" and "eval_loss" in r:
        rows.append(("held-out masked-patch loss", f"{r['eval_loss']:.4f} ({r['eval_images']} images)"))
    if r.get("reconstruction"):
        rows.append(("reconstructions", r["reconstruction"]))
    if r.get("init"):
        i = r["init"]
        rows.append(("initialized from", f"{i['from']}: {i['loaded']} encoder tensors loaded, "
                     f"{len(i['missing'])} not found, {len(i['not_loaded'])} of the checkpoint's left out"))
    if r.get("idf"):
        d = r["idf"]
        rows.append(("softmax_idf weights", f"idf {d['idf_min']:.3f} to {d['idf_max']:.3f} over {d['images']:,} plan "
                     f"images, {d['hashtags']:,} hashtags ({d['images_kept_1_over_k']:,} images keep 1/K)"))
    if r.get("image_shards"):
        sh = r["image_shards"]
        rows.append(("image shards", f"{sh['count']:,} from {sh['from']}"))
    rows += [("checkpoint", r["checkpoint"] or "-"), ("resumed from", r.get("resumed_from") or "-")]
    console.print(kv_table(f"Pretraining run {r['run_dir']}", rows))
    if r.get("note"):
        console.print(note(r["note"]))


def input_notes(r: dict) -> None:
    """What a transfer stage left out of its inputs, one note each (skipped images, empty class
    folders, duplicate manifest rows); silent when nothing was."""
    sk = r.get("skipped_images") or {}
    if sk.get("skipped"):
        first = sk["files"][0]["file"] if sk.get("files") else "?"
        console.print(note(f"{sk['skipped']:,} image(s) skipped: {sk.get('undecodable', 0):,} undecodable, "
                           f"{sk.get('too_large', 0):,} over the pixel budget (data.max_pixels); first: {first}"))
    empty = r.get("empty_class_folders") or {}
    for split, names in (empty.items() if isinstance(empty, dict) else [("train", empty)]):
        if names:
            console.print(note(f"{len(names)} empty class folder(s) in {split} left out (not classes): "
                               f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"))
    if r.get("duplicate_rows"):
        console.print(note(f"{r['duplicate_rows']:,} duplicate manifest row(s) counted once"))


def _damaged_notes(read: dict) -> None:
    for d in (read or {}).get("damaged", [])[:5]:
        console.print(note(f"{d['path']}: damaged after {d['lines_read']:,} lines (kept those): {d['error']}"))
    more = len((read or {}).get("damaged", [])) - 5
    if more > 0:
        console.print(note(f"and {more} more damaged file(s) (listed in the JSON)"))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def probe_report(r: dict) -> None:
    t = Table(title=f"Linear probe: {r['source']['model']} ({r['source']['kind']}), "
                    f"{r['classes']} classes, {r['feature_dim']}-d features at {r['resolution']} px",
              title_justify="left")
    for col in ("fraction", "train images", "fits", "top-1", "top-5"):
        t.add_column(col, justify="right")
    for s in r["summary"]:
        pm = lambda k: f"{s[k]:.2%}" + (f" ± {s[k + '_std']:.2%}" if s["fits"] > 1 else "")  # noqa: E731
        t.add_row(f"{s['fraction']:g}", f"{s['images']:,}", str(s["fits"]), pm("top1"), pm("top5"))
    console.print(t)
    unconverged = sum(not f["converged"] for f in r["fits"])
    if unconverged:
        console.print(note(f"{unconverged} fit(s) stopped at the iteration cap before converging "
                           "(raise max_iter or tol in the recipe)"))
    input_notes(r)
    console.print(wrote(f"{r['out']}/probe.json", f"{r['out']}/probe.png"))


def findings_report(doc: dict) -> None:
    from swagcli.findings.report import VERDICT, direction_label

    t = Table(title="Findings: the papers' directions on the synthetic world",
              title_justify="left")
    for col, just in (("study", "left"), ("direction", "left"), ("points", "right"),
                      ("seeds won", "right"), ("verdict", "left")):
        t.add_column(col, justify=just)
    style = {"holds": "green", "weak": "yellow", "fails": "red", "reversed": "magenta"}
    for s in doc["studies"]:
        for e in s["expect"]:
            t.add_row(s["name"], direction_label(e), f"{100 * e['mean']:+.1f} ± {100 * e['std']:.1f}",
                      f"{e['wins']}/{e['n']}", Text(VERDICT[e["verdict"]], style=style[e["verdict"]]))
    console.print(t)
    console.print(wrote(*doc["report"]))


def finetune_report(r: dict) -> None:
    rows = [("status", r["status"]), ("updates", f"{r['step']:,} of {r['updates']:,}"),
            ("learning rate", f"{r['lr']:g} (batch 512)"), ("resolution", f"{r['resolution']} px"),
            ("train images / classes", f"{r['train_images']:,} / {r['classes']}")]
    for g in r.get("lr_grid") or []:
        rows.append((f"lr grid {g['lr']:g}", f"held-out top-1 {g['heldout_top1']:.2%}"))
    if "top1" in r:
        rows += [("val top-1", f"{r['top1']:.2%}"), ("val top-5", f"{r['top5']:.2%}")]
    if "ema_top1" in r:
        rows += [("val top-1 (EMA weights)", f"{r['ema_top1']:.2%}"), ("val top-5 (EMA)", f"{r['ema_top5']:.2%}")]
    rows += [("checkpoint", r.get("checkpoint") or "-"), ("resumed from", r.get("resumed_from") or "-")]
    console.print(kv_table(f"Finetuning run {r['run_dir']}", rows))
    input_notes(r)


def zeroshot_report(r: dict) -> None:
    res = r["results"]
    t = Table(title=f"Zero-shot: {r['source']['model']} ({r['source']['kind']}), {r['images']:,} images, "
                    f"{r['classes']} classes (chance {r['chance_top1']:.2%}), {r['mapped_hashtags']} hashtags",
              title_justify="left")
    for col in ("", "aggregation", "top-1", "top-5", "ECE", "mean max p", "classes hit"):
        t.add_column(col, justify="right")
    for key, label in (("no_platt", "without Platt"), ("platt", "with Platt")):
        if key in res:
            v = res[key]
            t.add_row(label, v["aggregation"], f"{v['top1']:.2%}", f"{v['top5']:.2%}", f"{v['ece']:.3f}",
                      f"{v['mean_top_prob']:.3f}", f"{v['predicted_classes']} of {r['classes']}")
    console.print(t)
    if r["unreached_classes"]:
        u = r["unreached_classes"]
        console.print(note(f"{len(u)} class(es) no hashtag reaches (always wrong): "
                           f"{', '.join(u[:8])}{' ...' if len(u) > 8 else ''}"))
    input_notes(r)
    console.print(wrote(f"{r['out']}/zeroshot.json", f"{r['out']}/histogram.png", f"{r['out']}/mapping.tsv"))


def fairness_report(r: dict, per_group: int = 3) -> None:
    A, G = r.get("associations"), r.get("geography")
    if A:
        for col, a in A["attributes"].items():
            t = Table(title=f"Associations by {col}: top-{A['top_k']} hashtag rate vs the other groups (points, "
                            f"{A['confidence']:.0%} bootstrap interval)", title_justify="left")
            for c, j in (("group", "left"), ("images", "right"), ("largest differences", "left")):
                t.add_column(c, justify=j)
            for g in a["groups"]:
                cells = []
                for row in g["top"][:per_group]:
                    d = row["abs_diff"] * 100
                    ci = "" if row["ci_low"] is None else f" [{row['ci_low'] * 100:+.1f}, {row['ci_high'] * 100:+.1f}]"
                    mark = "*" if row["significant"] else ""
                    cells.append(Text(f"#{row['hashtag']} {d:+.1f}{ci}{mark}", style="blue" if d >= 0 else "red"))
                cell = Text("  ").join(cells) if cells else Text("-")
                if not g["ranked"]:
                    cell.append(" (too small to rank)", style="yellow")
                t.add_row(str(g["group"]), f"{g['images']:,}", cell)
            console.print(t)
        console.print("* the interval excludes 0")
    if G:
        t = Table(title=f"Zero-shot accuracy per country ({G['classes']} classes, {G['mapping']} map; all images "
                        f"{G['overall']:.1%})", title_justify="left")
        for c in ("country", "images", "accuracy", "95% interval", f"classes < {G['ratio']:g}x elsewhere (max)"):
            t.add_column(c, justify="right")
        names = G["country_names"]
        for c in sorted(G["countries"], key=lambda c: -(c["accuracy"] or 0)):
            i = names.index(c["country"])
            worst = max(((v, names[j]) for j, v in enumerate(G["eighty_rule"][i]) if j != i), default=None)
            t.add_row(c["country"], f"{c['images']:,}", f"{c['accuracy']:.1%}",
                      f"{c['ci_low']:.1%} - {c['ci_high']:.1%}", f"{worst[0]:.0%} vs {worst[1]}" if worst else "-")
        console.print(t)
        if G["unreached_classes"]:
            console.print(note(f"{len(G['unreached_classes'])} class(es) no hashtag reaches (always wrong)"))
        if G["unknown_hashtags"]:
            console.print(note("mapping hashtags not in the vocabulary: "
                               f"{', '.join(G['unknown_hashtags'][:10])}"))
    input_notes(r)
    console.print(wrote(f"{r['out']}/report.html", f"{r['out']}/fairness.json", tail=" and the CSV tables"))


def mapping_report(mapping: list[dict], limit: int = 60) -> None:
    t = Table(title=f"Class -> hashtag map ({len(mapping)} classes)", title_justify="left")
    for col, j in (("class", "left"), ("synset", "left"), ("similarity", "right"), ("hashtags", "left")):
        t.add_column(col, justify=j)
    for m in mapping[:limit]:
        tags = _clip(" ".join("#" + h for h in m["hashtags"]), 70) or Text("none", style="yellow")
        t.add_row(m["class"], m["synset"] or Text("not in WordNet", style="yellow"), f"{m['similarity']:.3f}", tags)
    console.print(t)
    if len(mapping) > limit:
        console.print(f"... {len(mapping) - limit} more classes (all in mapping.tsv with --out)")
    unreached = [m["class"] for m in mapping if not m["hashtag_ids"]]
    fan = {}
    for m in mapping:
        for h in m["hashtags"]:
            fan[h] = fan.get(h, 0) + 1
    shared = sum(1 for v in fan.values() if v > 1)
    console.print(f"{len(mapping) - len(unreached)} of {len(mapping)} classes reach a hashtag; "
                  f"{len(fan)} hashtags used, {shared} of them by several classes")
    if unreached:
        console.print(note(f"{', '.join(unreached[:20])}{' ...' if len(unreached) > 20 else ''}", label="unreached:"))
