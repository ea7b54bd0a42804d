"""`swag pretrain` against a real one-node SLURM cluster (scripts/slurm-cluster.sh): a 2-task gloo
DDP job, a preempted job that checkpoints, requeues and ends with the uninterrupted weights, a
failing job reported in one line with its log, --status/--cancel, resource checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from swagcli import launch, recipes
from swagcli.errors import SwagError
from swagcli.train import checkpoint as ck
from swagcli.train.dist import DistEnv
from swagcli.train.engine import train
from swagcli.train.models import build_model

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def cluster():
    """Start the local cluster (installing it on first use); stop it afterwards if we started it."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("the local SLURM cluster needs root on Debian")
    script = ["bash", str(REPO / "scripts/slurm-cluster.sh")]
    was_up = subprocess.run(script + ["status"], capture_output=True).returncode == 0
    res = subprocess.run(script + ["start"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    yield True
    if not was_up:
        subprocess.run(script + ["stop"], capture_output=True)


def slurm_recipe(world, out, steps, **over):
    sets = [f"data.plan={world['plan']}", "data.shards=[" + ",".join(world["shards"]) + "]",
            "data.workers=0", "data.shuffle_buffer=200", "log_every=1", "batch_size=32", "micro_batch=16",
            f"samples={32 * steps}", "checkpoint_every=1000", "eval_samples=64",
            "launcher.slurm.tasks_per_node=2", "launcher.slurm.time=10"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return recipes.load("pretrain", REPO / "recipes/pretrain/test_vit.yaml", flags={"out": str(out)}, overrides=sets)


def weights(ckpt) -> dict:
    m = build_model("test_vit", 66, {"img_size": 32, "patch_size": 8})
    ck.load_weights(m, Path(ckpt))
    return m.state_dict()


def steps_logged(run) -> int:
    f = Path(run) / "metrics.jsonl"
    return sum(1 for line in open(f) if '"loss"' in line) if f.is_file() else 0


def test_two_task_job_and_preemption_requeue_resume(cluster, tiny_world, tmp_path):
    # uninterrupted reference: 1 process, 2 workers, accumulation 2 == 2 tasks x 1 stream each
    # 60 steps: a warm machine runs ~20 a second, and the preemption must land before the end
    # (with 10 steps and a 0.5 s poll, the job could finish before it was interrupted)
    steps = 60
    ref = slurm_recipe(tiny_world, tmp_path / "ref", steps, **{"data.workers": 2, "launcher.slurm": "null"})
    ref_res = train(ref, DistEnv(), progress=False)

    r = slurm_recipe(tiny_world, tmp_path / "job", steps)
    job = launch.submit_slurm(train, r, tmp_path / "job", "swag-test")
    deadline = time.time() + 240
    while steps_logged(tmp_path / "job") < 3:  # let it train a few steps, then preempt it
        assert time.time() < deadline, "job did not start"
        assert job.state not in ("FAILED", "CANCELLED", "COMPLETED"), job.state
        time.sleep(0.05)
    job._interrupt()  # what SLURM does on preemption: SIGTERM, then USR2
    assert steps_logged(tmp_path / "job") < steps // 2, "the job ran past half its steps before the preemption"
    info = json.loads((tmp_path / "job" / "slurm-job.json").read_text())
    res = launch.wait_slurm(job, info)
    assert res["status"] == "finished" and res["step"] == steps
    assert res["resumed_from"] is not None  # the requeued job continued from the checkpoint
    swag_json = json.loads((tmp_path / "job" / "swag.json").read_text())
    assert swag_json["world_size"] == 2
    a, b = weights(res["checkpoint"]), weights(ref_res["checkpoint"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_failed_job_is_one_line_with_log(cluster, tiny_world, tmp_path, swag):
    rec = tmp_path / "r.yaml"
    r = slurm_recipe(tiny_world, tmp_path / "bad", 4, **{"data.shards": "['/nonexistent/x.tar']"})
    rec.write_text(recipes.dump(r, "pretrain"))
    res = swag("pretrain", "--recipe", rec, "--wait")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "SLURM job" in line and "failed" in line and "log: " in line and "no such image shard" in line


def test_status_and_cancel(cluster, tiny_world, tmp_path, swag):
    rec = tmp_path / "r.yaml"
    rec.write_text(recipes.dump(slurm_recipe(tiny_world, tmp_path / "long", 100000), "pretrain"))
    res = swag("pretrain", "--recipe", rec, check=True)
    assert "job id" in res.stdout and "swag pretrain --cancel" in res.stdout
    try:
        again = swag("pretrain", "--recipe", rec)  # a second job into the same run directory: refused
        # (pending: the job recorded there is queued; running: its rank 0 holds the directory's lock)
        line = again.stderr.strip().splitlines()[-1]
        assert again.returncode == 2 and "SLURM job" in line and ("is already" in line or "in use by swag pretrain"
                                                                  in line), again.stderr
        assert swag("pretrain", "--status", tmp_path / "long", check=True).returncode == 0
    finally:
        swag("pretrain", "--cancel", tmp_path / "long", check=True)
    job, _ = launch.slurm_job(tmp_path / "long")
    deadline = time.time() + 60
    while "CANCELLED" not in job.state and time.time() < deadline:
        time.sleep(1)
    assert "CANCELLED" in job.state


@pytest.mark.parametrize("over, needle", [
    ({"launcher.slurm.gpus_per_node": 1}, "no node of this cluster has GPUs"),
    ({"launcher.slurm.tasks_per_node": 4}, "do not fit a node"),
    ({"launcher.slurm.mem_gb": 100000}, "mem_gb"),
    ({"launcher.slurm.partition": "nope"}, "no partition"),
])
def test_resource_requests_are_checked_before_submission(cluster, tiny_world, tmp_path, over, needle):
    r = slurm_recipe(tiny_world, tmp_path / "x", 2, **over)
    with pytest.raises(SwagError, match=needle):
        launch.submit_slurm(train, r, tmp_path / "x", "swag-test")
    assert not (tmp_path / "x" / "slurm-job.json").exists()


def test_vocab_and_sample_as_job_arrays_equal_local(cluster, tiny_world, tmp_path, swag):
    dumps = str(tiny_world["world"] / "dumps")
    slurm = ["--set", "launcher.slurm.time=10"]
    swag("vocab", "build", dumps, "--out", tmp_path / "v_local", "--head-min-images", "60", check=True)
    res = swag("vocab", "build", dumps, "--out", tmp_path / "v_slurm", "--head-min-images", "60", *slurm, check=True)
    assert "canonical hashtags" in res.stdout
    local = json.loads((tmp_path / "v_local" / "vocab.json").read_text())
    remote = json.loads((tmp_path / "v_slurm" / "vocab.json").read_text())
    assert remote["hashtags"] == local["hashtags"] and remote["stats"]["posts"] == local["stats"]["posts"]
    assert any((tmp_path / "v_slurm" / "slurm").iterdir())  # the array jobs' logs
    for out, extra in (("p_local", []), ("p_slurm", slurm)):
        swag("sample", "--vocab", tmp_path / "v_local", dumps, "--out", tmp_path / out, "-m", "3000",
             "--label-noise", "0.1", *extra, check=True)
    exp = [swag("sample", "export", tmp_path / out, check=True).stdout for out in ("p_local", "p_slurm")]
    assert exp[0] == exp[1] and exp[0].count("\n") > 500
    a, b = (json.loads((tmp_path / o / "summary.json").read_text()) for o in ("p_local", "p_slurm"))
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_a_run_resubmitted_on_fewer_tasks_sees_the_epoch_as_planned(cluster, tiny_world, tmp_path, swag):
    """Nodes lost: a 2-task job is stopped (its checkpoint written), and the run goes on as a job of
    one task. Every planned sample of the epoch is trained on exactly as planned (counted from
    data.log_keys), and the result says the run moved from 2 processes to 1."""
    from tests.train.test_elastic import assert_epoch_zero_as_planned, elastic_recipe

    out = tmp_path / "job"
    slurm = {"data.workers": 1, "micro_batch": 32, "launcher.slurm.tasks_per_node": 2, "launcher.slurm.time": 10}
    job = launch.submit_slurm(train, elastic_recipe(tiny_world, out, **slurm), out, "swag-test")
    deadline = time.time() + 240
    while steps_logged(out) < 4:
        assert time.time() < deadline, "job did not start"
        assert job.state not in ("FAILED", "CANCELLED", "COMPLETED"), job.state
        time.sleep(0.5)
    swag("pretrain", "--cancel", out, check=True)  # stopped for good: it checkpoints, nothing requeues
    deadline = time.time() + 120
    while time.time() < deadline and subprocess.run(["squeue", "-h", "-j", job.job_id], capture_output=True,
                                                    text=True).stdout.strip():
        time.sleep(1)  # gone from the queue (COMPLETING still holds the run directory)
    assert ck.latest(out / "checkpoints", resume=True) is not None
    one = elastic_recipe(tiny_world, out, **{**slurm, "launcher.slurm.tasks_per_node": 1})
    job = launch.submit_slurm(train, one, out, "swag-test")
    res = launch.wait_slurm(job, json.loads((out / "slurm-job.json").read_text()))
    assert res["status"] == "finished" and res["resumed_from"]
    assert res["streams"]["resumed_on"] == {"was": {"processes": 2, "workers": 1},
                                            "now": {"processes": 1, "workers": 1}}
    assert_epoch_zero_as_planned(out, tiny_world["plan"])
