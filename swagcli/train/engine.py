"""Pretraining (`swag pretrain`): the same on one CPU, one GPU, N local processes and SLURM.

``train(recipe, env)`` builds the model of the recipe's objective (hashtag classification or MAE:
:data:`OBJECTIVES`), the stream, the optimizer and the schedule, resumes from the latest
checkpoint if asked, and hands :class:`~swagcli.train.loop.Loop` the objective's step function
for ``total_steps`` updates of ``batch_size`` samples each (``micro_batch`` per process per
forward, gradients accumulated across micro-batches and averaged across processes). The loop owns
signals, accumulation, precision, checkpoint cadence, logging and the result; this module owns
what is pretraining's: the stream and its accounting, what a checkpoint holds, the held-out
evaluation.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from swagcli.errors import SwagError
from swagcli.signals import STOP, workers_outlast_sigterm
from swagcli.signals import request_stop  # noqa: F401 - the loops' API (tests)
from swagcli.train import account
from swagcli.train import checkpoint as ckpt_io
from swagcli.train import sharding, speed
from swagcli.train.data import StreamConfig, StreamPosition, batch_images, make_loader, stream_layout
from swagcli.train.dist import DistEnv
from swagcli.train.loop import Loop, eval_batches, in_lockstep
from swagcli.train.losses import LOSSES, SoftmaxIdf, plan_idf, softmax_ce
from swagcli.train.models import Normalizer, build_model
from swagcli.train.optim import build_optimizer, build_scheduler
from swagcli.train.resume import find_resume, resume
from swagcli.train.runtime import amp_dtype, init_distributed, pick_device, plan_layout


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


def head_hashtags(counts) -> list[bool]:
    """The head of a vocabulary for the held-out split: its most frequent hashtags (by image
    count, ties by id) that together hold half of all its (hashtag, image) pairs, the one that
    crosses half included; the rest is the tail. Scale-free, unlike the sampling head
    (``head_min_images``), which holds nearly every hashtag of a small world."""
    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(-counts, kind="stable")
    before = np.cumsum(counts[order]) - counts[order]  # mass ahead of each hashtag
    head = np.zeros(len(counts), dtype=bool)
    head[order[before < counts.sum() / 2]] = True
    return head.tolist()


def evaluate(model, norm, loader, recipe, env, device, limit=None, loss_fn=None, head=None) -> dict:
    """Hashtag accuracy on held-out images (``loader``'s batches): top-1 (the top hashtag is one of
    the image's) and top-5, and the loss, summed over ranks. ``loss_fn``: the training loss (the
    softmax_idf weights of the training plan); softmax_idf also reports the plain 1/K softmax loss
    (``eval_softmax_loss``), comparable with a softmax run's ``eval_loss``. ``head``: a head
    mask (bool per hashtag, :func:`head_hashtags`): top-1 is also reported on the images whose hashtags
    are all head hashtags (``eval_head_top1``) and on those whose hashtags are all tail hashtags
    (``eval_tail_top1``), with their counts; an image with both is in neither."""
    loss_fn = loss_fn or LOSSES[recipe.loss]
    plain = recipe.loss == "softmax_idf"
    # n, top1, top5, loss sum, plain softmax loss sum, head n, head top1, tail n, tail top1
    tot = torch.zeros(9, dtype=torch.float64)
    head = None if head is None else torch.as_tensor(head, dtype=torch.bool, device=device)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            x = norm(batch["image"].to(device))
            logits = model(x).float()
            if batch.get("ignore"):  # a rank out of batches keeping a sharded model's forwards in step
                continue
            idx, w = batch["target_idx"].to(device), batch["target_w"].to(device)
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = (top5.unsqueeze(2) == idx.unsqueeze(1)) & (w.unsqueeze(1) > 0)
            tot[0] += len(x)
            tot[1] += hit[:, 0].any(1).sum().item()
            tot[2] += hit.any(2).any(1).sum().item()
            tot[3] += loss_fn(logits, idx, w).item() * len(x)
            if head is not None:
                pos = w > 0
                is_head = head[idx.clamp(0, len(head) - 1)] & pos
                only = [pos.any(1) & ~(pos & ~is_head).any(1), pos.any(1) & ~is_head.any(1)]
                for k, group in enumerate(only):
                    tot[5 + 2 * k] += group.sum().item()
                    tot[6 + 2 * k] += (hit[:, 0].any(1) & group).sum().item()
            if plain:
                tot[4] += softmax_ce(logits, idx, w).item() * len(x)
            if limit and tot[0] * env.world >= limit:
                break
    model.train()
    if env.distributed:
        dist.all_reduce(tot)
    n = max(tot[0].item(), 1)
    split = {}
    if head is not None:
        for k, name in enumerate(("head", "tail")):
            m = int(tot[5 + 2 * k])
            split.update({f"eval_{name}_images": m, **({f"eval_{name}_top1": tot[6 + 2 * k].item() / m} if m else {})})
    return {"eval_images": int(tot[0]), "eval_top1": tot[1].item() / n, "eval_top5": tot[2].item() / n,
            "eval_loss": tot[3].item() / n, **({"eval_softmax_loss": tot[4].item() / n} if plain else {}),
            **split}


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
    if recipe.data.streams is not None and (env.world - 1) * per_rank >= recipe.data.streams:
        raise SwagError(f"data.streams: {recipe.data.streams} stream(s) for {env.world} processes x {per_rank} "
                        "workers: the last processes would play none; use more streams, or fewer processes "
                        "or data.workers")
    total_samples = recipe.samples or int(plan["summary"]["total_samples"] * recipe.epochs)
    total_steps = max(1, math.ceil(total_samples / recipe.batch_size))
    recipe_yaml = R.dump(recipe, "pretrain")
    found = find_resume(recipe.resume, out, recipe_yaml, "pretrain", quiet=not env.is_main)
    done = finished_result(out, found[0], total_steps)
    if done is not None:  # a rerun of a finished run: nothing to do, nothing rewritten
        return done

    torch.manual_seed(recipe.seed)  # the same initial weights on every rank
    objective = OBJECTIVES[recipe.objective]
    model = objective.build(recipe, len(vocab)).to(device)
    if recipe.freeze == "backbone":
        if recipe.objective == "mae":
            raise SwagError("freeze: backbone trains a hashtag head on a fixed trunk; objective mae has none")
        if not recipe.init.from_ and not found[0]:
            raise SwagError("freeze: backbone needs a trunk to freeze (init.from: a swag run or a weight file)")
        model.freeze_backbone()
    speed.prepare(model, recipe.speed, device)
    norm = Normalizer(model.backbone).to(device)
    model_meta = ckpt_io.describe_model(model, recipe.model.name, recipe.model.kwargs, recipe.data.resolution,
                                        recipe.objective,
                                        {"mae": recipe.mae.model_dump()} if recipe.objective == "mae" else None)
    dtype = amp_dtype(recipe.precision, device)
    sharding.check(recipe.strategy, dtype)
    init = None
    if found[0] is None and recipe.init.from_:  # into the whole model, before it is sharded
        init = ckpt_io.load_encoder(model, recipe.init.from_)
    meter = speed.meter(model, recipe.data.resolution, device, dtype, env.world, recipe.objective)
    # fsdp shards the model before the optimizer is built on its shards; ddp wraps it after resuming
    par = sharding.wrap(model, "fsdp", env, dtype) if recipe.strategy == "fsdp" else None
    opt = build_optimizer(model, recipe.optim, recipe.batch_size, fused=speed.fused(recipe.speed, device))
    sched = build_scheduler(opt, total_steps, recipe.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn, idf_info = objective.loss(recipe, len(vocab))

    step, samples_seen, positions = 0, 0, {}
    resume_from, st, changes = resume(recipe.resume, out, model, opt, sched, scaler, found=found)
    if resume_from is not None:
        step, samples_seen = st["step"], st["samples"]
        positions = {int(k): StreamPosition(*v) for k, v in st["streams"].items()}
        deal = resumed_layout(st, env, recipe, len(shards))
    else:
        deal = stream_layout(len(shards), env.world, recipe.data.workers, recipe.data.shuffle_buffer,
                             recipe.data.streams)
    played_by = {"processes": env.world, "workers": recipe.data.workers}
    was = deal.get("played_by")  # who played the streams before this resume (None: a fresh run)
    moved = {"was": was, "now": played_by} if was is not None and was != played_by else None
    deal = {"streams": deal["streams"], "shuffle_buffer": deal["shuffle_buffer"], "played_by": played_by}

    par = par or sharding.wrap(model, "ddp", env, dtype)
    fwd = speed.compiled(par.module, recipe.speed)  # what the step calls; no_sync() still on par
    streams = deal["streams"]
    audit_root = account.account_dir(out, streams, recipe.seed)
    stream = StreamConfig(shards=shards, plan_dir=recipe.data.plan, resolution=recipe.data.resolution,
                          shuffle_buffer=deal["shuffle_buffer"], seed=recipe.seed, streams=streams,
                          max_bad_fraction=recipe.data.max_bad_fraction, max_pixels=recipe.data.max_pixels,
                          start=positions, account_dir=str(audit_root), decode=recipe.data.decode,
                          rotate=(step * layout["accum"]) % max(1, recipe.data.workers),
                          with_keys=recipe.data.log_keys)
    keylog = KeyLog(out, step, env.rank) if recipe.data.log_keys else None
    plan_samples = int(plan["summary"]["total_samples"])
    auditor = account.Auditor(audit_root, streams, len(shards), plan_samples,
                              recipe.data.max_bad_fraction) if env.is_main else None
    loader = make_loader(stream, layout["micro"], recipe.data.workers, env.rank, env.world)
    with workers_outlast_sigterm():
        it = iter(loader)
    if resume_from is not None:  # after iter(): starting the loader draws from the torch RNG
        torch.set_rng_state(st["rng"][env.rank % len(st["rng"])])

    tracker = StreamTracker(positions)
    objective_step = objective.step(fwd, norm, loss_fn, recipe.speed, device)

    def step_fn(batch, update):
        loss = objective_step(batch)
        tracker.took(batch)
        if keylog:
            keylog.took(update.step, batch)
        return loss

    def save_checkpoint():
        mine = {k: (v.epoch, v.offset) for k, v in tracker.positions.items()}
        rng = torch.get_rng_state()
        if env.distributed:
            gathered = [None] * env.world
            dist.all_gather_object(gathered, (mine, rng))
        else:
            gathered = [(mine, rng)]
        streams_now = {str(k): v for part, _ in gathered for k, v in part.items()}
        state = {"scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "step": loop.step,
                 "samples": loop.samples, "streams": streams_now, "rng": [r for _, r in gathered], "layout": deal}
        meta = {**model_meta, "hashtags": len(vocab), "samples": loop.samples, "total_steps": total_steps,
                "plan": str(recipe.data.plan), "strategy": recipe.strategy, **({"idf": idf_info} if idf_info else {})}
        if recipe.strategy == "fsdp":  # every rank writes its shards
            tensors, other = sharding.state(model, opt)
            return ckpt_io.save_sharded(out / "checkpoints", loop.step, env, tensors,
                                        {**state, "optimizer": {"sharded": True, "other": other}}, vocab.doc,
                                        recipe_yaml, meta, keep=recipe.keep_checkpoints)
        if not env.is_main:
            return None
        return ckpt_io.save(out / "checkpoints", loop.step, model, {**state, "optimizer": opt.state_dict()},
                            vocab.doc, recipe_yaml, meta, keep=recipe.keep_checkpoints)

    held_head = head_hashtags(vocab.counts)

    def mid_eval(_step):
        return _eval(model, norm, recipe, plan, shards, env, device, final=False, loss_fn=loss_fn, sharded=par.sharded,
                     head=held_head)

    loop = Loop(kind="pretrain", out=out, recipe=recipe, env=env, device=device, model=model, module=par.module,
                no_sync=par.no_sync,
                opt=opt, sched=sched, scaler=scaler, dtype=dtype, accum=layout["accum"], total=total_steps,
                batches=it, what="training stream", samples_per_step=recipe.batch_size, step=step,
                samples=samples_seen, resumed_from=resume_from, save=save_checkpoint,
                grad_clip=recipe.optim.grad_clip, on_step=on_step, progress=progress,
                meter=meter)
    with loop, (keylog or contextlib.nullcontext()):
        if init:
            loop.event({"init": init})
        if idf_info:
            loop.event({"idf": idf_info})
        if changes:
            loop.event({"resumed_from": str(resume_from), "resumed_with_changes": changes})
        if moved:
            loop.event({"resumed_from": str(resume_from), "resumed_on": moved})
        status = loop.run(step_fn, evaluate=mid_eval, eval_every=recipe.eval_every,
                          abort=auditor.poll if auditor else None,
                          log_fields=lambda: {"bad_samples": _sum_stats(tracker.stats).get("bad", 0)})
        final, short = {}, None
        if status == "finished":
            final = _eval(model, norm, recipe, plan, shards, env, device, final=True, loss_fn=loss_fn,
                          sharded=par.sharded, head=held_head)
            loop.event(final)
            if env.is_main or par.sharded:  # a sharded model's every forward takes every rank
                made = objective.finish(model, norm, lambda: _figure_batch(recipe, plan, shards),
                                        out if env.is_main else None, device)
                if env.is_main:
                    final.update(made)
            positions_now = _gather_streams(tracker.stats, tracker.positions, env)  # epoch 0 whole?
            if auditor:
                if account.needs_scan(audit_root, positions_now, streams, len(shards), plan_samples,
                                      recipe.data.max_bad_fraction):
                    account.complete_by_scan(audit_root, shards, loader.dataset.lookup, recipe.seed, streams)
                auditor.poll()
                short = next((v for v in (account.verdict(e, plan_samples, recipe.data.max_bad_fraction)
                                          for e in auditor.epochs) if v), None)
        result = loop.result(
            total_steps=total_steps, samples=loop.samples, stream={**_sum_stats(tracker.stats),
                                                     **({"undecodable_on_device": tracker.dropped}
                                                        if recipe.data.decode == "gpu" else {})},
            image_shards={"count": len(shards), "first": shards[0], "last": shards[-1],
                          "from": "data.shards" if recipe.data.shards else "the plan's img2dataset sources"},
            objective=recipe.objective, streams={"count": streams, "shuffle_buffer": deal["shuffle_buffer"],
                                                 "played_by": played_by, **({"resumed_on": moved} if moved else {})},
            **({"init": init} if init else {}),
            **({"idf": idf_info} if idf_info else {}),
            **({"account": auditor.summary()} if auditor else {}), **final)
        if short:
            raise SwagError(f"{short.replace('training stream: ', 'the run finished, but ')} (see {out / 'result.json'})")
        return result


def resumed_layout(st: dict, env: DistEnv, recipe, shards: int) -> dict:
    """The stream layout a resumed run keeps (its checkpoint's; one written before layouts were
    recorded had one stream per process x worker, and resumes only on as many)."""
    was = st.get("layout")
    if was is None:
        players = env.world * max(1, recipe.data.workers)
        return {"streams": players, "shuffle_buffer": recipe.data.shuffle_buffer, "played_by": None}
    if recipe.data.streams is not None and recipe.data.streams != was["streams"]:
        raise SwagError(f"data.streams: this run's epochs are dealt to {was['streams']} streams (fixed when it "
                        f"started), not {recipe.data.streams}: leave data.streams out, or start a new run")
    per_rank = max(1, recipe.data.workers)
    if (env.world - 1) * per_rank >= min(was["streams"], shards):
        raise SwagError(f"this run's epochs are dealt to {was['streams']} streams (data.streams, fixed when it "
                        f"started): {env.world} processes x {per_rank} workers would leave the last processes "
                        "without one; resume on fewer processes or data.workers")
    return was


class KeyLog:
    """``data.log_keys``: what every update trained on, one line per sample, in
    ``RUN/keys/from-<step>-rank-<r>.tsv`` (update, stream, epoch, offset, key) for the leg of the
    run that started at ``step``; :func:`trained_on` reads them back as the run trained."""

    def __init__(self, out: Path, start: int, rank: int):
        d = Path(out) / "keys"
        d.mkdir(parents=True, exist_ok=True)
        self.f = open(d / f"from-{start:08d}-rank-{rank:05d}.tsv", "w")

    def took(self, update: int, batch) -> None:
        self.f.write("".join(f"{update}\t{s}\t{e}\t{o}\t{k}\n" for (s, e, o), k in zip(batch["where"], batch["keys"])))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def trained_on(out: Path) -> list[tuple[int, int, int, int, str]]:
    """(update, stream, epoch, offset, key) of every sample a ``data.log_keys`` run trained on:
    each leg's lines up to where the next leg resumed (what a stopped leg took after its last
    checkpoint was trained on again after the resume, and is counted there)."""
    files = sorted((Path(out) / "keys").glob("from-*-rank-*.tsv"))
    starts = sorted({int(f.name.split("-")[1]) for f in files})
    rows = []
    for f in files:
        start = int(f.name.split("-")[1])
        until = next((s for s in starts if s > start), None)
        for line in f.read_text().splitlines():
            u, s, e, o, k = line.split("\t", 4)
            if until is None or int(u) < until:
                rows.append((int(u), int(s), int(e), int(o), k))
    return sorted(rows)


class StreamTracker:
    """Where each training stream is (its epoch and offset, for a checkpoint to resume from) and
    what it has met (its counts), from the batches the loop took."""

    def __init__(self, positions: dict):
        self.positions, self.stats, self.dropped = positions, {}, 0

    def took(self, batch) -> None:
        self.dropped += batch.get("dropped", 0)  # data.decode gpu: broken JPEGs found on the device
        for k, (epoch, offset, stats) in batch["streams"].items():
            self.positions[k] = StreamPosition(epoch, offset + 1)
            self.stats[k] = stats


class HashtagObjective:
    """Hashtag classification (SPEC.md §3): a timm backbone and hashtag head, the recipe's loss."""

    @staticmethod
    def build(recipe, hashtags: int):
        return build_model(recipe.model.name, hashtags, recipe.model.kwargs, recipe.model.pre_logits)

    @staticmethod
    def loss(recipe, hashtags: int):
        return build_loss(recipe, recipe.data.plan, hashtags)

    @staticmethod
    def step(fwd, norm, loss_fn, spec, device):
        def step(batch):
            x = speed.inputs(norm(batch_images(batch, device)), spec)
            return loss_fn(fwd(x), batch["target_idx"].to(device, non_blocking=True),
                           batch["target_w"].to(device, non_blocking=True))
        return step

    @staticmethod
    def evaluate(model, norm, batches, recipe, env, device, loss_fn, limit, head=None) -> dict:
        return evaluate(model, norm, batches, recipe, env, device, limit, loss_fn, head)

    @staticmethod
    def finish(model, norm, figure_batch, out, device) -> dict:
        return {}


