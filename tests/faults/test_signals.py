"""Fault sweep: signals and kills, on real processes. SIGTERM and Ctrl-C stop a run at the next
update with a checkpoint, say where, and exit 128 + the signal (resumable) instead of 0 (finished);
a run waiting for data that never comes still ends within seconds; nothing outlives a killed swag."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes/pretrain/test_vit.yaml"


def swag_proc(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("SWAG_HELD_LOCKS", None)
    return subprocess.Popen([sys.executable, "-m", "swagcli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def pretrain(world, out, *extra, shards=None):
    return ["pretrain", "-r", RECIPE, "--out", out, "--plan", world["plan"],
            "--shards", shards or world["world"] / "images", "--set", "batch_size=32", "--set", "log_every=1",
            "--set", "checkpoint_every=1000", "--set", "eval_samples=64", *extra]


def wait_for(cond, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def steps_logged(run: Path) -> int:
    f = run / "metrics.jsonl"
    return sum(1 for line in f.read_text().splitlines() if '"loss"' in line) if f.is_file() else 0


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_says_where_and_resumes(tiny_world, tmp_path, sig, code):
    """SIGTERM exited 0 like a finished run; SIGINT exited 130 with no message and no checkpoint."""
    run = tmp_path / "run"
    args = pretrain(tiny_world, run, "--set", "samples=1600", "--set", "data.workers=2")
    p = swag_proc(*args)
    wait_for(lambda: steps_logged(run) >= 3 or p.poll() is not None, 120, "training steps")
    p.send_signal(sig)
    t0 = time.monotonic()
    out, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 15
    assert p.returncode == code, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signal.Signals(sig).name}) at step"), err
    assert "Traceback" not in err
    ckpt = last.split("checkpoint ")[1].split(";")[0]
    assert Path(ckpt).is_dir() and "resume" in last
    stopped = int(Path(ckpt).name.split("-")[1])
    res = subprocess.run([sys.executable, "-m", "swagcli", *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished" and result["step"] == 50
    assert result["resumed_from"] == ckpt and stopped < 50


def foreign_shards(folder: Path, n: int = 3) -> Path:
    """Webdataset shards whose keys are in no plan (another collection's images)."""
    from swagcli.prep.synth_render import jpeg
    import numpy as np

    folder.mkdir()
    img = jpeg(np.zeros((32, 32, 3), np.uint8))
    for s in range(n):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(200):
                info = tarfile.TarInfo(f"other{s:02d}{i:05d}.jpg")
                info.size = len(img)
                import io

                tar.addfile(info, io.BytesIO(img))
    return folder


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_without_the_plans_ids_end_in_one_line(tiny_world, tmp_path, workers):
    """pretrain spun at 100% CPU for as long as it was let, ignoring SIGTERM."""
    shards = foreign_shards(tmp_path / "shards")
    p = swag_proc(*pretrain(tiny_world, tmp_path / "run", "--set", f"data.workers={workers}", shards=shards))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "none of the plan's" in lines[-1], err
    assert "Traceback" not in err


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_ends_a_run_waiting_for_data_within_seconds(tiny_world, tmp_path, workers):
    """A shard that never delivers (a FIFO nobody writes: a hung network file system) holds the
    stream in a blocking read; SIGTERM still ends the run within seconds, in one line."""
    shards = tmp_path / "shards"
    shards.mkdir()
    os.mkfifo(shards / "00000.tar")
    run = tmp_path / "run"
    p = swag_proc(*pretrain(tiny_world, run, "--set", f"data.workers={workers}", shards=shards))
    wait_for(lambda: (run / "metrics.jsonl").exists() or p.poll() is not None, 120, "the run to start")
    time.sleep(2)  # blocked in the read now
    assert p.poll() is None
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 15, err
    assert p.returncode == 143, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM) while waiting for data") and "no checkpoint" in last, err
    assert "Traceback" not in err


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_die_with_a_killed_swag(tiny_world, tmp_path):
    """DataLoader workers outlived a killed parent for a second or more."""
    run = tmp_path / "run"
    p = swag_proc(*pretrain(tiny_world, run, "--set", "samples=64000", "--set", "data.workers=2"))
    wait_for(lambda: steps_logged(run) >= 2 or p.poll() is not None, 120, "training steps")
    kids = _children(p.pid)
    assert len(kids) >= 2, kids
    p.kill()
    p.wait()
    t0 = time.monotonic()
    wait_for(lambda: not any(_alive(k) for k in kids), 5, "the workers to die")
    assert time.monotonic() - t0 < 1.0


