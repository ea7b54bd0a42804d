"""The findings suite at CI size (recipes/ablations/findings-ci.yaml), run once per session and
shared by the runner and direction tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CI_SUITE = REPO / "recipes" / "ablations" / "findings-ci.yaml"


@pytest.fixture(scope="session")
def ci_findings(tmp_path_factory):
    """Returns (suite recipe, its folder, the findings, the log lines)."""
    from swagcli import recipes as R
    from swagcli.findings.runner import run

    root = tmp_path_factory.mktemp("findings")
    suite = R.load("findings", CI_SUITE, flags={"out": str(root / "out"), "report": str(root / "docs")})
    logs: list[str] = []
    doc = run(suite, CI_SUITE.parent, log=logs.append)
    return suite, root, doc, logs
