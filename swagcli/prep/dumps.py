"""Reading hashtag sources, one post (image) at a time, whatever layout they come in.

Formats (:data:`swagcli.prep.FORMATS`; ``auto`` detects each file's from its name, first line or schema):

* ``jsonl``: ``{"id": ..., "hashtags": [...], "country": "US"?, "caption": "..."?}`` per line; a post
  without hashtags takes the ``#tags`` of its caption;
* ``tsv``: ``id<TAB>#tag #tag ...`` with an optional third column holding the country;
* ``yfcc``: YFCC100M's metadata file as distributed (:func:`_parse_yfcc`): 23 tab-separated fields,
  or 25 with a leading row number and the photo hash (24: the hash only); user tags comma-separated
  and URL-encoded; machine tags ignored; videos skipped by the marker field;
* ``img2dataset``: img2dataset output (``NNNNN.tar`` shards with ``KEY.jpg/.txt/.json``, and
  ``NNNNN.parquet`` beside them): ids are the shards' keys, hashtags the ``#tags`` of the caption or
  a named field, failed downloads skipped by their status (:mod:`swagcli.prep.columnar`);
* ``parquet``: an id column and a tags column (list or string) or a caption column.

Line formats are read plain, .gz, .zst or .bz2. Column names can be set per recipe (``fields``).
Raw tags are normalized as hashtags are written (:func:`~swagcli.prep.canon.normalize_tag`:
``brown+bear`` -> ``brownbear``). Bad lines or records (invalid JSON, non-UTF-8 bytes, a wrong
number of fields, a video, a failed download, no id, no tags) are skipped and counted per rule in
:class:`ReadStats`, never fatal. A file that breaks part-way (a truncated .gz, a corrupt .zst or
.bz2 frame, a truncated parquet or tar shard) is read up to the damage: the whole lines (records)
before it are kept, the rest of the file is not read, and the file is counted (``truncated``)
and named with where it broke (``damaged``). Where it breaks depends on the bytes only, so every
pass over a file sees the same posts. A missing file, or one that cannot be opened, is a
:class:`SwagError`.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_plus

from swagcli.errors import SwagError
from swagcli.paths import expand, is_pattern
from swagcli.prep.canon import ALLOWED_SENSES, normalize_tag
from swagcli.prep.captions import CaptionConfig, CaptionStats, labeller

DUMP_SUFFIXES = (".jsonl", ".json", ".ndjson", ".tsv", ".txt", ".parquet")
COMPRESSIONS = (".gz", ".zst", ".zstd", ".bz2")
# a caption's hashtags: '#' not right after a letter, digit, '&' or '/' (URL anchors, HTML entities
# such as &#39; in YFCC100M descriptions are not hashtags); '#dog#beagle', as img2dataset captions
# of Flickr and Instagram posts have them, is two hashtags
HASHTAG_RE = re.compile(r"(?<![\w&/])#(\w+(?:#\w+)*)")
SHARD_RE = re.compile(r"^(\d+)\.(tar|parquet)$")  # img2dataset: 00000.tar, 00000.parquet
YFCC_FIELDS = (23, 24, 25)  # original; with the hash; with the row number and the hash
_HEX32 = re.compile(r"^[0-9a-f]{32}$")

# the skip counters of ReadStats that apply to each format, and how reports name them; every rule
# counts lines (records) but ``truncated``, which counts files read only up to their damage
RULES = {
    "jsonl": ("bad_json", "bad_utf8", "no_id", "no_tags", "truncated"),
    "tsv": ("bad_utf8", "no_id", "no_tags", "truncated"),
    "yfcc": ("bad_columns", "video", "bad_utf8", "no_id", "no_tags", "truncated"),
    "img2dataset": ("failed_download", "bad_json", "bad_utf8", "no_id", "no_tags", "truncated"),
    "parquet": ("no_id", "no_tags", "truncated"),
}
RULE_LABELS = {
    "bad_json": "invalid JSON", "bad_utf8": "not UTF-8", "bad_columns": "wrong number of fields",
    "video": "videos (marker 1)", "failed_download": "failed downloads (status)",
    "no_id": "no id", "no_tags": "no hashtags", "truncated": "truncated files",
}
FILE_RULES = ("truncated",)


@dataclass
class ReadStats:
    """What reading a source saw (lines, or records of a shard); added up over shards."""

    lines: int = 0
    posts: int = 0
    blank: int = 0
    bad_json: int = 0
    bad_utf8: int = 0
    bad_columns: int = 0
    video: int = 0
    failed_download: int = 0
    no_id: int = 0
    no_tags: int = 0
    from_caption: int = 0
    truncated: int = 0  # files that broke part-way
    # labels: caption | both: what labelling the captions saw (swagcli.prep.captions)
    caption: CaptionStats = field(default_factory=CaptionStats)
    # those files: {"path", "lines_read": whole lines (records) read before the damage, "error"}
    damaged: list = field(default_factory=list)

    def add(self, other: "ReadStats") -> "ReadStats":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def broke(self, path, lines_read: int, error: Exception) -> None:
        """Count a file that broke after ``lines_read`` whole lines (records) of it."""
        self.truncated += 1
        self.damaged.append({"path": str(path), "lines_read": lines_read, "error": one_line(error)})

    @property
    def skipped(self) -> int:
        """Lines (records) skipped; damaged files are counted apart (``truncated``)."""
        return sum(getattr(self, r) for r in RULE_LABELS if r not in FILE_RULES)

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)} | {"skipped": self.skipped}
        cap = out.pop("caption")
        if cap.captions:
            out["caption"] = cap.report()
        return out


def one_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_report(stats: list[ReadStats], fmts: list[str]) -> dict:
    """Totals over every shard, plus ``by_format``: the same counts per format (the damaged
    files are listed once, in the totals)."""
    total, by = ReadStats(), {}
    for st, f in zip(stats, fmts):
        total.add(st)
        by.setdefault(f, ReadStats()).add(st)
    per = {f: {k: v for k, v in s.as_dict().items() if k != "damaged"} for f, s in by.items()}
    return total.as_dict() | {"by_format": per}


def no_posts_error(paths: list[str], read: dict, labels: str = "hashtags") -> SwagError:
    """The error for sources without one readable post: what the lines were skipped for, and
    where the damaged files broke; with labels from captions, whether there were captions at all."""
    if labels == "caption" and read.get("lines") and not read.get("damaged"):
        cap = read.get("caption") or {}
        if not cap.get("captions"):
            return SwagError(f"{paths[0]}{' ...' if len(paths) > 1 else ''}: labels: caption, and no post has a "
                             f"caption (read as {', '.join(read.get('by_format', {}))}; name the field with "
                             "fields.caption, or use labels: hashtags)")
        return SwagError(f"{paths[0]}{' ...' if len(paths) > 1 else ''}: labels: caption, and none of "
                         f"{cap['captions']:,} captions names a WordNet noun of the allowed senses "
                         f"(dropped by the stop list: {cap.get('dropped_stop', 0):,})")
    why = ", ".join(f"{read[r]:,} {RULE_LABELS[r]}" for r in RULE_LABELS if read.get(r))
    fmts = ", ".join(read.get("by_format", {}))
    damaged = read.get("damaged") or []
    msg = (f"{paths[0]}{' ...' if len(paths) > 1 else ''}: no readable posts "
           f"({read['lines']:,} lines{': ' + why if why else ''})")
    if damaged:
        d = damaged[0]
        msg += (f"; {d['path']} broke after {d['lines_read']:,} lines ({d['error']})"
                + (f", and {len(damaged) - 1} more damaged files" if len(damaged) > 1 else ""))
    if len(damaged) < len(paths):
        msg += f"; read as {fmts}: is that the format (--format)?"
    return SwagError(msg)


@dataclass
class Post:
    id: str
    tags: list[str]  # normalized, distinct, in first-seen order
    country: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReadSpec:
    """How to read one source: its format, the fields of formats with named fields, and where a
    post's raw tags come from (``labels``; ``captions``: the caption labeller's configuration)."""

    fmt: str
    caption_hashtags: bool = True
    id: str | None = None
    tags: str | None = None
    caption: str | None = None
    country: str | None = None
    tags_sep: str | None = None
    labels: str = "hashtags"
    captions: CaptionConfig | None = None


@dataclass(frozen=True)
class Labels:
    """Where a run's raw tags come from: ``hashtags``, ``caption`` or ``both``, and for the last
    two how captions are labelled."""

    labels: str = "hashtags"
    captions: CaptionConfig | None = None

    @classmethod
    def of_vocab_recipe(cls, recipe) -> "Labels":
        if recipe.labels == "hashtags":
            return cls()
        return cls(recipe.labels, CaptionConfig.of(recipe.caption, recipe.allowed_senses, recipe.min_len))

    @classmethod
    def of_sample_recipe(cls, recipe, vocab_doc: dict) -> "Labels":
        """A sample recipe's own settings, else the vocabulary's (labels must be read the same
        way when planning as when the vocabulary was counted)."""
        src = vocab_doc.get("sources") or {}
        params = vocab_doc.get("params") or {}
        labels = recipe.labels or src.get("labels") or "hashtags"
        if labels == "hashtags":
            return cls()
        senses = params.get("allowed_senses") or ALLOWED_SENSES
        min_len = params.get("min_len") or 3
        if recipe.caption is not None:
            return cls(labels, CaptionConfig.of(recipe.caption, senses, min_len))
        return cls(labels, CaptionConfig.from_dict(src.get("caption") or {}, senses, min_len))


def sources_info(specs: list[ReadSpec], recipe) -> dict:
    """What vocabularies and plans record of how their sources were read."""
    out = {"formats": sorted({s.fmt for s in specs}), "fields": recipe.fields.model_dump(exclude_none=True),
           "labels": specs[0].labels if specs else "hashtags"}
    if specs and specs[0].captions is not None:
        out["caption"] = specs[0].captions.as_dict()
    return out


def read_spec(path: Path, recipe, labels: Labels | None = None) -> ReadSpec:
    """The :class:`ReadSpec` of ``path`` under a vocab/sample recipe (format detected if auto)."""
    f = recipe.fields
    labels = labels or Labels()
    return ReadSpec(detect_format(path, recipe.format), recipe.caption_hashtags,
                    f.id, f.tags, f.caption, f.country, f.tags_sep, labels.labels, labels.captions)


# -- which files ---------------------------------------------------------------------------------
def expand_dumps(specs: list[str] | str) -> list[Path]:
    """Files, globs (``shard-*.jsonl.gz``), brace ranges (``shard-{000..099}.tsv``) and
    directories (every dump-like file inside; for an img2dataset folder, each shard's parquet,
    or its tar where there is no parquet) -> sorted, de-duplicated paths. A spec naming an
    existing path is taken as it is (:func:`swagcli.paths.expand`)."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [str(specs)]
    out: list[Path] = []
    for spec in specs:
        for item in expand(spec):
            p = Path(item)
            if p.is_dir():
                out.extend(_dir_dumps(p))
            elif p.is_file():
                if item == os.fspath(spec) or not _is_shard_stats(p):  # a stats file only when named
                    out.append(p)
            elif is_pattern(item) and not os.path.lexists(item):
                raise SwagError(f"{item}: no dump matches this pattern")
            else:
                raise SwagError(f"{p}: no such dump file")
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    if not uniq:
        raise SwagError("no dumps given")
    return uniq


