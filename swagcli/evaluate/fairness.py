"""`swag fairness`: what the hashtag head associates with groups of people, and how its zero-shot
accuracy varies across countries (SWAG §5 and App. F; SPEC.md §7).

* **Associations** (App. F.2, Fig. 7). Every image gets its ``top_k`` (5) highest-scoring hashtags
  over the whole vocabulary. For each group of an attribute (a manifest column; numeric columns
  such as age are cut into buckets), a hashtag's *rate* is the share of the group's images that
  have it among their top k. Its *absolute difference* is the rate minus the mean rate of the other
  groups, its *relative difference* that over the other groups' mean. The ``top_n`` (20) hashtags
  with the largest absolute difference (either sign) are ranked and plotted per group, each with a
  bootstrap interval (images resampled within every group). A group with fewer than ``min_group``
  images is reported but not ranked (no interval, no significance), and it is left out of the
  other groups' mean. An image listed twice in the manifest counts once.
* **Geography** (App. F.1, Figs. 5 and 6). The head predicts, zero-shot, among the hashtags that a
  user-given (or WordNet) mapping ties to the classes; per country: the accuracy with a Wilson
  interval; per pair of countries (r, c): the share of the classes seen in both whose accuracy in r
  is below ``ratio`` (0.8) times their accuracy in c (the 80% rule).

One pass over the images computes both (the top-k hashtags and the mapped hashtags' log
probabilities), cached in ``predictions/`` like every transfer feature; an image that does not decode
or is over ``data.max_pixels`` is skipped with its row (groups, country, label) and counted under
``skipped_images``, up to ``data.max_bad_fraction``. Outputs: ``report.html``
(self-contained: figures inline), ``fairness.json`` with every number, CSV tables and PNG figures.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swagcli.errors import SwagError
from swagcli.evaluate.fairness_stats import associations, attribute_groups, geography



# -- the manifest ------------------------------------------------------------------------------------------
@dataclass
class Manifest:
    rows: list[dict]
    columns: list[str]
    path: Path
    root: Path
    lines: list[int] | None = None  # the file line of each row
    numbers: list[int] | None = None  # each row's number in the file (1: the first after a CSV header)

    def line(self, i: int) -> int:
        return self.lines[i] if self.lines else i + 1

    def number(self, i: int) -> int:
        return self.numbers[i] if self.numbers else i + 1

    def column(self, name: str, what: str) -> list[str]:
        if name not in self.columns:
            raise SwagError(f"{what}: {self.path} has no column {name!r} (it has: {', '.join(self.columns)})")
        return [("" if r.get(name) is None else str(r.get(name))).strip() for r in self.rows]


def read_manifest(path: str | None, root: str | None = None) -> Manifest:
    """A CSV (header row) or JSONL manifest; a ``.jsonl``/``.json`` suffix or a first character ``{``
    means JSONL."""
    if not path:
        raise SwagError("data.manifest: no manifest given (a CSV or JSONL file with one row per image)")
    p = Path(path)
    if not p.is_file():
        raise SwagError(f"data.manifest: {p}: no such file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SwagError(f"data.manifest: {p}: not a UTF-8 text file") from None
    rows: list[dict] = []
    lines: list[int] = []
    if p.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise SwagError(f"data.manifest: {p}:{n}: not a JSON object ({e})") from None
            if not isinstance(row, dict):
                raise SwagError(f"data.manifest: {p}:{n}: not a JSON object")
            rows.append(row)
            lines.append(n)
        columns = list(dict.fromkeys(k for r in rows for k in r))
    else:
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        for n, row in enumerate(reader, 2):
            if None in row:
                raise SwagError(f"data.manifest: {p}:{n}: more fields than the header's {len(columns)}")
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise SwagError(f"data.manifest: {p}: no rows")
    return Manifest(rows, columns, p, Path(root) if root else p.parent, lines)


def drop_duplicate_rows(man: Manifest, path_column: str, columns: list[str]) -> tuple[Manifest, int]:
    """(the manifest with every image once, how many rows were dropped). Rows name the same image
    when their paths are the same file name under the manifest root (``./a.jpg`` = ``a.jpg``); a
    repeat with the same values in ``columns`` (the ones this run reads) is dropped, one with other
    values is an error naming both rows. Empty paths and absent columns are left to the later checks."""
    if path_column not in man.columns:
        return man, 0
    cols = [c for c in columns if c in man.columns]
    values = list(zip(*(man.column(c, c) for c in cols))) if cols else [()] * len(man.rows)
    first: dict[str, int] = {}
    keep: list[int] = []
    for i, rel in enumerate(man.column(path_column, "data.path_column")):
        key = os.path.normpath(os.path.join(os.path.abspath(man.root), rel)) if rel else None
        j = first.setdefault(key, i) if key else i
        if j == i:
            keep.append(i)
            continue
        diff = next((k for k, (a, b) in enumerate(zip(values[j], values[i])) if a != b), None)
        if diff is not None:
            raise SwagError(f"data.manifest: {man.path}: rows {man.number(j)} and {man.number(i)} (lines "
                            f"{man.line(j)} and {man.line(i)}) are the same image {rel!r} with different "
                            f"{cols[diff]} ({values[j][diff]!r} vs {values[i][diff]!r}); keep one")
    if len(keep) == len(man.rows):
        return man, 0
    return (Manifest([man.rows[i] for i in keep], man.columns, man.path, man.root, [man.line(i) for i in keep],
                     [man.number(i) for i in keep]), len(man.rows) - len(keep))


def manifest_split(man: Manifest, path_column: str, labels: list[str] | None = None):
    """The manifest's images as a :class:`~swagcli.evaluate.transfer.Split` (every file checked)."""
    from swagcli.evaluate.transfer import Split

    rel = man.column(path_column, "data.path_column")
    paths = [str(Path(r) if Path(r).is_absolute() else man.root / r) for r in rel]
    missing = [(i, q) for i, q in enumerate(paths) if not rel[i] or not Path(q).is_file()]
    if missing:
        i, q = missing[0]
        raise SwagError(f"data.manifest: {len(missing)} of {len(paths)} images not found (row {man.number(i)}: "
                        f"{q or 'empty path'}; relative paths start at {man.root}, see data.root)")
    classes = sorted(set(labels)) if labels is not None else ["-"]
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[v] for v in labels] if labels is not None else [0] * len(paths), dtype=np.int64)
    return Split(paths, y, classes, str(man.path))


