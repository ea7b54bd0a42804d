"""Turning a synthetic world (:func:`swagcli.prep.synth.build_world`) into files.

* :func:`render` draws one image from per-concept visual prototypes: a family shares a shape and a
  background palette (siblings in WordNet look alike), a concept has its own colour pair and
  grating (hue, orientation, frequency); position, size, rotation, phase, brightness and pixel
  noise are random. A second shown concept is a smaller second object. Later stages reuse it.
* :func:`write_files` samples the posts' ground truth, plans the files as jobs (dump shards,
  webdataset image shards, downstream and fairness images), runs them stage by stage in this
  process or a pool of ``workers`` (:func:`~swagcli.prep.parallel.map_shards`), and writes the
  fairness manifest and ``downstream/classes.json``. Every post's caption is a sentence naming its
  shown concepts (:mod:`swagcli.prep.synth_captions`), in every layout.

Every task draws from its own seeded stream and every byte written is fixed (gzip mtime 0, tar
members with fixed mtime/uid/gid/names, JPEG settings), so outputs do not depend on ``workers``.
"""

from __future__ import annotations

import bz2
import colorsys
import functools
import gzip
import hashlib
import io
import itertools
import json
import tarfile
from collections import Counter
from contextlib import closing
from pathlib import Path
from urllib.parse import quote_plus

import numpy as np
from PIL import Image

from swagcli.fileio import atomic_file, atomic_write_bytes, atomic_write_text
from swagcli.prep import synth_captions as sc
from swagcli.prep.parallel import map_shards

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "plus", "star", "ellipse_h",
          "hexagon", "crescent", "ellipse_v", "xcross", "triangle_down", "frame", "semicircle",
          "pentagon")
BACKGROUNDS = (((135, 180, 220), (235, 240, 250)), ((80, 120, 60), (170, 200, 120)),
               ((200, 170, 120), (245, 230, 200)), ((70, 50, 100), (180, 140, 170)),
               ((40, 40, 45), (120, 120, 125)), ((150, 70, 50), (220, 170, 140)),
               ((30, 100, 110), (140, 200, 190)), ((230, 225, 205), (190, 180, 160)))
HUES = 12                                  # foreground hues
STYLES = 12                                # grating styles: 4 orientations x 3 frequencies
_POLYGONS = {"square": (4, 0.0), "diamond": (4, np.pi / 4), "triangle": (3, np.pi / 2),
             "triangle_down": (3, -np.pi / 2), "pentagon": (5, np.pi / 2), "hexagon": (6, 0.0)}
CAPTIONS = sc.FILLER_PHRASES              # a post's filler phrase (drawn with its hashtags)
SIBLING_PROB = 0.5                         # a second shown concept is a family sibling this often
# Before captions named concepts, this share of the posts with hashtags had the filler phrase as a
# caption; the draw stays (the stream of hashtags after it stays put), and so does the length of
# that line, on which a corrupt line's cut is drawn.
CAPTION_PROB = 0.3


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """The generator of one named stream of a world (stream ids are fixed small ints)."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, *stream]))


# -- the look of things -------------------------------------------------------------------------
def family_visual(f: int) -> dict:
    return {"shape": SHAPES[f % len(SHAPES)],
            "background": [list(c) for c in BACKGROUNDS[(f + f // len(SHAPES)) % len(BACKGROUNDS)]]}


def concept_visual(f: int, hue: int, style: int) -> dict:
    """Family shape and background, plus a bright/dark colour pair and a grating."""
    def rgb(h, s, v):
        return [round(255 * x) for x in colorsys.hsv_to_rgb(h, s, v)]

    return {**family_visual(f), "colors": [rgb(hue / HUES, 0.8, 0.95),
                                           rgb(((hue + HUES // 2) % HUES) / HUES, 0.9, 0.35)],
            "angle": 45.0 * (style % 4), "freq": (1.5, 2.5, 3.5)[style // 4]}


def family_looks(rng):
    """Yield (hue, style) for a family's members in turn: distinct hues for the first twelve,
    then each hue again with another grating (144 distinct looks)."""
    hues, styles = rng.permutation(HUES).tolist(), rng.permutation(STYLES).tolist()
    for k in itertools.count():
        yield hues[k % HUES], styles[(k + k // HUES) % STYLES]


GLYPH_CELLS = 4                            # a glyph is a GLYPH_CELLS x GLYPH_CELLS bitmap
GLYPH_PANEL = 0.75                         # the glyph panel's half-side, in object radii
GLYPH_SCALE = 1.4                          # a glyph concept's main object is this much larger
GLYPH_DISTANCE = 4                         # fewest cells in which two glyphs differ


def glyphs(rng, n: int) -> list[int]:
    """n distinct glyphs (bitmaps as ints, bit ``row * GLYPH_CELLS + col``), each with 5..11 of its
    16 cells set and differing from every other in at least GLYPH_DISTANCE cells."""
    cells = GLYPH_CELLS * GLYPH_CELLS
    out: list[int] = []
    for _ in range(1000 * n):
        if len(out) == n:
            break
        g = int(rng.integers(0, 2 ** cells))
        if 5 <= g.bit_count() <= cells - 5 and all((g ^ h).bit_count() >= GLYPH_DISTANCE for h in out):
            out.append(g)
    if len(out) < n:
        raise ValueError(f"only {len(out)} glyphs {GLYPH_DISTANCE} cells apart, not {n}")
    return out


def glyph_visual(f: int, hue: int, style: int, glyph: int) -> dict:
    """``concept_looks: glyph``: the family's look (shape, background, colours, grating) and a glyph
    of the concept's own, drawn on a square panel over the object."""
    return {**concept_visual(f, hue, style), "glyph": glyph}


