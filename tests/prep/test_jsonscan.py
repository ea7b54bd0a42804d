"""The compiled JSONL scanner (swagcli.prep.jsonscan) against Python's json, the row path's reader.

Exact by refusing: wherever the scanner takes a block, every line of it must be what ``json.loads``
reads (an object, or a blank line), with the same id, tags, caption and country. Checked on plain
lines written every way a JSON writer spaces them, on hostile lines, and on thousands of random
edits of both; and that plain lines are taken (a scanner that refused all would pass the rest).
"""

from __future__ import annotations

import json
import random

import pytest

from swagcli.prep import blocks, jsonscan
from swagcli.prep.dumps import ReadSpec, ReadStats, iter_posts

NAMES = ["id", "hashtags", "caption", "country"]
KEYS = jsonscan.names_table(NAMES)


def python_view(line: str):
    """What Python's json makes of a line: None (not an object: a bad line), "blank", or
    (id, tags, caption, country) as the scanner gives them."""
    text = line.rstrip("\r")
    if not text.strip():
        return "blank"
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    pid = obj.get("id")
    pid = str(pid) if isinstance(pid, int) and not isinstance(pid, bool) else pid
    return pid, obj.get("hashtags") or [], obj.get("caption"), obj.get("country") or None


def scanned_view(got, i: int):
    ids = got.ids().to_pylist()
    flat, post = got.tags()
    flat = flat.to_pylist()
    tags = [t for t, p in zip(flat, post.tolist()) if p == i]
    return ids[i], tags, got.caption(i), got.country()[i]


def check_block(lines: list[str]) -> bool:
    """Scan the lines as one block: the plain lines it reads, up to where it stops, agree with
    Python's json, and it stops at a line start. Returns whether it read the whole block."""
    raw = "".join(x + "\n" for x in lines).encode("utf-8", "surrogatepass")
    if not raw or not (raw.isascii() or blocks._is_utf8(raw)):
        return False
    got = jsonscan.scan(raw, *KEYS)
    taken = lines[:got.lines]
    assert got.stop == len("".join(x + "\n" for x in taken).encode("utf-8", "surrogatepass")), lines
    views = [python_view(x) for x in taken]
    assert None not in views, lines  # a bad line among those the scanner read
    rows = [v for v in views if v != "blank"]
    assert (got.blank, got.rows) == (len(taken) - len(rows), len(rows)), lines
    for i, want in enumerate(rows):
        assert scanned_view(got, i) == want, (lines, i)
    return got.stop == len(raw)


WORDS = ["dog", "#Dog", "café", "#東京", "new york", "", " sp ", "a+b", "%C3%A9", "x" * 40, "İ", "😀", "'", "[", "=",
         "{", "}", ":", ",", "null", "#"]
OTHER = [0, -12, 3.25, -0.0, 1e300, 2.5e-7, True, False, None, [], {}, [1, [2, [3]]], {"k": {"v": [None, "s"]}},
         "plain", "esc\"aped\\", "\u0007bell", "\ud800", "tab\there"]


def plain_object(rng: random.Random) -> dict:
    obj = {}
    keys = NAMES + ["other", "likes", "idx", "Hashtags", "ID", "ünï", "hash tags"]
    for k in rng.sample(keys, rng.randint(0, len(keys))):
        if k == "id":
            v = rng.choice([f"p{rng.randrange(10**6)}", rng.randrange(-10**20, 10**20), None, "", " pad "])
        elif k == "hashtags":
            v = rng.choice([None, [], [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]])
        elif k == "caption":
            v = rng.choice([None, "a day out #dog #Cat", 'he said "hi"\n#two', "#tagé and \\ back", "no tags"])
        elif k == "country":
            v = rng.choice([None, "US", "", "GB"])
        else:
            v = rng.choice(OTHER + WORDS)
        obj[k] = v
    return obj


def dumps(obj, rng: random.Random) -> str:
    sep = rng.choice([(",", ":"), (", ", ": "), (" , ", " : "), (",\t", ":\t")])
    text = json.dumps(obj, separators=sep, ensure_ascii=rng.random() < 0.3)
    return rng.choice(["", " ", "\t"]) + text + rng.choice(["", " ", "\r", " \r"])


