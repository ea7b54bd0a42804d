"""The columnar readers (swagcli.prep.blocks) against the line-by-line reader they replace.

The row path (``iter_posts``) is the reference: for every source layout, every bad-line fixture and
random bad lines at random places in a block, ``iter_blocks`` must give the same posts (ids, tags in
order, countries) and the same counts per rule. Blocks are made small here so that one file mixes
blocks read by the fast path with blocks read line by line.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from swagcli.prep import blocks, jsonscan
from swagcli.prep.blocks import iter_blocks
from swagcli.prep.dumps import ReadSpec, ReadStats, detect_format, expand_dumps, iter_posts

FIXTURE = Path(__file__).resolve().parent.parent / "data" / "yfcc100m_dataset-slice"


def by_rows(path, spec):
    st = ReadStats()
    return [(p.id, p.tags, p.country) for p in iter_posts(Path(path), spec, st)], st.as_dict()


def by_blocks(path, spec):
    st, out = ReadStats(), []
    for b in iter_blocks(Path(path), spec, st, country=True):
        names = b.names.to_pylist()
        for i, pid in enumerate(b.id_list()):
            out.append((pid, [names[k] for k in b.tags[b.ptr[i]:b.ptr[i + 1]].tolist()], b.country[i]))
    return out, st.as_dict()


def same(path, fmt=None, **kw):
    spec = ReadSpec(fmt or detect_format(Path(path)), **kw)
    rows, fast = by_rows(path, spec), by_blocks(path, spec)
    assert fast[1] == rows[1], (path, kw)  # every count per rule, the damaged files
    assert fast[0] == rows[0], (path, kw)
    return rows


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of ~300 bytes and 7 posts, and the path counters from zero."""
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 300)
    monkeypatch.setattr(blocks, "BLOCK_POSTS", 7)
    monkeypatch.setattr(blocks, "SPLIT_MIN", 40)
    monkeypatch.setattr(blocks, "PATHS", {"fast": 0, "rows": 0})
    return blocks.PATHS


def test_every_layout_synth_writes_reads_the_same(layouts, small_blocks):
    out, _ = layouts
    scanned = jsonscan.TAKEN["blocks"]
    for spec in (str(out / "dumps"), str(out / "yfcc"), str(out / "img2dataset"), str(out / "img2dataset" / "*.tar")):
        for kw in ({}, {"caption_hashtags": False}) + (({"tags": "usertags"},) if "img2dataset" in spec else ()):
            for p in expand_dumps([spec]):
                posts = same(p, **kw)[0]
                assert posts or kw == {"caption_hashtags": False}, (p, kw)  # captions were the tags
    assert small_blocks["fast"] > 100 and small_blocks["rows"] > 10  # both paths did their share
    assert jsonscan.TAKEN["blocks"] - scanned > 50  # and the JSONL scanner read whole blocks of the dumps


def test_yfcc_fixture_and_its_editions(tmp_path, small_blocks):
    text = FIXTURE.read_text()
    same(FIXTURE)
    orig = tmp_path / "yfcc100m_dataset-0"
    orig.write_text("".join("\t".join(c[1:2] + c[3:]) + "\n" for c in (ln.split("\t") for ln in text.splitlines())))
    same(orig)
    packed = tmp_path / "yfcc100m_dataset-1.bz2"
    packed.write_bytes(bz2.compress(text.encode()))
    same(packed)
    assert small_blocks["fast"] > 0


# -- hostile lines ------------------------------------------------------------------------------------
GOOD_JSON = [  # one file's lines agree on the types of their fields (else its blocks are read line by line)
    '{"id": "a1", "hashtags": ["#Dog", "#dog", "cat"], "country": "US"}',
    '{"id": "b2", "hashtags": ["#eggplant"]}',
    '{"id": "c3", "caption": "sunny day with my #BrownBear and #love"}',
    '{"id": "e5", "hashtags": ["brown+bear", "caf%C3%A9", "new york"], "country": "GB"}',
    '{"id": "f6", "hashtags": ["#x"], "caption": "#ignored", "other": [1, {"k": null}]}',
    '{"id": "g7", "hashtags": ["#\\ud83d\\ude00sun", "caf\\u00e9"]}',  # escapes as json.dumps writes them
]
INT_IDS = ['{"id": 17, "hashtags": ["#eggplant"]}', '{"id": -0, "hashtags": ["x", "#X"]}',
           '{"id": 9007199254740993, "hashtags": ["y"], "country": "US"}', '{"id": 3, "caption": "#owl"}']