@functools.lru_cache(maxsize=8)
def _grid(size: int):
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return (ys + 0.5) / size, (xs + 0.5) / size


def _shape_distance(shape: str, X, Y):
    """< 1 inside the shape (object radius 1), about distance/radius outside."""
    if shape in _POLYGONS:
        n, offset = _POLYGONS[shape]
        angles = offset + 2 * np.pi * np.arange(n) / n
        proj = [X * np.cos(a) + Y * np.sin(a) for a in angles]
        return np.maximum.reduce(proj) / np.cos(np.pi / n)
    rho = np.hypot(X, Y)
    if shape == "ellipse_h":
        return np.hypot(X, Y / 0.55)
    if shape == "ellipse_v":
        return np.hypot(X / 0.55, Y)
    if shape == "ring":
        return np.abs(rho - 0.68) / 0.32
    if shape == "frame":
        return np.abs(np.maximum(np.abs(X), np.abs(Y)) - 0.7) / 0.3
    if shape in ("plus", "xcross"):
        if shape == "xcross":
            X, Y = (X + Y) / np.sqrt(2), (X - Y) / np.sqrt(2)
        ax, ay = np.abs(X), np.abs(Y)
        return np.minimum(np.maximum(ax, ay / 0.34), np.maximum(ax / 0.34, ay))
    if shape == "star":
        return rho / (0.72 + 0.28 * np.cos(5 * (np.arctan2(Y, X) + np.pi / 2)))
    if shape == "crescent":
        return np.maximum(rho, 0.75 / np.maximum(np.hypot(X - 0.45, Y + 0.15), 1e-3))
    if shape == "semicircle":
        return np.maximum(np.hypot(X, Y - 0.45), 1 + 3 * (Y - 0.45))
    return rho  # circle


def _draw(img, vis: dict, cx: float, cy: float, r: float, light, u) -> None:
    """Paint one object of radius r (fraction of the image) centred at (cx, cy) in place, its
    colours scaled to ``light`` (255 = as listed); u: 3 uniforms (rotation, grating angle jitter,
    grating phase)."""
    size = img.shape[0]
    y0, y1 = max(0, int((cy - 1.5 * r) * size)), min(size, int((cy + 1.5 * r) * size) + 1)
    x0, x1 = max(0, int((cx - 1.5 * r) * size)), min(size, int((cx + 1.5 * r) * size) + 1)
    ys, xs = _grid(size)
    X0, Y0 = (xs[y0:y1, x0:x1] - cx) / r, (ys[y0:y1, x0:x1] - cy) / r
    rot = 0.6 * u[0] - 0.3
    X, Y = np.cos(rot) * X0 + np.sin(rot) * Y0, np.cos(rot) * Y0 - np.sin(rot) * X0
    alpha = np.minimum(np.maximum((1 - _shape_distance(vis["shape"], X, Y)) * (r * size) + 0.5,
                                  0), 1)[..., None]
    theta = np.radians(vis["angle"]) + 0.3 * u[1] - 0.15
    wave = np.sin(np.pi * vis["freq"] * (X0 * np.cos(theta) + Y0 * np.sin(theta))
                  + 2 * np.pi * u[2])
    a, b = (np.asarray(c, np.float32) * (light / 255) for c in vis["colors"])
    fg = (a + b) / 2 + (b - a) / 2 * wave[..., None]
    if "glyph" in vis:  # the panel: set cells bright, the others dark, rotating with the object
        n = GLYPH_CELLS
        col = np.clip(((X / GLYPH_PANEL + 1) * (n / 2)).astype(np.int32), 0, n - 1)
        row = np.clip(((Y / GLYPH_PANEL + 1) * (n / 2)).astype(np.int32), 0, n - 1)
        on = ((vis["glyph"] >> (row * n + col)) & 1).astype(bool)
        panel = np.minimum(np.maximum((GLYPH_PANEL - np.maximum(np.abs(X), np.abs(Y))) * (r * size) + 0.5,
                                      0), 1)[..., None]
        fg += (np.where(on[..., None], a, b) - fg) * panel
        alpha = np.maximum(alpha, panel)
    region = img[y0:y1, x0:x1]
    region += (fg - region) * alpha