def test_plain_lines_are_taken_and_read_as_python_reads_them():
    rng = random.Random(1)
    taken = 0
    for _ in range(1500):
        lines = [dumps(plain_object(rng), rng) if rng.random() > 0.05 else rng.choice(["", "  ", "\r"])
                 for _ in range(rng.randint(1, 8))]
        taken += check_block(lines)
    assert taken > 400  # blocks whose wanted fields hold no escape (json.dumps writes them for '"', '\\', ...)
    # each kind of line the scanner must take
    for line in ['{"id":"a","hashtags":["#x","y"],"country":"US","caption":"c"}', "{}", " { } ", '{"id":7}',
                 '{"id": -3, "hashtags": [], "o": {"a": [1, 2.5e-3, true, false, null, "s\\u00e9\\"", {}]}}',
                 '{"hashtags":null,"id":null,"country":null,"caption":null}', '{"caption":"a \\"b\\" \\u00e9\\n#c"}',
                 '{"id":"ünï 東京","hashtags":["😀"]}\r', '\t{"id" :"x" ,"hashtags" :[ "a" , "b" ] }\t',
                 '{"other":"\\ud800","id":"s"}', '{"id":"a\\u0020","hashtags":["caf\\u00e9","\\ud83d\\ude00x"]}',
                 '{"id":"q\\"\\\\","country":"U\\u0053","hashtags":["a\\tb","\\/\\b\\f\\n\\r","\\u0000","\\uFFFF\\u0800\\u07ff"]}']:
        assert check_block([line]), line


def mutate(line: str, rng: random.Random) -> str:
    alphabet = list('{}[]":,\\ \tnull0-1.5eE+truefalseNaNInfinity"\r\x00\x1fé😀') + ["\\u00", "\\ud83d", '"id"',
                                                                                     '"hashtags"']
    chars = list(line)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        at = rng.randint(0, len(chars))
        if op < 0.4 or not chars:
            chars.insert(at, rng.choice(alphabet))
        elif op < 0.7:
            del chars[min(at, len(chars) - 1)]
        else:
            chars[min(at, len(chars) - 1)] = rng.choice(alphabet)
    return "".join(chars)


def test_random_edits_of_lines_are_taken_only_where_python_agrees():
    """Property: random edits (a quote, a brace, a backslash, a control character, a number's
    sign...) of plain and hostile lines: wherever the scanner takes the block, Python's json reads
    every line to the same fields; it turned some down and took some (the test has teeth)."""
    from tests.prep.test_blocks import BAD_JSON, GOOD_JSON, INT_IDS, STRING_TAGS

    rng = random.Random(2)
    seeds = GOOD_JSON + INT_IDS + STRING_TAGS + [x for x in BAD_JSON if "\n" not in x]
    seeds += [dumps(plain_object(rng), rng) for _ in range(200)]
    taken = refused = 0
    for _ in range(6000):
        line = mutate(rng.choice(seeds), rng)
        if "\n" in line:
            continue
        ok = check_block([line])
        taken += ok
        refused += not ok
    assert taken > 500 and refused > 2000
    for line in BAD_JSON:  # every hostile line, alone and after plain ones
        for block in ([line], ['{"id":"a","hashtags":["x"]}', line]):
            check_block(block)


@pytest.mark.parametrize("line", [
    '{"id":"a","id":"b","hashtags":["x"]}',  # Python keeps the last of two: the scanner does not choose
    '{"id":"a","hashtags":["x"],"hashtags":["y"]}', '{"\\u0069d":"a","hashtags":["x"]}',  # an escaped key
    '{"id":"a","hashtags":["\\ud800"]}', '{"id":"\\udc00"}', '{"id":"a","hashtags":["\\ud83dx"]}',  # lone surrogates
    '{"id":"a","country":"\\ud83d\\ud83d"}', '{"id":"a","hashtags":["\\ude00\\ud83d"]}',
    '{"id":-0,"hashtags":["x"]}', '{"id":1.0}', '{"id":1e3}', '{"id":true}', '{"id":["a"]}', '{"id":"a","hashtags":"x y"}',
    '{"id":"a","hashtags":["x",null]}', '{"id":"a","hashtags":[["x"]]}', '{"id":"a","caption":5}',
    '{"id":"a","country":3}', '{"id":"a","o":NaN}', '{"id":"a","o":-Infinity}', '{"id":"a","o":' + "[" * 40 + "]" * 40 + "}",
    '{"id":"a"} x', '{"id":"a",}', '{"id":"a"', "[1]", '"s"', "\ufeff{}", '{"id":"a\tb"}', '{"id":"a","o":01}',
    '{"id":"a","o":1.}', '{"id":"a","o":.5}', '{"id":"a","o":"\\x"}', '{"id":"a","o":tru}', '{"id" "a"}', '{,}',
])
def test_lines_it_turns_down(line):
    """Each line the scanner leaves to the readers before it: bad JSON, or JSON whose reading it
    does not do itself (Python's choice between duplicate keys, escapes in a value it reads...)."""
    raw = (line + "\n").encode()
    got = jsonscan.scan(raw, *KEYS)
    assert (got.stop, got.lines, got.rows) == (0, 0, 0)
    good = b'{"id":"ok","hashtags":["x","y"]}\n'
    got = jsonscan.scan(good + raw + good, *KEYS)  # after a good line: that line is read, and no more
    assert (got.stop, got.lines, got.rows, len(got.tag_spans)) == (len(good), 1, 1, 2)