def read_mapping(path: str, classes: list[str], vocab) -> tuple[list[dict], list[str]]:
    """A user's hashtag -> class mapping in the zeroshot map format; (mapping, unknown hashtags).

    Accepted: JSON ``{class: [tags]}`` or ``{"classes": [{"class", "hashtags"}]}`` (``swag zeroshot
    map``'s mapping.json), or text lines ``CLASS tag tag ...`` (``#`` optional; tabs or spaces;
    ``zeroshot map``'s mapping.tsv too)."""
    p = Path(path)
    if not p.is_file():
        raise SwagError(f"geography.mapping: {p}: no such file")
    text = p.read_text(errors="replace")
    table: dict[str, list[str]] = {}
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise SwagError(f"geography.mapping: {p}: not valid JSON ({e})") from None
        if isinstance(doc, dict) and isinstance(doc.get("classes"), list):
            doc = {m["class"]: m.get("hashtags", []) for m in doc["classes"] if isinstance(m, dict) and "class" in m}
        if not isinstance(doc, dict) or not all(isinstance(v, (list, str)) for v in doc.values()):
            raise SwagError(f"geography.mapping: {p}: expected {{class: [hashtags]}}")
        table = {str(c): [v] if isinstance(v, str) else [str(t) for t in v] for c, v in doc.items()}
    else:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        zs = bool(lines) and lines[0].split("\t")[:2] == ["class", "synset"]  # zeroshot map's mapping.tsv
        if zs:  # written by swagcli.tables: quoted cells, formula-like names escaped
            from swagcli.tables import unescape

            rows = [r for r in csv.reader(io.StringIO(text), delimiter="\t") if any(c.strip() for c in r)]
            for parts in rows[1:]:
                table.setdefault(unescape(parts[0]), []).extend(unescape(parts[3]).split() if len(parts) > 3 else [])
        else:
            for ln in lines:
                parts = ln.replace("\t", " ").split()
                if not ln.lstrip().startswith("//"):
                    table.setdefault(parts[0], []).extend(parts[1:])
    index = {name: i for i, name in enumerate(vocab.names)}
    unknown: list[str] = []
    mapping = []
    for c in classes:
        ids = []
        for t in table.get(c, []):
            t = t.strip().lstrip("#").lower()
            h = index.get(t, vocab.tag_to_id.get(t))
            if h is None:
                unknown.append(t)
            elif h not in ids:
                ids.append(h)
        mapping.append({"class": c, "synset": None, "hashtag_ids": ids, "hashtags": [vocab.names[h] for h in ids],
                        "similarity": float("nan")})
    if not any(m["hashtag_ids"] for m in mapping):
        raise SwagError(f"geography.mapping: {p}: none of its hashtags is in the model's vocabulary, or none of "
                        f"its classes is a label of the manifest (labels: {', '.join(classes[:5])} ...)")
    return mapping, sorted(set(unknown))


