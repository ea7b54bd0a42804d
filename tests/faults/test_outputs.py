"""Fault sweep: outputs. Nothing a user already has is deleted or overwritten; a full disk or a
read-only folder is one line and leaves no partial file; earlier outputs stay intact."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.faults.conftest import one_line_error, tree_hash


def test_synth_keeps_a_users_own_dumps_and_images(cli, tmp_path):
    """The README lays real data out as DIR/dumps and DIR/images: synth --out DIR deleted them."""
    out = tmp_path / "data"
    (out / "dumps").mkdir(parents=True)
    (out / "images").mkdir()
    (out / "dumps" / "part-00000.jsonl").write_text('{"id": 1, "hashtags": ["dog"]}\n')
    (out / "images" / "00000.tar").write_bytes(b"\0" * 1024)
    before = tree_hash(out)
    one_line_error(cli("synth", "--out", out, "--posts", "20", "--concepts", "10"),
                   str(out), "dumps/part-00000.jsonl")
    assert tree_hash(out) == before


SMALL = ["--posts", "40", "--concepts", "10", "--set", "group_images=0", "--set", "downstream_classes=2",
         "--set", "downstream_train_per_class=1", "--set", "downstream_val_per_class=1", "--set", "image_size=16"]


def test_synth_replaces_its_own_world_but_not_a_file_added_to_it(cli, tmp_path):
    out = tmp_path / "world"
    assert cli("synth", "--out", out, *SMALL).code == 0
    assert cli("synth", "--out", out, *SMALL, "--seed", "1").code == 0  # its own world: replaced
    (out / "images" / "notes.txt").write_text("mine")
    before = tree_hash(out)
    one_line_error(cli("synth", "--out", out, *SMALL), "images/notes.txt")
    assert tree_hash(out) == before


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str = "400k"):
    """A real full disk: a tmpfs of ``size`` mounted under tmp_path (root and mount needed)."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _no_partials(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]


def test_full_disk_while_writing_a_vocabulary_is_one_line(cli, tmp_path):
    dump = tmp_path / "d.tsv"
    dump.write_text("".join(f"p{i}\t#eggplant #aubergine #brownbear\n" for i in range(50)))
    with small_disk(tmp_path, "64k") as disk:
        (disk / "filler").write_bytes(os.urandom(60_000))  # leave too little for the plot
        one_line_error(cli("vocab", "build", dump, "--out", disk / "v", "--head-min-images", "2"),
                       "disk full", str(disk / "v"))
        assert _no_partials(disk) == []


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(cli, tmp_path, tiny_world):
    """The checkpoint error never said the disk was full and left a .partial eating the rest."""
    import shutil

    with small_disk(tmp_path, "12m") as disk:
        run = disk / "run"
        args = ["pretrain", "-r", Path(__file__).parents[2] / "recipes/pretrain/test_vit.yaml", "--out", run,
                "--plan", tiny_world["plan"], "--shards", tiny_world["world"] / "images",
                "--set", "data.workers=0", "--set", "batch_size=32", "--set", "log_every=1",
                "--set", "checkpoint_every=1", "--set", "keep_checkpoints=1"]
        assert cli(*args, "--set", "samples=32").code == 0
        first = next((run / "checkpoints").glob("step-*"))
        before = tree_hash(first)
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 150_000))  # less than one more checkpoint
        one_line_error(cli(*args, "--set", "samples=96", "--resume", "force"), "disk full")
        assert _no_partials(disk) == []
        assert tree_hash(first) == before  # the last good checkpoint is whole
        (disk / "filler").unlink()
        assert cli(*args, "--set", "samples=96", "--resume", "force").code == 0  # and resumable
