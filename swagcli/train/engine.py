"""The pretraining loop: one function, the same on one CPU, one GPU, N local processes and SLURM.

``train(recipe, env)`` builds the model, the stream, the optimizer and the schedule, resumes from
the latest checkpoint if asked, and runs ``total_steps`` updates of ``batch_size`` samples each
(``micro_batch`` per process per forward, gradients accumulated across micro-batches and averaged
across processes). Rank 0 shows a progress bar, writes ``metrics.jsonl`` and checkpoints.
A preemption signal (SIGUSR1/SIGTERM, as SLURM sends) makes every rank stop at the next update,
after a checkpoint; a non-finite loss stops the run with the last good checkpoint kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from swagcli.errors import Interrupted, SwagError
from swagcli.signals import (STOP, check_stop, restore_signals, shutdown_loader, take_signals, waiting_for_data,
                             worker_death, workers_outlast_sigterm)
from swagcli.signals import name as signal_name
from swagcli.signals import request_stop  # noqa: F401 - the loops' API (finetune, tests)
from swagcli.train import account
from swagcli.train import checkpoint as ckpt_io
from swagcli.train import speed
from swagcli.train.data import StreamConfig, StreamPosition, make_loader
from swagcli.train.dist import DistEnv
from swagcli.train.losses import LOSSES, SoftmaxIdf, plan_idf, softmax_ce
from swagcli.train.models import build_model
from swagcli.train.optim import build_optimizer, build_scheduler

def end_of_update(step: int, total: int, checkpoint_every: int, env, device, on_step, save,
                  abort: str | None = None) -> bool:
    """What every training loop does after an update: tell ``on_step``, agree across ranks whether
    a stop was requested (or rank 0 found a reason to abort: ``abort``), checkpoint (every
    ``checkpoint_every`` steps, at the end, or to stop); returns True when the loop must stop
    (preempted). An abort raises its message on rank 0, a pointer to it elsewhere."""
    if on_step:
        on_step(step)
    stop, aborted = _any_rank((STOP["requested"], abort is not None), env, device)
    if aborted:
        raise SwagError(abort or "stopped: rank 0 found a reason to abort (its error says which)")
    if step % checkpoint_every == 0 or step == total or stop:
        save()
    return stop


def pick_device(name: str, env: DistEnv) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SwagError("device: cuda requested but no GPU is visible")
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the process group of ``env`` (once): NCCL on CUDA, gloo on the CPU."""
    if env.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def auto_dtype(device_type: str, bf16_supported: bool):
    """``precision: auto``: bf16 autocast on GPUs that have it (A100, H100, ...: no loss scaling
    needed), fp16 with a GradScaler only where they do not (V100, T4), fp32 on the CPU."""
    if device_type != "cuda":
        return None
    return torch.bfloat16 if bf16_supported else torch.float16


def amp_dtype(precision: str, device: torch.device):
    """The autocast dtype of a recipe's ``precision`` on ``device`` (None: fp32, no autocast). A
    GradScaler is used exactly when this is fp16."""
    if precision == "auto":
        return auto_dtype(device.type, device.type == "cuda" and torch.cuda.is_bf16_supported())
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def expand_shards(specs: list[str], plan: dict | None = None) -> list[str]:
    """Image shards: files, globs, brace ranges and folders (their ``*.tar``: an img2dataset
    output folder as it is). None given: the tar shards of the plan's sources where it was drawn
    from img2dataset shards (their keys are the plan's ids)."""
    from swagcli.paths import expand, is_pattern

    if not specs and plan is not None:
        from swagcli.prep.columnar import shard_tars
        from swagcli.prep.dumps import SHARD_RE

        parts = [p for p in plan["parts"] if p.get("source")]
        out = shard_tars([p["source"] for p in parts])
        if out:  # every img2dataset shard the plan draws from must be there: a missing one is not filled in
            gone = [p for p in parts if p["samples"] and SHARD_RE.match(Path(p["source"]).name)
                    and not Path(p["source"]).with_suffix(".tar").is_file()]
            if gone:
                n = sum(p["samples"] for p in gone)
                raise SwagError(f"data.shards: {Path(gone[0]['source']).with_suffix('.tar')}: image shard missing "
                                f"({len(gone)} of the plan's shards, {n:,} of its "
                                f"{plan['summary']['total_samples']:,} samples); restore it, or draw a new plan "
                                "from the folder as it is")
            return out
        raise SwagError("data.shards: no image shards given (and the plan was not drawn from "
                        "img2dataset shards whose tars could stand in)")
    out = []
    for spec in specs:  # existing names as they are ('[2020]/x.tar'), else brace ranges, globs
        for item in expand(spec):
            if Path(item).is_dir():
                hits = sorted(str(p) for p in Path(item).glob("*.tar"))
                if not hits:
                    raise SwagError(f"data.shards: {item}: folder holds no .tar shards")
                out.extend(hits)
            elif Path(item).is_file():
                out.append(item)
            else:
                raise SwagError(f"data.shards: {item}: no such image shard"
                                + (" (nothing matches this pattern)" if is_pattern(item) else ""))
    if not out:
        raise SwagError("data.shards: no image shards given")
    return out


