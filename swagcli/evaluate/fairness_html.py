"""The self-contained HTML report of `swag fairness`: one file, figures inline (base64 PNG), no
scripts and nothing fetched, so it can be mailed or attached to a paper review as it is."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from swagcli import __version__

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.pos { color: #1f5fa8; } .neg { color: #b22222; } .muted { color: #777; }
.meta td { text-align: left; border: none; padding: 1px 12px 1px 0; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
details { margin: 0.4em 0 1em; } summary { cursor: pointer; font-weight: 600; }
.note { background: #fffbe6; border-left: 4px solid #e6c200; padding: 0.5em 1em; }
"""


def _e(v) -> str:
    return html.escape(str(v))


def _pct(v, digits: int = 1, signed: bool = False) -> str:
    if v is None:
        return "&ndash;"
    return f"{v * 100:+.{digits}f}" if signed else f"{v * 100:.{digits}f}"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _diff_cell(r: dict) -> str:
    cls = "pos" if r["abs_diff"] >= 0 else "neg"
    return f'<span class="{cls}">{_pct(r["abs_diff"], 2, True)}</span>'


def _associations(A: dict, figures: dict) -> str:
    parts = [f"<h2>Associations</h2><p>Top-{A['top_k']} hashtags per image. For each group: the share of its "
             f"images with the hashtag among their top {A['top_k']} (<i>rate</i>), the mean rate of the other "
             "groups, their difference in percentage points (absolute) and relative to the others' rate, with a "
             f"{A['confidence']:.0%} bootstrap interval ({A['bootstrap']} resamples of the images within each "
             f"group). Groups under {A['min_group']} images are listed but not ranked (no interval). The "
             f"{A['top_n']} largest "
             "absolute differences are shown per group (SWAG Fig. 7).</p>"]
    for col, a in A["attributes"].items():
        parts.append(f"<h3>{_e(col)}</h3>")
        if a.get("bucket_width"):
            parts.append(f"<p>Numeric, in buckets of {a['bucket_width']:g}.</p>")
        rows = []
        for g in a["groups"]:
            t = g["top"][0] if g["top"] else None
            rows.append([_e(g["group"]), f"{g['images']:,}", "yes" if g["ranked"] else '<span class="muted">no</span>',
                         "#" + _e(t["hashtag"]) if t else "&ndash;", _diff_cell(t) if t else "&ndash;",
                         f"[{_pct(t['ci_low'], 2, True)}, {_pct(t['ci_high'], 2, True)}]" if t and t["ci_low"] is not None
                         else "&ndash;"])
        parts.append(_table(["group", "images", "ranked", "largest difference", "points", "interval"], rows))
        if a["missing"]:
            parts.append(f'<p class="muted">{a["missing"]:,} images have no value in this column and are left out.</p>')
        key = f"associations: {col}"
        if key in figures:
            parts.append(_img(figures[key], key))
        for g in a["groups"]:
            if not g["top"]:
                continue
            rows = [[str(i), "#" + _e(r["hashtag"]), _pct(r["rate"]), _pct(r["others_rate"]), _diff_cell(r),
                     "new" if r["rel_diff"] is None else f"{r['rel_diff']:+.0%}",
                     "&ndash;" if r["ci_low"] is None else f"[{_pct(r['ci_low'], 2, True)}, {_pct(r['ci_high'], 2, True)}]",
                     "&ndash;" if r["significant"] is None else ("yes" if r["significant"] else "no")]
                    for i, r in enumerate(g["top"], 1)]
            note = "" if g["ranked"] else " (too small to rank)"
            parts.append(f"<details><summary>{_e(col)} = {_e(g['group'])}: {g['images']:,} images{note}</summary>"
                         + _table(["#", "hashtag", "rate %", "others %", "abs. diff (points)", "rel. diff",
                                   "interval", "excludes 0"], rows, left=2) + "</details>")
    return "".join(parts)


def _geography(G: dict, figures: dict) -> str:
    parts = [f"<h2>Geography</h2><p>Zero-shot top-1 accuracy over {G['classes']} classes, predicting only the "
             f"hashtags mapped to a class ({_e(G['mapping'])} mapping, aggregation {_e(G['aggregation'])}"
             f"{', Platt-scaled' if G['platt'] else ''}). All images: <b>{_pct(G['overall'])}%</b>.</p>"]
    if "accuracy per country" in figures:
        parts.append(_img(figures["accuracy per country"], "accuracy per country"))
    rows = [[_e(c["country"]), f"{c['images']:,}", f"{c['correct']:,}", _pct(c["accuracy"]),
             f"[{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]", str(c["classes"])]
            for c in sorted(G["countries"], key=lambda c: -(c["accuracy"] or 0))]
    parts.append(_table(["country", "images", "correct", "accuracy %", "95% interval", "classes"], rows))
    names = G["country_names"]
    if len(names) > 1:
        parts.append(f"<h3>The {G['ratio']:.0%} rule</h3><p>Row r, column c: the share of the classes with at least "
                     f"{G['min_images']} image(s) in both countries whose accuracy in r is below {G['ratio']:g} x "
                     "their accuracy in c (SWAG Fig. 6; number of classes compared in brackets).</p>")
        if "80% rule" in figures:
            parts.append(_img(figures["80% rule"], "80% rule"))
        rows = [[_e(r)] + [f"{v * 100:.0f}% <span class=\"muted\">({n})</span>" if r != c else "&ndash;"
                           for c, v, n in zip(names, vals, comp)]
                for r, vals, comp in zip(names, G["eighty_rule"], G["compared"])]
        parts.append(_table(["worse \\ better"] + [_e(c) for c in names], rows))
    if G["unreached_classes"]:
        parts.append(f'<p class="note">{len(G["unreached_classes"])} class(es) no hashtag reaches (always wrong): '
                     f'{_e(", ".join(G["unreached_classes"][:30]))}</p>')
    if G["unknown_hashtags"]:
        parts.append(f'<p class="note">Hashtags of the mapping not in the model\'s vocabulary (ignored): '
                     f'{_e(", ".join(G["unknown_hashtags"][:30]))}</p>')
    rows = [[_e(c), " ".join("#" + _e(h) for h in hs) or '<span class="muted">none</span>']
            for c, hs in G["class_hashtags"].items()]
    parts.append("<details><summary>class &rarr; hashtags</summary>" + _table(["class", "hashtags"], rows, left=2)
                 + "</details>")
    return "".join(parts)


def html_report(result: dict, figures: dict, path: Path) -> Path:
    from swagcli.runinfo import atomic_write_text

    src = result["source"]
    meta = [("model", f"{_e(src['model'])} ({_e(src['kind'])})"), ("checkpoint", _e(src["path"])),
            ("manifest", _e(result["manifest"])), ("images", f"{result['images']:,} at {result['resolution']} px"),
            ("written", f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by swag {__version__}"),
            ("numbers", "fairness.json, associations.csv, countries.csv, country_class_accuracy.csv, eighty_rule.csv")]
    body = [f"<h1>Fairness report: {_e(src['model'])}</h1>",
            "<table class=\"meta\">" + "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in meta) + "</table>",
            '<p class="note">Differences in prediction rates describe the model <i>on this image set</i>: they can '
            "come from the images (who is photographed doing what) as much as from what the model learned. Read "
            "them with the intervals and the group sizes (SWAG App. F).</p>"]
    if result.get("associations"):
        body.append(_associations(result["associations"], figures))
    if result.get("geography"):
        body.append(_geography(result["geography"], figures))
    doc = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>swag fairness: "
           f"{_e(src['model'])}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    atomic_write_text(path, doc)
    return path
