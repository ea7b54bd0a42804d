"""`swag finetune`: a new classifier head, the whole network trained (SWAG §4.1, SPEC.md §5).

SGD with Nesterov momentum 0.9, no weight decay, batch 512 (``micro_batch`` per process, the rest
accumulated), a half-cosine schedule over an update budget set by the training-set size (500 if
N <= 20k, 10,000 if N <= 500k, else 20,000), mixup (alpha 0.1), synchronous batch norm across GPU
processes, and an EMA of the weights in the paper's sense: ``avg = (1 - ema) * avg + ema * w``
after every update (with ``ema = 1e-4`` the average moves slowly: the paper used it for 20k-update
ImageNet runs; results report the raw and the averaged weights side by side).

The learning rate defaults to SWAG Table 8 for the model and dataset (a base lr at batch 512,
scaled linearly); ``lr_grid`` first trains each candidate on a held-out split of train and keeps
the best. ``head_init: zeroshot`` starts the head from the hashtag head (Table 2): class c's row is
the mean of the hashtag-head rows its zero-shot mapping selects, so its logit is the mean of those
hashtags' logits (a linear head cannot hold the mean of probabilities, the no-Platt aggregation).

Training samples come from an endless index stream: epoch e is a seeded permutation of the
training set, and process r takes every world-th index. A step's samples and its augmentation
and mixup draws depend only on (seed, step), so a resumed run continues the same stream without
reading anything it skips. A training image that does not decode or is over ``data.max_pixels`` is
replaced by the next usable one (:class:`TrainSet`), a validation image is skipped; both are counted
in ``skipped_images``, and more than ``data.max_bad_fraction`` of a split stops the run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from swagcli.errors import SwagError

# SWAG Table 8 (IG 3.6B rows): base lr at batch 512 by model and transfer dataset
TABLE8 = {
    "regnety_160": {"in1k": 6e-3, "in5k": 2.4e-2, "inat": 1.2e-2, "places": 3e-3, "cub": 6e-3},
    "regnety_320": {"in1k": 6e-3, "in5k": 2.4e-2, "inat": 1.2e-2, "places": 3e-3, "cub": 3e-3},
    "regnety_1280": {"in1k": 6e-3, "in5k": 2.4e-2, "inat": 1.2e-2, "places": 3e-3, "cub": 3e-3},
    "vit_base_patch16": {"in1k": 6e-3, "in5k": 2.4e-2, "inat": 1.2e-2, "places": 6e-3, "cub": 3e-3},
    "vit_large_patch16": {"in1k": 6e-3, "in5k": 1.2e-2, "inat": 1.2e-2, "places": 1.2e-2, "cub": 6e-3},
    "vit_huge_patch14": {"in1k": 6e-3, "in5k": 1.2e-2, "inat": 1.2e-2, "places": 1.2e-2, "cub": 6e-3},
}
# SWAG Table 1 finetuning resolutions
RESOLUTION = {"regnety_": 384, "vit_base_": 384, "vit_large_": 512, "vit_huge_": 518}


def default_lr(model: str, dataset: str) -> float:
    for prefix, row in TABLE8.items():
        if model.startswith(prefix):
            return row[dataset]
    raise SwagError(f"optim.lr: SWAG Table 8 has no learning rate for {model}; set optim.lr (or lr_grid)")


def default_resolution(model: str, pretrained_at: int) -> int:
    return next((r for prefix, r in RESOLUTION.items() if model.startswith(prefix)), pretrained_at)


def update_budget(n: int) -> int:
    return 500 if n <= 20_000 else 10_000 if n <= 500_000 else 20_000


# -- the model ---------------------------------------------------------------------------------------
def prepare_model(source, classes: list[str], recipe, resolution: int) -> torch.nn.Module:
    """The source model with a new head over ``classes`` (random or zero-shot initialized), at
    ``resolution`` (ViT position embeddings resampled when it differs)."""
    from swagcli.evaluate.transfer import class_synsets

    model = source.model
    old = model.head
    torch.manual_seed(recipe.seed)
    head = torch.nn.Linear(model.num_features, len(classes))
    torch.nn.init.trunc_normal_(head.weight, std=0.01)
    torch.nn.init.zeros_(head.bias)
    if recipe.head_init == "zeroshot":
        if source.vocab is None:
            raise SwagError("head_init: zeroshot needs a swag checkpoint (with its hashtag head and vocabulary)")
        from swagcli.evaluate.zeromap import class_hashtags, mapping_matrix

        syns = class_synsets(classes)
        if not any(syns):
            raise SwagError("head_init: zeroshot needs WordNet classes (ImageNet wnids such as n01440764 "
                            "or synset names such as dog.n.01)")
        m = torch.from_numpy(mapping_matrix(class_hashtags(syns, [h["synsets"] for h in source.vocab.hashtags]),
                                            len(source.vocab)))
        mapped = m.sum(1) > 0
        with torch.no_grad():
            w = (m @ old.weight) / m.sum(1, keepdim=True).clamp(min=1)
            b = (m @ old.bias) / m.sum(1).clamp(min=1)
            head.weight[mapped] = w[mapped]
            head.bias[mapped] = b[mapped]
    model.head = head
    bb = model.backbone
    size = getattr(getattr(bb, "patch_embed", None), "img_size", None)
    if size and tuple(size) != (resolution, resolution):
        if not hasattr(bb, "set_input_size"):
            raise SwagError(f"data.resolution: {source.name} is fixed at {size[0]} px")
        bb.set_input_size(img_size=resolution)
    return model


# -- the index stream --------------------------------------------------------------------------------
class StepSampler(torch.utils.data.Sampler):
    """Endless (index, position) pairs for one process, starting at ``start`` (its position)."""

    def __init__(self, n: int, seed: int, rank: int, world: int, start: int = 0):
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def __iter__(self):
        pos = self.start  # this process's sample count so far
        while True:
            g = pos * self.world + self.rank  # the global position
            epoch, i = divmod(g, self.n)
            perm = np.random.default_rng([self.seed, 23, epoch]).permutation(self.n)
            while i < self.n:
                yield int(perm[i]), g
                pos += 1
                g += self.world
                i += self.world
            # the epoch is exhausted for this rank: continue in the next one


class TrainSet(torch.utils.data.Dataset):
    """Training samples by (index, global position): (image, label, replaced). An image that does not
    decode or is over the pixel budget is replaced by the next usable one in split order (so the
    same key always gives the same sample, with that image's own label, and the training stream
    never stops on one bad file); ``replaced`` lists the ``(index, reason, error)`` passed over."""

    def __init__(self, images):
        self.images = images

    def __getitem__(self, key):
        from swagcli.images import BadImage

        i, g = key  # the augmentation is keyed by the global position g
        n, replaced = len(self.images), []
        for k in range(n):
            j = (i + k) % n
            try:
                img = self.images.decode(j, g)
            except BadImage as e:
                replaced.append((j, e.reason, str(e)))
                continue
            return img, int(self.images.split.labels[j]), replaced
        raise SwagError(f"data.train: no training image could be used ({n} tried; first: "
                        f"{self.images.split.name(i)}: {replaced[0][2]})")

    def __len__(self):
        return len(self.images)


def collate_train(batch):
    """:class:`TrainSet` samples -> (images, labels, every ``(index, reason, error)`` replaced)."""
    from swagcli.evaluate.transfer import collate

    x, y = collate([(b[0], b[1]) for b in batch])
    return x, y, [r for b in batch for r in b[2]]


class TrainSkips:
    """The training images a run passed over (distinct, by index) and how many draws they cost."""

    def __init__(self, split):
        self.split, self.bad, self.substituted = split, {}, 0

    def add(self, replaced) -> bool:
        for j, reason, error in replaced:
            self.substituted += 1
            self.bad.setdefault(j, {"index": j, "file": self.split.name(j), "reason": reason, "error": error})
        return bool(replaced)

    def gather(self, env) -> None:
        """Every process's images (once, at the end of a run)."""
        if env.distributed:
            parts = [None] * env.world
            dist.all_gather_object(parts, (self.bad, self.substituted))
            self.bad = {k: v for b, _ in parts for k, v in b.items()}
            self.substituted = sum(n for _, n in parts)

    def report(self) -> dict:
        from swagcli.images import skip_report

        return skip_report(list(self.bad.values()), len(self.split), substituted=self.substituted)