def render(world_concepts, concept_indices, rng, size: int, noise: float = 1.0) -> np.ndarray:
    """An RGB uint8 image (size x size x 3) showing the given concepts (world.json entries with a
    "visual"); the first is the main object and sets the background, the others are smaller
    objects near a corner. ``noise`` scales the pixel noise."""
    ys, xs = _grid(size)
    u = rng.random(2 + 6 * len(concept_indices)).tolist()  # every random scalar, in one call
    first = world_concepts[concept_indices[0]]["visual"]
    light = np.float32(255 * (0.85 + 0.25 * u[0]))  # overall brightness
    bg0, bg1 = (np.asarray(c, np.float32) * (light / 255) for c in first["background"])
    phi = 2 * np.pi * u[1]  # gradient direction; t stays within (0, 1)
    t = (xs - 0.5) * np.float32(0.7 * np.cos(phi)) + (ys - 0.5) * np.float32(0.7 * np.sin(phi))
    img = bg0 + (bg1 - bg0) * (t + np.float32(0.5))[..., None]
    for j, c in enumerate(concept_indices):
        v = u[2 + 6 * j: 8 + 6 * j]
        if j == 0:
            cx, cy, r = 0.35 + 0.3 * v[0], 0.35 + 0.3 * v[1], 0.22 + 0.1 * v[2]
            if "glyph" in first:  # large enough for the glyph's cells to be read at 32 pixels
                cx, cy, r = 0.4 + 0.2 * v[0], 0.4 + 0.2 * v[1], GLYPH_SCALE * r
        else:  # a corner (v < 0.5 picks the side, 2v mod 1 the jitter)
            cx, cy = ((0.2 if w < 0.5 else 0.8) + 0.1 * ((2 * w) % 1) - 0.05 for w in v[:2])
            r = 0.11 + 0.05 * v[2]
        _draw(img, world_concepts[c]["visual"], cx, cy, r, light, v[3:])
    grain = rng.random((size, size), dtype=np.float32) - np.float32(0.5)  # uniform, sd 6.4*noise
    img += (grain * np.float32(22.2 * noise) + np.float32(0.5))[..., None]  # (+0.5: rounding)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=90, subsampling=0)
    return buf.getvalue()


# -- tasks: each writes its files and returns counts --------------------------------------------
def _sample(cum: np.ndarray, u):
    """Indices drawn with the probabilities whose cumulative sums are ``cum``, for uniform u."""
    return np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), len(cum) - 1)


