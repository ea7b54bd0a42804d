"""Shared fixtures: real WordNet, a real Canonicalizer, the CLI as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def wn():
    from swagcli.wordnet import get_wordnet

    return get_wordnet()


@pytest.fixture(scope="session")
def canon():
    from swagcli.prep.canon import Canonicalizer

    return Canonicalizer()


def run_swag(*args, cwd=None, check=False, env=None) -> subprocess.CompletedProcess:
    """Run the real `swag` entry point in a subprocess (what a user types)."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "swagcli", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"swag {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def swag():
    return run_swag


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny synthetic world (recipes/synth/tiny.yaml), its vocabulary and a sample plan of
    5000 samples with 10% of the images held out: shared read-only by the tests that need real
    shards."""
    from swagcli import recipes
    from swagcli.prep import sample, synth, vocab

    root = tmp_path_factory.mktemp("tiny-world")
    world = root / "world"
    synth.run(recipes.load("synth", REPO / "recipes/synth/tiny.yaml", flags={"out": str(world)}))
    vocab.build(recipes.load("vocab", flags={"dumps": [str(world / "dumps")], "out": str(root / "vocab"),
                                             "head_min_images": 60}))
    sample.build(recipes.load("sample", flags={"vocab": str(root / "vocab"), "dumps": [str(world / "dumps")],
                                               "out": str(root / "plan"), "samples": 5000,
                                               "holdout": 0.1}))
    return {"root": root, "world": world, "vocab": root / "vocab", "plan": root / "plan",
            "shards": sorted(str(p) for p in (world / "images").glob("*.tar"))}


@pytest.fixture(scope="session")
def tiny_pretrained(tiny_world, tmp_path_factory):
    """test_vit pretrained on the tiny world's plan for 600 steps (~30 s; the recipe the pretraining
    test checks, 4x longer: at 150 steps the hashtag head told only 3 of the 10 downstream classes
    apart, too weak to test zero-shot transfer): the checkpoint the transfer tests start from.
    Steps 150, 300, 450 and 600 are kept. Returns the run's result."""
    from swagcli import recipes
    from swagcli.train.dist import DistEnv
    from swagcli.train.engine import train

    out = tmp_path_factory.mktemp("tiny-pretrained") / "run"
    sets = [f"data.plan={tiny_world['plan']}", "data.shards=[" + ",".join(tiny_world["shards"]) + "]",
            "data.workers=1", "data.shuffle_buffer=200", "log_every=1", "batch_size=64",
            "checkpoint_every=150", "keep_checkpoints=4", "samples=38400", "optim.lr=0.003"]
    r = recipes.load("pretrain", REPO / "recipes/pretrain/test_vit.yaml", flags={"out": str(out)}, overrides=sets)
    return train(r, DistEnv(), progress=False)


@pytest.fixture(scope="session")
def layouts(tmp_path_factory):
    """A small synthetic world written in every layout (swag dumps and shards, YFCC100M metadata,
    an img2dataset folder): (root, synth summary)."""
    from swagcli.prep.synth import run
    from swagcli.recipes import SynthRecipe

    out = tmp_path_factory.mktemp("layouts") / "world"
    summary = run(SynthRecipe(out=str(out), posts=500, concepts=40, dump_shards=3, image_size=16,
                              downstream_classes=6, downstream_train_per_class=2, downstream_val_per_class=2,
                              group_images=0, bad_line_prob=0.02, failed_download_prob=0.1, video_prob=0.05,
                              layouts=["yfcc", "img2dataset"]))
    return out, summary


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