def mixup(x: torch.Tensor, y: torch.Tensor, classes: int, alpha: float, gen: torch.Generator):
    """Mixup within the micro-batch; returns mixed images and soft targets."""
    target = F.one_hot(y, classes).float()
    if alpha <= 0:
        return x, target
    lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen))).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=gen)
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]


# -- evaluation ----------------------------------------------------------------------------------------
def evaluate(model, norm, split, resolution, batch_size, workers, env, device, dtype, max_pixels: int | None = None,
             skipped: list | None = None, final: bool = True) -> dict:
    """Top-1/top-5 over the images of ``split`` that decode within ``max_pixels``; the others are
    skipped, and (with ``skipped``, a list) appended to it as ``{index, file, reason, error}`` (those
    of every process). A stop signal ends it: ``Interrupted`` for the ``final`` evaluation, an early
    end otherwise (the caller drops the numbers)."""
    from swagcli.evaluate.transfer import ImageSet, loader
    from swagcli.images import MAX_PIXELS
    from swagcli.train.loop import eval_batches

    where = np.arange(env.rank, len(split), env.world)
    part = split.subset(where)
    tot = torch.zeros(3, dtype=torch.float64)
    bad = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for x, y, _, worse in eval_batches(loader(ImageSet(part, resolution, train=False, skip=True,
                                                           max_pixels=max_pixels or MAX_PIXELS), batch_size, workers),
                                           "the final evaluation" if final else None):
            bad += [{"index": int(where[i]), "file": part.name(i), "reason": r, "error": e} for i, r, e in worse]
            if x is None:
                continue
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(norm(x.to(device))).float()
            top = logits.topk(min(5, logits.shape[1]), 1).indices.cpu()
            tot += torch.tensor([len(y), (top[:, 0] == y).sum().item(), (top == y[:, None]).any(1).sum().item()],
                                dtype=torch.float64)
    model.train(was)
    if env.distributed:
        dist.all_reduce(tot)
        if skipped is not None:
            parts = [None] * env.world
            dist.all_gather_object(parts, bad)
            bad = sorted((b for p in parts for b in p), key=lambda b: b["index"])
    if skipped is not None:
        skipped += bad
    n = max(tot[0].item(), 1)
    return {"images": int(tot[0]), "top1": tot[1].item() / n, "top5": tot[2].item() / n}


