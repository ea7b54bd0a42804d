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
from swagcli.train.dist import dist_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, fn, recipe, world: int, port: int, err_dir: str, result_file: str):
    """One of N local processes: set torch.distributed's environment, run, report errors."""
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
    try:
        mp.start_processes(_worker, args=(fn, recipe, processes, _free_port(), str(err_dir), str(result_file)),
                           nprocs=processes, start_method="spawn", join=True)
    except mp.ProcessException:
        errs = sorted(err_dir.glob("*.err"))
        if errs:
            first = errs[0].read_text().strip()
            raise SwagError(first if "\n" not in first else
                            f"{errs[0].stem} failed: {first.splitlines()[-1]} (full traceback: {errs[0]})") from None
        raise SwagError(f"a training process died without a message (see {err_dir})") from None
    return json.loads(result_file.read_text())