def _shard_posts(start, primary, extra, country, tags, junk, names, probs, rates, seed, shard, stats):
    """The posts of one dump shard, drawn from the stream ``(seed, 2, shard)`` in one fixed order,
    so that every layout of the world holds the same posts: yields ``(post, hashtags, phrase,
    sentence, caption_only, line, bad)`` with ``sentence`` the caption naming the shown concepts
    (``names``: {"names", "lexname"} per concept), drawn from its own stream ``(seed,
    synth_captions.STREAM, shard)``, ``line`` the JSONL line and ``bad`` the corrupt line written
    before it (or None); counts into ``stats``. Every post has a caption: the sentence, followed by
    the #tags on a caption-only post; the sentence holds no '#'."""
    rng, caption_rng = rng_for(seed, 2, shard), rng_for(seed, sc.STREAM, shard)
    tag_cum = [np.cumsum([w for _, w in t]) for t in tags]
    junk_cum, zipf_cum = np.cumsum([w for _, w in junk]), np.cumsum(probs)
    for j in range(len(primary)):
        shown = [int(primary[j])] + ([int(extra[j])] if extra[j] >= 0 else [])
        raw = [tags[c][_sample(tag_cum[c], rng.random())][0] for c in shown
               if rng.random() >= rates["missing"]]
        if rng.random() < rates["wrong"]:
            w = _sample(zipf_cum, rng.random())
            if w not in shown:
                raw.append(tags[w][_sample(tag_cum[w], rng.random())][0])
        raw += [junk[_sample(junk_cum, rng.random())][0] for _ in range(rng.poisson(rates["junk"]))]
        raw = list(dict.fromkeys(raw))
        hashtags = ["#" + raw[i] for i in rng.permutation(len(raw))]
        post = {"id": f"p{start + j:07d}", "country": country[j]}
        phrase = CAPTIONS[int(rng.integers(len(CAPTIONS)))]
        sentence = sc.sentence(caption_rng, shown, names, phrase)
        caption_only = rng.random() < rates["caption_only"]
        if caption_only:
            post["caption"] = " ".join([sentence, *hashtags])  # no "hashtags" key
            before = {**post, "caption": " ".join([phrase, *hashtags])}
            stats["caption_only"] += 1
        else:
            post["hashtags"] = hashtags
            stats["empty_hashtags"] += not hashtags
            before = dict(post)
            if rng.random() < CAPTION_PROB:
                before["caption"] = phrase
            post["caption"] = sentence
        line = json.dumps(post).encode()
        bad = None
        if rng.random() < rates["bad_line"]:
            stats["bad_lines"] += 1
            if rng.random() < 0.5:  # cut JSON: never valid, the closing brace is gone
                cut = int(rng.integers(1, len(json.dumps(before).encode()) - 1))
                bad = line[: min(cut, len(line) - 2)]
            else:  # bytes that are not UTF-8 (0xff never is)
                bad = b"\xff" + rng.integers(0x80, 0x100, 12, dtype=np.uint8).tobytes()
        yield post, hashtags, phrase, sentence, caption_only, line, bad


def write_dump_shard(path, gz, start, primary, extra, country, tags, junk, names, probs, rates, seed,
                     shard) -> dict:
    """One hashtag dump shard (JSONL, gzip when ``gz``); see SPEC §1 for the format."""
    lines, stats = [], Counter()
    for *_, line, bad in _shard_posts(start, primary, extra, country, tags, junk, names, probs,
                                      rates, seed, shard, stats):
        if bad is not None:
            lines.append(bad)
        lines.append(line)
    data = b"\n".join(lines) + b"\n"
    with atomic_file(path, "wb", fsync=False) as f:
        if gz:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=6) as g:
                g.write(data)
        else:
            f.write(data)
    return {"posts": len(primary), "lines": len(lines), **stats}


# -- the real-world layouts: YFCC100M metadata and an img2dataset folder -------------------------
YFCC_LICENSE = ("Attribution-NonCommercial-ShareAlike License",
                "http://creativecommons.org/licenses/by-nc-sa/2.0/")
DEVICES = ("Canon+EOS+5D+Mark+II", "NIKON+D90", "Apple+iPhone+4", "")
FAILURES = ("HTTP Error 404: Not Found", "<urlopen error timed out>", "HTTP Error 410: Gone")


def yfcc_id(index: int) -> str:
    """A post's Flickr-like photo id in the YFCC100M and img2dataset layouts."""
    return str(1_000_000 + index)


def _yfcc_line(rng, pid: str, row: int | None, title: str, description: str, user_tags: str,
               video: bool = False) -> str:
    """One line in the layout of YFCC100M's ``yfcc100m_dataset`` (23 fields; 25 with the row
    number and the photo hash in front)."""
    nsid = f"{int(rng.integers(10**7, 10**8))}@N0{int(rng.integers(0, 9))}"
    taken = int(rng.integers(1_100_000_000, 1_400_000_000))
    farm, server = int(rng.integers(1, 10)), int(rng.integers(1000, 9999))
    secret, original = (f"{int(rng.integers(16**9, 16**10)):010x}" for _ in range(2))
    geo = rng.random() < 0.4
    lon, lat, acc = (f"{rng.uniform(-180, 180):.6f}", f"{rng.uniform(-60, 70):.6f}", "16") if geo else ("", "", "")
    machine = "" if rng.random() < 0.7 else "uploaded%3Aby%3Dflickrmobile,flickriosapp%3Afilter%3Dnofilter"
    fields = [pid, nsid, "flickr+user+" + nsid[:3],
              f"{2004 + taken % 10}-{1 + taken % 12:02d}-{1 + taken % 28:02d} {taken % 24:02d}:{taken % 60:02d}:"
              f"{(taken // 60) % 60:02d}.0", str(taken + 86400), DEVICES[taken % len(DEVICES)],
              title, description, user_tags, machine, lon, lat, acc,
              f"http://www.flickr.com/photos/{nsid}/{pid}/",
              f"http://farm{farm}.staticflickr.com/{server}/{pid}_{secret}.{'mp4' if video else 'jpg'}",
              *YFCC_LICENSE, str(server), str(farm), secret, original, "mp4" if video else "jpg",
              "1" if video else "0"]
    if row is not None:
        fields = [str(row), pid, hashlib.md5(pid.encode()).hexdigest()] + fields[1:]
    return "\t".join(fields)


