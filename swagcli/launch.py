"""Run a task function locally (in this process, or N local processes with torch.distributed) or
on SLURM through submitit. It knows nothing about models: a task is a plain function
``fn(recipe, env) -> dict`` (e.g. :func:`swagcli.train.engine.train`), the same in every case.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path

from swagcli.errors import SwagError
from swagcli.fileio import atomic_write_text
from swagcli.train.dist import dist_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, fn, recipe, world: int, port: int, err_dir: str, result_file: str):
    """One of N local processes: set torch.distributed's environment, run, report errors."""
    from swagcli.signals import rank_process_init

    rank_process_init()  # stop (checkpoint, exit) when the launching process dies
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    try:
        result = fn(recipe, dist_env(), progress=local_rank == 0)
        if local_rank == 0:
            import json

            Path(result_file).write_text(json.dumps(result))
    except SwagError as e:
        Path(err_dir, f"rank{local_rank}.err").write_text(str(e))
        sys.exit(2)
    except BaseException:
        Path(err_dir, f"rank{local_rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    # Done and reported: leave without the interpreter's teardown, where gloo's worker threads may
    # still hold tensors and abort the process ("terminate called without an active exception",
    # seen with torch 2.14 after a finished run; pytorch/pytorch#179291), failing a run that is whole.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_local(fn, recipe, processes: int, scratch: Path) -> dict:
    """Run ``fn`` in-process (1) or in ``processes`` spawned processes; returns rank 0's result."""
    if processes <= 1:
        return fn(recipe, dist_env())
    import json

    import torch.multiprocessing as mp

    scratch.mkdir(parents=True, exist_ok=True)
    err_dir = scratch / "errors"
    err_dir.mkdir(exist_ok=True)
    for f in err_dir.glob("*.err"):
        f.unlink()
    result_file = scratch / "result.local.json"
    result_file.unlink(missing_ok=True)
    ctx = mp.start_processes(_worker, args=(fn, recipe, processes, _free_port(), str(err_dir), str(result_file)),
                             nprocs=processes, start_method="spawn", join=False)
    try:
        with _forward_stop_signals(ctx.pids()):
            while not ctx.join():
                pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException):  # (their base is not exported by every torch)
        errs = sorted(err_dir.glob("*.err"))
        if errs:
            first = errs[0].read_text().strip()
            raise SwagError(first if "\n" not in first else
                            f"{errs[0].stem} failed: {first.splitlines()[-1]} (full traceback: {errs[0]})") from None
        raise SwagError(f"a training process died without a message (see {err_dir})") from None
    return json.loads(result_file.read_text())


def _forward_stop_signals(pids: list[int]):
    """While local training processes run, a stop signal sent to this process (only) is passed on
    to them: each finishes its update, rank 0 checkpoints, all return ``preempted``. (A Ctrl-C in
    the terminal reaches the ranks twice, from the terminal and from here: one stop, as a repeat
    within a second is not taken for a second Ctrl-C.)"""
    import contextlib
    import signal

    @contextlib.contextmanager
    def forward():
        def handler(signum, frame):  # noqa: ARG001
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
        prev = {s: signal.signal(s, handler) for s in sigs}
        try:
            yield
        finally:
            for s, h in prev.items():
                signal.signal(s, h)

    return forward()


