"""Shared by the fault sweep (and other tests): the one-line-error check and hashes that show
earlier outputs are intact; the `cli` fixture (swag in this process) is in tests/conftest.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import Result  # noqa: F401 - the `cli` fixture lives in tests/conftest.py


def one_line_error(res: Result, *needles: str, code: int = 2) -> str:
    """The command failed with ``code`` and ended saying so in one line starting ``error:`` (its
    last line: progress bars may come before it), no traceback; returns that line."""
    assert res.code == code, res
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), res
    assert sum(ln.startswith("error:") for ln in lines) == 1, res
    assert "Traceback" not in res.err and "Traceback" not in res.out, res
    for n in needles:
        assert n in lines[-1], (n, res)
    return lines[-1]


def tree_hash(root: str | Path) -> dict[str, str]:
    """{relative path: sha1} of every file under ``root`` (swag's directory lock aside): equal
    before and after = untouched."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".swag.lock"}
