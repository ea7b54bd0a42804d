"""Finding WordNet 3.0 and the synset helpers shared by `vocab`, `synth` and `zeroshot`.

Where WordNet comes from, in order:
1. ``$SWAG_WORDNET``: a directory holding WordNet in nltk's layout;
2. nltk's own data path (``nltk.data.find("corpora/wordnet")``), e.g. after ``nltk.download``;
3. a copy assembled from Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages
   (``/usr/share/wordnet``, or ``$SWAG_WORDNET_DEBIAN``). Debian does not ship the ``lexnames``
   file nltk's reader needs: it is the fixed 45-row table of the lexnames(5WN) manual page,
   written here from :data:`LEXNAMES`. ``swag setup wordnet`` (run by ``make setup``) writes
   that copy into ``~/nltk_data`` so that nltk itself finds it afterwards; if it has not been
   run, the copy is assembled on first use under ``~/.cache/swag``.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

from swagcli.errors import SwagError

# lexnames(5WN): file number, lexicographer file name, syntactic category (1 n, 2 v, 3 a, 4 r).
LEXNAMES = [
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3),
]

# Files nltk's WordNetCorpusReader opens; Debian ships all but lexnames.
DEBIAN_FILES = [
    "cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc",
]
DEBIAN_DIR = "/usr/share/wordnet"


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(LEXNAMES))


def assemble_from_debian(dest: Path, source: str | os.PathLike | None = None) -> Path:
    """Copy Debian's WordNet files into ``dest`` (nltk layout) and add ``lexnames``."""
    src = Path(source or os.environ.get("SWAG_WORDNET_DEBIAN", DEBIAN_DIR))
    missing = [f for f in DEBIAN_FILES if not (src / f).is_file()]
    if missing:
        raise SwagError(
            f"WordNet not found: nltk has no 'corpora/wordnet' and {src} lacks {', '.join(missing[:3])}"
            " (install Debian's wordnet-base and wordnet-sense-index, or run nltk.download('wordnet'))"
        )
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in DEBIAN_FILES:
        shutil.copyfile(src / f, tmp / f)
    (tmp / "lexnames").write_text(lexnames_text())
    (tmp / "README.swag").write_text(f"WordNet 3.0 assembled by swag from {src} (Debian packages)\n")
    for f in tmp.iterdir():
        os.replace(f, dest / f.name)
    tmp.rmdir()
    return dest


def _cache_dir() -> Path:
    base = os.environ.get("SWAG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "swag")
    return Path(base) / "nltk_data" / "corpora" / "wordnet"


def _is_complete(path: Path) -> bool:
    return (path / "lexnames").is_file() and all((path / f).is_file() for f in DEBIAN_FILES)


def _allow(path: Path) -> None:
    """nltk >= 3.9 only opens corpora under its data path: register ours there."""
    import nltk

    if str(path) not in nltk.data.path:
        nltk.data.path.append(str(path))


def find_wordnet_root():
    """Return (root, where) for the WordNet copy to use; assemble one from Debian if needed."""
    import nltk

    env = os.environ.get("SWAG_WORDNET")
    if env:
        if not _is_complete(Path(env)):
            raise SwagError(f"SWAG_WORDNET={env}: not a WordNet directory in nltk's layout")
        _allow(Path(env).resolve())
        return Path(env).resolve(), f"$SWAG_WORDNET ({env})"

    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            return nltk.data.find(name), f"nltk data ({nltk.data.find(name)})"
        except LookupError:
            continue
    cache = _cache_dir()
    if not _is_complete(cache):
        assemble_from_debian(cache)
    _allow(cache.parent.parent)
    return cache, f"assembled from Debian ({cache})"


@functools.lru_cache(maxsize=1)
def get_wordnet():
    """The WordNet corpus reader (loaded once per process)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # nltk >= 3.9 builds a mapping to "wordnet" for the multilingual (OMW) functions at
            # every load, reading index.sense twice (~3 s); swag uses English WordNet only.
            return None

    root, _ = find_wordnet_root()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        wn = EnglishWordNet(str(root) if isinstance(root, Path) else root, None)
    return wn


def wordnet_info() -> dict:
    """WordNet's version (as nltk's ``get_version`` reads it: the copyright line of ``data.adj``)
    and where it was found; read off the file where it is a plain one (loading nltk's reader for it
    takes seconds), else through the reader."""
    import re

    root, where = find_wordnet_root()
    plain = Path(getattr(root, "path", root)) if isinstance(root, (str, Path)) or hasattr(root, "path") else None
    if plain is not None and (plain / "data.adj").is_file():
        with open(plain / "data.adj", encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.search(r"Word[nN]et (\d+\+?|\d+\.\d+) Copyright", line)
                if m is not None:
                    return {"version": m.group(1), "where": where}
    return {"version": get_wordnet().get_version(), "where": where}


def install(dest_root: str | os.PathLike | None = None) -> Path:
    """Make WordNet visible to nltk itself: assemble Debian's copy under an nltk data dir.

    Does nothing when nltk already finds WordNet.
    """
    import nltk

    try:
        return Path(str(nltk.data.find("corpora/wordnet")))
    except LookupError:
        pass
    root = Path(dest_root) if dest_root else Path(os.path.expanduser("~")) / "nltk_data"
    return assemble_from_debian(root / "corpora" / "wordnet")


def synset_from_wnid(wnid: str):
    """ImageNet-style wnid ``n01440764`` -> noun synset (offset 1440764)."""
    wn = get_wordnet()
    if len(wnid) < 2 or not wnid[1:].isdigit():
        raise SwagError(f"not a WordNet id: {wnid!r} (expected e.g. n01440764)")
    try:
        return wn.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))
    except Exception as e:  # nltk raises WordNetError/ValueError for unknown offsets
        raise SwagError(f"no WordNet synset for id {wnid!r}") from e


def wnid_of(synset) -> str:
    return f"{synset.pos()}{synset.offset():08d}"


if __name__ == "__main__":  # python -m swagcli.wordnet [install]: used by `make setup`
    import sys

    try:
        where = install(sys.argv[2] if len(sys.argv) > 2 else None)
        info = wordnet_info()
    except SwagError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"WordNet {info['version']} ready: {where}")
