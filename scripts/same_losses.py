"""The losses of pretraining (with accumulation, clipping, mid-run evaluation), MAE and finetuning
(with EMA and mixup) on the tiny world, from the swag tree REPO: to check that a refactoring of
the training code changes nothing that is trained. Compare two trees, e.g. HEAD against a revision:

    git worktree add /tmp/old <rev>
    .venv/bin/python scripts/same_losses.py /tmp/old /tmp/old.json WORLD_DIR
    .venv/bin/python scripts/same_losses.py . /tmp/new.json WORLD_DIR --against /tmp/old.json

(WORLD_DIR: where the tiny world is built once and reused.)"""
import json, sys, shutil
from pathlib import Path
REPO = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(REPO))
import torch
from swagcli import recipes
from swagcli.prep import sample, synth, vocab
from swagcli.train.dist import DistEnv
from swagcli.train.engine import train
from swagcli.evaluate.finetune import run as ft

W = Path(sys.argv[3]).resolve()
if not (W / "plan" / "plan.json").exists():
    shutil.rmtree(W, ignore_errors=True)
    synth.run(recipes.load("synth", REPO / "recipes/synth/tiny.yaml", flags={"out": str(W / "world")}))
    vocab.build(recipes.load("vocab", flags={"dumps": [str(W / "world/dumps")], "out": str(W / "vocab"), "head_min_images": 60}))
    sample.build(recipes.load("sample", flags={"vocab": str(W / "vocab"), "dumps": [str(W / "world/dumps")],
                                               "out": str(W / "plan"), "samples": 5000, "holdout": 0.1}))
shards = sorted(str(p) for p in (W / "world/images").glob("*.tar"))
runs = Path(sys.argv[2]).with_suffix(".runs")
shutil.rmtree(runs, ignore_errors=True)
data = [f"data.plan={W/'plan'}", "data.shards=[" + ",".join(shards) + "]", "data.workers=1",
        "data.shuffle_buffer=200", "log_every=1"]
out = {}
def losses(d):
    return [json.loads(l) for l in open(d / "metrics.jsonl") if '"loss"' in l or '"eval_' in l]
r = recipes.load("pretrain", REPO / "recipes/pretrain/test_vit.yaml", flags={"out": str(runs / "pt")},
                 overrides=data + ["batch_size=32", "micro_batch=16", "samples=384", "optim.grad_clip=1.0",
                                   "eval_every=6", "eval_samples=64", "checkpoint_every=6"])
res = train(r, DistEnv(), progress=False)
out["pretrain"] = {"metrics": losses(runs / "pt"), "result": {k: res.get(k) for k in ("last_loss", "eval_top1", "eval_top5", "eval_loss", "step")}}
r = recipes.load("pretrain", REPO / "recipes/pretrain/test_vit_mae.yaml", flags={"out": str(runs / "mae")},
                 overrides=data + ["batch_size=32", "micro_batch=16", "samples=256", "mae.decoder_dim=32",
                                   "mae.decoder_depth=1", "mae.decoder_heads=4", "eval_samples=64"])
res = train(r, DistEnv(), progress=False)
out["mae"] = {"metrics": losses(runs / "mae"), "result": {k: res.get(k) for k in ("last_loss", "eval_loss", "step")}}
sets = [f"source.checkpoint={runs/'pt'}", f"data.train=[{W}/world/downstream/train]",
        f"data.val=[{W}/world/downstream/val]", "data.workers=0", "batch_size=32", "micro_batch=16",
        "ema=0.5", "log_every=1", "checkpoint_every=1000", "updates=10", "eval_every=5", "optim.lr=0.1"]
res = ft(recipes.load("finetune", flags={"out": str(runs / "ft")}, overrides=sets), DistEnv(), progress=False)
out["finetune"] = {"metrics": losses(runs / "ft"), "result": {k: res.get(k) for k in ("last_loss", "top1", "top5", "ema_top1", "step")}}
Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
print({k: v["result"] for k, v in out.items()})
if "--against" in sys.argv:
    old = json.loads(Path(sys.argv[sys.argv.index("--against") + 1]).read_text())
    worst = 0.0
    for k in old:
        la = [m["loss"] for m in old[k]["metrics"] if "loss" in m]
        lb = [m["loss"] for m in out[k]["metrics"] if "loss" in m]
        ea = [{x: y for x, y in m.items() if x.startswith(("eval_", "val_"))} for m in old[k]["metrics"]]
        eb = [{x: y for x, y in m.items() if x.startswith(("eval_", "val_"))} for m in out[k]["metrics"]]
        diff = max(abs(x - y) for x, y in zip(la, lb)) if len(la) == len(lb) else float("inf")
        same_eval = [e for e in ea if e] == [e for e in eb if e] and old[k]["result"] == out[k]["result"]
        worst = max(worst, diff if same_eval else float("inf"))
        print(f"{k}: {len(lb)} losses, max difference {diff:.3g}, evaluations and result "
              f"{'equal' if same_eval else 'DIFFER'}")
    sys.exit(0 if worst <= 1e-6 else 1)