STRING_TAGS = ['{"id": "d4", "hashtags": "#crane #heron"}', '{"id": "d5", "hashtags": "  #a   #b "}',
               '{"id": "d6", "hashtags": "", "caption": "#cap"}', '{"id": "d7", "hashtags": "x"}']
BAD_JSON = [
    "{not json", "[1, 2]", '"just a string"', "", "   ", "\t", '{"hashtags": ["#x"]}', '{"id": null, "hashtags": ["x"]}',
    '{"id": "", "hashtags": ["x"]}', '{"id": "  ", "hashtags": ["x"]}', '{"id": " sp ", "hashtags": ["x"]}',
    '{"id": "u\\u3000", "hashtags": ["x"]}', '{"id": 1.0, "hashtags": ["x"]}', '{"id": 1.5, "hashtags": ["x"]}',
    '{"id": 1e2, "hashtags": ["x"]}', '{"id": 123456789012345678901234567890, "hashtags": ["x"]}',
    '{"id": NaN, "hashtags": ["x"]}', '{"id": true, "hashtags": ["x"]}', '{"id": {"k": 1}, "hashtags": ["x"]}',
    '{"id": ["l"], "hashtags": ["x"]}', '{"id": "dup", "id": "dup2", "hashtags": ["x"]}',
    '{"id": "sur\\ud800", "hashtags": ["x"]}', '{"id": "pair\\ud83d\\ude00", "hashtags": ["\\ud83d\\ude00x"]}',
    '{"id": "two"} {"id": "objects"}', '{"id": "multi",', '"hashtags": ["x"]}',
    '{"id": "two", "hashtags": ["x"]} {"id": "more", "hashtags": ["y"]}\n{"id": "over",\n"hashtags": ["two lines"]}', '\ufeff{"id": "bom", "hashtags": ["x"]}',
    '{"id": "nul\\u0000", "hashtags": ["x"]}', '{"id": "n", "hashtags": ["x", null, 3, "", "#", "# #"]}',
    '{"id": "e", "hashtags": []}', '{"id": "f", "hashtags": ["#"]}', '{"id": "g", "hashtags": null, "caption": 5}',
    '{"id": "h", "hashtags": "a,b, c d,#e #f"}', '{"id": "i", "hashtags": "x\\u001cy"}',
    '{"id": "j", "hashtags": ["İstanbul", "STRASSE", "ǅemal"]}', '{"id": "k", "hashtags": 7}',
    '{"id": "l", "country": 3, "hashtags": ["x"]}', '{"id": "m", "country": "", "hashtags": ["x"]}',
    '{"id": "o", "hashtags": ["x"]} ', ' {"id": "p", "hashtags": ["x"]}', '{"id": "q", "hashtags": ["x"]}\r',
    '{"id": "r\\n", "hashtags": ["x"]}', '{"id": "s", "hashtags": ["a\\tb"]}', "\xff\xfe", '{"id": "t", "tags": ["x"]}',
    '{"id": "u", "hashtags": [["nested"]]}', '{"id": "v", "caption": "see http://x.org/p#frag &#39;hi&#39; #Owl#Bat"}',
    '{"id": "w", "hashtags": [], "caption": "#dog"}', '{"id": "x", "hashtags": [""], "caption": "#dog"}',
    '{"id": -0, "hashtags": ["x"]}', '{"id": "y", "hashtags": ["x"], "extra": {"deep": [1, {"a": null}]}}',
    # what other JSON readers take and Python's json refuses: trailing commas, nan/inf in any case (pyarrow: -NaN, Inf)
    '{"id": "tc", "hashtags": ["x",]}', '{"id": "tc2", "hashtags": ["x"],}', '{"id": "tc3", "o": [1 , ] , "hashtags": ["x"]}',
    '{"id": "nan", "o": nan, "hashtags": ["x"]}', '{"id": "inf", "o": -inf, "hashtags": ["x"]}',
    '{"id": "Inf", "o": [Infinity], "hashtags": ["x"]}', '{"id": "NAN", "hashtags": ["x", NAN]}',
    '{"id": "-nan", "o": -NaN, "hashtags": ["x"]}', '{"id": Infinity, "hashtags": ["x"]}',
    # keys: exact (not case-folded), escapes decoded; escapes in values; types JSON text tells apart
    '{"ID": "up", "hashtags": ["x"]}', '{"\\u0069d": "esc", "hash\\u0074ags": ["x"]}', '{"id": "k", "ID": "K", "hashtags": ["x"]}',
    '{"id": "q\\"id\\\\", "hashtags": ["a\\"b", "c\\\\d", "e\\/f", "g\\nh"], "country": "U\\u0053"}',
    '{"id": "cap", "hashtags": [], "caption": "a \\"quoted\\" #Tag\\u00e9 and\\n#two"}',
    '{"id": 1E400, "hashtags": ["x"]}', '{"id": "big", "o": 1.5e309, "hashtags": ["x"]}', '{"id": -12, "hashtags": ["x"]}',
    '{"id": "k3", "hashtags": {"a": "b"}}', '{"id": "k4", "hashtags": true}', '{"id": "k5", "hashtags": [true, {"a": "b"}, ["c"], 1.5, "ok"]}',
    '{"id": "k6", "hashtags": ["x"], "country": ["US"]}', '{"id": "k7", "hashtags": ["x"], "country": null}',
    '{"id": "null", "hashtags": ["null", "true"]}', '{"id": "sp\\u0020", "hashtags": ["x"]}', '{}',
    '{"id": "long", "hashtags": ["' + "t" * 5000 + '"]}',
    # nesting: past Python's recursion limit (json.loads raised RecursionError: a traceback), and
    # deep but readable, and many brackets not nested
    '{"id": "deep", "hashtags": ["x"], "o": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"id": "d300", "hashtags": ["x"], "o": ' + "[" * 300 + "]" * 300 + "}",
    '{"id": "flat", "hashtags": ["x"], "o": [' + ",".join(["{}"] * 400) + "]}",
]
GOOD_TSV = ["p1\t#dog #Cat\tUS", "p2\t#eggplant #aubergine", "p3\tbrown+bear  #x", "p4\t#a\t GB "]
BAD_TSV = [
    "", " ", "\t", "\t#x", " \t#x", "p5", "p6\t", "p7\t#a,#b", "p8\tnew york,brown bear", "p9\t#x\u3000#y",
    "p10\t#x\x1c#y", "p11\t#a\tUS\textra", "p12\t#İ #ß", " p13 \t#x", "p14\t#x\r", "p15\t#x\ry", "\xff\t#x",
    "p16\t#", "p17\t#x\x0b#y",
]


