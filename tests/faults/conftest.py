"""Shared by the fault sweep: the CLI as a user meets it (in this process: no start-up cost), the
one-line-error check, and hashes that show earlier outputs are intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli("vocab", "build", ...)`` runs ``swag`` in this process; returns exit code, stdout, stderr."""
    from swagcli.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")

    def run(*args) -> Result:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        cap = capsys.readouterr()
        return Result(code, cap.out, cap.err)

    return run


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
