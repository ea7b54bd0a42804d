"""GPU training throughput: swag pretrain end to end against the same model's training step on
tensors already in memory, in one run, with the same batch, precision and speed settings.

On the GPU machine (its python3 has torch, timm, numpy, pillow, yaml; bench/gpu_check.sh installs
the wheels swag needs beyond those and WordNet, both prepared here by `bash bench/gpu_check.sh
prepare` into build/gpu/, which the device call carries), the one command:

    bash bench/gpu_check.sh            # device run: carry ["build/gpu"], timeout_s 560

It runs, writing $OUT/bench_gpu.json, $OUT/bench_gpu_compile.json and $OUT/bench_gpu.log:

    python3 bench/bench_gpu.py --all --world /tmp/swag-bench-world --json $OUT/bench_gpu.json
    python3 bench/bench_gpu.py --model vit_b16 --compile --world /tmp/swag-bench-world \
        --json $OUT/bench_gpu_compile.json

Here (CPU): `.venv/bin/python bench/bench_gpu.py --model test_vit --device cpu`.

Presets (``--model``): ``vit_b16`` (timm vit_base_patch16_224, recipes/pretrain/vit_b16.yaml:
AdamW, the pre-logits layer), ``regnety_16gf`` (timm regnety_160, recipes/pretrain/regnety_16gf.yaml:
SGD Nesterov), both at 224 px crops of 256 px synthetic JPEGs; ``test_vit`` (8x8 patches at 32 px,
recipes/pretrain/test_vit.yaml), the CPU check. ``--all``: the GPU presets one after the other in
one process (test_vit where there is no GPU); a preset that fails (out of memory, say) prints one
line and the next one runs.

Per preset, in one process:
  * peer (twice, before and after swag's run: the better one counts): the model built as swag
    builds it (``build_model``, ``speed.prepare``, ``Normalizer``, ``build_optimizer`` with
    ``fused`` as ``speed.fused`` decides, the cosine schedule, autocast at ``amp_dtype``, a
    GradScaler only for fp16, ``speed.compiled``, ``speed.inputs``, the recipe's loss), trained
    on one uint8 batch laid out as the loader's (NHWC memory seen as NCHW) and its targets, both
    already on the device; CUDA is synchronized before each clock read, and at no other time;
  * swag: ``swagcli.train.engine.train`` on a synthetic world (tar shards, plan join, shuffle,
    JPEG decode, RandomResizedCrop + flip in DataLoader workers, pinned host-to-device copies),
    timed between the ``on_step`` marks of updates ``warmup`` and ``warmup + steps``. The loop reads
    each update's loss as a Python float (``runtime.all_mean`` -> ``float``), which waits for the
    GPU, before ``on_step``: every mark is taken just after the device finished that update's
    forward and backward, so no extra synchronization is needed (the optimizer step launched before
    the mark finishes inside the next interval; every interval holds one of each).
Reported: samples/s of both, swag / peer, MFU of both (swagcli.train.flops: FLOPs as torch counts
them, a multiply-add = 2, train = measured forward + backward; the peak is the device's dense
datasheet figure at the run's precision; none on a CPU), the time swag's loop waited for data
inside the timed window, main-process CPU use in it, the DataLoader workers' CPU time per 1,000
samples, and swag's own result.json "throughput" block (its samples/s and data_wait are over the
whole loop, start-up included).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from swagcli import recipes  # noqa: E402
from swagcli.train import flops, speed  # noqa: E402
from swagcli.train.dist import DistEnv  # noqa: E402
from swagcli.train.engine import train  # noqa: E402
from swagcli.train.losses import LOSSES  # noqa: E402
from swagcli.train.models import build_model  # noqa: E402
from swagcli.train.models import Normalizer  # noqa: E402
from swagcli.train.optim import build_optimizer, build_scheduler  # noqa: E402
from swagcli.train.runtime import amp_dtype, training_threads  # noqa: E402

PRESETS = {
    "vit_b16": {"recipe": "recipes/pretrain/vit_b16.yaml", "model": "vit_base_patch16_224", "kwargs": {},
                "res": 224, "image_size": 256, "batch": {"cuda": 256, "cpu": 8}},
    "regnety_16gf": {"recipe": "recipes/pretrain/regnety_16gf.yaml", "model": "regnety_160", "kwargs": {},
                     "res": 224, "image_size": 256, "batch": {"cuda": 128, "cpu": 8}},
    "test_vit": {"recipe": "recipes/pretrain/test_vit.yaml", "model": "test_vit",
                 "kwargs": {"img_size": 32, "patch_size": 8}, "res": 32, "image_size": 32,
                 "batch": {"cuda": 256, "cpu": 64}},
}
GPU_PRESETS = ("vit_b16", "regnety_16gf")
PREFETCH = 4  # swagcli.train.data.make_loader's prefetch_factor: batches each worker keeps ready


# -- the synthetic world ---------------------------------------------------------------------------
def build_world(where: Path, image_size: int, posts: int, shards: int, samples: int, workers: int) -> dict:
    """A synthetic world (swag synth / vocab / sample) under ``where``, reused when it is there
    already with the same settings (``--world DIR``)."""
    from swagcli.prep import sample, synth, vocab

    key = {"image_size": image_size, "posts": posts, "shards": shards, "samples": samples}
    done = where / "bench_world.json"
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        info = json.loads(done.read_text())
        print(f"world: reusing {where} ({posts:,} posts, {image_size} px, {len(info['shards'])} shards)", flush=True)
        return info
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    t0 = time.perf_counter()
    w = where / "world"
    per_shard = max(10, math.ceil(posts / shards))
    synth.run(recipes.load("synth", ROOT / "recipes/synth/tiny.yaml", flags={"out": str(w)}, overrides=[
        f"image_size={image_size}", f"posts={posts}", f"images_per_shard={per_shard}", f"workers={workers}",
        "dump_shards=4", "group_images=0", "downstream_train_per_class=1", "downstream_val_per_class=1"]))
    t1 = time.perf_counter()
    vocab.build(recipes.load("vocab", flags={"dumps": [str(w / "dumps")], "out": str(where / "vocab"),
                                             "head_min_images": 60}))
    sample.build(recipes.load("sample", flags={"vocab": str(where / "vocab"), "dumps": [str(w / "dumps")],
                                               "out": str(where / "plan"), "samples": samples}))
    info = {"key": key, "plan": str(where / "plan"),
            "shards": sorted(str(p) for p in (w / "images").glob("*.tar")),
            "classes": len(vocab.Vocab.load(where / "vocab")),
            "bytes": sum(p.stat().st_size for p in (w / "images").glob("*.tar")),
            "seconds": {"synth": round(t1 - t0, 1), "vocab_sample": round(time.perf_counter() - t1, 1)}}
    done.write_text(json.dumps(info))
    print(f"world: {posts:,} posts at {image_size} px in {len(info['shards'])} shards "
          f"({info['bytes'] / 1e6:.0f} MB), {info['classes']} hashtags, plan of {samples:,} samples; "
          f"synth {t1 - t0:.1f} s, vocab + sample {time.perf_counter() - t1:.1f} s", flush=True)
    return info


# -- the recipe ------------------------------------------------------------------------------------
def make_recipe(preset: dict, a, wd: dict, out: Path, device: str, total_steps: int):
    """The preset's own recipe with the bench's batch, world, workers, precision and speed keys
    (one process: micro_batch = batch, no accumulation; no checkpoint but the final one)."""
    data = recipes.read_yaml(ROOT / preset["recipe"])
    data.pop("kind", None)
    data.pop("launcher", None)
    data.update({"out": str(out), "device": device, "precision": a.precision, "batch_size": a.batch,
                 "micro_batch": None, "samples": a.batch * total_steps, "checkpoint_every": 10 ** 6,
                 "eval_every": None, "eval_samples": 1, "resume": "never", "log_every": 10 ** 6,
                 "tensorboard": False})
    data["model"] = {**data.get("model", {}), "name": preset["model"], "kwargs": preset["kwargs"]}
    data["data"] = {**data.get("data", {}), "plan": wd["plan"], "shards": wd["shards"], "resolution": preset["res"],
                    "workers": a.workers, "shuffle_buffer": a.shuffle_buffer}
    data["speed"] = {"compile": a.compile, "channels_last": a.channels_last,
                     "grad_checkpointing": a.grad_checkpointing, "fused": a.fused}
    return recipes.validate("pretrain", data, preset["recipe"])


# -- timing helpers --------------------------------------------------------------------------------
def rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_steps(st: dict | None) -> str:
    return f"{st['median']:.1f} / {st['p90']:.1f} / {st['max']:.1f}" if st else "n/a"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peer_rate(r, classes: int, device: torch.device, steps: int, warmup: int) -> dict:
    """The model's training step on one in-memory batch, built and run as swag's loop does."""
    torch.manual_seed(r.seed)
    model = build_model(r.model.name, classes, r.model.kwargs, r.model.pre_logits).to(device)
    speed.prepare(model, r.speed, device)
    norm = Normalizer(model.backbone).to(device)
    opt = build_optimizer(model, r.optim, r.batch_size, fused=speed.fused(r.speed, device))
    sched = build_scheduler(opt, steps + warmup, r.optim)
    dtype = amp_dtype(r.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = LOSSES[r.loss] if r.loss in LOSSES else LOSSES["softmax"]
    fwd = speed.compiled(model, r.speed)
    b, s = r.batch_size, r.data.resolution
    g = torch.Generator().manual_seed(0)
    # the loader's layout: NHWC in memory, seen as NCHW (swagcli.train.data.collate)
    x = torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2).to(device)
    idx = torch.randint(0, classes, (b, 2), generator=g).to(device)
    w = torch.full((b, 2), 0.5).to(device)
    model.train()
    t0 = c0 = None
    ticks = []  # per-step clock reads: on a CPU only (on a GPU they would need a synchronization each)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0, c0, h0 = time.perf_counter(), time.process_time(), time.thread_time()
        if i >= warmup and device.type == "cpu":
            ticks.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(fwd(speed.inputs(norm(x), r.speed)), idx, w)
        scaler.scale(loss).backward()
        if r.optim.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.optim.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
    sync(device)
    dt, cpu, thread = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - h0
    ticks.append(time.perf_counter())
    loss = float(loss.detach())
    peak_mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    del model, norm, opt, sched, fwd, x, idx, w
    free_memory()
    return {"samples_per_s": steps * b / dt, "main_cpu_cores": cpu / dt, "main_thread_ms": 1000 * thread / steps,
            "last_loss": loss,
            "peak_gib": round(peak_mem, 2) if peak_mem else None,
            "step_ms": step_stats(ticks) if device.type == "cpu" else None}


def step_stats(ticks: list) -> dict | None:
    """Median, 90th percentile and max of the intervals between clock reads, in ms."""
    d = sorted(1000 * (b - a) for a, b in zip(ticks, ticks[1:]))
    if not d:
        return None
    return {"median": round(d[len(d) // 2], 2), "p90": round(d[min(len(d) - 1, int(0.9 * len(d)))], 2),
            "max": round(d[-1], 2)}


class WaitMeter:
    """Adds up the loop's waits for data (speed.Meter.waited, which the loop calls around each
    ``next(loader)``), so the bench can read them at its on_step marks."""

    total = 0.0

    def __enter__(self):
        self.orig = speed.Meter.waited
        orig, me = self.orig, self

        def waited(meter, seconds):
            me.total += seconds
            return orig(meter, seconds)

        speed.Meter.waited = waited
        return self

    def __exit__(self, *exc):
        speed.Meter.waited = self.orig
        return False


def swag_rate(r, steps: int, warmup: int) -> dict:
    marks = {}
    children0 = os.times()
    with WaitMeter() as wm:
        def on_step(step):
            marks[step] = (time.perf_counter(), time.process_time(), wm.total, time.thread_time())

        res = train(r, DistEnv(), progress=False, on_step=on_step)
    children = os.times()
    worker_cpu = (children.children_user - children0.children_user) + (
        children.children_system - children0.children_system)
    a, b = marks[warmup], marks[warmup + steps]
    dt = b[0] - a[0]
    free_memory()
    return {"samples_per_s": steps * r.batch_size / dt, "main_cpu_cores": (b[1] - a[1]) / dt,
            "main_thread_ms": 1000 * (b[3] - a[3]) / steps, "data_wait": (b[2] - a[2]) / dt,
            "last_loss": res.get("last_loss"),
            "step_ms": step_stats([marks[k][0] for k in range(warmup, warmup + steps + 1)]),
            "worker_cpu_s_per_1k": 1000 * worker_cpu / max(1, res.get("samples") or 1),
            "throughput": res.get("throughput"), "precision": res.get("precision"), "speed": res.get("speed"),
            "status": res.get("status"), "stream": res.get("stream")}


# -- one preset ------------------------------------------------------------------------------------
def run_preset(name: str, a, wd: dict, device: torch.device, tmp: Path) -> dict:
    preset = PRESETS[name]
    t_start = time.perf_counter()
    swag_warmup = a.swag_warmup if a.swag_warmup is not None else max(a.warmup, PREFETCH * max(1, a.workers) + 2)
    r = make_recipe(preset, a, wd, tmp / f"run-{name}", device.type, swag_warmup + a.steps)
    dtype = amp_dtype(r.precision, device)
    model_for_count = build_model(r.model.name, wd["classes"], r.model.kwargs, r.model.pre_logits)
    count = flops.flops_per_sample(model_for_count, (3, preset["res"], preset["res"]))
    del model_for_count
    prec = dtype if dtype is not None else (
        "tf32" if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else None)
    peak = flops.peak_flops(device, prec)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    head = (f"{name}: {r.model.name} at {preset['res']} px, batch {r.batch_size}, "
            f"{flops.precision_key(prec) if prec else 'fp32'}"
            f"{' + GradScaler' if dtype == torch.float16 else ''}, compile {r.speed.compile}, "
            f"channels_last {r.speed.channels_last}, grad_checkpointing {r.speed.grad_checkpointing}, "
            f"fused optimizer {speed.fused(r.speed, device)}, on {dev_name}; {a.workers} DataLoader workers, "
            f"{torch.get_num_threads()} torch threads; {a.steps} timed steps after {a.warmup} (peer) / "
            f"{swag_warmup} (swag) warm-up")
    print(head, flush=True)
    peer1 = peer_rate(r, wd["classes"], device, a.steps, a.warmup)
    print(f"  peer (in memory)   {peer1['samples_per_s']:9.1f} samples/s", flush=True)
    ours = swag_rate(r, a.steps, swag_warmup)
    print(f"  swag end to end    {ours['samples_per_s']:9.1f} samples/s  (data wait {ours['data_wait']:.1%} "
          f"of the window)", flush=True)
    peer2 = peer_rate(r, wd["classes"], device, a.steps, a.warmup)
    print(f"  peer again         {peer2['samples_per_s']:9.1f} samples/s", flush=True)
    best = max(peer1["samples_per_s"], peer2["samples_per_s"])
    ratio = ours["samples_per_s"] / best

    def mfu(sps):
        return flops.mfu(count["train_flops"], sps, peak)

    out = {"preset": name, "model": r.model.name, "resolution": preset["res"], "batch": r.batch_size,
           "device": dev_name, "precision": flops.precision_key(prec) if prec else "fp32",
           "grad_scaler": dtype == torch.float16, "speed": speed.describe(r.speed, device),
           "workers": a.workers, "torch_threads": torch.get_num_threads(), "steps": a.steps,
           "warmup": {"peer": a.warmup, "swag": swag_warmup}, "hashtags": wd["classes"],
           "peer_samples_per_s": [round(peer1["samples_per_s"], 2), round(peer2["samples_per_s"], 2)],
           "swag_samples_per_s": round(ours["samples_per_s"], 2), "ratio": round(ratio, 4),
           "train_gflops_per_sample": round(count["train_flops"] / 1e9, 3),
           "forward_gmacs_per_sample": round(count["forward_macs"] / 1e9, 3),
           "peak_tflops": peak / 1e12 if peak else None,
           "mfu_peer": mfu(best), "mfu_swag": mfu(ours["samples_per_s"]),
           "mfu_convention": "train FLOPs (torch count, multiply-add = 2, measured forward + backward) x samples/s "
                             "over the dense datasheet peak at this precision (swagcli/train/flops.py)",
           "swag_window": {k: ours[k] for k in ("data_wait", "main_cpu_cores", "main_thread_ms",
                                                "worker_cpu_s_per_1k")},
           "peer_main_cpu_cores": round(max(peer1["main_cpu_cores"], peer2["main_cpu_cores"]), 3),
           "peer_main_thread_ms": round(min(peer1["main_thread_ms"], peer2["main_thread_ms"]), 2),
           "step_ms": {"peer": [peer1["step_ms"], peer2["step_ms"]], "swag": ours["step_ms"]},
           "peer_peak_gib": peer1["peak_gib"], "swag_result": {k: ours[k] for k in (
               "status", "throughput", "precision", "speed", "last_loss")},
           "seconds": round(time.perf_counter() - t_start, 1)}
    mf = (f", MFU peer {out['mfu_peer']:.1%} swag {out['mfu_swag']:.1%}" if out["mfu_peer"] is not None
          else ", MFU n/a (no peak for this device)")
    thr = ours["throughput"] or {}
    out["summary"] = (f"bench_gpu {name} {preset['res']}px b{r.batch_size} {out['precision']}"
                      f"{' compile' if r.speed.compile else ''}{' channels_last' if r.speed.channels_last else ''} "
                      f"on {dev_name}: peer {rate(best)}/s, swag {rate(ours['samples_per_s'])}/s, "
                      f"ratio {ratio:.3f}{mf}; data wait {ours['data_wait']:.1%} "
                      f"(result.json: {rate(thr.get('samples_per_s', 0))}/s, data_wait {thr.get('data_wait', 0):.1%}); "
                      f"{a.workers} workers, {torch.get_num_threads()} torch threads")
    print(f"  step ms (median / p90 / max): peer {fmt_steps(peer1['step_ms'])} and {fmt_steps(peer2['step_ms'])}, "
          f"swag {fmt_steps(ours['step_ms'])}", flush=True)
    print(f"  ratio {ratio:.3f}{mf}; main process {ours['main_cpu_cores']:.2f} cores busy in swag's window "
          f"({out['peer_main_cpu_cores']:.2f} in the peer's), its main thread {ours['main_thread_ms']:.1f} CPU ms "
          f"a step ({out['peer_main_thread_ms']:.1f} in the peer's), workers {ours['worker_cpu_s_per_1k']:.2f} CPU s "
          f"per 1,000 samples; {out['seconds']:.0f} s", flush=True)
    return out


# -- main ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(PRESETS), default=None, help="one preset (default: vit_b16)")
    ap.add_argument("--all", action="store_true", help="the GPU presets one after the other (test_vit without a GPU)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--batch", type=int, default=None, help="default: the preset's for the device")
    ap.add_argument("--steps", type=int, default=50, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (the peer's)")
    ap.add_argument("--swag-warmup", type=int, default=None,
                    help="swag's untimed steps (default: max(warmup, 4 x workers + 2): past the batches its "
                         "workers prefetched during start-up)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    ap.add_argument("--compile", action="store_true", help="speed.compile (torch.compile)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="speed.channels_last (default: on for regnety_16gf on CUDA, else off)")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--fused", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 2 on CPU, "
                    "cores - 2 up to 14 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of this process (peer and swag's "
                    "main process alike; default: as swag's loop sets them, cores less one per worker)")
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--posts", type=int, default=None, help="synthetic images (default: 8,000 on CUDA, "
                    "4,000 at 32 px, 1,000 at 256 px on CPU)")
    ap.add_argument("--world", default=None, help="build the world here (kept, reused by a later run)")
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args(argv)

    cuda = torch.cuda.is_available() and a.device != "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: --device cuda, but torch sees no GPU", flush=True)
        return 2
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if a.workers is None:
        a.workers = min(14, max(2, (os.cpu_count() or 4) - 2)) if cuda else 2
    if a.threads:  # the user's say, for swag's run too (the loop leaves OMP_NUM_THREADS alone)
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
        torch.set_num_threads(a.threads)
    else:  # what swag's loop will use (a core per worker left to it): the peer the same
        torch.set_num_threads(training_threads(device, a.workers) or torch.get_num_threads())
    names = ([*GPU_PRESETS] if cuda else ["test_vit"]) if a.all else [a.model or ("vit_b16" if cuda else "test_vit")]
    print(f"bench_gpu: torch {torch.__version__}, {device.type}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, {os.cpu_count()} CPU cores; "
          f"presets {', '.join(names)}", flush=True)

    results, worlds = [], {}
    keep = Path(a.world) if a.world else None
    with tempfile.TemporaryDirectory(prefix="swag-bench-gpu-") as tmp_s:
        tmp = Path(tmp_s)
        for name in names:
            preset = PRESETS[name]
            args = argparse.Namespace(**vars(a))
            args.batch = a.batch or preset["batch"][device.type]
            if args.channels_last is None:
                args.channels_last = cuda and name.startswith("regnet")
            size = preset["image_size"]
            try:
                if size not in worlds:
                    posts = a.posts or (8000 if cuda else (4000 if size <= 64 else 1000))
                    shards = max(8, 2 * a.workers)
                    # the plan: enough samples that the streams do not wrap round to a second epoch
                    # in the run (a wrap costs little: each stream refills its shuffle buffer)
                    samples = 40000 if cuda else 20000
                    where = (keep / f"world-{size}px") if keep else tmp / f"world-{size}px"
                    worlds[size] = build_world(where, size, posts, shards, samples,
                                               workers=max(1, min(16, os.cpu_count() or 1)))
                results.append(run_preset(name, args, worlds[size], device, tmp))
            except Exception as e:  # noqa: BLE001 - one preset's failure (OOM, a missing op) is one line
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                print(f"bench_gpu {name}: FAILED: {type(e).__name__}: {msg}", flush=True)
                if os.environ.get("BENCH_GPU_TRACEBACK"):
                    traceback.print_exc()
                results.append({"preset": name, "error": f"{type(e).__name__}: {msg}"})
                free_memory()
            if a.json:  # after every preset: a later one that hangs loses nothing
                Path(a.json).parent.mkdir(parents=True, exist_ok=True)
                Path(a.json).write_text(json.dumps({"torch": torch.__version__, "device": device.type,
                                                    "results": results}, indent=1) + "\n")
    print("summary:")
    for res in results:
        print("  " + (res.get("summary") or f"bench_gpu {res['preset']}: FAILED: {res['error']}"))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