def _dir_dumps(p: Path) -> list[Path]:
    files = sorted(q for q in p.iterdir() if q.is_file())
    shards: dict[str, Path] = {}
    for q in files:
        m = SHARD_RE.match(q.name)
        if m and (m.group(1) not in shards or m.group(2) == "parquet"):
            shards[m.group(1)] = q  # the parquet holds the failed downloads too: it wins
    if shards:
        return [shards[k] for k in sorted(shards)]
    hits = [q for q in files if _is_dump_name(q.name)]
    if not hits:
        raise SwagError(f"{p}: directory holds no dump files "
                        f"({', '.join(DUMP_SUFFIXES)}, yfcc100m_dataset*, img2dataset shards)")
    return hits


def _is_shard_stats(p: Path) -> bool:
    """img2dataset's ``NNNNN_stats.json`` beside its shard (not a dump)."""
    return p.name.endswith("_stats.json") and any(
        p.with_name(p.name[: -len("_stats.json")] + s).exists() for s in (".tar", ".parquet"))


def _strip_compression(name: str) -> str:
    for c in COMPRESSIONS:
        if name.endswith(c):
            return name[: -len(c)]
    return name


def _is_dump_name(name: str) -> bool:
    base = _strip_compression(name)
    return (base.endswith(DUMP_SUFFIXES) or base.startswith("yfcc100m_dataset")) and not name.endswith("_stats.json")


