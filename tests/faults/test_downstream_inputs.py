"""Hostile downstream inputs: sets that silently give wrong numbers, and CSV cells a spreadsheet
runs as formulas.

* A training split with one class (after empty class folders are discounted) scores 100% top-1:
  `swag probe` / `swag finetune` refuse it in one line, before a model is loaded.
* An empty class folder is not a class (left out, and named in the result); a validation class with
  images but no training images is an error naming it (folders and webdataset shards).
* A fairness manifest listing an image twice counts it once (identical rows dropped and counted);
  the same image with different values is an error naming both rows.
* Intervals and significance are given for ranked groups only (fairness.json, CSV, HTML).
* Every CSV/TSV swag writes goes through :mod:`swagcli.tables`: text cells starting with ``= + - @``
  (tab, CR) get a leading ``'``; numbers stay numbers; swag reads its own mapping.tsv back unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.faults.conftest import one_line_error

KW = "{img_size: 32, patch_size: 8}"
HOSTILE = ['=HYPERLINK("http://x","y")', "+1", "-2+3", "@SUM(A1)"]


def _jpg(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _folders(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """ROOT/CLASS/i.jpg with ``counts[CLASS]`` images (0: an empty class folder)."""
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"{c}-{i}.jpg").write_bytes(_jpg(seed + 100 * i + len(c)))
    return root


def _shard(path: Path, labels: list[str]) -> Path:
    with tarfile.open(path, "w") as t:
        for i, y in enumerate(labels):
            for name, data in ((f"s{i:04d}.jpg", _jpg(i)), (f"s{i:04d}.cls", y.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model or extracting a feature fails the test: the check must come first."""
    from swagcli.evaluate import transfer

    def boom(*a, **k):
        raise AssertionError("a model was loaded / features extracted before the input was checked")

    monkeypatch.setattr(transfer, "load_source", boom)
    monkeypatch.setattr(transfer, "extract", boom)


def _transfer_cli(cli, command: str, train, val, out: Path):
    args = ["--model", "test_vit", "--set", f"source.kwargs={KW}", "--train", train, "--val", val,
            "--out", out, "--set", "data.workers=0"]
    if command == "finetune":
        args += ["--set", "optim.lr=0.01", "--set", "updates=1"]
    return cli(command, *args)


# -- one class --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["probe", "finetune"])
@pytest.mark.parametrize("layout", ["one-folder", "one-folder-and-empty-ones", "named-shard", "index-shard"])
def test_a_training_split_with_one_class_is_refused(cli, no_model, tmp_path, command, layout):
    val = _folders(tmp_path / "val", {"cat": 2})
    if layout == "one-folder":
        train, name = _folders(tmp_path / "train", {"cat": 3}), "cat"
    elif layout == "one-folder-and-empty-ones":
        train, name = _folders(tmp_path / "train", {"bird": 0, "cat": 3, "dog": 0}), "cat"
    elif layout == "named-shard":
        train, name = _shard(tmp_path / "train.tar", ["cat"] * 3), "cat"
    else:
        train, name = _shard(tmp_path / "train.tar", ["0"] * 3), "0"
        val = _shard(tmp_path / "val.tar", ["0", "0"])
    line = one_line_error(_transfer_cli(cli, command, train, val, tmp_path / "out"), "data.train", name,
                          "at least 2")
    if layout == "one-folder-and-empty-ones":
        assert "bird" in line and "dog" in line  # the folders left out are named
    assert not (tmp_path / "out" / "features").exists()


# -- empty class folders --------------------------------------------------------------------------------------
def test_empty_class_folders_are_not_classes(tmp_path):
    from swagcli.evaluate.transfer import load_split

    train = _folders(tmp_path / "train", {"bird": 0, "cat": 2, "dog": 2})
    val = _folders(tmp_path / "val", {"bird": 0, "cat": 1, "dog": 1, "eel": 0})
    tr = load_split([str(train)], "train")
    assert tr.classes == ["cat", "dog"] and tr.labels.tolist() == [0, 0, 1, 1]
    assert tr.empty_classes == ["bird"]
    va = load_split([str(val)], "val", tr.classes)  # an empty folder in val (even unknown) is no class either
    assert va.classes == ["cat", "dog"] and va.labels.tolist() == [0, 1] and va.empty_classes == ["bird", "eel"]
    assert tr.subset([2, 3]).empty_classes == ["bird"]


