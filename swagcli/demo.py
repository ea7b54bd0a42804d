"""`swag demo`: the pipeline end to end on the built-in synthetic world.

Each stage runs from its recipe under ``recipes/<command>/demo.yaml`` (shipped inside the package
as well), with the paths pointed into the demo's output directory. Later stages are added here as
they are built.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text

from swagcli import recipes, ui

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"


def demo_recipe(kind: str) -> Path:
    return RECIPE_DIR / kind / "demo.yaml"


def caption_recovery(cdoc: dict, hdoc: dict, world_json: Path) -> list[tuple[str, object]]:
    """The rows of how the caption vocabulary recovers the world's concepts."""
    import json

    from swagcli.prep.synth_captions import score_vocab

    r = score_vocab(cdoc, hdoc, json.loads(Path(world_json).read_text()))
    return [("canonical hashtags", r["hashtags"]),
            ("of them a world concept (precision)", f"{r['correct']:,} ({r['precision']:.1%})"),
            ("concepts the hashtag vocabulary has", r["reference"]),
            ("of them found from captions (recall)", f"{r['recovered']:,} ({r['recall']:.1%})")]


def run_demo(out: Path, posts: int | None = None, workers: int = 2) -> dict:
    from swagcli.prep import sample, synth
    from swagcli.prep.vocab import build
    from swagcli.train.dist import dist_env
    from swagcli.train.engine import train

    out = Path(out)
    t0 = time.time()
    world = out / "world"
    ui.console.rule(Text.assemble(("1/7 swag synth", "bold"), ": the synthetic hashtag world"))
    r = recipes.load("synth", demo_recipe("synth"),
                     flags={"out": str(world), "posts": posts, "workers": workers})
    with ui.StageProgress() as prog:
        synth.run(r, prog)
    ui.console.rule(Text.assemble(("2/7 swag vocab build", "bold"), ": canonical hashtag vocabulary"))
    v = recipes.load("vocab", demo_recipe("vocab"),
                     flags={"dumps": [str(world / "dumps")], "out": str(out / "vocab"), "workers": workers})
    with ui.StageProgress() as prog:
        doc = build(v, prog)
    ui.vocab_report(doc, v.out)
    ui.console.rule(Text.assemble(("2b/7 swag vocab build --labels caption", "bold"),
                                  ": the same world from its captions' noun phrases"))
    vc = recipes.load("vocab", demo_recipe("vocab"), flags={
        "dumps": [str(world / "dumps")], "out": str(out / "vocab-captions"), "workers": workers, "labels": "caption"})
    with ui.StageProgress() as prog:
        cdoc = build(vc, prog)
    ui.caption_report(cdoc["stats"])
    ui.console.print(ui.kv_table("Caption vocabulary against the world's concepts",
                                 caption_recovery(cdoc, doc, world / "world.json")))
    ui.console.rule(Text.assemble(("3/7 swag sample", "bold"), ": head/tail resampling into a training plan"))
    s = recipes.load("sample", demo_recipe("sample"), flags={
        "vocab": str(out / "vocab"), "dumps": [str(world / "dumps")], "out": str(out / "plan"),
        "workers": workers})
    with ui.StageProgress() as prog:
        summary = sample.build(s, prog)
    ui.sample_report(summary, s.out)
    ui.console.rule(Text.assemble(("4/7 swag pretrain", "bold"), ": a tiny ViT learns hashtags (CPU, a few minutes)"))
    p = recipes.load("pretrain", demo_recipe("pretrain"), flags={"out": str(out / "pretrain")},
                     overrides=[f"data.plan={out / 'plan'}", f"data.shards=['{world / 'images'}/*.tar']"])
    ui.pretrain_report(train(p, dist_env()))
    ui.console.rule(Text.assemble(("5/7 swag probe", "bold"), ": a linear probe on the downstream classes, 1% / 10% / 100% of labels"))
    from swagcli.evaluate.probe import run as probe

    pr = recipes.load("probe", demo_recipe("probe"), flags={"out": str(out / "probe")}, overrides=[
        f"source.checkpoint={out / 'pretrain'}", f"data.train=['{world / 'downstream' / 'train'}']",
        f"data.val=['{world / 'downstream' / 'val'}']"])
    with ui.StageProgress() as prog:
        ui.probe_report(probe(pr, prog))
    ui.console.rule(Text.assemble(("6/7 swag zeroshot", "bold"), ": the hashtag head alone on the downstream classes, with and without Platt"))
    from swagcli.evaluate.zeroshot import run as zeroshot

    zr = recipes.load("zeroshot", demo_recipe("zeroshot"), flags={"out": str(out / "zeroshot")}, overrides=[
        f"source.checkpoint={out / 'pretrain'}", f"data.val=['{world / 'downstream' / 'val'}']"])
    with ui.StageProgress() as prog:
        ui.zeroshot_report(zeroshot(zr, prog))
    ui.console.rule(Text.assemble(("7/7 swag fairness", "bold"), ": planted association by group, zero-shot accuracy by country"))
    from swagcli.evaluate.fairness import run as fairness

    fr = recipes.load("fairness", demo_recipe("fairness"), flags={"out": str(out / "fairness")}, overrides=[
        f"source.checkpoint={out / 'pretrain'}", f"data.manifest={world / 'groups' / 'manifest.csv'}",
        f"data.workers={workers}"])
    with ui.StageProgress() as prog:
        ui.fairness_report(fairness(fr, prog))
    outputs = {
        "world (dumps, image shards, downstream sets)": world,
        "vocabulary": out / "vocab" / "vocab.json",
        "vocabulary from captions": out / "vocab-captions" / "vocab.json",
        "Zipf plot": out / "vocab" / "zipf.png",
        "sample plan": out / "plan" / "plan.json",
        "resampling plot": out / "plan" / "resampling.png",
        "pretraining run (checkpoints, metrics.jsonl)": out / "pretrain",
        "linear probe (probe.json, probe.png)": out / "probe",
        "zero-shot (zeroshot.json, histogram.png, mapping.tsv)": out / "zeroshot",
        "fairness report (open in a browser)": out / "fairness" / "report.html",
    }
    ui.console.rule(f"demo done in {time.time() - t0:.0f} s")
    ui.console.print(ui.kv_table("Outputs", [(k, str(p)) for k, p in outputs.items()]))
    return {k: str(p) for k, p in outputs.items()}
