"""Path specs as users write them: one rule for every command that takes files.

A spec that names an existing file or directory is taken as it is, whatever characters its name
holds (``data/[2020]/part.jsonl``, ``a[1].jsonl``, ``b{1,2}.jsonl``, ``star*.jsonl``). Otherwise
brace ranges are expanded (``part-{000..099}.tsv``, ``{a,b}.jsonl``; unbalanced braces are no
range), then each item that does not exist as it is is a glob (``*``, ``?``, ``[...]``; matches
sorted). In a pattern, ``[[]`` stands for a literal ``[`` (:func:`glob.escape`).

As the shell does, a glob that matches nothing comes back as it is, and so does a name that does
not exist: the caller says what is missing (:func:`is_pattern` tells which of the two it was).
"""

from __future__ import annotations

import glob
import os

from braceexpand import UnbalancedBracesError, braceexpand


def is_pattern(item: str) -> bool:
    """Whether ``item`` holds glob characters (``*``, ``?``, ``[``)."""
    return glob.has_magic(item)


def expand(spec: str | os.PathLike) -> list[str]:
    """The paths a spec stands for, in order: itself where it exists; else its brace items, each
    itself where it exists, else its glob matches (sorted), else itself (missing)."""
    spec = os.fspath(spec)
    if os.path.lexists(spec):
        return [spec]
    try:
        items = list(braceexpand(spec))
    except UnbalancedBracesError:
        items = [spec]
    out: list[str] = []
    for item in items:
        if os.path.lexists(item) or not is_pattern(item):
            out.append(item)
        else:
            out.extend(sorted(glob.glob(item)) or [item])
    return out