class Damaged(Exception):
    """A file broke part-way: what could be read of it came before (see :func:`read_blocks`)."""


def read_blocks(path: Path, size: int = 1 << 22) -> Iterator[bytes]:
    """The decoded bytes of a possibly compressed file, in blocks of about ``size``. Every byte
    that decodes comes out before :class:`Damaged` is raised: a truncated .gz or .bz2, a .zst
    frame cut short (which zstandard's stream reader would end silently), a frame that does not
    decode, a read error. Frames (streams, members) may be concatenated, as pzstd, pbzip2 and
    ``cat`` write them; a damaged later one is damage, never trailing garbage (as Python's bz2
    takes it). .bz2 is decoded block by block, in parallel where there are cores
    (:mod:`swagcli.prep.bz2par`: every whole block before a damage). A file that cannot be opened
    is a :class:`SwagError`, at once."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SwagError(f"{path}: cannot open ({e.strerror or e})") from None
    name = path.name
    if name.endswith(".gz"):
        return _read_gzip(f, size)
    if name.endswith((".zst", ".zstd")):
        import zstandard

        return _read_frames(f, lambda: zstandard.ZstdDecompressor().decompressobj(), zstandard.ZstdError)
    if name.endswith(".bz2"):  # block by block in parallel where there are cores (swagcli.prep.bz2par)
        from swagcli.prep.bz2par import read_bz2

        return read_bz2(f, lambda f: _read_frames(f, bz2.BZ2Decompressor, OSError))
    return _read_plain(f, size)


def _read_plain(f, size: int) -> Iterator[bytes]:
    with f:
        try:
            while block := f.read(size):
                yield block
        except OSError as e:
            raise Damaged(e) from None


def _read_gzip(f, size: int) -> Iterator[bytes]:
    # read1: one raw read at a time, so what decodes before the damage is not lost with the call
    with f, gzip.GzipFile(fileobj=f) as g:
        try:
            while block := g.read1(size):
                yield block
        except (OSError, EOFError, zlib.error) as e:
            raise Damaged(e) from None


def _read_frames(f, new, errors, chunk: int = 1 << 18) -> Iterator[bytes]:
    """Concatenated frames through decompressor objects (``decompress``, ``eof``, ``unused_data``)."""
    d = None  # the decompressor of the frame under way
    with f:
        try:
            while data := f.read(chunk):
                while data:
                    if d is None:
                        d = new()
                    block = d.decompress(data)
                    if block:
                        yield block
                    data = b""
                    if d.eof:
                        data, d = d.unused_data, None
        except (OSError, EOFError, errors) as e:
            raise Damaged(e) from None
    if d is not None:
        raise Damaged("the file ends inside a compressed frame")


# -- which format ---------------------------------------------------------------------------------
def detect_format(path: Path, declared: str = "auto") -> str:
    """The format of one file: the declared one, checked against the file type where it must
    be (tar shards are img2dataset's), or else from the name, the schema or the first line."""
    path = Path(path)
    name = _strip_compression(path.name)
    if declared != "auto":
        if name.endswith(".tar") and declared != "img2dataset":
            raise SwagError(f"{path}: a tar shard is read as img2dataset output, not as {declared}")
        if name.endswith(".parquet") and declared not in ("img2dataset", "parquet"):
            raise SwagError(f"{path}: a parquet file is read as parquet or img2dataset, not as {declared}")
        if declared in ("img2dataset", "parquet") and not name.endswith((".tar", ".parquet")):
            raise SwagError(f"{path}: format {declared} reads .tar or .parquet files")
        return declared
    if name.endswith(".tar"):
        return "img2dataset"
    if name.endswith(".parquet"):
        from swagcli.prep.columnar import parquet_kind

        return parquet_kind(path)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.startswith("yfcc100m_dataset"):
        return "yfcc"
    blocks = read_blocks(path, 1 << 16)
    with contextlib.closing(blocks):  # sniff the first non-blank line
        try:
            for raw in _lines(blocks):
                line = raw.strip()
                if line:
                    return sniff_line(line)
        except Damaged:
            pass  # damaged before its first line: counted when the file is read
    return "jsonl" if not name.endswith(".tsv") else "tsv"


def sniff_line(line: bytes) -> str:
    if line.startswith(b"{"):
        return "jsonl"
    cols = line.split(b"\t")
    if len(cols) in YFCC_FIELDS and cols[-1].strip() in (b"0", b"1"):
        return "yfcc"
    return "tsv"


# -- tags -------------------------------------------------------------------------------------------
def split_tags(text: str, sep: str | None = None) -> list[str]:
    """A tag string as sources write them: split by ``sep`` where it is declared
    (``fields.tags_sep``), else comma-separated (``brown+bear,new york``; one tag per item, words
    joined later) or else white-space separated (``#dog #cat``)."""
    if sep is not None:
        return [t for t in (item.strip() for item in text.split(sep)) if t]
    if "," not in text:
        return text.split()
    out = []
    for item in text.split(","):
        item = item.strip()
        if "#" in item[1:]:  # '#a #b' between commas: several hashtags
            out.extend(item.split())
        elif item:
            out.append(item)
    return out


def tag_list(value, sep: str | None = None) -> list[str]:
    """Raw tags of a field: a list of strings, or a string (:func:`split_tags`)."""
    if isinstance(value, str):
        return split_tags(value, sep)
    if isinstance(value, (list, tuple)):
        return [t for t in value if type(t) is str]
    return []


def _dedupe(tags) -> list[str]:
    """Normalized (see :func:`normalize_tag`), distinct, non-empty, in first-seen order."""
    out = dict.fromkeys(normalize_tag(t) for t in tags)
    out.pop("", None)
    return list(out)


def hashtags_in(caption: str) -> list[str]:
    """The ``#tags`` of a caption (``#dog#beagle``: both)."""
    found = HASHTAG_RE.findall(caption)
    if any("#" in t for t in found):
        found = [part for t in found for part in t.split("#")]
    return found


def make_post(pid, tags, caption, country, stats: ReadStats, spec: ReadSpec) -> Post | None:
    """A post from its fields (any format), or None, counted: no id, no tags. The raw tags are,
    by ``spec.labels``: its hashtags (the caption's ``#tags`` where there are none and
    ``caption_hashtags``); its caption's noun phrases (:mod:`swagcli.prep.captions`); or both."""
    if isinstance(pid, str):
        pid = pid.strip()
    elif isinstance(pid, float) and pid.is_integer():
        pid = int(pid)  # integer ids of a column with gaps, as pandas writes them (1.0, NaN)
    if pid is None or pid == "" or isinstance(pid, (dict, list, bool, float)):
        stats.no_id += 1
        return None
    if spec.labels == "caption":
        tags = []
    else:
        tags = tag_list(tags, spec.tags_sep)
        if not tags and spec.caption_hashtags and isinstance(caption, str):
            tags = hashtags_in(caption)
            if tags:
                stats.from_caption += 1
    if spec.labels != "hashtags" and isinstance(caption, str) and caption.strip():
        tags = tags + labeller(spec.captions).label(caption, stats.caption)
    tags = _dedupe(tags)
    if not tags:
        stats.no_tags += 1
        return None
    return Post(str(pid), tags, country if isinstance(country, str) and country else None)


# -- line formats -----------------------------------------------------------------------------------
def _lines(blocks: Iterator[bytes]):
    """The lines of a stream of blocks (:func:`read_blocks`: faster than readline). Where the
    blocks break off (:class:`Damaged`), the line they cut is lost with the rest."""
    rest = b""
    for block in blocks:
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _parse_jsonl(text: str, stats: ReadStats, spec: ReadSpec) -> Post | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # (nested past Python's recursion limit: a bad line too)
        stats.bad_json += 1
        return None
    if not isinstance(obj, dict):
        stats.bad_json += 1
        return None
    return make_post(obj.get(spec.id or "id"), obj.get(spec.tags or "hashtags"),
                     obj.get(spec.caption or "caption"), obj.get(spec.country or "country"), stats, spec)


def _parse_tsv(text: str, stats: ReadStats, spec: ReadSpec) -> Post | None:
    cols = text.split("\t")
    return make_post(cols[0], cols[1] if len(cols) > 1 else None, None,
                     cols[2].strip() if len(cols) > 2 else None, stats, spec)


def _parse_yfcc(text: str, stats: ReadStats, spec: ReadSpec) -> Post | None:
    """One line of YFCC100M's metadata (``yfcc100m_dataset``). Fields counted from the end are
    the same in every layout: ..., title (-17), description (-16), user tags (-15), machine
    tags (-14, ignored), ..., photo/video marker (-1: 0 photo, 1 video). The id is the first
    field, or the second behind a row number (25 fields; 24 where the second is no hash)."""
    cols = text.split("\t")
    n = len(cols)
    if n not in YFCC_FIELDS:
        stats.bad_columns += 1
        return None
    marker = cols[-1].strip()
    if marker != "0":
        if marker == "1":
            stats.video += 1
        else:
            stats.bad_columns += 1
        return None
    pid = cols[1] if n == 25 or (n == 24 and not _HEX32.match(cols[1])) else cols[0]
    caption = None
    if spec.labels != "hashtags" or (spec.caption_hashtags and not cols[-15]):
        # the title and description: their noun phrases, or their #tags where there are no user tags
        caption = (unquote_plus(cols[-17]) + " " + unquote_plus(cols[-16])).strip()
    return make_post(pid, [t for t in cols[-15].split(",") if t], caption, None, stats, spec)


_LINE_PARSERS = {"jsonl": _parse_jsonl, "tsv": _parse_tsv, "yfcc": _parse_yfcc}


def iter_posts(path: Path, fmt: "str | ReadSpec" = "auto", stats: ReadStats | None = None,
               caption_hashtags: bool = True) -> Iterator[Post]:
    """Yield the good posts of one source file, counting every line (record) into ``stats``; a
    file that breaks part-way ends after its last whole line (record), counted in ``stats``."""
    stats = stats if stats is not None else ReadStats()
    path = Path(path)
    spec = fmt if isinstance(fmt, ReadSpec) else ReadSpec(fmt, caption_hashtags)
    if spec.fmt == "auto":
        spec = dataclasses.replace(spec, fmt=detect_format(path))
    if spec.fmt in ("img2dataset", "parquet"):
        from swagcli.prep.columnar import iter_columnar

        yield from iter_columnar(path, spec, stats)
        return
    start = stats.lines
    blocks = read_blocks(path)
    with contextlib.closing(blocks):
        try:
            yield from posts_of_lines(_lines(blocks), stats, spec)
        except Damaged as e:  # truncated .gz, corrupt .zst/.bz2: the lines before it stand
            stats.broke(path, stats.lines - start, e)


def posts_of_lines(lines, stats: ReadStats, spec: ReadSpec) -> Iterator[Post]:
    """The good posts of raw lines (bytes) of a line format, every line counted into ``stats``."""
    parse = _LINE_PARSERS[spec.fmt]
    for raw in lines:
        stats.lines += 1
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            stats.bad_utf8 += 1
            continue
        if not text.strip():
            stats.blank += 1
            continue
        post = parse(text, stats, spec)
        if post is not None:
            stats.posts += 1
            yield post
