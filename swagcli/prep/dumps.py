"""Reading hashtag dumps: JSONL or TSV, plain, .gz, .zst or .bz2, one post per line.

JSONL: ``{"id": ..., "hashtags": [...], "country": "US"?, "caption": "..."?}``; a post without
hashtags takes the ``#tags`` of its caption. TSV: ``id<TAB>#tag #tag ...`` with an optional third
column holding the country. Bad lines (invalid JSON, non-UTF-8 bytes, no id, no tags) are skipped
and counted in :class:`ReadStats`, never fatal; a missing or unreadable dump is a
:class:`SwagError`.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

from braceexpand import braceexpand

from swagcli.errors import SwagError

DUMP_SUFFIXES = (".jsonl", ".json", ".ndjson", ".tsv", ".txt")
COMPRESSIONS = (".gz", ".zst", ".zstd", ".bz2")
HASHTAG_RE = re.compile(r"#(\w+)")
_TAG_SPLIT_RE = re.compile(r"[\s,]+")


@dataclass
class ReadStats:
    """What reading a dump saw; added up over shards."""

    lines: int = 0
    posts: int = 0
    blank: int = 0
    bad_json: int = 0
    bad_utf8: int = 0
    no_id: int = 0
    no_tags: int = 0
    from_caption: int = 0

    def add(self, other: "ReadStats") -> "ReadStats":
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def skipped(self) -> int:
        return self.bad_json + self.bad_utf8 + self.no_id + self.no_tags

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"skipped": self.skipped}


@dataclass
class Post:
    id: str
    tags: list[str]  # normalized, distinct, in first-seen order
    country: str | None = None
    extra: dict = field(default_factory=dict)


def expand_dumps(specs: list[str] | str) -> list[Path]:
    """Files, globs (``shard-*.jsonl.gz``), brace ranges (``shard-{000..099}.tsv``) and
    directories (every dump-like file inside) -> sorted, de-duplicated paths."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [str(specs)]
    out: list[Path] = []
    for spec in specs:
        for item in braceexpand(str(spec)):
            if any(c in item for c in "*?["):
                hits = sorted(glob.glob(item))
                if not hits:
                    raise SwagError(f"{item}: no dump matches this pattern")
                out.extend(Path(h) for h in hits)
                continue
            p = Path(item)
            if p.is_dir():
                hits = sorted(q for q in p.iterdir() if q.is_file() and _is_dump_name(q.name))
                if not hits:
                    raise SwagError(f"{p}: directory holds no dump files ({', '.join(DUMP_SUFFIXES)})")
                out.extend(hits)
            elif p.is_file():
                out.append(p)
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


def _is_dump_name(name: str) -> bool:
    for c in COMPRESSIONS:
        if name.endswith(c):
            name = name[: -len(c)]
    return name.endswith(DUMP_SUFFIXES)


def open_binary(path: Path) -> io.BufferedIOBase:
    """Open a possibly compressed file for reading bytes."""
    name = path.name
    try:
        if name.endswith(".gz"):
            return gzip.open(path, "rb")
        if name.endswith((".zst", ".zstd")):
            import zstandard

            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
        if name.endswith(".bz2"):
            return bz2.open(path, "rb")
        return open(path, "rb")
    except OSError as e:
        raise SwagError(f"{path}: cannot open ({e.strerror or e})") from None


def detect_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    name = path.name
    for c in COMPRESSIONS:
        if name.endswith(c):
            name = name[: -len(c)]
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".tsv"):
        return "tsv"
    with open_binary(path) as f:  # sniff the first non-blank line
        try:
            for raw in f:
                line = raw.strip()
                if line:
                    return "jsonl" if line.startswith(b"{") else "tsv"
        except (OSError, EOFError) as e:
            raise SwagError(f"{path}: cannot read ({e})") from None
    return "jsonl"


def _dedupe(tags) -> list[str]:
    """Normalized (see :func:`normalize_tag`), distinct, non-empty, in first-seen order."""
    out = dict.fromkeys(t.strip().lstrip("#").lower() for t in tags if type(t) is str)
    out.pop("", None)
    return list(out)


def _lines(f, chunk: int = 1 << 22):
    """The lines of a binary stream, read in large chunks (faster than readline)."""
    rest = b""
    while True:
        block = f.read(chunk)
        if not block:
            break
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _parse_jsonl(text: str, stats: ReadStats, caption_hashtags: bool) -> Post | None:
    try:
        obj = json.loads(text)
    except ValueError:
        stats.bad_json += 1
        return None
    if not isinstance(obj, dict):
        stats.bad_json += 1
        return None
    pid = obj.get("id")
    if pid is None or pid == "":
        stats.no_id += 1
        return None
    tags = obj.get("hashtags")
    if isinstance(tags, str):
        tags = _TAG_SPLIT_RE.split(tags)
    if not tags and caption_hashtags and isinstance(obj.get("caption"), str):
        tags = HASHTAG_RE.findall(obj["caption"])
        if tags:
            stats.from_caption += 1
    tags = _dedupe(tags or ())
    if not tags:
        stats.no_tags += 1
        return None
    country = obj.get("country")
    return Post(str(pid), tags, country if isinstance(country, str) else None)


def _parse_tsv(text: str, stats: ReadStats) -> Post | None:
    cols = text.split("\t")
    pid = cols[0].strip()
    if not pid:
        stats.no_id += 1
        return None
    tags = _dedupe(_TAG_SPLIT_RE.split(cols[1])) if len(cols) > 1 else []
    if not tags:
        stats.no_tags += 1
        return None
    country = cols[2].strip() or None if len(cols) > 2 else None
    return Post(pid, tags, country)


def iter_posts(path: Path, fmt: str = "auto", stats: ReadStats | None = None,
               caption_hashtags: bool = True) -> Iterator[Post]:
    """Yield the good posts of one dump, counting every line into ``stats``."""
    stats = stats if stats is not None else ReadStats()
    fmt = detect_format(path, fmt)
    jsonl = fmt == "jsonl"
    with open_binary(path) as f:
        try:
            for raw in _lines(f):
                stats.lines += 1
                try:
                    text = raw.decode("utf-8").rstrip("\r")
                except UnicodeDecodeError:
                    stats.bad_utf8 += 1
                    continue
                if not text.strip():
                    stats.blank += 1
                    continue
                post = _parse_jsonl(text, stats, caption_hashtags) if jsonl else _parse_tsv(text, stats)
                if post is not None:
                    stats.posts += 1
                    yield post
        except (OSError, EOFError, ValueError) as e:  # truncated .gz, corrupt .zst/.bz2
            raise SwagError(f"{path}: unreadable after line {stats.lines} ({e})") from None