def test_sigterm_ends_a_data_preparation_stage_cleanly(tmp_path):
    """Outside training loops SIGTERM raises in the main thread: pools are terminated, temporary
    files removed, exit 143; the interrupted synthetic world is replaced by the next run."""
    out = tmp_path / "world"
    p = swag_proc("synth", "--out", out, "--posts", "30000", "-j", "2")
    wait_for(lambda: (out / "dumps").is_dir() or p.poll() is not None, 60, "synth to start writing")
    time.sleep(1.0)
    kids = _children(p.pid)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert p.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGTERM)"), err
    wait_for(lambda: not any(_alive(k) for k in kids), 5, "the pool to end")
    assert not [q for q in out.rglob("*") if q.name.endswith(".tmp")]
    res = subprocess.run([sys.executable, "-m", "swagcli", "synth", "--out", str(out), "--posts", "40",
                          "--concepts", "10", "--set", "group_images=0", "--set", "downstream_classes=2",
                          "--set", "image_size=16"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("delay,group", [(1.0, False), (3.5, False), (6.0, False), (8.0, True)])
def test_sigterm_at_any_point_of_a_run_ends_it_within_seconds(tiny_world, tmp_path, delay, group):
    """Start-up, model building, training, evaluation: wherever SIGTERM lands (sent to swag alone,
    or as SLURM and `kill -TERM -PGID` do, to every process of the group, workers included), the
    run ends within seconds, with 143 (or the default death while Python is still starting), and
    never a traceback."""
    run = tmp_path / "run"
    p = swag_proc(*pretrain(tiny_world, run, "--set", "samples=3200", "--set", "data.workers=2"),
                  start_new_session=group)
    time.sleep(delay)
    t0 = time.monotonic()
    if group:
        os.killpg(p.pid, signal.SIGTERM)
    else:
        p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10, err
    assert p.returncode in (143, -signal.SIGTERM, 0), (out, err)
    assert "Traceback" not in err, err
    if p.returncode == 143:
        assert err.strip().splitlines()[-1].startswith("interrupted (SIGTERM)"), err


SUBSTITUTED = """
import os, signal, sys, time
from swagcli import cli

@cli.app.command("boom")
def boom():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except BaseException:  # what an import's own handler did with it (numpy.linalg, in the flake)
        raise {exc}("maximum recursion depth exceeded")

cli.main(["boom"])
"""


@pytest.mark.parametrize("exc", ["RecursionError", "ImportError", "ValueError"])
def test_sigterm_that_another_layer_turned_into_an_error_still_ends_as_interrupted(exc):
    """The Interrupted a SIGTERM raises can land inside code that catches it and raises something
    else (a lazy import did: a RecursionError escaped as a traceback). Once a stop signal has
    arrived, whatever ends the command ends it as interrupted, 128 + the signal, in one line."""
    res = subprocess.run([sys.executable, "-c", SUBSTITUTED.format(exc=exc)], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert res.returncode == 143, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == ["interrupted (SIGTERM)"], res.stderr


def test_sigterm_landing_where_python_swallows_exceptions_still_stops_the_run(capfd):
    """SIGTERM handled inside an at-fork hook or a __del__ (as a DataLoader worker's fork runs
    logging's at-fork hooks): Python ignores the Interrupted raised there and prints a traceback.
    The stop must survive into the training loop's signal handling, and nothing be printed."""
    from swagcli import signals

    class Dies:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, inside __del__

    signals.STOP.update(requested=False, signum=None, at=0.0, pending=False)
    with signals.interrupt_on_term():
        d = Dies()
        del d  # the Interrupted raised in __del__ is swallowed by Python
        prev = signals.take_signals()  # the training loop takes over the signals
        try:
            assert signals.STOP["requested"] and signals.STOP["signum"] == signal.SIGTERM
        finally:
            signals.restore_signals(prev)
            signals.STOP.update(requested=False, signum=None, at=0.0, pending=False)
    assert "Traceback" not in capfd.readouterr().err