def test_a_block_of_plain_lines_reads_as_the_row_path_with_the_scanner_and_without(tmp_path, monkeypatch):
    """The same posts and counts per rule from the scanner, from pyarrow's reader (SWAG_NUMBA=0)
    and from the row path, on plain lines with blank ones, no-id and no-tag posts and captions
    whose #tags stand in for missing tags; the scanner took the blocks."""
    from tests.prep.test_blocks import by_blocks, by_rows

    rng = random.Random(4)
    lines = []
    for i in range(3000):
        obj = {"id": f"p{i}" if i % 50 else "", "hashtags": [rng.choice(WORDS[:12]) for _ in range(rng.randint(0, 4))],
               "country": rng.choice(["US", "GB", None])}
        if i % 7 == 0:
            obj["caption"] = rng.choice(["a day out #Dog", 'said "hi" #cat\n#two', "none here"])
        lines.append(json.dumps(obj, ensure_ascii=False) if i % 97 else "")
    f = tmp_path / "plain.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 1 << 14)
    for caption_hashtags in (True, False):
        spec = ReadSpec("jsonl", caption_hashtags=caption_hashtags)
        want = by_rows(f, spec)
        before = jsonscan.TAKEN["blocks"]
        assert by_blocks(f, spec) == want
        assert jsonscan.TAKEN["blocks"] - before >= 10
        monkeypatch.setenv("SWAG_NUMBA", "0")
        before = jsonscan.TAKEN["blocks"]
        assert by_blocks(f, spec) == want
        assert jsonscan.TAKEN["blocks"] == before
        monkeypatch.delenv("SWAG_NUMBA")
    st = ReadStats()
    list(iter_posts(f, ReadSpec("jsonl"), st))
    assert st.blank > 20 and st.no_id > 20 and st.from_caption > 0 and st.no_tags > 0


@pytest.mark.parametrize("numba", ["1", "0"])
def test_raw_tags_normalize_as_normalize_tag_does(monkeypatch, numba):
    """Property: the compiled tag normalizer (swagcli.prep.tagnorm), and arrow's kernels without
    numba, give each raw tag what canon.normalize_tag gives (None where that is empty): '#', '+',
    white space of every ASCII kind, capitals, '%XX', \\x1c-\\x1f, non-ASCII, nulls, slices."""
    import pyarrow as pa

    from swagcli.prep.canon import normalize_tag

    monkeypatch.setenv("SWAG_NUMBA", numba)
    monkeypatch.setattr(blocks, "TAGNORM_MIN", 0)
    rng = random.Random(5)
    alphabet = ["#", "#", "+", " ", "\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "A", "Z", "a", "z", "0", "-", "_",
                "%", "%41", "%C3%A9", "é", "İ", "ß", "\u3000", "\xa0", "😀", "@", "[", "="]
    raws = ["", "#", "##", "+#x", "# #x", "  ##Love", "#BrownBear ", "Ñandú", "new york", "brown+bear", "caf%C3%A9"]
    raws += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(4000)]
    for arr in (pa.array(raws + [None]), pa.array([None] + raws, type=pa.large_string()), pa.array(raws).slice(3, 2000)):
        codes, names = blocks.normalize_unique(arr)
        names = names.to_pylist()
        got = [names[c] if c >= 0 else None for c in codes.tolist()]
        want = [(normalize_tag(r) or None) if r is not None else None for r in arr.to_pylist()]
        assert got == want


def test_a_damaged_numba_cache_is_compiled_anew():
    """A cut cache file (a full disk, a copy cut short) made numba's loader raise at the first
    block: now the cache is emptied and the kernel compiled again, in a fresh process."""
    import subprocess
    import sys
    from pathlib import Path

    from swagcli.prep import tagnorm

    tagnorm.warm()
    files = list(Path(tagnorm.normalize_ascii._cache._cache_path).glob("tagnorm.normalize_ascii-*.nbc"))
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:50])
    code = ("import pyarrow as pa\nfrom swagcli.prep import blocks\nm = blocks.compiled('tagnorm')\n"
            "print(m is not None, blocks.normalize_unique(pa.array(['#A b', 'x']))[1].to_pylist())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.split() == ["True", "['ab',", "'x']"], res.stderr[-800:]


def test_a_first_compile_says_so_once():
    """Without numba's cache (a first run, no `make setup`) the wait is announced, in one line on
    stderr; the next process loads the cache and says nothing."""
    import subprocess
    import sys
    from pathlib import Path

    from swagcli.prep import tagnorm

    for f in Path(tagnorm.normalize_ascii._cache._cache_path).glob("tagnorm.normalize_ascii-*.nb*"):
        f.unlink()
    code = "from swagcli.prep import blocks\nassert blocks.compiled('tagnorm') is not None"
    first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True) for _ in range(2))
    assert first.returncode == 0 and first.stderr.count("swag: compiling the tag normalizer") == 1, first.stderr
    assert second.returncode == 0 and "compiling" not in second.stderr, second.stderr