@pytest.mark.parametrize("command", ["probe", "finetune"])
def test_a_validation_class_without_training_images_is_named(cli, no_model, tmp_path, command):
    train = _folders(tmp_path / "train", {"bird": 0, "cat": 2, "dog": 2})
    val = _folders(tmp_path / "val", {"bird": 1, "cat": 1, "dog": 1})
    one_line_error(_transfer_cli(cli, command, train, val, tmp_path / "out"), "data.val", "bird")
    # webdataset shards with class indices: index 1 has validation images, no training ones
    tr = _shard(tmp_path / "train.tar", ["0", "2", "0", "2"])
    va = _shard(tmp_path / "val.tar", ["0", "1", "2"])
    one_line_error(_transfer_cli(cli, command, tr, va, tmp_path / "out2"), "data.val", "1", "no training images")


def test_probe_and_finetune_report_the_empty_folders_they_left_out(tmp_path):
    from swagcli import recipes
    from swagcli.evaluate import finetune, probe
    from swagcli.train.dist import DistEnv

    train = _folders(tmp_path / "train", {"bird": 0, "cat": 3, "dog": 3})
    val = _folders(tmp_path / "val", {"cat": 1, "dog": 1, "eel": 0}, seed=7)
    sets = ["source.model=test_vit", f"source.kwargs={KW}", f"data.train=[{train}]", f"data.val=[{val}]",
            "data.workers=0"]
    p = probe.run(recipes.load("probe", flags={"out": str(tmp_path / "p")}, overrides=sets))
    want = {"train": ["bird"], "val": ["eel"]}
    assert p["classes"] == 2 and p["empty_class_folders"] == want
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["empty_class_folders"] == want
    f = finetune.run(recipes.load("finetune", flags={"out": str(tmp_path / "f")}, overrides=[
        *sets, "optim.lr=0.01", "updates=2", "batch_size=4", "ema=0", "checkpoint_every=1000"]),
        DistEnv(), progress=False)
    assert f["classes"] == 2 and f["empty_class_folders"] == want
    assert json.loads((tmp_path / "f" / "finetune.json").read_text())["empty_class_folders"] == want


# -- the CSV writer -------------------------------------------------------------------------------------------
def test_write_csv_neutralizes_formulas_and_keeps_numbers(tmp_path):
    from swagcli.tables import unescape, write_csv

    cells = HOSTILE + ["\tx", "\rx", "'=already", "-", "plain", "a=b", ""]
    write_csv(tmp_path / "t.csv", [["name", "n", "x", "y", "none"]] +
              [[c, -3, -0.25, np.float64(-1e-7), None] for c in cells])
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    got = [r[0] for r in rows]
    assert got[:6] == ["'" + c for c in HOSTILE + ["\tx", "\rx"]]
    assert got[6] == "''=already"  # a quote before a formula is escaped too: reading back is exact
    assert got[7:] == ["-", "plain", "a=b", ""]  # a lone '-' is no formula
    assert all(r[1:] == ["-3", "-0.25", "-1e-07", ""] for r in rows)
    assert [unescape(c) for c in got] == cells
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left
    write_csv(tmp_path / "t.tsv", [["a", "b"], ["-1", -1.5]], delimiter="\t")
    assert (tmp_path / "t.tsv").read_text() == "a\tb\n'-1\t-1.5\n"