# -- one training run ------------------------------------------------------------------------------------
def train_run(recipe, env, source, train, val, lr: float, updates: int, out: Path, resolution: int,
              progress: bool = True, on_step=None, label: str = "finetune") -> dict:
    from swagcli import recipes as R
    from swagcli.evaluate.transfer import ImageSet
    from swagcli.images import check_skipped, combine_reports, skip_report
    from swagcli.signals import STOP, dataloader_worker_init, workers_outlast_sigterm
    from swagcli.train import checkpoint as ckpt_io
    from swagcli.train import speed
    from swagcli.train.loop import Loop
    from swagcli.train.models import Normalizer
    from swagcli.train.optim import lr_factor
    from swagcli.train.resume import resume
    from swagcli.train.runtime import amp_dtype, pick_device, plan_layout

    device = pick_device(recipe.device, env)
    dtype = amp_dtype(recipe.precision, device)
    source = copy.copy(source)
    source.model = copy.deepcopy(source.model)
    model = prepare_model(source, train.classes, recipe, resolution).to(device)
    model.train()
    if env.distributed and recipe.sync_bn and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    speed.prepare(model, recipe.speed, device)
    norm = Normalizer(model.backbone).to(device)
    layout = plan_layout(recipe, env)
    opt = torch.optim.SGD(model.parameters(), lr=lr * recipe.batch_size / 512, momentum=recipe.optim.momentum,
                          nesterov=recipe.optim.nesterov, weight_decay=recipe.optim.weight_decay,
                          **({"fused": True} if speed.fused(recipe.speed, device) else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, updates, recipe.optim.warmup_fraction, 0.1 if recipe.optim.warmup_fraction else 1.0))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = copy.deepcopy(model).eval() if recipe.ema > 0 else None
    for p in (ema.parameters() if ema else []):
        p.requires_grad_(False)

    recipe_yaml = R.dump(recipe, "finetune")
    step = 0
    resume_from, st, _changes = resume(recipe.resume, out, model, opt, sched, scaler, recipe_yaml, "finetune")
    if resume_from is not None:
        if ema is not None:
            ema.load_state_dict(st["ema"])
        step = st["step"]
    ddp = torch.nn.parallel.DistributedDataParallel(model) if env.distributed else model
    fwd = speed.compiled(ddp, recipe.speed)
    per_step = layout["micro"] * layout["accum"]
    sampler = StepSampler(len(train), recipe.seed, env.rank, env.world, start=step * per_step)
    max_pixels, max_bad = recipe.data.max_pixels, recipe.data.max_bad_fraction
    dl = torch.utils.data.DataLoader(TrainSet(ImageSet(train, resolution, train=True, seed=recipe.seed,
                                                       max_pixels=max_pixels)),
                                     batch_size=layout["micro"], sampler=sampler, collate_fn=collate_train,
                                     num_workers=recipe.data.workers,
                                     worker_init_fn=dataloader_worker_init if recipe.data.workers else None)
    train_skips, val_skips = TrainSkips(train), {}
    with workers_outlast_sigterm():
        it = iter(dl)
    classes_json = json.dumps({"format": "swag-classes/1", "classes": train.classes}) + "\n"

    def step_fn(batch, update):
        x, y, replaced = batch
        if train_skips.add(replaced):  # a bad image was passed over: past the fraction, stop
            check_skipped(train_skips.report(), "data.train", max_bad, max_pixels)
        gen = torch.Generator().manual_seed(hash((recipe.seed, 29, update.step, env.rank, update.micro)) & (2**62 - 1))
        x = norm(x.to(device, non_blocking=True))
        x, target = mixup(x, y.to(device), len(train.classes), recipe.mixup, gen)
        return torch.sum(-target * F.log_softmax(fwd(speed.inputs(x, recipe.speed)).float(), 1), 1).mean()

    def ema_update(_step):
        with torch.no_grad():
            for a, w in zip(ema.state_dict().values(), model.state_dict().values()):
                if a.dtype.is_floating_point:
                    a.mul_(1 - recipe.ema).add_(w, alpha=recipe.ema)
                else:
                    a.copy_(w)

    def save():
        path = None
        if env.is_main:
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "step": loop.step, "ema": ema.state_dict() if ema is not None else {}}
            path = ckpt_io.save(out / "checkpoints", loop.step, model, state, None, recipe_yaml,
                                {**ckpt_io.describe_model(model, source.name, source.kwargs, resolution, "finetune"),
                                 "classes": len(train.classes), "lr": lr, "updates": updates, "kind": "finetune"},
                                keep=recipe.keep_checkpoints, files={"classes.json": classes_json})
        return path

    def run_eval(prefix: str = "") -> dict:
        kw = (val, resolution, recipe.data.batch_size, recipe.data.workers, env, device, dtype, max_pixels)
        bad, final = [], not prefix
        m = {f"{prefix}{k}": v for k, v in evaluate(model, norm, *kw, skipped=bad, final=final).items()}
        val_skips.update(skip_report(bad, len(val)))
        check_skipped(val_skips, "data.val", max_bad, max_pixels)
        if ema is not None:
            m.update({f"{prefix}ema_{k}": v for k, v in evaluate(ema, norm, *kw, final=final).items() if k != "images"})
        return {} if STOP["requested"] and not final else m

    loop = Loop(kind="finetune", out=out, recipe=recipe, env=env, device=device, model=model, module=ddp, opt=opt,
                sched=sched, scaler=scaler, dtype=dtype, accum=layout["accum"], total=updates, batches=it,
                what="finetune: training images", samples_per_step=recipe.batch_size, step=step,
                samples=step * recipe.batch_size, resumed_from=resume_from, save=save, on_step=on_step,
                progress=progress, label=label, diverged_hint="lower optim.lr",
                meter=speed.meter(model, resolution, device, dtype, env.world, "finetune"))
    with loop:
        status = loop.run(step_fn, after_update=ema_update if ema is not None else None,
                          evaluate=lambda _s: run_eval("val_"), eval_every=recipe.eval_every,
                          log_fields=lambda: {"replaced_images": train_skips.substituted})
        final = run_eval() if status == "finished" else {}
        train_skips.gather(env)
        skipped = combine_reports({"train": train_skips.report(), **({"val": val_skips} if val_skips else {})})
        loop.event(final)
        return loop.result(updates=updates, lr=lr, resolution=resolution, classes=len(train.classes),
                           train_images=len(train), skipped_images=skipped, **final)


