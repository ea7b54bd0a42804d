"""End-to-end pretraining throughput against the model's own forward+backward rate.

    .venv/bin/python bench/bench_train.py [--model test_vit] [--res 32] [--batch 64] [--steps 60] [--workers 2]

In one run, on the same model, batch and optimizer:
  * peer: a loop over uint8 batches already in memory (normalize, forward, softmax loss on 1/K
    targets, backward, AdamW step): what training costs without a data path;
  * swag: `swagcli.train.engine.train` on the tiny synthetic world (webdataset shards, plan join,
    shuffle, JPEG decode, RandomResizedCrop + flip in DataLoader workers), timed between step
    --warmup and the last step (start-up and worker spawn excluded).
Prints samples/s for both and the ratio swag / peer (the goal: >= 0.9, i.e. the data path costs
under 10%). On a GPU (device: cuda) the same, plus the model FLOP utilisation is left to the
profiler: not measured here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from swagcli import recipes  # noqa: E402
from swagcli.prep import sample, synth, vocab  # noqa: E402
from swagcli.train.dist import DistEnv  # noqa: E402
from swagcli.train.engine import train  # noqa: E402
from swagcli.train.models import Normalizer  # noqa: E402
from swagcli.train.losses import softmax_ce  # noqa: E402
from swagcli.train.models import build_model  # noqa: E402
from swagcli.train.optim import build_optimizer  # noqa: E402


def world(tmp: Path, res: int) -> dict:
    w = tmp / "world"
    synth.run(recipes.load("synth", ROOT / "recipes/synth/tiny.yaml",
                           flags={"out": str(w)}, overrides=[f"image_size={max(32, res)}", "posts=4000"]))
    vocab.build(recipes.load("vocab", flags={"dumps": [str(w / "dumps")], "out": str(tmp / "vocab"),
                                             "head_min_images": 60}))
    sample.build(recipes.load("sample", flags={"vocab": str(tmp / "vocab"), "dumps": [str(w / "dumps")],
                                               "out": str(tmp / "plan"), "samples": 20000}))
    return {"plan": tmp / "plan", "shards": sorted(str(p) for p in (w / "images").glob("*.tar")),
            "classes": len(vocab.Vocab.load(tmp / "vocab"))}


def peer_rate(r, classes: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = build_model(r.model.name, classes, r.model.kwargs, r.model.pre_logits)
    norm = Normalizer(model.backbone)
    opt = build_optimizer(model, r.optim, r.batch_size)
    x = torch.randint(0, 256, (r.batch_size, 3, r.data.resolution, r.data.resolution), dtype=torch.uint8)
    idx = torch.randint(0, classes, (r.batch_size, 2))
    w = torch.full((r.batch_size, 2), 0.5)
    for i in range(steps):
        if i == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        softmax_ce(model(norm(x)), idx, w).backward()
        opt.step()
    return (steps - warmup) * r.batch_size / (time.perf_counter() - t0)


def swag_rate(r, warmup: int) -> float:
    marks = {}

    def on_step(step):
        marks[step] = time.perf_counter()

    res = train(r, DistEnv(), progress=False, on_step=on_step)
    last = res["step"]
    return (last - warmup) * r.batch_size / (marks[last] - marks[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="test_vit")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        wd = world(Path(tmp), a.res)
        kwargs = "{img_size: %d, patch_size: 8}" % a.res if a.model.startswith("test_vit") else "{}"
        r = recipes.load("pretrain", ROOT / "recipes/pretrain/test_vit.yaml", flags={"out": str(Path(tmp) / "run")},
                         overrides=[f"model.name={a.model}", f"model.kwargs={kwargs}", f"data.plan={wd['plan']}",
                                    "data.shards=[" + ",".join(wd["shards"]) + "]", f"data.resolution={a.res}",
                                    f"data.workers={a.workers}", f"batch_size={a.batch}",
                                    f"samples={a.batch * a.steps}", "checkpoint_every=100000", "eval_samples=1"])
        peer = peer_rate(r, wd["classes"], a.steps, a.warmup)
        ours = swag_rate(r, a.warmup)
        peer2 = peer_rate(r, wd["classes"], a.steps, a.warmup)  # again: the machine is noisy
    best_peer = max(peer, peer2)
    print(f"model {a.model} at {a.res}px, batch {a.batch}, {a.steps} steps ({a.warmup} warm-up), "
          f"{a.workers} DataLoader workers, {torch.get_num_threads()} torch threads")
    print(f"  in-memory forward+backward  {peer:>9.0f} / {peer2:.0f} samples/s")
    print(f"  swag pretrain end to end    {ours:>9.0f} samples/s   ratio {ours / best_peer:.2f}")
    print(f"train: {a.model} {a.res}px b{a.batch}: swag {ours:.0f}/s, in-memory {best_peer:.0f}/s, "
          f"ratio {ours / best_peer:.2f}")


if __name__ == "__main__":
    main()
