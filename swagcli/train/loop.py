"""The training loop: one for hashtag pretraining, MAE and finetuning.

A stage builds its model, optimizer, schedule and batches, then hands the loop a *step function*,
``step(batch, update) -> loss``: what one micro-batch costs (the forward pass and the objective's
loss; no backward, no optimizer). The loop owns everything else, the same for every stage:

* on the CPU, torch's threads: one per core the DataLoader workers leave free
  (:func:`~swagcli.train.runtime.training_threads`), restored after the run;
* stop signals (SIGUSR1/SIGTERM as SLURM sends, :mod:`swagcli.signals`): every rank stops at the
  next update boundary, after a checkpoint; a stop that cannot wait (a hung loader) is an
  :class:`~swagcli.errors.Interrupted` naming the step and the last checkpoint;
* gradient accumulation over micro-batches (DDP's ``no_sync`` on all but the last), autocast at
  the run's precision, the fp16 GradScaler, gradient clipping;
* the finite-loss check (a non-finite loss stops the run, naming the last good checkpoint);
* checkpoint cadence (every ``checkpoint_every`` updates, at the end, before a stop);
* logging (rank 0: progress bar, ``metrics.jsonl``, TensorBoard) with throughput in every line:
  samples/s per device, the share of time spent waiting on the loader, MFU;
* the result (``result.json``): status, step, checkpoint, loss, precision, speed and throughput,
  plus what the stage adds.

Hooks a stage may pass to :meth:`Loop.run`: ``after_update(step)`` (finetuning's EMA),
``evaluate(step)`` (mid-run held-out metrics every ``eval_every`` updates), ``abort()`` (rank 0's
reason to stop, e.g. the stream accounting found too little data) and ``log_fields()`` (fields for
the logged lines, e.g. bad samples so far).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from swagcli.errors import Interrupted, SwagError
from swagcli.signals import (STOP, check_stop, restore_signals, shutdown_loader, take_signals, waiting_for_data,
                             worker_death)
from swagcli.signals import name as signal_name
from swagcli.train.runtime import all_mean, any_rank, precision_name


@dataclass(frozen=True)
class Update:
    """Where a step function is called: the update being made (0-based) and its micro-batch."""

    step: int
    micro: int


class Loop:
    """One training run's loop (a context manager: signals taken on entry, the loader, log and
    signals released on exit; a stop that could not wait for an update boundary re-raised with
    where the run stands)."""

    def __init__(self, *, kind: str, out: Path, recipe, env, device, model, opt, sched, scaler, dtype,
                 accum: int, total: int, batches, what: str, samples_per_step: int, meter, module=None,
                 no_sync=None, step: int = 0, samples: int = 0, resumed_from: Path | None = None, save=None,
                 grad_clip: float = 0.0, on_step=None, progress: bool = True,
                 label: str | None = None, diverged_hint: str = ""):
        self.kind, self.out, self.recipe, self.env, self.device = kind, Path(out), recipe, env, device
        self.model, self.module = model, module if module is not None else model
        # micro-batches that accumulate without reducing gradients (DDP's no_sync; FSDP's own)
        self.no_sync = no_sync or getattr(self.module, "no_sync", contextlib.nullcontext)
        self.opt, self.sched, self.scaler, self.dtype = opt, sched, scaler, dtype
        self.accum, self.total, self.batches, self.what = accum, total, batches, what
        self.samples_per_step, self.step, self.samples = samples_per_step, step, samples
        self.resumed_from = self.last_checkpoint = resumed_from
        self.save, self.grad_clip, self.on_step, self.diverged_hint = save, grad_clip, on_step, diverged_hint
        self.meter = meter  # speed.meter(...): throughput, data wait, MFU
        self.status, self.loss = "finished", None
        self.samples_at_start = samples
        self.log = RunLog(self.out, env, recipe, total, progress, kind=kind, label=label) if env.is_main else None
        self._prev_signals, self._prev_threads = None, torch.get_num_threads()

    # -- the context ---------------------------------------------------------------------------------
    def __enter__(self) -> "Loop":
        from swagcli.train.runtime import training_threads

        self._prev_threads = torch.get_num_threads()
        self.threads = training_threads(self.device, self.recipe.data.workers)
        if self.threads:
            torch.set_num_threads(self.threads)
        self._prev_signals = take_signals()
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        try:
            if isinstance(exc, (Interrupted, RuntimeError)):  # torch raises a worker's death anywhere
                e = worker_death(exc, self.what)
                if isinstance(e, Interrupted):
                    where = (f"; last checkpoint: {self.last_checkpoint}" if self.last_checkpoint
                             else "; no checkpoint was written")
                    raise Interrupted(f"{e} at step {self.step}{where}: rerun the same command to resume",
                                      e.signum) from None
                if e is not exc:
                    raise e from None
            return False
        finally:
            shutdown_loader(self.batches)
            restore_signals(self._prev_signals or {})
            torch.set_num_threads(self._prev_threads)
            if self.log:
                self.log.stop()

    def event(self, m: dict) -> None:
        """A line in ``metrics.jsonl`` (rank 0)."""
        if self.log:
            self.log.event({"step": self.step, **m})

    # -- the loop ------------------------------------------------------------------------------------
    def next_batch(self):
        t = time.perf_counter()
        batch = next_batch(self.batches, self.what)
        self.meter.waited(time.perf_counter() - t)
        return batch

    def run(self, step_fn: Callable, *, after_update: Callable | None = None, evaluate: Callable | None = None,
            eval_every: int = 0, abort: Callable | None = None, log_fields: Callable | None = None) -> str:
        """Updates until ``total`` (or a stop); returns the status: finished | preempted."""
        env, device, dtype = self.env, self.device, self.dtype
        while self.step < self.total:
            self.opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            for micro in range(self.accum):
                batch = self.next_batch()
                sync = micro == self.accum - 1 or not env.distributed
                with (contextlib.nullcontext() if sync else self.no_sync()), \
                        torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = step_fn(batch, Update(self.step, micro))
                self.scaler.scale(loss / self.accum).backward()
                loss_sum += loss.detach()
            self.loss = all_mean(loss_sum / self.accum, env)
            if not math.isfinite(self.loss):
                self.status = "diverged"
                where = (f"; last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint
                         else "; no checkpoint was written")
                hint = f"; {self.diverged_hint}" if self.diverged_hint else ""
                raise SwagError(f"{self.kind}: non-finite loss ({self.loss}) at step {self.step + 1}{hint}{where}")
            if self.grad_clip:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            lr = self.opt.param_groups[0]["lr"]
            self.sched.step()
            self.step += 1
            self.samples += self.samples_per_step
            if after_update:
                after_update(self.step)
            metrics = {"step": self.step, "samples": self.samples, "loss": self.loss, "lr": lr,
                       **self.meter.snapshot(self.samples - self.samples_at_start)}
            if evaluate and eval_every and self.step % eval_every == 0 and self.step < self.total:
                metrics.update(evaluate(self.step))
            if self.log:
                self.log.step(metrics, log_fields)
            if self._end_of_update(abort() if abort else None):
                self.status = "preempted"
                break
        return self.status

    def _end_of_update(self, abort: str | None) -> bool:
        """Tell ``on_step``, agree across ranks whether a stop was requested (or rank 0 found a
        reason to abort: ``abort``), checkpoint (every ``checkpoint_every`` updates, at the end, or
        to stop); True when the loop must stop. An abort raises its message on rank 0, a pointer
        to it elsewhere."""
        if self.on_step:
            self.on_step(self.step)
        stop, aborted = any_rank((STOP["requested"], abort is not None), self.env, self.device)
        if aborted:
            raise SwagError(abort or "stopped: rank 0 found a reason to abort (its error says which)")
        if self.step % self.recipe.checkpoint_every == 0 or self.step == self.total or stop:
            self.checkpoint()
        return stop

    def checkpoint(self) -> None:
        """``save()`` on every rank (rank 0 writes and returns the path), then a barrier: no rank
        runs ahead of a checkpoint being written."""
        if self.save is not None:
            path = self.save()
            if path is not None:
                self.last_checkpoint = path
        if self.env.distributed:
            import torch.distributed as dist

            dist.barrier()

    # -- the result ----------------------------------------------------------------------------------
    def result(self, **fields) -> dict:
        """The run's result (written to ``result.json`` by rank 0): the loop's part, then ``fields``."""
        from swagcli.train import speed

        res = {"status": self.status, "step": self.step,
               "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
               "run_dir": str(self.out), "resumed_from": str(self.resumed_from) if self.resumed_from else None,
               "last_loss": self.loss,
               **({"signal": signal_name(STOP["signum"])} if self.status == "preempted" else {}),
               "speed": speed.describe(self.recipe.speed, self.device),
               "throughput": {**self.meter.summary(self.samples - self.samples_at_start),
                              "torch_threads": torch.get_num_threads()},
               "precision": {"autocast": precision_name(self.dtype), "grad_scaler": self.scaler.is_enabled(),
                             "device": self.device.type},
               **fields}
        if self.log:
            self.log.close(res)
        return res


def next_batch(it, what: str):
    """The next batch, waiting as a stop signal allows (:func:`swagcli.signals.waiting_for_data`);
    streams that all ended (none has data) are a one-line error, not a StopIteration."""
    with waiting_for_data():
        try:
            return next(it)
        except StopIteration:
            raise SwagError(f"{what}: every stream ended without data: the image shards hold none of the "
                            "plan's samples (are these the shards the plan was drawn from? data.shards)") from None
        except RuntimeError as e:
            raise worker_death(e, what) from None


def eval_batches(loader, final_what: str | None):
    """A loader's batches, ending early on a stop request (raising ``Interrupted`` when
    ``final_what`` names an evaluation that cannot be skipped)."""
    it = iter(loader)
    try:
        while True:
            if STOP["requested"]:
                if final_what:
                    check_stop(final_what)
                return
            with waiting_for_data():
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except RuntimeError as e:
                    raise worker_death(e, "evaluation") from None
            yield batch
    finally:
        shutdown_loader(it)


def in_lockstep(batches, env, device, limit: int | None = None, dummy: Callable | None = None):
    """``batches`` taken by every rank together, for a sharded model whose every forward pass is
    collective: one all-reduce per batch says whether some rank still has one (and how many images
    all took: the ranks stop together at ``limit``); a rank out of batches yields its last one
    again (``dummy()`` if it had none) marked ``ignore``, to be run and not counted."""
    import torch.distributed as dist

    last = None
    taken = 0
    it = iter(batches)
    while True:
        b = next(it, None)
        flags = torch.tensor([0.0 if b is None else 1.0, 0.0 if b is None else float(len(b["keys"]))], device=device)
        if env.distributed:
            dist.all_reduce(flags)
        if flags[0].item() == 0:
            return
        taken += int(flags[1].item())
        if b is None:
            yield {**(last if last is not None else dummy()), "ignore": True}
        else:
            last = b
            yield b
        if limit and taken >= limit:
            return


class RunLog:
    """Rank 0's view: rich progress bar (samples/s, loss, lr, data wait, MFU, ETA), metrics.jsonl,
    TensorBoard."""

    def __init__(self, out: Path, env, recipe, total_steps: int, progress: bool, kind: str = "pretrain",
                 label: str | None = None):
        from swagcli.runinfo import stamp

        stamp(out, kind, recipe, {"world_size": env.world})
        self.metrics = open(out / "metrics.jsonl", "a")
        self.tb = None
        if recipe.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SwagError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(out / "tensorboard"))
        self.every = recipe.log_every
        self.bar = None
        if progress:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            from swagcli.ui import err_console

            self.bar = Progress(TextColumn(label or kind, style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                TimeRemainingColumn(), console=err_console)
            self.task = self.bar.add_task("steps", total=total_steps, info="")
            self.bar.start()

    def step(self, m: dict, fields: Callable | None = None) -> None:
        """An update's metrics ``m``: logged every ``log_every`` updates (and with every evaluation),
        with ``fields()`` added (asked for only then); shown in the bar every time."""
        if m["step"] % self.every == 0 or any(k.startswith(("eval_", "val_")) for k in m):
            self.event({**m, **(fields() if fields else {})})
        if self.bar:
            extra = (f"  data wait {m['data_wait']:.0%}" if "data_wait" in m else "") + (
                f"  MFU {m['mfu']:.0%}" if m.get("mfu") is not None else "")
            self.bar.update(self.task, completed=m["step"],
                            info=f"{m['samples_per_s']:.0f} samples/s  loss {m['loss']:.3f}  lr {m['lr']:.2e}{extra}")

    def event(self, m: dict) -> None:
        self.metrics.write(json.dumps({"time": round(time.time(), 3), **m}) + "\n")
        self.metrics.flush()
        if self.tb:
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, m["step"])

    def close(self, result: dict) -> None:
        from swagcli.runinfo import atomic_write_text

        atomic_write_text(Path(self.metrics.name).with_name("result.json"), json.dumps(result, indent=1) + "\n")

    def stop(self) -> None:
        if self.bar:
            self.bar.stop()
        self.metrics.close()
        if self.tb:
            self.tb.close()