class MaeObjective:
    """Masked autoencoding (MAWS pre-pretraining, :mod:`swagcli.train.mae`): no hashtags."""

    @staticmethod
    def build(recipe, hashtags: int):
        from swagcli.train.mae import MaeModel

        backbone = build_model(recipe.model.name, 1, recipe.model.kwargs, pre_logits=False).backbone
        return MaeModel(backbone, **recipe.mae.model_dump())

    @staticmethod
    def loss(recipe, hashtags: int):
        return None, None

    @staticmethod
    def step(fwd, norm, loss_fn, spec, device):
        def step(batch):
            return fwd(speed.inputs(norm(batch_images(batch, device)), spec))[0]
        return step

    @staticmethod
    def evaluate(model, norm, batches, recipe, env, device, loss_fn, limit, head=None) -> dict:
        from swagcli.train.mae import evaluate_mae

        return evaluate_mae(model, norm, batches, env, device, limit)

    @staticmethod
    def finish(model, norm, figure_batch, out, device) -> dict:
        """The reconstruction figure, written when ``out`` is given (rank 0; the other ranks of a
        sharded model take part in its forward passes)."""
        from swagcli.train.mae import reconstruction_figure

        with sharding.gathered(model):
            path = reconstruction_figure(model, norm, figure_batch(), out / "reconstruction.png" if out else None,
                                         device)
        return {"reconstruction": str(path)} if path else {}


OBJECTIVES = {"wsp": HashtagObjective, "mae": MaeObjective}


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


def _eval(model, norm, recipe, plan, shards, env, device, final: bool, loss_fn=None, sharded: bool = False,
          head=None) -> dict:
    """Held-out evaluation. A stop signal during it: mid-training, the evaluation is dropped (the
    update's checkpoint comes next); at the end, :class:`Interrupted` (the last checkpoint is whole;
    a rerun evaluates it)."""
    holdout = _holdout(recipe, plan)
    if holdout is None:
        return {}
    loader = _eval_loader(recipe, holdout, shards, env)
    batches = eval_batches(loader, "the final evaluation" if final else None)
    limit = recipe.eval_samples
    if sharded:  # every forward is collective: the ranks take their batches together
        r = recipe.data.resolution
        batches, limit = in_lockstep(batches, env, device, limit, lambda: {
            "image": torch.zeros(1, 3, r, r, dtype=torch.uint8), "target_idx": torch.zeros(1, 1, dtype=torch.long),
            "target_w": torch.zeros(1, 1), "keys": [None]}), None
    res = OBJECTIVES[recipe.objective].evaluate(model, norm, batches, recipe, env, device, loss_fn, limit, head)
    return {} if STOP["requested"] and not final else res


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
