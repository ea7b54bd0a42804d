"""The findings report: ``findings.md`` (each measured direction beside the paper's), one PNG per
study (arms by metric, every seed a dot) and ``directions.png`` (every paired difference with
its spread), plus ``findings.json`` with every number."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np

from swagcli import __version__
from swagcli.fileio import savefig
from swagcli.plots import pyplot
from swagcli.runinfo import atomic_write_text

VERDICT = {"holds": "holds", "weak": "same direction, within noise", "fails": "does not hold",
           "reversed": "the opposite holds"}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _machine() -> str:
    import os

    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{os.cpu_count()} CPU cores"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def study_plot(study: dict, path: Path) -> Path:
    """One panel per metric: the arms' means (bars, or a line over ``x``) with +-1 std, seeds as dots."""
    plt = pyplot()
    metrics = study["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.2 + 3.2 * len(metrics), 3.4), squeeze=False,
                             constrained_layout=True)
    for ax, m in zip(axes[0], metrics):
        rows = [r for r in study["table"] if r["metric"] == m]
        line = study["plot"] == "line" and all(r["x"] is not None for r in rows)
        xs = np.array([r["x"] for r in rows], float) if line else np.arange(len(rows))
        means = np.array([100 * r["mean"] for r in rows])
        stds = np.array([100 * r["std"] for r in rows])
        if line:
            ax.errorbar(xs, means, yerr=stds, marker="o", color="tab:blue", capsize=3)
        else:
            ax.bar(xs, means, yerr=stds, color="tab:blue", alpha=0.55, capsize=3, width=0.6)
        for x, r in zip(xs, rows):
            ax.plot([x] * len(r["values"]), [100 * v for v in r["values"]], "k.", ms=4, alpha=0.7)
        if line:
            ax.set_xticks(xs)
            ax.set_xticklabels([r["label"] for r in rows], fontsize=8)
        else:
            ax.set_xticks(xs)
            ax.set_xticklabels([r["label"] for r in rows], rotation=20 if len(rows) > 3 else 0,
                               ha="right" if len(rows) > 3 else "center", fontsize=8)
            lo = min(min(100 * v for v in r["values"]) for r in rows) if rows else 0
            ax.set_ylim(max(0, lo - 10), None)
        ax.set_title(m, fontsize=9)
        ax.set_ylabel("top-1 (%)")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(study["title"], fontsize=10)
    savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def directions_plot(doc: dict, path: Path) -> Path:
    """Every expectation's paired difference (points), mean and +-2 standard errors, at a glance."""
    plt = pyplot()
    rows = [(s["name"], e) for s in doc["studies"] for e in s["expect"]]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.36 * max(len(rows), 1)), constrained_layout=True)
    colour = {"holds": "tab:green", "weak": "tab:orange", "fails": "tab:red", "reversed": "tab:purple"}
    for i, (name, e) in enumerate(rows):
        y = len(rows) - 1 - i
        ax.errorbar(100 * e["mean"], y, xerr=200 * e["se"], fmt="o", color=colour[e["verdict"]], capsize=3)
        ax.plot([100 * d for d in e["diffs"]], [y] * len(e["diffs"]), "k.", ms=3, alpha=0.6)
    ax.axvline(0, color="k", lw=0.8)
    for verdict, c in colour.items():
        ax.plot([], [], "o", color=c, label=VERDICT[verdict])
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("The papers' directions on the synthetic world", fontsize=10)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{n}: {direction_label(e)}" for n, e in reversed(rows)], fontsize=8)
    ax.set_xlabel("A - B (points of top-1), paired by seed; bars: +-2 standard errors")
    ax.grid(True, axis="x", alpha=0.3)
    savefig(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def direction_label(e: dict) -> str:
    """``a > b (metric)``, or ``a[m] > b[m2]`` where the metrics differ."""
    if e["metric_a"] == e["metric_b"]:
        return f"{e['a']} > {e['b']} ({e['metric_a']})"
    return f"{e['a']}[{e['metric_a']}] > {e['b']}[{e['metric_b']}]"


def _seeds(doc: dict) -> str:
    counts = {s["name"]: s.get("seeds", doc["seeds"]) for s in doc["studies"]}
    common = max(set(counts.values()), key=list(counts.values()).count)
    other = ", ".join(f"{n}: {c}" for n, c in counts.items() if c != common)
    return f"{common} seed(s)" + (f" ({other})" if other else "")


def markdown(doc: dict) -> str:
    lines = ["# Findings: the papers' ablations on the synthetic world", "",
             f"Generated by `{doc.get('command') or 'swag findings'}` (swag {__version__}"
             + (f", commit {doc['commit']}" if doc.get("commit") else "") + f", {doc['created']}; "
             f"{doc.get('compute_seconds', doc['seconds']) / 60:.0f} min of pretraining and evaluation on "
             f"{_machine()}). Every number is top-1 accuracy in percent on the world's "
             f"downstream classes (probe: a linear probe on 100% of the train labels, probe@F on a "
             f"fraction F of them), or, for head_top1 / tail_top1, held-out hashtag top-1 on the images "
             f"tagged with head (tail) hashtags only (the vocabulary's head), mean +- std over {_seeds(doc)} "
             "(sample plan, initial weights, "
             "data order and probe subsets all follow the seed); differences are paired by seed. "
             "A direction **holds** when the mean difference is positive and at least two standard "
             "errors; *same direction, within noise* when it is positive but smaller; *the opposite "
             "holds* when it is negative by at least two standard errors; else it *does not hold*.", "",
             "World: " + ", ".join(f"{k}={v}" for k, v in doc["world"].items()) + ".", "",
             "![every direction](directions.png)", "",
             "| study | paper | direction | measured (points) | seeds won | verdict |",
             "|---|---|---|---|---|---|"]
    for s in doc["studies"]:
        for e in s["expect"]:
            lines.append(f"| {s['name']} | {s['paper']['source']} | {direction_label(e)} | "
                         f"{100 * e['mean']:+.1f} +- {100 * e['std']:.1f} | {e['wins']}/{e['n']} | "
                         f"{VERDICT[e['verdict']]} |")
    for s in doc["studies"]:
        p = s["paper"]
        lines += ["", f"## {s['title']}", "", f"*Paper ({p['source']}):* {p['claim']}", "",
                  f"Recipe: `{s['recipe']}`."
                  + (" World of its own, over the one above: " + ", ".join(f"{k}={v}" for k, v in s["world"].items())
                     + "." if s.get("world") else "")
                  + (f" Measured apart from the rest of this report: {s['measured']}." if s.get("measured") else ""),
                  "", f"![{s['name']}]({s['name']}.png)", ""]
        head = "| arm | " + " | ".join(s["metrics"]) + " | seeds |" + (" paper |" if p["values"] else "")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for arm in dict.fromkeys(r["arm"] for r in s["table"]):
            rs = {r["metric"]: r for r in s["table"] if r["arm"] == arm}
            first = next(iter(rs.values()))
            cells = [f"{_pct(rs[m]['mean'])} +- {_pct(rs[m]['std'])}" if m in rs else "-" for m in s["metrics"]]
            seeds = "; ".join(" / ".join(_pct(v) for v in rs[m]["values"]) for m in s["metrics"] if m in rs)
            paper = (f" {first['paper']} |" if first["paper"] is not None else " - |") if p["values"] else ""
            lines.append(f"| {first['label']} | " + " | ".join(cells) + f" | {seeds} |" + paper)
        if p["values"] and p.get("metric"):
            lines += ["", f"Paper's numbers: {p['metric']}."]
        if s["expect"]:
            lines += ["", "| direction | measured (points) | per seed | verdict |", "|---|---|---|---|"]
            for e in s["expect"]:
                lines.append(f"| {direction_label(e)} | {100 * e['mean']:+.1f} +- {100 * e['std']:.1f} | "
                             + " / ".join(f"{100 * d:+.1f}" for d in e["diffs"])
                             + f" | {VERDICT[e['verdict']]} |")
        if s.get("notes"):
            lines += ["", s["notes"].strip()]
    return "\n".join(lines) + "\n"


def merged(doc: dict, out: Path, order: list[str]) -> dict:
    """``doc`` (a run of some of a suite's studies) over the report already in ``out``: its other
    studies and their runs are kept, each saying when it was measured, in the suite's ``order``;
    no report there: ``doc`` itself. A report that cannot be read is refused, not replaced."""
    from swagcli.errors import SwagError

    path = Path(out) / "findings.json"
    if not path.exists():
        return doc
    from swagcli.findings.runner import paired

    try:
        prev = json.loads(path.read_text())
        old = [st for st in prev["studies"] if st["name"] not in {x["name"] for x in doc["studies"]}]
        when = f"{prev.get('created', '?')}" + (f", commit {prev['commit']}" if prev.get("commit") else "")
        if prev.get("world") != doc["world"]:
            when += "; world " + ", ".join(f"{k}={v}" for k, v in (prev.get("world") or {}).items())
        for st in old:
            st.setdefault("measured", when)
            for e in st.get("expect", []):  # one rule for every row: verdicts read again from the diffs
                if e.get("diffs"):
                    e.update(paired(e["diffs"], [0.0] * len(e["diffs"])))
        names = {st["name"] for st in old}
        kept_runs = [r for r in prev.get("runs", []) if r.get("study") in names]
        unique = {r["run"]: float(r.get("seconds", 0)) for r in kept_runs}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SwagError(f"{path}: not a findings report ({e}); move it away, or run every study "
                        "(without --study) to write a new one") from None
    rank = {n: i for i, n in enumerate(order)}
    studies = sorted(old + doc["studies"], key=lambda st: rank.get(st["name"], len(rank)))
    runs = kept_runs + doc["runs"]
    unique.update({r["run"]: r.get("seconds", 0) for r in doc["runs"]})
    return {**doc, "studies": studies, "runs": runs, "seeds": max(st.get("seeds", 1) for st in studies),
            "compute_seconds": round(sum(unique.values()), 1)}


def write(doc: dict, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc.setdefault("created", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    doc.setdefault("commit", _commit())
    for s in doc["studies"]:
        study_plot(s, out / f"{s['name']}.png")
    directions_plot(doc, out / "directions.png")
    atomic_write_text(out / "findings.json", json.dumps(doc, indent=1) + "\n")
    atomic_write_text(out / "findings.md", markdown(doc))
    return out / "findings.md"
