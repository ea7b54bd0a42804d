"""The one training loop (:mod:`swagcli.train.loop`) against training written out by hand.

Hashtag pretraining, MAE and finetuning each run through :class:`~swagcli.train.loop.Loop` with
a step function of their own. Here each is rebuilt from the same public parts (model, optimizer,
schedule, the same stream or sampler) and trained by a plain loop of a dozen lines (forward, loss,
backward, accumulate, clip, step): the stage's logged losses equal the plain loop's within 1e-6,
so the loop adds signals, checkpoints, logging and throughput and changes nothing that is trained.
(Checked once more against the two loops it replaced, whose losses were the same to the bit:
see CHANGELOG.md, issue 22.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from swagcli import recipes
from swagcli.train.dist import DistEnv

REPO = Path(__file__).resolve().parents[2]
STEPS, BATCH, MICRO = 6, 32, 16


def _logged(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in open(Path(run_dir) / "metrics.jsonl") if '"loss"' in line]


def _by_hand(model, opt, sched, next_batch, loss_of, steps: int, accum: int, clip: float = 0.0, after=None):
    """Plain gradient accumulation: the reference every stage must equal."""
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accum):
            loss = loss_of(next_batch(), step, micro)
            (loss / accum).backward()
            total += float(loss.detach())
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        if after:
            after()
        losses.append(total / accum)
    return losses


def _pretrain_recipe(tiny_world, out, yaml="test_vit.yaml", *sets):
    return recipes.load("pretrain", REPO / "recipes/pretrain" / yaml, flags={"out": str(out)}, overrides=[
        f"data.plan={tiny_world['plan']}", "data.shards=[" + ",".join(tiny_world["shards"]) + "]",
        "data.workers=0", "data.shuffle_buffer=200", "log_every=1", "checkpoint_every=1000",
        f"batch_size={BATCH}", f"micro_batch={MICRO}", f"samples={BATCH * STEPS}", *sets])


def _pretrain_by_hand(r, build, loss_of):
    """What `swag pretrain` does, by hand: seed, model, AdamW + schedule, the stream, updates."""
    from swagcli.train.data import StreamConfig, make_loader, stream_layout
    from swagcli.train.models import Normalizer
    from swagcli.train.optim import build_optimizer, build_scheduler

    deal = stream_layout(len(r.data.shards), 1, r.data.workers, r.data.shuffle_buffer, r.data.streams)
    torch.manual_seed(r.seed)
    model = build()
    norm = Normalizer(model.backbone)
    opt = build_optimizer(model, r.optim, r.batch_size)
    sched = build_scheduler(opt, STEPS, r.optim)
    cfg = StreamConfig(shards=r.data.shards, plan_dir=r.data.plan, resolution=r.data.resolution,
                       shuffle_buffer=deal["shuffle_buffer"], streams=deal["streams"], seed=r.seed,
                       max_bad_fraction=r.data.max_bad_fraction, max_pixels=r.data.max_pixels)
    it = iter(make_loader(cfg, MICRO, 0))
    return _by_hand(model, opt, sched, lambda: next(it), lambda b, s, m: loss_of(model, norm(b["image"]), b),
                    STEPS, BATCH // MICRO, r.optim.grad_clip)


@pytest.fixture(scope="module")
def hashtag_run(tiny_world, tmp_path_factory):
    from swagcli.train.engine import train

    r = _pretrain_recipe(tiny_world, tmp_path_factory.mktemp("loop") / "wsp", "test_vit.yaml", "optim.grad_clip=1.0")
    return r, train(r, DistEnv(), progress=False)


def test_hashtag_pretraining_is_the_plain_loop(hashtag_run):
    from swagcli.prep.vocab import Vocab
    from swagcli.train.engine import build_loss
    from swagcli.train.models import build_model

    r, res = hashtag_run
    assert res["status"] == "finished" and res["step"] == STEPS
    hashtags = len(Vocab.load(json.loads((Path(r.data.plan) / "plan.json").read_text())["vocab"]))
    loss_fn, _ = build_loss(r, r.data.plan, hashtags)
    ref = _pretrain_by_hand(r, lambda: build_model(r.model.name, hashtags, r.model.kwargs, r.model.pre_logits),
                            lambda model, x, b: loss_fn(model(x), b["target_idx"], b["target_w"]))
    assert _logged(res["run_dir"]) == pytest.approx(ref, abs=1e-6)
    assert res["last_loss"] == pytest.approx(ref[-1], abs=1e-6)
    # what the loop adds: throughput and precision in the result
    assert res["throughput"]["samples_per_s"] > 0 and 0 <= res["throughput"]["data_wait"] <= 1
    assert res["precision"] == {"autocast": "fp32", "grad_scaler": False, "device": "cpu"}


def test_cpu_training_leaves_a_core_per_loader_worker(tiny_world, tmp_path):
    """On the CPU, torch's threads are the cores the DataLoader workers leave (at least one) while
    the run lasts, and what they were afterwards; OMP_NUM_THREADS, when set, is the user's say."""
    import os

    from swagcli.train.engine import train
    from swagcli.train.runtime import training_threads

    cpu = torch.device("cpu")
    cores = len(os.sched_getaffinity(0))
    assert training_threads(cpu, 1, {}) == max(1, cores - 1)
    assert training_threads(cpu, cores + 3, {}) == 1
    assert training_threads(cpu, 1, {"OMP_NUM_THREADS": "4"}) is None
    assert training_threads(torch.device("cuda"), 1, {}) is None
    before = torch.get_num_threads()
    r = _pretrain_recipe(tiny_world, tmp_path / "run", "test_vit.yaml", "data.workers=1", "samples=32")
    res = train(r, DistEnv(), progress=False)
    want = training_threads(cpu, 1) or before
    assert res["throughput"]["torch_threads"] == want and torch.get_num_threads() == before