# -- the command -----------------------------------------------------------------------------------------------
def run(recipe, progress=None) -> dict:
    from swagcli.evaluate import zeroshot as zs
    from swagcli.evaluate.transfer import load_source
    from swagcli.runinfo import stamp

    if not recipe.out:
        raise SwagError("fairness: no output directory (--out DIR or 'out:' in the recipe)")
    A, Gs = recipe.associations, recipe.geography
    if not (A.enabled or Gs.enabled):
        raise SwagError("fairness: both associations and geography are disabled; nothing to do")
    if A.enabled and not A.attributes:
        raise SwagError("associations.attributes: name the manifest columns to group images by "
                        "(--attribute COLUMN, repeatable), or turn associations off (--no-associations)")
    if recipe.source.checkpoint is None:
        raise SwagError("fairness: no checkpoint (a swag run or checkpoint directory with its hashtag head)")
    t0 = time.time()
    man = read_manifest(recipe.data.manifest, recipe.data.root)
    # everything about the manifest is checked before the model is loaded; an image listed twice counts once
    used = [*(A.attributes if A.enabled else []), *([Gs.country_column, Gs.label_column] if Gs.enabled else [])]
    man, duplicates = drop_duplicate_rows(man, recipe.data.path_column, used)
    attrs = {}
    for col in A.attributes if A.enabled else []:
        attrs[col] = attribute_groups(man.column(col, "associations.attributes"), col, A.buckets.get(col))
    labels = countries = None
    if Gs.enabled:
        hint = " (or --no-geography)"
        countries = man.column(Gs.country_column, "geography.country_column" + hint)
        labels = man.column(Gs.label_column, "geography.label_column" + hint)
        empty = next((i for i, (c, v) in enumerate(zip(countries, labels)) if not c or not v), None)
        if empty is not None:
            raise SwagError(f"geography: row {man.number(empty)} of {man.path} has no country or no label")
    split = manifest_split(man, recipe.data.path_column, labels)
    source = load_source(recipe.source, resolution=recipe.data.resolution)
    if source.vocab is None:
        raise SwagError(f"fairness: needs a swag checkpoint (its hashtag head and vocabulary); {source.path} "
                        "has no hashtag head")
    vocab = source.vocab
    mapping, unknown = [], []
    if Gs.enabled:
        if Gs.mapping:
            mapping, unknown = read_mapping(Gs.mapping, split.classes, vocab)
        else:
            mapping = zs.class_map(split.classes, vocab)
            if not any(m["hashtag_ids"] for m in mapping):
                raise SwagError("geography: no label maps to a hashtag through WordNet (labels must be wnids or "
                                "synset names); give a hashtag -> class file with geography.mapping")
    columns = sorted({h for m in mapping for h in m["hashtag_ids"]})
    out = Path(recipe.out)
    resolution = recipe.data.resolution or source.resolution
    stamp(out, "fairness", recipe, {"source": source.fingerprint})
    topk, logp, ext = zs.head_outputs(source, split, out / "predictions", resolution, recipe, columns,
                                      A.top_k if A.enabled else 0, progress, what="data.manifest")
    # the rows of the images predicted: a skipped image (undecodable, over data.max_pixels) leaves its
    # groups, country and label out with it
    keep = ext.kept
    split = split.subset(keep)
    attrs = {col: (g[keep], names) for col, (g, names) in attrs.items()}
    if countries is not None:
        countries = [countries[i] for i in keep.tolist()]
    result = {"source": {"kind": source.kind, "model": source.name, "path": source.path},
              "manifest": str(man.path), "images": len(split), "skipped_images": ext.report(),
              "duplicate_rows": duplicates,
              "resolution": resolution, "out": str(out)}
    if A.enabled:
        result["associations"] = {"top_k": A.top_k, "top_n": A.top_n, "min_group": A.min_group,
                                  "bootstrap": A.bootstrap, "confidence": A.confidence, "attributes": {}}
        for col, (g, names) in attrs.items():
            if progress:
                progress(f"associations: {col}", 0, 1)
            groups = associations(topk, g, names, len(vocab), top_n=A.top_n, min_group=A.min_group,
                                  bootstrap=A.bootstrap, confidence=A.confidence, seed=A.seed)
            for grp in groups:
                for row in grp["top"]:
                    row["hashtag"] = vocab.names[row["hashtag_id"]]
            result["associations"]["attributes"][col] = {
                "bucket_width": A.buckets.get(col), "missing": int((g < 0).sum()), "groups": groups}
            if progress:
                progress(f"associations: {col}", 1, 1)
    if Gs.enabled:
        how = Gs.aggregation if Gs.aggregation != "auto" else zs.default_aggregation(source.name, Gs.platt)
        x = zs.aggregate(logp, columns, mapping, how)
        if Gs.platt:
            x = zs.platt_apply(x, zs.platt_fit(x))
        pred = x.argmax(dim=1).numpy()
        geo = geography(countries, split.labels, pred, split.classes, Gs.ratio, Gs.min_images)
        geo.update({"aggregation": how, "platt": Gs.platt, "classes": len(split.classes),
                    "mapping": "wordnet" if not Gs.mapping else str(Gs.mapping), "unknown_hashtags": unknown,
                    "unreached_classes": [m["class"] for m in mapping if not m["hashtag_ids"]],
                    "class_hashtags": {m["class"]: m["hashtags"] for m in mapping}})
        result["geography"] = geo
    result["seconds"] = round(time.time() - t0, 2)
    write_outputs(result, out)
    return result