def _yfcc_line(pid="42", tags="dog,brown+bear", title="", desc="", marker="0", fields=25):
    cols = ["7", pid, "0123456789abcdef0123456789abcdef"] + ["x"] * 22
    cols[-17], cols[-16], cols[-15], cols[-1] = title, desc, tags, marker
    return "\t".join(cols[25 - fields:] if fields < 25 else cols)


GOOD_YFCC = [_yfcc_line(f"{i}", t) for i, t in enumerate(["dog,cat", "new+york", "caf%C3%A9,paris", "sunset"])] + [
    _yfcc_line("9", "", title="Owl+%23Owl", desc="%23night")]  # no user tags: the description's #tags
BAD_YFCC = [
    _yfcc_line("v", marker="1"), _yfcc_line("m", marker=" 0"), _yfcc_line("z", marker="2"), _yfcc_line("w", tags=""),
    _yfcc_line("t", tags="", title="Sunset+%23sea", desc="with+%23Boat"), _yfcc_line("c", tags=",,"),
    _yfcc_line("c2", tags=",,", title="%23owl"),
    _yfcc_line(" ", tags="x"), "a\tb\tc", _yfcc_line("f24", fields=24), _yfcc_line("f23", fields=23), "",
]


def _write(path: Path, lines: list[str], pack=None) -> Path:
    data = "".join(x + "\n" for x in lines).encode("utf-8", "surrogateescape")
    path.write_bytes(pack(data) if pack else data)
    return path


PLAIN_JSON = [  # lines the compiled scanner takes (swagcli.prep.jsonscan): no escape in a field a post is read from
    '{"id":"a1","hashtags":["#Dog","#dog","cat"],"country":"US"}', '{"id": 17, "hashtags": ["#eggplant"]}',
    '{"id":"c3","caption":"sunny day with my #BrownBear and \\"#love\\""}', '{"id":"e5","hashtags":["brown+bear","café"]}',
    '{"id":"f6","hashtags":["#x"],"other":[1,{"k":null,"s":"\\u00e9"}],"n":-2.5e3}', '{"id":"g7","hashtags":[],"caption":"#cap"}',
]
FLAVOURS = [("jsonl", GOOD_JSON, BAD_JSON), ("jsonl", PLAIN_JSON, BAD_JSON), ("jsonl", INT_IDS, BAD_JSON), ("jsonl", STRING_TAGS, BAD_JSON),
            ("tsv", GOOD_TSV, BAD_TSV), ("yfcc", GOOD_YFCC, BAD_YFCC)]


