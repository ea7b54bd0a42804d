"""What produced an output directory: the resolved recipe and the swag version, written beside
every output so any result can be rerun (``swag <command> --recipe DIR/recipe.yaml``)."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from swagcli import __version__
from swagcli.fileio import atomic_write_text, out_dir

__all__ = ["stamp", "atomic_write_text"]


def stamp(out_path: str | Path, kind: str, recipe, extra: dict | None = None) -> Path:
    """Write ``recipe.yaml`` (resolved, with its kind) and ``swag.json`` into ``out_path``."""
    from swagcli.recipes import dump

    out = out_dir(out_path)
    atomic_write_text(out / "recipe.yaml", f"# resolved recipe written by swag {__version__}\n"
                      f"# rerun: swag {kind} --recipe {out / 'recipe.yaml'}\n" + dump(recipe, kind))
    info = {
        "swag_version": __version__,
        "command": kind,
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "host": platform.node(),
        **(extra or {}),
    }
    atomic_write_text(out / "swag.json", json.dumps(info, indent=2) + "\n")
    return out