# -- outputs ------------------------------------------------------------------------------------------------
def write_outputs(result: dict, out: Path) -> None:
    """fairness.json, the CSV tables, the figures and report.html."""
    from swagcli import plots
    from swagcli.evaluate.fairness_html import html_report
    from swagcli.runinfo import atomic_write_text

    figures: dict[str, Path] = {}
    A = result.get("associations")
    if A:
        rows = [["attribute", "group", "images", "ranked", "rank", "hashtag", "rate", "others_rate", "abs_diff",
                 "rel_diff", "ci_low", "ci_high", "significant"]]
        for col, a in A["attributes"].items():
            for grp in a["groups"]:
                for i, r in enumerate(grp["top"], 1):
                    rows.append([col, grp["group"], grp["images"], grp["ranked"], i, r["hashtag"], r["rate"],
                                 r["others_rate"], r["abs_diff"], r["rel_diff"], r["ci_low"], r["ci_high"],
                                 r["significant"]])
            ranked = [grp for grp in a["groups"] if grp["ranked"] and grp["top"]]
            if ranked:
                figures[f"associations: {col}"] = plots.association_plot(
                    col, ranked, out / f"associations_{_safe(col)}.png", A["top_k"], A["confidence"])
        _write_csv(out / "associations.csv", rows)
    G = result.get("geography")
    if G:
        _write_csv(out / "countries.csv", [["country", "images", "correct", "accuracy", "ci_low", "ci_high", "classes"]] +
                   [[c[k] for k in ("country", "images", "correct", "accuracy", "ci_low", "ci_high", "classes")]
                    for c in G["countries"]])
        _write_csv(out / "country_class_accuracy.csv", [["country", "class", "images", "correct", "accuracy"]] +
                   [[r["country"], r["class"], r["images"], r["correct"], r["correct"] / r["images"]]
                    for r in G["class_accuracy"]])
        names = G["country_names"]
        _write_csv(out / "eighty_rule.csv", [["worse \\ better"] + names] +
                   [[r] + row for r, row in zip(names, G["eighty_rule"])])
        figures["accuracy per country"] = plots.country_accuracy_plot(G, out / "countries.png")
        if len(names) > 1:
            figures["80% rule"] = plots.eighty_rule_plot(G, out / "eighty_rule.png")
    result["figures"] = {k: str(v) for k, v in figures.items()}
    atomic_write_text(out / "fairness.json", json.dumps(result, indent=1, default=_json_default) + "\n")
    html_report(result, figures, out / "report.html")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def _write_csv(path: Path, rows: list[list]) -> None:
    from swagcli.tables import write_csv

    write_csv(path, rows)  # group, country and hashtag names can't become spreadsheet formulas