def test_zeroshot_mapping_tsv_reads_back_through_fairness(tmp_path):
    from types import SimpleNamespace

    from swagcli.evaluate.fairness import read_mapping
    from swagcli.evaluate.zeroshot import write_mapping

    classes = HOSTILE + ["'=quoted", "n01440764"]
    tags = ["tench", "fish", "dog", "-minus", "+plus", "cat"]
    mapping = [{"class": c, "synset": None if i % 2 else "tench.n.01", "similarity": [0.5, float("nan")][i % 2],
                "hashtag_ids": [i], "hashtags": [tags[i]]} for i, c in enumerate(classes)]
    write_mapping(mapping, tmp_path)
    with open(tmp_path / "mapping.tsv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["class", "synset", "similarity", "hashtags"]
    assert [r[0] for r in rows[1:5]] == ["'" + c for c in HOSTILE]
    assert rows[1][1:] == ["tench.n.01", "0.5000", "#tench"] and rows[2][1:3] == ["-", "nan"]
    vocab = SimpleNamespace(names=tags, tag_to_id={t: i for i, t in enumerate(tags)})
    back, unknown = read_mapping(str(tmp_path / "mapping.tsv"), classes, vocab)
    assert unknown == [] and [m["hashtag_ids"] for m in back] == [[i] for i in range(len(classes))]


# -- fairness: duplicates, unranked groups, hostile names -----------------------------------------------------
def _manifest_rows(world: Path) -> list[dict]:
    with open(world / "groups" / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def test_conflicting_duplicate_manifest_rows_are_one_line(cli, no_model, tmp_path):
    (tmp_path / "img").mkdir()
    for n in ("a", "b"):
        (tmp_path / "img" / f"{n}.jpg").write_bytes(_jpg(0))
    (tmp_path / "m.csv").write_text("path,group,country,label\nimg/a.jpg,A,US,n01440764\n"
                                    "img/b.jpg,B,US,n01440764\n./img/a.jpg,B,US,n01440764\n")
    line = one_line_error(cli("fairness", tmp_path / "ck", tmp_path / "m.csv", "-a", "group", "-o", tmp_path / "o"),
                          "m.csv", "rows 1 and 3 (lines 2 and 4)", "img/a.jpg", "group")
    assert "'A'" in line and "'B'" in line
    (tmp_path / "m.jsonl").write_text('{"path": "img/a.jpg", "group": "A", "country": "US", "label": "x"}\n'
                                      f'{{"path": "{tmp_path}/img/a.jpg", "group": "A", "country": "GB", '
                                      '"label": "x"}\n')
    one_line_error(cli("fairness", tmp_path / "ck", tmp_path / "m.jsonl", "-a", "group", "-o", tmp_path / "o"),
                   "lines 1 and 2", "country")


def test_identical_duplicate_manifest_rows_count_once(tmp_path):
    from swagcli.evaluate.fairness import drop_duplicate_rows, manifest_split, read_manifest

    (tmp_path / "img").mkdir()
    for n in ("a", "b"):
        (tmp_path / "img" / f"{n}.jpg").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("path,group,note\nimg/a.jpg,A,1\nimg/b.jpg,B,2\n./img/a.jpg,A,3\n"
                                    "img//b.jpg, B ,4\n")
    man, dropped = drop_duplicate_rows(read_manifest(str(tmp_path / "m.csv")), "path", ["group"])
    assert dropped == 2 and man.column("group", "x") == ["A", "B"]
    assert len(manifest_split(man, "path")) == 2


@pytest.fixture(scope="module")
def hostile_run(tiny_world, tiny_pretrained, tmp_path_factory):
    """The tiny world's group manifest with formula-like group, country and class names, a group
    too small to rank, 6 duplicated rows, and a mapping.tsv written by `swag zeroshot`."""
    from swagcli import recipes
    from swagcli.evaluate import fairness as F
    from swagcli.evaluate.zeroshot import write_mapping

    tmp = tmp_path_factory.mktemp("hostile")
    world = tiny_world["world"]
    rows = _manifest_rows(world)
    shutil.copytree(world / "groups" / "images", tmp / "images")
    groups = {"A": HOSTILE[0], "B": HOSTILE[1], "C": HOSTILE[3]}
    countries = sorted({r["country"] for r in rows})
    country = {c: HOSTILE[i % 4] + ("" if i < 4 else str(i)) for i, c in enumerate(countries)}
    classes = json.loads((world / "downstream" / "classes.json").read_text())
    label = {w: HOSTILE[i] if i < 4 else w for i, w in enumerate(sorted(classes))}
    small = 0
    for r in rows:
        r["group"], r["country"], r["label"] = groups[r["group"]], country[r["country"]], label[r["label"]]
        if r["group"] == HOSTILE[3] and small < 12:
            r["group"], small = "-2+3", small + 1  # below min_group (30): reported, not ranked
    dups = [dict(rows[i]) for i in (0, 5, 9, 17, 33, 50)]
    dups[0]["path"] = "./" + dups[0]["path"]
    _write_manifest(tmp / "manifest.csv", rows + dups)
    vocab = json.loads((Path(tiny_pretrained["run_dir"]) / "checkpoints" / "step-00000600" / "vocab.json").read_text())
    names = {t: h["name"] for h in vocab["hashtags"] for t in h["tags"]}
    ids = {h["name"]: h["id"] for h in vocab["hashtags"]}
    mapping = []
    for w, c in classes.items():
        tags = [names[t] for t in c["expected_tags"] if t in names]
        mapping.append({"class": label[w], "synset": c["synset"], "similarity": 1.0,
                        "hashtag_ids": [ids[t] for t in tags], "hashtags": tags})
    write_mapping(mapping, tmp / "map")
    out = tmp / "out"
    res = F.run(recipes.load("fairness", flags={"out": str(out)}, overrides=[
        f"source.checkpoint={tiny_pretrained['run_dir']}", f"data.manifest={tmp / 'manifest.csv'}",
        "associations.attributes=[group]", "associations.bootstrap=100", "data.workers=0",
        f"geography.mapping={tmp / 'map' / 'mapping.tsv'}"]))
    return res, out, len(rows), label


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fairness_counts_duplicated_rows_once(hostile_run):
    res, out, n, _ = hostile_run
    assert res["images"] == n and res["duplicate_rows"] == 6
    assert json.loads((out / "fairness.json").read_text())["duplicate_rows"] == 6


def test_unranked_groups_have_no_significance(hostile_run):
    res, out, _, _ = hostile_run
    groups = {g["group"]: g for g in res["associations"]["attributes"]["group"]["groups"]}
    small = groups["-2+3"]
    assert not small["ranked"] and small["images"] == 12 and small["top"]
    assert all(r["ci_low"] is None and r["ci_high"] is None and r["significant"] is None for r in small["top"])
    ranked = [g for g in groups.values() if g["ranked"]]
    assert len(ranked) == 3 and all(r["significant"] is not None for g in ranked for r in g["top"])
    doc = json.loads((out / "fairness.json").read_text())
    small_doc = next(g for g in doc["associations"]["attributes"]["group"]["groups"] if g["group"] == "-2+3")
    assert all(r["significant"] is None for r in small_doc["top"])
    rows = [r for r in _csv(out / "associations.csv") if r["group"] == "'-2+3"]
    assert rows and all(r["ci_low"] == r["ci_high"] == r["significant"] == "" for r in rows)
    page = (out / "report.html").read_text()
    details = page.split("group = -2+3:")[1].split("</details>")[0]
    assert "(too small to rank)" in details
    assert "<td>yes</td>" not in details and "<td>no</td>" not in details


def test_fairness_csv_cells_cannot_be_formulas(hostile_run):
    res, out, _, label = hostile_run
    assoc = _csv(out / "associations.csv")
    assert {r["group"] for r in assoc} == {"'" + g for g in HOSTILE}
    for r in assoc:
        for k in ("rate", "others_rate", "abs_diff"):
            float(r[k])
        assert not r["hashtag"].startswith(("=", "+", "-", "@"))
    assert any(float(r["abs_diff"]) < 0 and r["abs_diff"].startswith("-") for r in assoc)  # negatives stay numbers
    countries = _csv(out / "countries.csv")
    assert countries and all(r["country"].startswith("'") for r in countries[:4])
    assert all(0 <= float(r["accuracy"]) <= 1 for r in countries)
    cells = _csv(out / "country_class_accuracy.csv")
    assert {r["class"] for r in cells} >= {"'" + c for c in HOSTILE}
    with open(out / "eighty_rule.csv", newline="") as fh:
        eighty = list(csv.reader(fh))
    assert all(c.startswith("'") for c in eighty[0][1:5]) and all(r[0].startswith("'") for r in eighty[1:5])
    for r in eighty[1:]:
        [float(v) for v in r[1:]]
    # fairness.json keeps the names as they are, and every hostile class read back from mapping.tsv
    geo = res["geography"]
    assert set(geo["class_hashtags"]) == set(label.values()) and not geo["unreached_classes"]
    assert {c["country"] for c in geo["countries"]} >= set(HOSTILE)