def _user_tags(hashtags: list, spaced: dict) -> str:
    """Flickr user tags: comma-separated, URL-encoded, multi-word tags with their spaces."""
    return ",".join(quote_plus(spaced.get(t[1:], t[1:])) for t in hashtags)


def write_yfcc_shard(path, bz, row_numbers, start, primary, extra, country, tags, junk, names, probs,
                     rates, seed, shard, spaced, video_prob) -> dict:
    """The posts of one dump shard as YFCC100M metadata (bz2 when ``bz``): the caption's sentence
    in the title, user tags in the user-tags field (a caption-only post's filler phrase and #tags
    in its description), a video line (marker 1)
    after a post with ``video_prob``, and a broken line (cut short, or not UTF-8) wherever the
    JSONL dump has one."""
    rng = rng_for(seed, 6, shard)
    out, stats = [], Counter()
    row = start
    for post, hashtags, phrase, sentence, caption_only, _, bad in _shard_posts(
            start, primary, extra, country, tags, junk, names, probs, rates, seed, shard, Counter()):
        if bad is not None:
            if rng.random() < 0.5:  # cut short: too few fields
                cut = _yfcc_line(rng, yfcc_id(row), None, "", "", "").split("\t")
                out.append("\t".join(cut[: int(rng.integers(2, 15))]).encode())
            else:
                out.append(b"\xff" + rng.integers(0x80, 0x100, 12, dtype=np.uint8).tobytes())
            stats["bad_lines"] += 1
        pid = yfcc_id(int(post["id"][1:]))
        title = quote_plus(sentence)
        description = quote_plus(" ".join([phrase, *hashtags])) if caption_only else ""
        user = "" if caption_only else _user_tags(hashtags, spaced)
        out.append(_yfcc_line(rng, pid, row if row_numbers else None, title, description, user).encode())
        row += 1
        if rng.random() < video_prob:  # a video with the tags of a random concept: skipped by readers
            c = int(_sample(np.cumsum(probs), rng.random()))
            out.append(_yfcc_line(rng, str(8_000_000_000 + row), row if row_numbers else None, "video", "",
                                  quote_plus(spaced.get(tags[c][0][0], tags[c][0][0])), video=True).encode())
            stats["videos"] += 1
    data = b"\n".join(out) + b"\n"
    atomic_write_bytes(path, bz2.compress(data, 9) if bz else data, fsync=False)
    return {"lines": len(out), **stats}