# -- SLURM through submitit ------------------------------------------------------------------------
class SlurmTask:
    """What submitit runs on every task of the job: set torch.distributed's environment from
    SLURM's, run the task function, and on preemption requeue (after the function has written
    its checkpoint).

    submitit's own USR2 handler calls :meth:`checkpoint` and requeues at once, in the middle of a
    step. Instead the engine takes USR2 over while it trains (stop after the current update, write
    a checkpoint on every rank's behalf, return ``status: preempted``); only then does rank 0 hand
    the signal back to submitit's handler, which calls :meth:`checkpoint`, requeues and exits. The
    requeued job resumes from that checkpoint (``resume: auto``) with the same data stream.
    """

    def __init__(self, fn, recipe, name: str = "swag-job"):
        self.fn = fn
        self.recipe = recipe
        self.name = name

    def __call__(self):
        import signal
        import time

        import submitit

        job = submitit.JobEnvironment()
        os.environ.update(MASTER_ADDR=job.hostnames[0],
                          MASTER_PORT=str(20000 + int(str(job.job_id).split("_")[0]) % 20000),
                          RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks),
                          LOCAL_RANK=str(job.local_rank))
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        from swagcli.runlock import run_lock

        lock = run_lock(self.recipe.out if job.global_rank == 0 else None, self.name.removeprefix("swag-"))
        try:
            with lock:  # rank 0 holds the run directory; a requeue of this job takes it over
                result = self.fn(self.recipe, dist_env(), progress=False)
        finally:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        if result.get("status") == "preempted" and cancelled(self.recipe.out):
            result["status"] = "cancelled"  # scancel's SIGTERM looks like a preemption: no requeue
        if result.get("status") == "preempted":
            if job.global_rank == 0 and callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # checkpoint() -> scontrol requeue -> exit
            time.sleep(600)  # other ranks: the requeue ends this job step
        return result

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTask(self.fn, self.recipe, self.name))


def _sinfo() -> list[dict]:
    import subprocess

    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%P"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise SwagError(f"launcher.slurm: cannot query SLURM (sinfo: {e})") from None
    nodes = []
    for line in out.splitlines():
        name, cpus, mem, gres, part = line.split("|")
        nodes.append({"name": name, "cpus": int(cpus), "mem_mb": int(mem), "gres": gres,
                      "partition": part.rstrip("*")})
    return nodes


def check_resources(cfg) -> None:
    """Refuse requests the cluster cannot meet, before anything is submitted."""
    nodes = _sinfo()
    if cfg.partition:
        nodes = [n for n in nodes if n["partition"] == cfg.partition]
        if not nodes:
            raise SwagError(f"launcher.slurm.partition: no partition {cfg.partition!r} on this cluster")
    if not nodes:
        raise SwagError("launcher.slurm: the cluster reports no nodes")
    names = {n["name"] for n in nodes}
    if cfg.nodes > len(names):
        raise SwagError(f"launcher.slurm.nodes: {cfg.nodes} requested, the cluster has {len(names)}")
    if cfg.gpus_per_node and not any("gpu" in n["gres"] for n in nodes):
        raise SwagError(f"launcher.slurm.gpus_per_node: {cfg.gpus_per_node} GPUs requested, "
                        "but no node of this cluster has GPUs (GRES)")
    tasks = cfg.tasks_per_node or max(1, cfg.gpus_per_node)
    cpus = max(n["cpus"] for n in nodes)
    if tasks * cfg.cpus_per_task > cpus:
        raise SwagError(f"launcher.slurm: {tasks} tasks x {cfg.cpus_per_task} CPUs per task do not fit "
                        f"a node of {cpus} CPUs")
    mem = max(n["mem_mb"] for n in nodes)
    if cfg.mem_gb and cfg.mem_gb * 1024 > mem:
        raise SwagError(f"launcher.slurm.mem_gb: {cfg.mem_gb} GB requested, nodes have {mem // 1024} GB")


def submit_slurm(fn, recipe, out: Path, name: str):
    """Submit ``fn(recipe, env)`` as a SLURM job through submitit; returns the submitit job."""
    import json

    import submitit

    from swagcli.runlock import probe_free

    cfg = recipe.launcher.slurm
    check_resources(cfg)
    probe_free(out)  # no local run is writing there now
    _refuse_if_active(out)  # nor a job submitted before
    folder = Path(cfg.folder) if cfg.folder else out / "slurm"
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm",
                               slurm_max_num_timeout=cfg.max_requeues)
    tasks = cfg.tasks_per_node or max(1, cfg.gpus_per_node)
    params = {"nodes": cfg.nodes, "tasks_per_node": tasks, "cpus_per_task": cfg.cpus_per_task,
              "timeout_min": cfg.time, "name": name, "slurm_partition": cfg.partition,
              "gpus_per_node": cfg.gpus_per_node or None, "slurm_account": cfg.account,
              "slurm_qos": cfg.qos, "slurm_constraint": cfg.constraint, "mem_gb": cfg.mem_gb,
              "slurm_additional_parameters": dict(cfg.extra) or None}
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    (out / CANCEL_MARK).unlink(missing_ok=True)
    job = ex.submit(SlurmTask(fn, recipe, name))
    out.mkdir(parents=True, exist_ok=True)
    info = {"job_id": job.job_id, "folder": str(folder), "stdout": str(job.paths.stdout),
            "stderr": str(job.paths.stderr), "name": name}
    atomic_write_text(out / "slurm-job.json", json.dumps(info, indent=1) + "\n")
    return job


_ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
           "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT")


def _refuse_if_active(out: Path) -> None:
    """A second job into a run directory whose job is still queued or running would race it."""
    import json
    import subprocess

    f = Path(out) / "slurm-job.json"
    if not f.is_file():
        return
    try:
        info = json.loads(f.read_text())
        job_id = str(info["job_id"]).split("_")[0]
        # squeue knows a job the moment it is queued (accounting may not yet: submitit says UNKNOWN)
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                               timeout=30).stdout.strip().splitlines()
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return  # SLURM not reachable from here: nothing to compare with
    state = state[0] if state else ""
    if any(state.startswith(a) for a in _ACTIVE):
        raise SwagError(f"{out}: SLURM job {info['job_id']} is already {state} for this run directory; "
                        f"wait for it, or cancel it first (swag pretrain --cancel {out})")


CANCEL_MARK = "slurm-cancelled"


def cancel_slurm(out: Path):
    """Cancel the run's job for good: the mark is written first, so the SIGTERM scancel sends is not
    taken for a preemption (which would requeue the job)."""
    job, info = slurm_job(out)
    atomic_write_text(Path(out) / CANCEL_MARK, f"{info['job_id']}\n")
    job.cancel(check=False)
    return job, info


def cancelled(out) -> bool:
    return bool(out) and (Path(out) / CANCEL_MARK).is_file()


def slurm_job(out: Path):
    """The submitit job recorded in a run directory."""
    import json

    import submitit

    f = Path(out) / "slurm-job.json"
    if not f.is_file():
        raise SwagError(f"{out}: no SLURM job was submitted from this run directory")
    info = json.loads(f.read_text())
    return submitit.SlurmJob(folder=info["folder"] + "/%j", job_id=info["job_id"]), info


def wait_slurm(job, info: dict) -> dict:
    """Wait for a submitted job; a failure becomes one line naming the SLURM log."""
    import submitit

    try:
        return job.results()[0]  # rank 0's result (every task returns one)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
        raise _failure(e, info) from None


def _failure(e: Exception, info: dict) -> SwagError:
    """One line: the job, the last error line of its traceback, and where its log is."""
    last = [line for line in str(e).splitlines() if line.strip()]
    why = next((line for line in reversed(last) if "Error" in line), last[-1] if last else "failed")
    return SwagError(f"SLURM job {info['job_id']} failed: {why.strip()} (log: {info['stderr']})")


def slurm_mapper(cfg, folder: Path, name: str):
    """A ``map_shards``-compatible function that runs each shard as one task of a SLURM job
    array (then the caller merges, as it does locally): results come back in shard order."""

    def mapper(fn, jobs, workers=1, progress=None, stage="shards"):
        import time

        import submitit

        check_resources(cfg)
        ex = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster="slurm")
        params = {"nodes": 1, "tasks_per_node": 1, "cpus_per_task": cfg.cpus_per_task,
                  "timeout_min": cfg.time, "name": f"{name}-{stage.replace(' ', '-')}",
                  "slurm_partition": cfg.partition, "slurm_account": cfg.account, "slurm_qos": cfg.qos,
                  "slurm_constraint": cfg.constraint, "mem_gb": cfg.mem_gb,
                  "slurm_additional_parameters": dict(cfg.extra) or None}
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        arrays = ex.map_array(fn, *zip(*jobs)) if jobs else []
        if progress:
            progress(stage, 0, len(arrays))
        while True:
            done = sum(j.done() for j in arrays)
            if progress:
                progress(stage, done, len(arrays))
            if done == len(arrays):
                break
            time.sleep(1)
        for job in arrays:
            try:
                yield job.result()
            except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
                raise _failure(e, {"job_id": job.job_id, "stderr": str(job.paths.stderr)}) from None

    return mapper
