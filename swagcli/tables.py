"""The one CSV/TSV writer of swag: every table it writes for people (and spreadsheets) goes here.

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets (CSV injection): group, country, class and hashtag names come
from user files, so such cells get a leading ``'`` (OWASP's advice), which a spreadsheet shows as
text. Real numbers (``int``, ``float``, numpy scalars; negative ones too) are written as numbers.

The escape can be undone exactly (:func:`unescape`): a cell that already starts with quotes before
a formula character gets one more, so ``'=x`` is written ``''=x`` and reads back as ``'=x``. A
lone ``-`` (a placeholder for "none") is not a formula and stays as it is.
"""

from __future__ import annotations

import csv
import io
import numbers
import os

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_formula(text: str) -> bool:
    rest = text.lstrip("'")
    return rest.startswith(FORMULA_START) and rest != "-"


def cell(value, float_format: str = ".6g") -> str:
    """One value as the text written for it: None empty, numbers as numbers, text neutralized."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return format(float(value), float_format)
    text = str(value)
    return "'" + text if _is_formula(text) else text


def unescape(text: str) -> str:
    """The text a cell written by :func:`cell` came from (what a reader of swag's tables uses)."""
    return text[1:] if text.startswith("'") and _is_formula(text[1:]) else text


def write_csv(path: str | os.PathLike, rows, delimiter: str = ",", float_format: str = ".6g") -> None:
    """``rows`` (sequences of cells, the header first) written atomically to ``path``."""
    from swagcli.fileio import atomic_write_text

    # rows end in "\n", but a cell with a "\r" must be quoted too (csv quotes the terminator's characters)
    buf, lines = io.StringIO(), []
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\r\n")
    for row in rows:
        buf.seek(0)
        buf.truncate()
        w.writerow([cell(v, float_format) for v in row])
        lines.append(buf.getvalue()[:-2] + "\n")
    atomic_write_text(path, "".join(lines))
