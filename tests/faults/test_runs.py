"""Fault sweep: run directories. One run per directory at a time; a resume continues the same
run or is refused; a damaged checkpoint is named in one line (and resume falls back past it); a
finished run rerun is a no-op."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import one_line_error, tree_hash

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes/pretrain/test_vit.yaml"


def pretrain_args(world, out, *extra):
    return ["pretrain", "-r", RECIPE, "--out", out, "--plan", world["plan"], "--shards", world["world"] / "images",
            "--set", "data.workers=0", "--set", "batch_size=32", "--set", "log_every=1",
            "--set", "checkpoint_every=1", "--set", "keep_checkpoints=2", "--set", "eval_samples=64", *extra]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_never_into_an_existing_run_is_refused(cli, tmp_path, tiny_world):
    """Pruning deleted the new run's final checkpoint, result.json named a missing file and a probe
    of the directory then evaluated the old run's weights."""
    run = tmp_path / "run"
    assert cli(*pretrain_args(tiny_world, run, "--set", "samples=96")).code == 0
    before = tree_hash(run / "checkpoints")
    one_line_error(cli(*pretrain_args(tiny_world, run, "--set", "samples=32", "--resume", "never")),
                   str(run), "--resume never", "step 3")
    assert tree_hash(run / "checkpoints") == before


def test_resume_with_a_changed_recipe_is_refused_unless_forced(cli, tmp_path, tiny_world):
    run = tmp_path / "run"
    assert cli(*pretrain_args(tiny_world, run, "--set", "samples=64")).code == 0
    err = one_line_error(cli(*pretrain_args(tiny_world, run, "--set", "samples=128", "--set", "optim.lr=0.01")),
                         "recipe changed", "--resume force")
    assert "optim.lr: 0.002 -> 0.01" in err and "samples: 64 -> 128" in err
    # another model: named as a recipe change, not torch's cut-off "Error(s) in loading state_dict"
    err = one_line_error(cli(*pretrain_args(tiny_world, run, "--set", "samples=64",
                                            "--set", "model.kwargs.patch_size=4")), "model.kwargs.patch_size: 8 -> 4")
    assert "state_dict" not in err
    # what may change on a resume (logging, checkpoint cadence, workers' count aside) is no change
    res = cli(*pretrain_args(tiny_world, run, "--set", "samples=128", "--set", "optim.lr=0.01",
                             "--resume", "force", "--set", "log_every=2"))
    assert res.code == 0, res
    assert json.loads((run / "result.json").read_text())["step"] == 4
    assert any(m.get("resumed_with_changes") for m in metrics(run))


def test_rerunning_a_finished_run_changes_nothing(cli, tmp_path, tiny_world):
    """It crashed (UnboundLocalError: loss_val) and wrote another evaluation row each time."""
    run = tmp_path / "run"
    args = pretrain_args(tiny_world, run, "--set", "samples=64")
    assert cli(*args).code == 0
    rows, result = metrics(run), json.loads((run / "result.json").read_text())
    res = cli(*args)
    assert res.code == 0, res
    assert "already finished" in res.out + res.err
    assert metrics(run) == rows
    assert json.loads((run / "result.json").read_text()) == result


def _damage(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("{ not json")


@pytest.mark.parametrize("name,how", [("model.safetensors", "truncate"), ("meta.json", "garble"),
                                      ("vocab.json", "garble"), ("train_state.safetensors", "truncate")])
def test_a_damaged_checkpoint_is_named_and_resume_falls_back(cli, tmp_path, tiny_world, name, how):
    run = tmp_path / "run"
    assert cli(*pretrain_args(tiny_world, run, "--set", "samples=64")).code == 0
    last = run / "checkpoints" / "step-00000002"
    _damage(last / name, how)
    down = tiny_world["world"] / "downstream"
    if name != "train_state.safetensors":  # what evaluation reads
        err = one_line_error(cli("probe", "-c", run, "--train", down / "train", "--val", down / "val",
                                 "-o", tmp_path / "p"), str(last / name))
        assert "step-00000001" in err  # the intact one is named
    res = cli(*pretrain_args(tiny_world, run, "--set", "samples=96"), "--resume", "force")
    assert res.code == 0, res
    out = res.out + res.err
    assert "step-00000002" in out and "damaged" in out
    result = json.loads((run / "result.json").read_text())
    assert result["resumed_from"].endswith("step-00000001") and result["step"] == 3
    assert Path(result["checkpoint"]).is_dir()


def _holder(out: Path, job: str | None = None, seconds: float = 30) -> subprocess.Popen:
    env = {**os.environ, **({"SLURM_JOB_ID": job} if job else {})}
    env.pop("SWAG_HELD_LOCKS", None)
    code = ("import sys, time\nfrom swagcli.runlock import run_lock\n"
            f"with run_lock({str(out)!r}, 'pretrain'):\n    print('held', flush=True)\n    time.sleep({seconds})\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, cwd=REPO, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_two_runs_into_one_directory(cli, tmp_path, tiny_world):
    """One crashed and the other resumed the first one's checkpoint (another seed): a hybrid model."""
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        err = one_line_error(cli(*pretrain_args(tiny_world, run, "--set", "samples=32")), str(run), "in use by")
        assert f"pid {holder.pid}" in err and "swag pretrain" in err
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the process (kill -9): no stale lock
    assert cli(*pretrain_args(tiny_world, run, "--set", "samples=32")).code == 0


def test_a_requeued_slurm_job_takes_its_own_lock(tmp_path):
    from swagcli.runlock import run_lock

    out = tmp_path / "run"
    holder = _holder(out, job="4242", seconds=1.5)
    os.environ["SLURM_JOB_ID"] = "4242"
    try:
        t0 = time.monotonic()
        with run_lock(out, "pretrain"):  # waits for its earlier incarnation instead of refusing
            assert time.monotonic() - t0 > 1.0  # it did wait for the holder to let go
        assert time.monotonic() - t0 < 30
    finally:
        os.environ.pop("SLURM_JOB_ID")
        holder.kill()
        holder.wait()
    other = _holder(out, job="4242", seconds=30)
    os.environ["SLURM_JOB_ID"] = "999"
    try:
        from swagcli.errors import SwagError

        with pytest.raises(SwagError, match="SLURM job 4242"):
            with run_lock(out, "pretrain"):
                pass
    finally:
        os.environ.pop("SLURM_JOB_ID")
        other.send_signal(signal.SIGKILL)
        other.wait()