@pytest.mark.parametrize("fmt, good, bad", FLAVOURS)
def test_each_hostile_line_in_a_block_of_good_ones(tmp_path, fmt, good, bad, monkeypatch):
    """Each bad line alone among good ones, in a block of its own size: the counts of that rule,
    and every good line around it, as the row path has them; the good lines alone take the fast path."""
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(blocks, "PATHS", {"fast": 0, "rows": 0})
    taken = jsonscan.TAKEN["blocks"]
    same(_write(tmp_path / f"good.{fmt}", good * 3), fmt)
    assert blocks.PATHS["rows"] == 0 and blocks.PATHS["fast"] >= 1
    if good is PLAIN_JSON:  # the scanner read it whole; else (escapes, strings as tags) the line checks
        assert jsonscan.TAKEN["blocks"] > taken and blocks.PATHS["fast"] == 1
    for k, line in enumerate(bad):
        f = _write(tmp_path / f"d{k}.{fmt}", good * 3 + [line] + good * 2)
        same(f, fmt)
        same(f, fmt, caption_hashtags=False)


@pytest.mark.parametrize("fmt, good, bad", FLAVOURS)
def test_random_bad_lines_at_random_places(tmp_path, fmt, good, bad, monkeypatch):
    """Property: good lines with bad ones at random positions, random block sizes, plain or gzip,
    sometimes cut off part-way (a truncated .gz): always what the row path gives."""
    rng = random.Random(fmt + good[0])
    for trial in range(25):
        monkeypatch.setattr(blocks, "BLOCK_BYTES", rng.choice([64, 200, 1000, 1 << 16]))
        monkeypatch.setattr(blocks, "SPLIT_MIN", rng.choice([20, 100, 1 << 16]))  # bad lines found piece by piece
        lines = [rng.choice(good) for _ in range(rng.randint(0, 60))]
        for _ in range(rng.choice([0, 1, 1, 2, 5])):
            lines.insert(rng.randint(0, len(lines)), rng.choice(bad))
        pack = rng.choice([None, gzip.compress])
        f = _write(tmp_path / f"r{trial}.{fmt}{'.gz' if pack else ''}", lines, pack)
        if pack and lines and rng.random() < 0.3:
            data = f.read_bytes()
            f.write_bytes(data[: rng.randint(10, max(11, len(data) - 1))])
        same(f, fmt)


