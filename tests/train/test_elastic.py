"""Elastic resume: a pretraining run stopped on one number of processes x DataLoader workers and
resumed on another trains on every planned sample of the epoch exactly as planned, counted from
what each update trained on (``data.log_keys``), and says what changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from swagcli import recipes
from swagcli.errors import SwagError
from swagcli.train.dist import DistEnv
from swagcli.train.engine import request_stop, train, trained_on
from tests.conftest import run_swag
from tests.train.test_data import planned

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 118 * 64  # ~1.5 epochs of the tiny plan (5000): every stream finishes epoch 0


def elastic_recipe(world, out, **over):
    sets = [f"data.plan={world['plan']}", "data.shards=[" + ",".join(world["shards"]) + "]",
            "data.shuffle_buffer=200", "data.log_keys=true", "log_every=5", "batch_size=64",
            f"samples={SAMPLES}", "checkpoint_every=1000", "eval_samples=64"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return recipes.load("pretrain", REPO / "recipes/pretrain/test_vit.yaml", flags={"out": str(out)},
                        overrides=sets)


def assert_epoch_zero_as_planned(run: Path, plan) -> list:
    """Epoch 0 of every stream was trained on once through, each planned sample as often as
    planned: offsets 0..n-1 of each stream, none twice, none missing, and the keys are the plan's."""
    rows = trained_on(run)
    want, _ = planned(plan)
    by_stream: dict = {}
    for _, stream, epoch, offset, key in rows:
        if epoch == 0:
            by_stream.setdefault(stream, []).append(offset)
    for stream, offsets in by_stream.items():
        assert sorted(offsets) == list(range(len(offsets))), f"stream {stream}: offsets repeated or skipped"
    seen = Counter(key for _, _, epoch, _, key in rows if epoch == 0)
    assert seen == want and sum(seen.values()) == sum(want.values())
    assert len(rows) == SAMPLES  # and nothing beyond what the run trained on
    return rows


def test_one_worker_resumed_as_two_sees_the_epoch_as_planned(tiny_world, tmp_path):
    run = tmp_path / "run"
    first = train(elastic_recipe(tiny_world, run, **{"data.workers": 1, "data.streams": 4}), DistEnv(),
                  progress=False, on_step=lambda s: s == 20 and request_stop())
    assert first["status"] == "preempted" and first["step"] == 20
    second = train(elastic_recipe(tiny_world, run, **{"data.workers": 2}), DistEnv(), progress=False)
    assert second["status"] == "finished" and second["resumed_from"].endswith("step-00000020")
    assert second["streams"]["count"] == 4  # the run's four streams (data.streams left out: kept)
    assert second["streams"]["resumed_on"] == {"was": {"processes": 1, "workers": 1},
                                               "now": {"processes": 1, "workers": 2}}
    rows = assert_epoch_zero_as_planned(run, tiny_world["plan"])
    assert {u for u, *_ in rows} == set(range(second["step"]))
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("resumed_on") == second["streams"]["resumed_on"] for e in events)
    shown = run_swag("pretrain", "--status", run, check=True).stdout
    assert "1 process x 1 worker -> 1 process x 2 workers" in shown and "finished at step 118" in shown, shown


def test_two_processes_resumed_as_one_see_the_epoch_as_planned(tiny_world, tmp_path):
    """Preempted as SLURM does (SIGTERM to every process of the job), resumed on one process."""
    run = tmp_path / "run"
    rec = tmp_path / "r.yaml"
    rec.write_text(recipes.dump(elastic_recipe(tiny_world, run, **{"data.workers": 1,
                                                                   "launcher.local.processes": 2}), "pretrain"))
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    p = subprocess.Popen([sys.executable, "-m", "swagcli", "pretrain", "-r", str(rec)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (run / "keys").is_dir() or sum(f.stat().st_size for f in (run / "keys").iterdir()) < 40_000:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    res = train(elastic_recipe(tiny_world, run, **{"data.workers": 1}), DistEnv(), progress=False)
    assert res["status"] == "finished" and res["resumed_from"]
    assert res["streams"]["resumed_on"]["was"]["processes"] == 2
    assert res["streams"]["resumed_on"]["now"]["processes"] == 1
    assert_epoch_zero_as_planned(run, tiny_world["plan"])


def test_a_resume_that_leaves_a_process_without_a_stream_is_one_line(tiny_world, tmp_path):
    """The run's streams are fixed when it starts: a resume on more processes than they can feed
    is refused in one line (more workers than streams only leaves workers idle)."""
    from swagcli.train import checkpoint as ck
    from swagcli.train.engine import resumed_layout

    run = tmp_path / "run"
    first = train(elastic_recipe(tiny_world, run, **{"data.workers": 1, "data.streams": 1}), DistEnv(),
                  progress=False, on_step=lambda s: s == 2 and request_stop())
    st = ck.load_train_state(Path(first["checkpoint"]))
    assert st["layout"]["streams"] == 1
    r = elastic_recipe(tiny_world, run, **{"data.workers": 1})
    with pytest.raises(SwagError, match="dealt to 1 streams.*2 processes x 1 workers.*resume on fewer"):
        resumed_layout(st, DistEnv(rank=0, world=2), r, shards=4)
    assert resumed_layout(st, DistEnv(rank=0, world=1), r, shards=4)["streams"] == 1
    res = train(elastic_recipe(tiny_world, run, **{"data.workers": 2}), DistEnv(), progress=False)
    assert res["status"] == "finished" and res["streams"]["count"] == 1