# -- the command -------------------------------------------------------------------------------------------
def run(recipe, env, progress: bool = True, on_step=None) -> dict:
    """`swag finetune` for a validated :class:`~swagcli.recipes.FinetuneRecipe` in one process of
    ``env`` (launch.run_local / submit_slurm start the processes)."""
    from swagcli.evaluate.logreg import stratified_split, stratified_subset
    from swagcli.evaluate.transfer import load_source, load_split, require_classes, require_trained_classes
    from swagcli.runinfo import atomic_write_text
    from swagcli.train.runtime import init_distributed, pick_device

    if not recipe.out:
        raise SwagError("finetune: no run directory (--out DIR or 'out:' in the recipe)")
    out = Path(recipe.out)
    train = load_split(recipe.data.train, "train")
    require_classes(train)
    val = load_split(recipe.data.val, "val", train.classes)
    require_trained_classes(train, val)
    if recipe.fraction < 1:
        train = train.subset(stratified_subset(train.labels, recipe.fraction, recipe.seed))
    source = load_source(recipe.source, recipe.seed)
    resolution = recipe.data.resolution or default_resolution(source.name, source.resolution)
    updates = recipe.updates or update_budget(len(train))
    init_distributed(env, pick_device(recipe.device, env))
    grid = []
    lr = recipe.optim.lr
    if recipe.lr_grid:
        fit_i, held_i = stratified_split(train.labels, recipe.heldout, recipe.seed)
        fit, held = train.subset(fit_i), train.subset(held_i)
        trial_updates = recipe.grid_updates or max(1, updates // 4)
        for cand in recipe.lr_grid:
            r = train_run(recipe, env, source, fit, held, cand, trial_updates, out / "lr_grid" / f"lr-{cand:g}",
                          resolution, progress, label=f"lr {cand:g}")
            grid.append({"lr": cand, "heldout_top1": r.get("top1"), "heldout_images": r.get("images"),
                         "status": r["status"]})
            if r["status"] != "finished":
                return {**r, "lr_grid": grid}
        lr = max(grid, key=lambda g: (g["heldout_top1"], -g["lr"]))["lr"]
    if lr is None:
        lr = default_lr(source.name, recipe.optim.table8_dataset)
    result = train_run(recipe, env, source, train, val, lr, updates, out, resolution, progress, on_step)
    result.update(lr_grid=grid, head_init=recipe.head_init, fraction=recipe.fraction,
                  empty_class_folders={"train": train.empty_classes, "val": val.empty_classes},
                  source={"kind": source.kind, "model": source.name, "path": source.path})
    if env.is_main:
        atomic_write_text(out / "finetune.json", json.dumps(result, indent=1) + "\n")
    return result