def write_img2dataset_shard(folder, shard, start, primary, extra, country, tags, junk, names, probs, rates,
                            seed, spaced, looks, size, failed_prob) -> dict:
    """The posts of one dump shard as img2dataset writes a shard (``output_format=webdataset``,
    ``save_additional_columns=[photoid, usertags]``): ``NNNNN.tar`` with ``KEY.jpg``, ``KEY.json``,
    ``KEY.txt`` (the caption: the sentence, then the #tags) per download, ``NNNNN.parquet`` with every row (failed
    downloads, of random concepts, interleaved with their status) and ``NNNNN_stats.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng, img_rng = rng_for(seed, 7, shard), rng_for(seed, 8, shard)
    zipf_cum = np.cumsum(probs)
    posts = list(_shard_posts(start, primary, extra, country, tags, junk, names, probs, rates, seed, shard,
                              Counter()))
    rows, statuses = [], Counter()
    n_rows = len(posts) + int(np.ceil(len(posts) * failed_prob * 2)) + 1
    digits = max(4, len(str(n_rows)))
    name = f"{shard:05d}"
    with atomic_file(Path(folder) / f"{name}.tar", "wb", fsync=False) as f, \
            tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        j = 0
        while j < len(posts):
            key = f"{name}{len(rows):0{digits}d}"
            pid = yfcc_id(start + j)
            if rng.random() < failed_prob:  # a failed download: in the parquet only
                c = int(_sample(zipf_cum, rng.random()))
                tag = tags[c][0][0]
                err = FAILURES[int(rng.integers(len(FAILURES)))]
                rows.append(_i2d_row(key, str(9_000_000_000 + int(key)), f"look at this #{tag}",
                                     quote_plus(spaced.get(tag, tag)), "failed_to_download", err, None, size))
                statuses[err] += 1
                continue
            post, hashtags, _, sentence, caption_only, _, _ = posts[j]
            shown = [int(primary[j])] + ([int(extra[j])] if extra[j] >= 0 else [])
            img = jpeg(render(looks, shown, img_rng, size))
            caption = " ".join([sentence, *hashtags])
            row = _i2d_row(key, pid, caption, "" if caption_only else _user_tags(hashtags, spaced),
                           "success", None, hashlib.sha256(img).hexdigest(), size)
            rows.append(row)
            statuses["success"] += 1
            _tar_add(tar, key + ".jpg", img)
            _tar_add(tar, key + ".json", json.dumps(row, indent=4).encode())
            _tar_add(tar, key + ".txt", caption.encode())
            j += 1
    table = pa.Table.from_pylist(rows, schema=_i2d_schema())
    with atomic_file(Path(folder) / f"{name}.parquet", "wb", fsync=False) as f:
        pq.write_table(table, f)
    failed = len(rows) - statuses["success"]
    atomic_write_text(Path(folder) / f"{name}_stats.json", json.dumps({
        "count": len(rows), "successes": statuses["success"], "failed_to_download": failed,
        "failed_to_resize": 0, "duration": 0.0, "start_time": 0.0, "end_time": 0.0,
        "status_dict": dict(sorted(statuses.items()))}, indent=4))
    return {"rows": len(rows), "failed_downloads": failed}


def _i2d_row(key, pid, caption, usertags, status, error, sha, size) -> dict:
    ok = status == "success"
    return {"photoid": pid, "usertags": usertags, "caption": caption,
            "url": f"http://farm1.staticflickr.com/1/{pid}_0.jpg", "key": key, "status": status,
            "error_message": error, "width": size if ok else None, "height": size if ok else None,
            "original_width": size if ok else None, "original_height": size if ok else None,
            "exif": "{}" if ok else None, "sha256": sha}


def _i2d_schema():
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    return pa.schema([("photoid", s), ("usertags", s), ("caption", s), ("url", s), ("key", s),
                      ("status", s), ("error_message", s), ("width", i), ("height", i),
                      ("original_width", i), ("original_height", i), ("exif", s), ("sha256", s)])


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "swag"
    tar.addfile(info, io.BytesIO(data))


def write_image_shard(path, start, primary, extra, concepts, size, seed, shard) -> dict:
    """One webdataset shard: ``<post id>.jpg`` and ``<post id>.json`` ({"concepts": shown})."""
    rng = rng_for(seed, 3, shard)
    with atomic_file(path, "wb", fsync=False) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for j in range(len(primary)):
            shown = [int(primary[j])] + ([int(extra[j])] if extra[j] >= 0 else [])
            pid = f"p{start + j:07d}"
            _tar_add(tar, pid + ".jpg", jpeg(render(concepts, shown, rng, size)))
            _tar_add(tar, pid + ".json", json.dumps({"concepts": shown}).encode())
    return {"images": len(primary)}


def render_files(root, items, concepts, size, seed, stream) -> dict:
    """Loose JPEG files: items are (path under root, shown concepts, noise factor)."""
    rng = rng_for(seed, *stream)
    for rel, shown, noise in items:
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, jpeg(render(concepts, shown, rng, size, noise)), fsync=False)
    return {"images": len(items)}


# -- planning -----------------------------------------------------------------------------------
def sample_posts(world: dict, recipe):
    """Ground truth per post: main concept (Zipf), second concept or -1, country index."""
    rng = rng_for(recipe.seed, 1)
    n, count = len(world["concepts"]), recipe.posts
    cum = np.cumsum([c["prob"] for c in world["concepts"]])
    primary, second = _sample(cum, rng.random(count)), _sample(cum, rng.random(count))
    has = rng.random(count) < recipe.extra_concept_prob
    sibling, u = rng.random(count), rng.random(count)
    family = np.array([c["family"] for c in world["concepts"]])
    extra = np.full(count, -1)
    for i in np.flatnonzero(has):
        p = primary[i]
        sibs = np.flatnonzero((family == family[p]) & (np.arange(n) != p))
        if sibling[i] < SIBLING_PROB and len(sibs):
            extra[i] = sibs[int(u[i] * len(sibs))]
        else:
            extra[i] = second[i] if second[i] != p else (p + 1 + int(u[i] * (n - 1))) % n
    return primary, extra, _sample(np.cumsum(list(world["countries"].values())), rng.random(count))


def _plan_groups(world: dict, recipe):
    """Fairness rows (path, group, country, label wnid, shown concepts, noise)."""
    rng, g = rng_for(recipe.seed, 5, 0), world["groups"]
    total, classes = recipe.group_images, world["downstream"]["classes"]
    groups = np.array(g["groups"])[rng.permutation(np.arange(total) % len(g["groups"]))]
    countries = np.array(list(world["countries"]))[
        _sample(np.cumsum(list(world["countries"].values())), rng.random(total))]
    labels = np.zeros(total, dtype=np.int64)  # every group gets the same class mix: only the planted
    for name in g["groups"]:                    # concept tells the groups apart
        idx = np.flatnonzero(groups == name)
        labels[idx] = rng.permutation(np.arange(len(idx)) % len(classes))
    planted = (groups == g["planted_group"]) & (rng.random(total) < g["planted_strength"])
    rows = []
    for i, (group, country) in enumerate(zip(groups.tolist(), countries.tolist())):
        cls = classes[labels[i]]
        # the planted concept is the image's main object (the class a smaller one): the tiny models
        # see a corner object too faintly for its hashtag to reach their top 5
        shown = [g["planted_concept"], cls["concept"]] if planted[i] else [cls["concept"]]
        noise = g["noise_scale"] if country == g["noisy_country"] else 1.0
        rows.append((f"images/g{i:06d}.jpg", group, country, cls["wnid"], shown, noise))
    return rows


def _chunks(items, size):
    return [items[i: i + size] for i in range(0, len(items), size)]


def write_files(world: dict, recipe, out: Path, progress=None) -> dict:
    """Write dumps, image shards, downstream and fairness sets; returns counts and paths."""
    primary, extra, country_idx = sample_posts(world, recipe)
    countries = np.array(list(world["countries"]))[country_idx].tolist()
    looks = [{"visual": c["visual"]} for c in world["concepts"]]
    tags = [[(v["tag"], v["weight"]) for v in c["variants"]] for c in world["concepts"]]
    junk = [(j["tag"], j["weight"]) for j in world["junk_tags"]]
    names = [{"names": c["caption_names"], "lexname": c["lexname"]} for c in world["concepts"]]
    rates = {"missing": recipe.missing_tag_prob, "wrong": recipe.wrong_tag_prob,
             "junk": recipe.junk_tags_mean, "caption_only": recipe.caption_only_prob,
             "bad_line": recipe.bad_line_prob}
    seed, size, k, frac = recipe.seed, recipe.image_size, recipe.dump_shards, recipe.gzip_fraction
    files: dict = {"dumps": [], "images": []}
    dump_jobs, image_jobs = [], []
    bounds = [(s * recipe.posts // k, (s + 1) * recipe.posts // k) for s in range(k)]
    for s, (a, b) in enumerate(bounds):
        gz = int((s + 1) * frac) > int(s * frac)  # a `frac` share of the shards, spread out
        files["dumps"].append(f"dumps/posts-{s:05d}.jsonl" + (".gz" if gz else ""))
        dump_jobs.append((out / files["dumps"][-1], gz, a, primary[a:b], extra[a:b],
                          countries[a:b], tags, junk, names, [c["prob"] for c in world["concepts"]],
                          rates, seed, s))
    for s, a in enumerate(range(0, recipe.posts, recipe.images_per_shard)):
        b = min(a + recipe.images_per_shard, recipe.posts)
        files["images"].append(f"images/images-{s:05d}.tar")
        image_jobs.append((out / files["images"][-1], a, primary[a:b], extra[a:b], looks, size,
                           seed, s))
    down = world["downstream"]
    items = [(f"{split}/{c['wnid']}/{c['wnid']}_{i:04d}.jpg", [c["concept"]], recipe.downstream_noise)
             for split in ("train", "val") for c in down["classes"]
             for i in range(down[f"{split}_per_class"])]
    if recipe.downstream_distractors:  # a second, random concept in a corner of some images
        rng, n = rng_for(recipe.seed, 4, 9), len(world["concepts"])
        has, other = rng.random(len(items)) < recipe.downstream_distractors, rng.integers(1, n, len(items))
        items = [(rel, shown + [(shown[0] + int(o)) % n] if h else shown, noise)
                 for (rel, shown, noise), h, o in zip(items, has, other)]
    rows = _plan_groups(world, recipe)
    group_items = [(r[0], r[4], r[5]) for r in rows]
    layouts = set(recipe.layouts)
    if layouts:
        spaced = spaced_tags(world)
        shared = [(a, primary[a:b], extra[a:b], countries[a:b], tags, junk, names,
                   [c["prob"] for c in world["concepts"]], rates, seed, s) for s, (a, b) in enumerate(bounds)]
    yfcc_jobs, i2d_jobs = [], []
    if "yfcc" in layouts:
        (out / "yfcc").mkdir(parents=True, exist_ok=True)
        for s, job in enumerate(shared):  # the row number and hash in front on even shards (25 fields)
            bz = dump_jobs[s][1]
            files.setdefault("yfcc", []).append(f"yfcc/yfcc100m_dataset-{s}" + (".bz2" if bz else ""))
            yfcc_jobs.append((out / files["yfcc"][-1], bz, s % 2 == 0, *job, spaced, recipe.video_prob))
    if "img2dataset" in layouts:
        (out / "img2dataset").mkdir(parents=True, exist_ok=True)
        files["img2dataset"] = "img2dataset"
        i2d_jobs = [(out / "img2dataset", job[-1], *job[:-1], spaced, looks, size, recipe.failed_download_prob)
                    for job in shared]
    stages = [
        ("dumps", write_dump_shard, dump_jobs),
        ("yfcc", write_yfcc_shard, yfcc_jobs),
        ("img2dataset", write_img2dataset_shard, i2d_jobs),
        ("images", write_image_shard, image_jobs),
        ("downstream", render_files, [(out / "downstream", chunk, looks, size, seed, (4, s))
                                      for s, chunk in enumerate(_chunks(items, 500))]),
        ("groups", render_files, [(out / "groups", chunk, looks, size, seed, (5, 1, s))
                                  for s, chunk in enumerate(_chunks(group_items, 500))])]
    for d in ("dumps", "images", "downstream", "groups"):
        (out / d).mkdir(parents=True, exist_ok=True)
    dumps: Counter = Counter()
    layout_counts: Counter = Counter()
    for stage, fn, jobs in stages:
        if not jobs:
            continue
        with closing(map_shards(fn, jobs, recipe.workers, progress, stage)) as results:  # (an error: pool ended)
            for res in results:
                if stage == "dumps":
                    dumps.update(res)
                elif stage in ("yfcc", "img2dataset"):
                    layout_counts.update({f"{stage}_{k}": v for k, v in res.items()})
    _write_manifest(out / "groups" / "manifest.csv", rows, world)
    atomic_write_text(out / "downstream" / "classes.json", json.dumps({c["wnid"]: {
        "synset": c["synset"], "concept": c["concept_synset"], "expected_tags": c["expected_tags"],
        "expected_keys": c["expected_keys"], "relation": c["relation"]} for c in down["classes"]},
        indent=1, sort_keys=True) + "\n")
    shown = np.bincount(np.concatenate([primary, extra[extra >= 0]]), minlength=len(looks))
    planted = Counter(r[1] for r in rows if world["groups"]["planted_concept"] in r[4])
    return {"dumps": dict(sorted(dumps.items())), "concept_posts": shown.tolist(),
            "planted_shown": {g: planted[g] for g in world["groups"]["groups"]},
            "images": recipe.posts, "downstream_images": len(items), "group_images": len(rows),
            **dict(sorted(layout_counts.items())), "files": files}


def spaced_tags(world: dict) -> dict:
    """Raw tag -> the words it is made of, where it is a compound of its concept's WordNet lemma
    (``brownbear`` -> ``brown bear``, ``brownbears`` -> ``brown bears``): how Flickr users write
    multi-word tags, which readers join again."""
    from swagcli.wordnet import get_wordnet

    wn, out = get_wordnet(), {}
    for c in world["concepts"]:
        lemmas = [n.lower() for n in wn.synset(c["synset"]).lemma_names() if "_" in n]
        for v in c["variants"]:
            low = v["tag"].lower()
            for lemma in lemmas:
                joined = lemma.replace("_", "")
                if low.startswith(joined):
                    out[v["tag"]] = lemma.replace("_", " ") + low[len(joined):]
                    break
    return out


def _write_manifest(path: Path, rows, world) -> None:
    from swagcli.tables import write_csv

    names = [c["synset"] for c in world["concepts"]]
    write_csv(path, [["path", "group", "country", "label", "concept"]] +
              [[rel, group, country, label, "+".join(names[c] for c in shown)]
               for rel, group, country, label, shown, _ in rows])