def test_counts_equal_the_row_path(layouts, small_blocks):
    from swagcli.prep.vocab import count_canonical, count_tags

    out, _ = layouts
    for p in expand_dumps([str(out / "dumps"), str(out / "yfcc"), str(out / "img2dataset")]):
        spec = ReadSpec(detect_format(p))
        for countries in (None, ["US"], ["GB", "US"]):
            ref, st = Counter(), ReadStats()
            for post in iter_posts(p, spec, st):
                if countries is None or post.country in countries:
                    ref.update(post.tags)
            counts, got = count_tags(str(p), spec, countries)
            assert counts == ref and got.as_dict() == st.as_dict()
        tag_to_id = {t: i // 3 for i, t in enumerate(sorted(ref))}  # three raw tags a hashtag
        want, images = Counter(), 0
        for post in iter_posts(p, spec):
            ids = {tag_to_id[t] for t in post.tags if t in tag_to_id}
            images += bool(ids)
            want.update(ids)
        assert count_canonical(str(p), tag_to_id, spec) == (want, images)


# -- plans -------------------------------------------------------------------------------------------
def _plan_digests(out: Path) -> dict:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.npz"))}


def _row_only(path, spec, stats, country=False, distinct=True):
    return blocks._row_blocks(iter_posts(Path(path), spec, stats), country)


@pytest.mark.parametrize("strategy", ["head_tail", "uniform"])
def test_plan_is_the_same_by_rows_by_blocks_with_or_without_spill(layouts, tmp_path, monkeypatch, strategy):
    from swagcli import recipes
    from swagcli.prep import sample, vocab

    out, _ = layouts
    dumps = [str(out / "dumps")]
    vocab.build(recipes.load("vocab", flags={"dumps": dumps, "out": str(tmp_path / "v"), "head_min_images": 20}))

    def plan(name, **flags):
        r = recipes.load("sample", flags={"vocab": str(tmp_path / "v"), "dumps": dumps, "out": str(tmp_path / name),
                                          "samples": 2000, "strategy": strategy, "holdout": 0.1, "label_noise": 0.1,
                                          "chunk": 50, **flags})
        summary = sample.build(r)
        assert not list((tmp_path / name).glob(".spill*")), "the spill is removed"
        return _plan_digests(tmp_path / name), {k: v for k, v in summary.items() if k != "seconds"}

    ref = plan("spill")
    assert len(ref[0]) == 7  # 3 parts, 3 held-out parts, the histogram
    assert plan("no-spill", spill=False) == ref
    assert plan("two-workers", workers=2) == ref
    with monkeypatch.context() as m:
        m.setattr(blocks, "iter_blocks", _row_only)
        assert plan("rows", spill=False) == ref
    with monkeypatch.context() as m:  # a spill that cannot be written (a full disk) ...
        real = sample._spill_chunk
        calls = []

        def full(f, *a):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(28, "No space left on device")
            real(f, *a)

        m.setattr(sample, "_spill_chunk", full)
        assert plan("disk-full") == ref
    with monkeypatch.context() as m:  # ... or that does not read back whole: the dumps are read again
        real_plan = sample.plan_shard

        def cut(*a):
            spill = a[-1]
            if spill:
                data = Path(spill).read_bytes()
                Path(spill).write_bytes(data[: len(data) // 2])
            return real_plan(*a)

        m.setattr(sample, "plan_shard", cut)
        assert plan("cut-spill") == ref


def test_a_killed_runs_spill_is_removed_by_the_next(layouts, tmp_path):
    from swagcli import recipes
    from swagcli.prep import sample, vocab

    out, _ = layouts
    dumps = [str(out / "dumps")]
    vocab.build(recipes.load("vocab", flags={"dumps": dumps, "out": str(tmp_path / "v")}))
    stale = tmp_path / "p" / ".spill.partial-999999999-abcd"  # no such process
    stale.mkdir(parents=True)
    (stale / "part-00000.spill").write_bytes(b"\x93NUMPY")
    sample.build(recipes.load("sample", flags={"vocab": str(tmp_path / "v"), "dumps": dumps,
                                               "out": str(tmp_path / "p"), "samples": 100}))
    assert not stale.exists() and (tmp_path / "p" / "plan.json").is_file()


def test_an_error_after_the_weigh_pass_leaves_no_folder(layouts, tmp_path):
    from swagcli import recipes
    from swagcli.errors import SwagError
    from swagcli.prep import sample

    out, _ = layouts
    doc = {"format": "swag-vocab/1", "hashtags": [{"id": 0, "name": "zzz", "key": "zzz", "synsets": [],
                                                   "tags": ["zzznotatag"], "count": 1, "head": True}]}
    (tmp_path / "vocab.json").write_text(json.dumps(doc))
    r = recipes.load("sample", flags={"vocab": str(tmp_path / "vocab.json"), "dumps": [str(out / "dumps")],
                                      "out": str(tmp_path / "p"), "samples": 10})
    with pytest.raises(SwagError, match="no image carries a hashtag"):
        sample.build(r)
    assert not (tmp_path / "p").exists()


# -- the reader's machinery -----------------------------------------------------------------------
def test_closing_a_compressed_read_early_stops_its_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 256)
    f = _write(tmp_path / "d.jsonl.gz", GOOD_JSON * 2000, gzip.compress)
    it = iter_blocks(f, ReadSpec("jsonl"), ReadStats())
    next(it)
    it.close()
    alive = [t for t in threading.enumerate() if t.name == "swag-decompress"]
    for t in alive:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in alive)


def test_the_cli_starts_without_the_columnar_engine():
    code = ("import sys, swagcli.cli as c\nsys.argv = ['swag', 'vocab', '--help']\ntry:\n    c.main()\n"
            "except SystemExit:\n    pass\nprint('ENGINE', [m for m in ('pyarrow', 'torch', 'numba') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "ENGINE []" in res.stdout, res.stdout[-500:]


def test_vocabulary_is_the_same_from_the_spill_a_full_disk_or_a_cut_spill(layouts, tmp_path, monkeypatch):
    """Pass 3 reads pass 1's spill instead of the dumps; where it cannot be written or read back
    whole, the dumps: the same vocabulary each way, and no spill left behind."""
    from swagcli import recipes
    from swagcli.prep import vocab

    out, _ = layouts

    def build(name):
        r = recipes.load("vocab", flags={"dumps": [str(out / "dumps"), str(out / "yfcc")], "out": str(tmp_path / name),
                                         "head_min_images": 20})
        doc = vocab.build(r)
        assert not list((tmp_path / name).glob(".spill*"))
        doc["stats"].pop("seconds")
        return doc

    ref = build("spill")
    with monkeypatch.context() as m:
        m.setattr(vocab._Spill, "write", lambda self, block: self._drop() if self.w is not None else None)
        assert build("disk-full") == ref
    with monkeypatch.context() as m:
        real = vocab.count_canonical

        def cut(path, tag_to_id, fmt, caption_hashtags, spill):
            import pyarrow.ipc as ipc

            with ipc.open_stream(Path(spill).read_bytes()) as r:  # cut at a record batch: no error reading it
                batches = list(r)
            with open(spill, "wb") as f, ipc.new_stream(f, batches[0].schema) as w:
                for b in batches[:-2]:
                    w.write_batch(b)
            return real(path, tag_to_id, fmt, caption_hashtags, spill)

        m.setattr(vocab, "count_canonical", cut)
        assert build("cut-spill") == ref



def test_field_names_with_quotes_brackets_and_case(tmp_path, monkeypatch):
    """Recipe field names are data: quotes, brackets, '=' and names that differ in case only."""
    monkeypatch.setattr(blocks, "PATHS", {"fast": 0, "rows": 0})
    for names in ({"id": "it's", "tags": 'ta[=\\"gs', "caption": "c'); DROP TABLE x; --"},
                  {"id": "ID", "tags": "id", "caption": "Id"}):
        lines = []
        for i in range(40):
            obj = {names["id"]: f"p{i}", names["tags"]: [f"#t{i % 7}", "#x"], "country": "US"}
            if i % 5 == 0:
                obj = {names["id"]: f"q{i}", names["caption"]: f"#cap{i}"}
            lines.append(json.dumps(obj))
        f = _write(tmp_path / "d.jsonl", lines)
        posts = same(f, "jsonl", id=names["id"], tags=names["tags"], caption=names["caption"])[0]
        assert len(posts) == 40
    assert blocks.PATHS["rows"] == 0  # (escaped keys: the scanner leaves those lines to the line checks)


def test_lax_spots_are_every_nan_and_inf_as_bytes_find_finds_them():
    """The screen for what pyarrow's JSON reader takes and Python's json refuses finds every start of
    ``NaN`` and ``Inf`` (overlapping, at a block's ends, in strings, in keys) that ``bytes.find`` finds."""
    rng = random.Random(7)
    alphabet = [b"N", b"a", b"I", b"n", b"f", b"NaN", b"Inf", b"-", b'"', b"{", b"}", b"x", b"\xc3\xa9"]
    cases = [b"", b"N", b"Na", b"NaN", b"Inf", b"NaNaN", b"InfInf", b"xInf", b"NaNx"]
    cases += [b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    for raw in cases:
        want = sorted(i for w in (b"NaN", b"Inf") for i in range(len(raw)) if raw.startswith(w, i))
        got = blocks._lax_spots(np.frombuffer(raw, dtype=np.uint8))
        assert sorted(got.tolist()) == want, raw


def test_the_utf8_check_agrees_with_pythons_decoder():
    """A block is UTF-8 for the fast path exactly when Python's decoder (the row path's) takes it:
    surrogates, overlong forms, code points past U+10FFFF, cut sequences, lone continuation bytes."""
    rng = random.Random(3)
    pieces = [b"a", b"{", b"\n", "é".encode(), "€".encode(), "\U0001F600".encode(), b"\xed\xa0\x80", b"\xed\x9f\xbf",
              b"\xc0\xaf", b"\xc1\xbf", b"\xc2\x80", b"\xe0\x80\x80", b"\xe0\xa0\x80", b"\xf0\x80\x80\x80",
              b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\x80", b"\xe2\x82", b"\xef\xbf\xbe"]
    cases = [b"", b"\x00", bytes(range(256))] + [bytes([rng.randrange(256) for _ in range(rng.randint(1, 6))])
                                                 for _ in range(3000)]
    cases += [b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    for raw in cases:
        try:
            raw.decode("utf-8")
            want = True
        except UnicodeDecodeError:
            want = False
        assert blocks._is_utf8(raw) == want, raw