class Normalizer(torch.nn.Module):
    """uint8 CHW batches -> float, normalized with the backbone's mean/std, on the device."""

    def __init__(self, backbone):
        super().__init__()
        cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1) * 255
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1) * 255
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x):
        # batches arrive NHWC in memory (see data.collate); made NCHW-contiguous here, on the
        # device and still uint8, so the model sees the usual layout
        return (x.contiguous().float() - self.mean) / self.std


def _all_mean(value: torch.Tensor, env: DistEnv) -> float:
    if env.distributed:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= env.world
    return float(value)


def plan_layout(recipe, env: DistEnv) -> dict:
    """Batch arithmetic: global batch = world x micro_batch x accumulation."""
    micro = recipe.micro_batch or max(1, recipe.batch_size // env.world)
    if recipe.batch_size % (env.world * micro):
        raise SwagError(f"batch_size {recipe.batch_size} is not a multiple of processes ({env.world}) "
                        f"x micro_batch ({micro})")
    return {"micro": micro, "accum": recipe.batch_size // (env.world * micro)}


def build_loss(recipe, plan_dir, hashtags: int):
    """The training loss and, for ``softmax_idf``, what its weights are (N, hashtags, idf range,
    images that keep 1/K), for the run's result: the idf is computed once, from the plan's labels."""
    if recipe.loss != "softmax_idf":
        return LOSSES[recipe.loss], None
    from swagcli.train.data import plan_df

    d = plan_df(plan_dir, hashtags)
    idf = plan_idf(d["df"], d["images"])
    on = d["df"] > 0
    info = {"images": d["images"], "hashtags": int(on.sum()),
            "idf_min": round(float(idf[on].min()), 6) if on.any() else None,
            "idf_max": round(float(idf[on].max()), 6) if on.any() else None,
            "images_kept_1_over_k": d["all_universal"]}
    return SoftmaxIdf(idf), info


def evaluate(model, norm, loader, recipe, env, device, limit=None, loss_fn=None) -> dict:
    """Hashtag accuracy on held-out images (``loader``'s batches): top-1 (the top hashtag is one of
    the image's) and top-5, and the loss, summed over ranks. ``loss_fn``: the training loss (the
    softmax_idf weights of the training plan); softmax_idf also reports the plain 1/K softmax loss
    (``eval_softmax_loss``), comparable with a softmax run's ``eval_loss``."""
    loss_fn = loss_fn or LOSSES[recipe.loss]
    plain = recipe.loss == "softmax_idf"
    tot = torch.zeros(5, dtype=torch.float64)  # n, top1, top5, loss sum, plain softmax loss sum
    model.eval()
    with torch.no_grad():
        for batch in loader:
            x = norm(batch["image"].to(device))
            logits = model(x).float()
            idx, w = batch["target_idx"].to(device), batch["target_w"].to(device)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = (top5.unsqueeze(2) == idx.unsqueeze(1)) & (w.unsqueeze(1) > 0)
            tot[0] += len(x)
            tot[1] += hit[:, 0].any(1).sum().item()
            tot[2] += hit.any(2).any(1).sum().item()
            tot[3] += loss_fn(logits, idx, w).item() * len(x)
            if plain:
                tot[4] += softmax_ce(logits, idx, w).item() * len(x)
            if limit and tot[0] * env.world >= limit:
                break
    model.train()
    if env.distributed:
        dist.all_reduce(tot)
    n = max(tot[0].item(), 1)
    return {"eval_images": int(tot[0]), "eval_top1": tot[1].item() / n, "eval_top5": tot[2].item() / n,
            "eval_loss": tot[3].item() / n, **({"eval_softmax_loss": tot[4].item() / n} if plain else {})}


def resume(how: str, out: Path, model, opt, sched, scaler, recipe_yaml: str | None = None,
           kind: str = "pretrain", found=None):
    """Restore a run (``how``: auto | force | never | a checkpoint path) into model, optimizer,
    scheduler and scaler; returns (the checkpoint resumed from, its train state, the recipe changes
    accepted) or (None, None, []). ``found``: (path, changes) from :func:`find_resume` already."""
    path, changes = found if found is not None else find_resume(how, out, recipe_yaml, kind)
    if path is None:
        return None, None, []
    ckpt_io.load_weights(model, path)
    st = ckpt_io.load_train_state(path)
    try:
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise SwagError(f"{path}: its optimizer state does not fit this run "
                        f"({str(e).splitlines()[0][:120]})") from None
    return path, st, changes


def find_resume(how: str, out: Path, recipe_yaml: str | None, kind: str, quiet: bool = False):
    """(checkpoint to continue from or None, accepted recipe changes); damaged checkpoints passed
    over are said on stderr (unless ``quiet``)."""
    from swagcli.train import resume as R

    path, skipped = R.find(how, out)
    if skipped and not quiet:
        from swagcli.ui import err_console, note

        for ck, f, why in skipped:
            err_console.print(note(f"{ck.name} is damaged ({Path(f).name}: {why}); "
                                   f"resuming from {path.name if path else 'the start'}"))
    if path is None:
        return None, []
    return path, (R.check(path, how, recipe_yaml, kind) if recipe_yaml else [])


def train(recipe, env: DistEnv, progress: bool = True, on_step=None) -> dict:
    """Run (or resume) a pretraining run; ``on_step(step)`` is called after every update (a test
    seam: it may call :func:`request_stop` to act as a preemption signal would)."""
    from swagcli import recipes as R
    from swagcli.prep.sample import load_plan
    from swagcli.prep.vocab import Vocab

    if not recipe.out:
        raise SwagError("pretrain: no run directory (--out DIR or 'out:' in the recipe)")
    if not recipe.data.plan:
        raise SwagError("pretrain: data.plan: no sample plan (from `swag sample`)")
    out = Path(recipe.out)
    plan = load_plan(recipe.data.plan)
    vocab = Vocab.load(plan["vocab"])
    shards = expand_shards(recipe.data.shards, plan)
    device = pick_device(recipe.device, env)
    init_distributed(env, device)
    layout = plan_layout(recipe, env)
    per_rank = max(1, recipe.data.workers)
    if (env.world - 1) * per_rank >= len(shards):
        raise SwagError(f"data.shards: {len(shards)} shard(s) for {env.world} processes x {per_rank} streams: the "
                        "last processes would get none; use more shards, or fewer processes or data.workers")
    total_samples = recipe.samples or int(plan["summary"]["total_samples"] * recipe.epochs)
    total_steps = max(1, math.ceil(total_samples / recipe.batch_size))
    recipe_yaml = R.dump(recipe, "pretrain")
    found = find_resume(recipe.resume, out, recipe_yaml, "pretrain", quiet=not env.is_main)
    done = finished_result(out, found[0], total_steps)
    if done is not None:  # a rerun of a finished run: nothing to do, nothing rewritten
        return done

    torch.manual_seed(recipe.seed)  # the same initial weights on every rank
    mae = recipe.objective == "mae"
    if mae:
        from swagcli.train.mae import MaeModel

        backbone = build_model(recipe.model.name, 1, recipe.model.kwargs, pre_logits=False).backbone
        model = MaeModel(backbone, **recipe.mae.model_dump()).to(device)
    else:
        model = build_model(recipe.model.name, len(vocab), recipe.model.kwargs, recipe.model.pre_logits).to(device)
    if recipe.freeze == "backbone":
        if mae:
            raise SwagError("freeze: backbone trains a hashtag head on a fixed trunk; objective mae has none")
        if not recipe.init.from_ and not found[0]:
            raise SwagError("freeze: backbone needs a trunk to freeze (init.from: a swag run or a weight file)")
        model.freeze_backbone()
    speed.prepare(model, recipe.speed, device)
    norm = Normalizer(model.backbone).to(device)
    model_meta = ckpt_io.describe_model(model, recipe.model.name, recipe.model.kwargs, recipe.data.resolution,
                                        recipe.objective, {"mae": recipe.mae.model_dump()} if mae else None)
    opt = build_optimizer(model, recipe.optim, recipe.batch_size, fused=speed.fused(recipe.speed, device))
    sched = build_scheduler(opt, total_steps, recipe.optim)
    dtype = amp_dtype(recipe.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn, idf_info = (None, None) if mae else build_loss(recipe, recipe.data.plan, len(vocab))

    step, samples_seen, positions = 0, 0, {}
    resume_from, st, changes = resume(recipe.resume, out, model, opt, sched, scaler, found=found)
    init = None
    if resume_from is None and recipe.init.from_:
        init = ckpt_io.load_encoder(model, recipe.init.from_)
    if resume_from is not None:
        step, samples_seen = st["step"], st["samples"]
        positions = {int(k): StreamPosition(*v) for k, v in st["streams"].items()}

    ddp = torch.nn.parallel.DistributedDataParallel(model) if env.distributed else model
    fwd = speed.compiled(ddp, recipe.speed)  # what the loop calls; ddp.no_sync() still on ddp
    streams = env.world * max(1, recipe.data.workers)
    audit_root = account.account_dir(out, streams, recipe.seed)
    stream = StreamConfig(shards=shards, plan_dir=recipe.data.plan, resolution=recipe.data.resolution,
                          shuffle_buffer=recipe.data.shuffle_buffer, seed=recipe.seed,
                          max_bad_fraction=recipe.data.max_bad_fraction, max_pixels=recipe.data.max_pixels,
                          start=positions, account_dir=str(audit_root),
                          rotate=(step * layout["accum"]) % max(1, recipe.data.workers))
    plan_samples = int(plan["summary"]["total_samples"])
    auditor = account.Auditor(audit_root, streams, len(shards), plan_samples,
                              recipe.data.max_bad_fraction) if env.is_main else None
    loader = make_loader(stream, layout["micro"], recipe.data.workers, env.rank, env.world)
    with workers_outlast_sigterm():
        it = iter(loader)
    if resume_from is not None:  # after iter(): starting the loader draws from the torch RNG
        torch.set_rng_state(st["rng"][env.rank % len(st["rng"])])

    log = RunLog(out, env, recipe, total_steps, progress) if env.is_main else None
    if log and init:
        log.event({"step": step, "init": init})
    if log and idf_info:
        log.event({"step": step, "idf": idf_info})
    if log and changes:
        log.event({"step": step, "resumed_from": str(resume_from), "resumed_with_changes": changes})
    prev = take_signals()
    stream_stats: dict = {}
    status = "finished"
    last_ckpt = resume_from
    loss_val = None
    s_start = samples_seen
    speedo = speed.meter(model, recipe, device, dtype, env.world, recipe.objective)

    def save_checkpoint():
        nonlocal last_ckpt
        mine = {k: (v.epoch, v.offset) for k, v in positions.items()}
        rng = torch.get_rng_state()
        if env.distributed:
            gathered = [None] * env.world
            dist.all_gather_object(gathered, (mine, rng))
        else:
            gathered = [(mine, rng)]
        if env.is_main:
            streams = {str(k): v for part, _ in gathered for k, v in part.items()}
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict(), "step": step, "samples": samples_seen,
                     "streams": streams, "rng": [r for _, r in gathered]}
            last_ckpt = ckpt_io.save(out / "checkpoints", step, model, state, vocab.doc, recipe_yaml,
                                     {**model_meta, "hashtags": len(vocab), "samples": samples_seen,
                                      "total_steps": total_steps, "plan": str(recipe.data.plan),
                                      **({"idf": idf_info} if idf_info else {})},
                                     keep=recipe.keep_checkpoints)
        if env.distributed:
            dist.barrier()

    try:
        while step < total_steps:
            opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            for micro in range(layout["accum"]):
                t_wait = time.perf_counter()
                batch = next_batch(it, "training stream")
                speedo.waited(time.perf_counter() - t_wait)
                sync = micro == layout["accum"] - 1 or not env.distributed
                ctx = contextlib.nullcontext() if sync else ddp.no_sync()
                with ctx, torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    x = speed.inputs(norm(batch["image"].to(device, non_blocking=True)), recipe.speed)
                    if mae:
                        loss = fwd(x)[0]
                    else:
                        logits = fwd(x)
                        loss = loss_fn(logits, batch["target_idx"].to(device), batch["target_w"].to(device))
                scaler.scale(loss / layout["accum"]).backward()
                loss_sum += loss.detach()
                for k, (epoch, offset, stats) in batch["streams"].items():
                    positions[k] = StreamPosition(epoch, offset + 1)
                    stream_stats[k] = stats
            loss_val = _all_mean(loss_sum / layout["accum"], env)
            if not math.isfinite(loss_val):
                status = "diverged"
                where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was written"
                raise SwagError(f"pretrain: non-finite loss ({loss_val}) at step {step + 1}{where}")
            if recipe.optim.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            step += 1
            samples_seen += recipe.batch_size
            metrics = {"step": step, "samples": samples_seen, "loss": loss_val, "lr": lr,
                       **speedo.snapshot(samples_seen - s_start)}
            if recipe.eval_every and step % recipe.eval_every == 0 and step < total_steps:
                metrics.update(_eval(model, norm, recipe, plan, shards, env, device, final=False,
                                     loss_fn=loss_fn))
            if log:
                log.step(metrics, stream_stats)
            if end_of_update(step, total_steps, recipe.checkpoint_every, env, device, on_step, save_checkpoint,
                             abort=auditor.poll() if auditor else None):
                status = "preempted"
                break
        final = {}
        if status == "finished":
            final = _eval(model, norm, recipe, plan, shards, env, device, final=True, loss_fn=loss_fn)
            if log:
                log.event({"step": step, **final})
            if mae and env.is_main:
                from swagcli.train.mae import reconstruction_figure

                final["reconstruction"] = str(reconstruction_figure(model, norm, _figure_batch(recipe, plan, shards),
                                                                    out / "reconstruction.png", device))
        short = None
        if status == "finished":  # epoch 0 whole, even if some streams did not finish it
            positions_now = _gather_streams(stream_stats, positions, env)
            if auditor:
                if account.needs_scan(audit_root, positions_now, streams, len(shards), plan_samples,
                                      recipe.data.max_bad_fraction):
                    account.complete_by_scan(audit_root, shards, loader.dataset.lookup, recipe.seed, streams)
                auditor.poll()
                short = next((v for v in (account.verdict(e, plan_samples, recipe.data.max_bad_fraction)
                                          for e in auditor.epochs) if v), None)
        result = {"status": status, "step": step, "total_steps": total_steps, "samples": samples_seen,
                  "checkpoint": str(last_ckpt) if last_ckpt else None, "run_dir": str(out),
                  "resumed_from": str(resume_from) if resume_from else None,
                  "last_loss": loss_val, "stream": _sum_stats(stream_stats),
                  **({"signal": signal_name(STOP["signum"])} if status == "preempted" else {}),
                  "image_shards": {"count": len(shards), "first": shards[0], "last": shards[-1],
                                   "from": "data.shards" if recipe.data.shards else "the plan's img2dataset sources"},
                  "objective": recipe.objective, **({"init": init} if init else {}),
                  "speed": speed.describe(recipe.speed, device),
                  "throughput": speedo.summary(samples_seen - s_start),
                  "precision": {"autocast": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"),
                                "grad_scaler": scaler.is_enabled(), "device": device.type},
                  **({"idf": idf_info} if idf_info else {}),
                  **({"account": auditor.summary()} if auditor else {}), **final}
        if log:
            log.close(result)
        if short:
            raise SwagError(f"{short.replace('training stream: ', 'the run finished, but ')} (see {out / 'result.json'})")
        return result
    except (Interrupted, RuntimeError) as e:  # a stop that could not wait for an update boundary: say where
        e = worker_death(e, "training stream")  # (torch raises a worker's death anywhere, as a RuntimeError)
        if not isinstance(e, Interrupted):
            raise e
        where = f"; last checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was written"
        raise Interrupted(f"{e} at step {step}{where}: rerun the same command to resume", e.signum) from None
    finally:
        shutdown_loader(it)
        restore_signals(prev)
        if log:
            log.stop()


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


def finished_result(out: Path, ckpt: Path | None, total_steps: int) -> dict | None:
    """The stored result of a finished run whose last checkpoint is ``ckpt`` (a rerun), else None."""
    if ckpt is None:
        return None
    try:
        if ckpt_io.load_meta(ckpt)["step"] < total_steps:
            return None
        res = json.loads((out / "result.json").read_text())
    except (OSError, ValueError, KeyError, SwagError):
        return None
    if res.get("status") != "finished" or res.get("checkpoint") != str(ckpt):
        return None
    return {**res, "note": "already finished: nothing to do (the result above is the stored one)"}


def _holdout(recipe, plan) -> str | None:
    holdout = recipe.data.holdout or str(Path(plan["dir"]) / "holdout")
    return holdout if (Path(holdout) / "plan.json").is_file() else None


def _eval(model, norm, recipe, plan, shards, env, device, final: bool, loss_fn=None) -> dict:
    """Held-out evaluation. A stop signal during it: mid-training, the evaluation is dropped (the
    update's checkpoint comes next); at the end, :class:`Interrupted` (the last checkpoint is whole;
    a rerun evaluates it)."""
    holdout = _holdout(recipe, plan)
    if holdout is None:
        return {}
    loader = _eval_loader(recipe, holdout, shards, env)
    batches = eval_batches(loader, "the final evaluation" if final else None)
    if recipe.objective == "mae":
        from swagcli.train.mae import evaluate_mae

        res = evaluate_mae(model, norm, batches, env, device, recipe.eval_samples)
    else:
        res = evaluate(model, norm, batches, recipe, env, device, recipe.eval_samples, loss_fn)
    return {} if STOP["requested"] and not final else res


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


def _eval_loader(recipe, plan_dir: str, shards: list[str], env, batch_size: int | None = None,
                 workers: int | None = None):
    """The images of a plan in order, once, without augmentation; split over ranks."""
    cfg = StreamConfig(shards=shards, plan_dir=plan_dir, resolution=recipe.data.resolution, train=False,
                       loop=False, shuffle_buffer=1, seed=recipe.seed, max_bad_fraction=recipe.data.max_bad_fraction,
                       max_pixels=recipe.data.max_pixels)
    return make_loader(cfg, batch_size=batch_size or recipe.micro_batch or 64,
                       workers=recipe.data.workers if workers is None else workers, rank=env.rank, world=env.world)


def _figure_batch(recipe, plan, shards, n: int = 8) -> torch.Tensor:
    """The first n held-out images (training images if there is no holdout), uint8."""
    loader = _eval_loader(recipe, _holdout(recipe, plan) or recipe.data.plan, shards, DistEnv(), n, 0)
    return next(iter(loader))["image"]


def _any_rank(flags: tuple, env: DistEnv, device) -> tuple:
    """Each flag: true on some rank (one all-reduce for all of them)."""
    if not env.distributed:
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t)
    return tuple(bool(v > 0) for v in t.tolist())


def _sum_stats(per_stream: dict) -> dict:
    out: dict = {}
    for stats in per_stream.values():
        for k, v in stats.items():
            if k != "epoch_planned":
                out[k] = out.get(k, 0) + v
    return out


def _gather_streams(stream_stats: dict, positions: dict, env: DistEnv) -> dict:
    """stream -> (epoch, planned samples met in that epoch so far), every rank's streams."""
    mine = {k: (positions[k].epoch, st.get("epoch_planned", 0)) for k, st in stream_stats.items() if k in positions}
    if not env.distributed:
        return mine
    parts = [None] * env.world
    dist.all_gather_object(parts, mine)
    return {k: v for p in parts for k, v in p.items()}


class RunLog:
    """Rank 0's view: rich progress bar (samples/s, loss, lr, ETA), metrics.jsonl, TensorBoard."""

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

    def step(self, m: dict, stream_stats: dict) -> None:
        if m["step"] % self.every == 0 or "eval_top1" in m:
            bad = _sum_stats(stream_stats).get("bad", 0)
            self.event({**m, "bad_samples": bad})
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