def test_mae_is_the_plain_loop(tiny_world, tmp_path):
    from swagcli.train.engine import train
    from swagcli.train.mae import MaeModel
    from swagcli.train.models import build_model

    r = _pretrain_recipe(tiny_world, tmp_path / "mae", "test_vit_mae.yaml", "mae.decoder_dim=32",
                         "mae.decoder_depth=1", "mae.decoder_heads=4", "eval_samples=32")
    res = train(r, DistEnv(), progress=False)
    assert res["status"] == "finished" and res["objective"] == "mae"

    def build():
        bb = build_model(r.model.name, 1, r.model.kwargs, pre_logits=False).backbone
        return MaeModel(bb, **r.mae.model_dump())

    ref = _pretrain_by_hand(r, build, lambda model, x, b: model(x)[0])  # masks from the torch RNG, as in the run
    assert _logged(res["run_dir"]) == pytest.approx(ref, abs=1e-6)


def test_finetuning_is_the_plain_loop(hashtag_run, tiny_world, tmp_path):
    """Finetuning with mixup, gradient accumulation and the EMA hook: the losses, the final weights
    and the EMA weights equal SGD with Nesterov written out by hand."""
    from swagcli.evaluate.finetune import StepSampler, TrainSet, collate_train, mixup, prepare_model, run
    from swagcli.evaluate.transfer import ImageSet, load_source, load_split
    from swagcli.train import checkpoint as ck
    from swagcli.train.models import Normalizer
    from swagcli.train.optim import lr_factor

    _, pre = hashtag_run
    world = tiny_world["world"]
    ema_rate, lr, updates = 0.5, 0.1, 5
    f = recipes.load("finetune", flags={"out": str(tmp_path / "ft")}, overrides=[
        f"source.checkpoint={pre['run_dir']}", f"data.train=[{world}/downstream/train]",
        f"data.val=[{world}/downstream/val]", "data.workers=0", f"batch_size={BATCH}", f"micro_batch={MICRO}",
        f"ema={ema_rate}", "log_every=1", "checkpoint_every=1000", f"updates={updates}", f"optim.lr={lr}"])
    res = run(f, DistEnv(), progress=False)
    assert res["status"] == "finished" and res["throughput"]["samples_per_s"] > 0

    train = load_split(f.data.train, "train")
    source = load_source(f.source, f.seed)
    model = prepare_model(source, train.classes, f, source.resolution)
    model.train()
    norm = Normalizer(model.backbone)
    opt = torch.optim.SGD(model.parameters(), lr=lr * BATCH / 512, momentum=f.optim.momentum,
                          nesterov=f.optim.nesterov, weight_decay=f.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, updates, f.optim.warmup_fraction, 1.0))
    ema = copy.deepcopy(model).eval()
    dl = torch.utils.data.DataLoader(TrainSet(ImageSet(train, source.resolution, train=True, seed=f.seed)),
                                     batch_size=MICRO, sampler=StepSampler(len(train), f.seed, 0, 1),
                                     collate_fn=collate_train)
    it = iter(dl)

    def loss_of(batch, step, micro):
        x, y, _ = batch
        gen = torch.Generator().manual_seed(hash((f.seed, 29, step, 0, micro)) & (2**62 - 1))
        x, target = mixup(norm(x), y, len(train.classes), f.mixup, gen)
        return torch.sum(-target * F.log_softmax(model(x), 1), 1).mean()

    def ema_step():
        with torch.no_grad():
            for a, w in zip(ema.state_dict().values(), model.state_dict().values()):
                a.copy_(a * (1 - ema_rate) + w * ema_rate) if a.dtype.is_floating_point else a.copy_(w)

    ref = _by_hand(model, opt, sched, lambda: next(it), loss_of, updates, BATCH // MICRO, after=ema_step)
    assert _logged(tmp_path / "ft") == pytest.approx(ref, abs=1e-6)
    saved = ck.load_train_state(Path(res["checkpoint"]))["ema"]
    for k, v in ema.state_dict().items():
        assert torch.allclose(saved[k].float(), v.float(), atol=1e-6), k


def test_pretraining_with_jpegs_decoded_by_the_device_path(hashtag_run, tiny_world, tmp_path):
    """``data.decode: gpu`` end to end (on the CPU: torchvision's decoder in the main process, the
    fallback a GPU-less machine takes): the workers pass JPEGs still encoded, and the run's losses
    are the CPU decoder's (same samples, crops and flips; on the CPU the same pixels: see
    swagcli/train/gpu_decode.py); nothing is dropped."""
    from swagcli.train.data import StreamConfig, make_loader
    from swagcli.train.engine import train
    from swagcli.train.gpu_decode import EncodedBatch

    r = _pretrain_recipe(tiny_world, tmp_path / "gpu", "test_vit.yaml", "optim.grad_clip=1.0", "data.decode=gpu")
    batch = next(iter(make_loader(StreamConfig(shards=r.data.shards, plan_dir=r.data.plan, resolution=32,
                                               decode="gpu", shuffle_buffer=10), 4, 0)))
    assert isinstance(batch["image"], EncodedBatch)  # the workers did not decode
    res = train(r, DistEnv(), progress=False)
    assert res["status"] == "finished" and res["stream"]["undecodable_on_device"] == 0
    assert _logged(res["run_dir"]) == pytest.approx(_logged(hashtag_run[1]["run_dir"]), abs=1e-6)
