"""Peak memory per GPU of one training step under DDP and under FSDP (issue 23), same model, same
micro-batch, same optimizer, bf16: what ``strategy: fsdp`` saves, measured in the same run.

    torchrun --nproc_per_node=8 bench/bench_fsdp_memory.py                      # ViT-L/16, micro 32
    torchrun --nproc_per_node=8 bench/bench_fsdp_memory.py --model vit_huge_patch14_224 --grad-ckpt
    torchrun --nproc_per_node=2 bench/bench_fsdp_memory.py --device cpu --model test_vit --res 32 --micro 4
                                                             # a CPU rehearsal (gloo; no memory figures)

Each strategy builds the model the way ``swag pretrain`` does (``build_model`` with a 27k-hashtag
head and pre-logits, :func:`swagcli.train.sharding.wrap`, swag's AdamW), runs ``--steps`` updates
on random images, and reports ``torch.cuda.max_memory_allocated`` per rank (the peak after the
first step: the optimizer state exists then), with the analytic sharded state 16 B x P / N for
comparison. Prints a table and writes ``--json``. With one GPU there is nothing to shard over:
FSDP's figure is then DDP's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def step_peak(strategy: str, args, env, device) -> dict:
    from swagcli.recipes import OptimSpec
    from swagcli.train import sharding
    from swagcli.train.models import build_model
    from swagcli.train.optim import build_optimizer

    torch.manual_seed(0)
    kwargs = {"img_size": args.res, "patch_size": 8} if args.model == "test_vit" else {}
    model = build_model(args.model, args.hashtags, kwargs, True).to(device)
    if args.grad_ckpt:
        model.backbone.set_grad_checkpointing(True)
    params = sum(p.numel() for p in model.parameters())
    dtype = torch.bfloat16 if device.type == "cuda" else None
    par = sharding.wrap(model, strategy, env, dtype)
    opt = build_optimizer(model, OptimSpec(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1), 8192,
                          fused=device.type == "cuda")
    x = torch.randn(args.micro, 3, args.res, args.res, device=device)
    y = torch.randint(0, args.hashtags, (args.micro,), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(par.module(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    peaks = [None] * env.world
    dist.all_gather_object(peaks, peak)
    del par, model, opt, x, y, loss
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"strategy": strategy, "params": params, "peak_gib_per_rank": peaks,
            "max_peak_gib": max(peaks) if all(p is not None for p in peaks) else None,
            "sharded_state_gib": 16 * params / env.world / 2**30 if strategy == "fsdp" else 16 * params / 2**30,
            "step_s": sorted(times)[len(times) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_large_patch16_224")
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--micro", type=int, default=32, help="images per GPU per step")
    ap.add_argument("--hashtags", type=int, default=27_000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=os.environ.get("OUT", ".") + "/bench_fsdp_memory.json")
    args = ap.parse_args()

    from swagcli.train.dist import DistEnv

    env = DistEnv(rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                  local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if args.device == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rows = [step_peak(s, args, env, device) for s in ("ddp", "fsdp")]
    if env.rank == 0:
        print(f"{args.model} at {args.res} px, micro-batch {args.micro} per GPU, {env.world} processes, "
              f"{rows[0]['params'] / 1e6:,.0f}M parameters, " + ("bf16" if device.type == "cuda" else "fp32") + (", grad checkpointing" if args.grad_ckpt else ""))
        for r in rows:
            peak = f"{r['max_peak_gib']:.2f} GiB" if r["max_peak_gib"] is not None else "n/a (CPU)"
            print(f"  {r['strategy']:5s} peak per GPU {peak:>12s}   state (16 B x P{' / N' if r['strategy'] == 'fsdp' else ''})"
                  f" {r['sharded_state_gib']:.2f} GiB   step {r['step_s'] * 1e3:.0f} ms")
        if rows[0]["max_peak_gib"]:
            print(f"  fsdp / ddp peak: {rows[1]['max_peak_gib'] / rows[0]['max_peak_gib']:.2f}")
        Path(args.json).write_text(json.dumps({"model": args.model, "res": args.res, "micro": args.micro,
                                               "world": env.world, "rows": rows}, indent=1) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
