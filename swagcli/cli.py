"""The `swag` command: one thin typer command per subcommand (load recipe -> run task -> report).

Heavy modules (nltk, torch, matplotlib) are imported inside the commands, so `swag --help` and
errors in arguments stay fast. A :class:`SwagError` anywhere becomes one line on stderr and exit
code 2.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from swagcli import __version__
from swagcli.errors import SwagError
from swagcli.prep import FORMATS


class DefaultGroup(TyperGroup):
    """A group whose first command runs when no subcommand is named
    (``swag sample --vocab V DUMPS`` is ``swag sample run --vocab V DUMPS``)."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)

app = typer.Typer(
    name="swag", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Weakly-supervised pretraining on hashtags: vocabulary, resampling, pretraining, transfer.",
)
vocab_app = typer.Typer(no_args_is_help=True, help="Build and inspect hashtag vocabularies (SPEC §1).")
recipe_app = typer.Typer(no_args_is_help=True, help="Validate and show recipes.")
sample_app = typer.Typer(cls=DefaultGroup, no_args_is_help=True,
                         help="Resample a vocabulary into a training plan (SPEC §2).")
app.add_typer(vocab_app, name="vocab")
app.add_typer(sample_app, name="sample")
app.add_typer(recipe_app, name="recipe")
zeroshot_app = typer.Typer(cls=DefaultGroup, no_args_is_help=True,
                           help="Zero-shot transfer through the hashtag head, with Platt scaling (SPEC §6).")

RecipeOpt = typer.Option(None, "--recipe", "-r", help="YAML recipe (defaults are SPEC.md's)")
SetOpt = typer.Option(None, "--set", "-s", help="dotted override key=value, repeatable")


def _version(value: bool):
    if value:
        typer.echo(f"swag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                        help="print the version and exit")):
    pass


def _split(values: Optional[List[str]]) -> Optional[List[str]]:
    """``--countries US,GB --countries IN`` -> [US, GB, IN]."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


FormatOpt = typer.Option(None, "--format", help=" | ".join(FORMATS) + " [auto]")
LabelsOpt = typer.Option(None, "--labels", help="a post's raw tags: hashtags | caption (its noun phrases, "
                         "WordNet nouns) | both [hashtags]")
TagsFieldOpt = typer.Option(None, "--tags-field", help="field (column) holding the tags, e.g. usertags "
                            "(img2dataset, parquet, jsonl); default: the #tags of the caption for img2dataset")




def _locked(out, command: str, keep_file: bool = True):
    """The output directory's lock for the whole command (``swagcli.runlock``): a second command
    into it is refused in one line naming the holder; an --out that is a file is one line too."""
    import contextlib

    from swagcli.runlock import run_lock

    return run_lock(out, command, keep_file) if out else contextlib.nullcontext()


def _exit_if_interrupted(result: dict) -> None:
    """A training run stopped by a signal (checkpoint written): exit 128 + the signal's number,
    saying where it stopped and how to go on."""
    import signal

    from swagcli.errors import Interrupted

    if result.get("status") != "preempted":
        return
    name = result.get("signal") or "SIGTERM"
    signum = getattr(signal, name, signal.SIGTERM)
    total = result.get("total_steps") or result.get("updates")
    raise Interrupted(f"interrupted ({name}) at step {result['step']:,}" + (f" of {total:,}" if total else "")
                      + f": checkpoint {result.get('checkpoint')}; rerun the same command to resume", int(signum))


def _prep_mapper(r, name: str) -> dict:
    """Shards run locally (``workers``), or as SLURM job arrays with ``launcher.slurm``."""
    if r.launcher.slurm is None:
        return {}
    if not r.out:
        raise SwagError(f"{name}: no output directory (--out DIR or 'out:' in the recipe)")
    from swagcli.launch import slurm_mapper

    return {"mapper": slurm_mapper(r.launcher.slurm, Path(r.out) / "slurm", name)}


# -- vocab ----------------------------------------------------------------------------------------
@vocab_app.command("build")
def vocab_build(
    dumps: Optional[List[str]] = typer.Argument(None, help="dump files, globs or brace ranges"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory"),
    min_count: Optional[int] = typer.Option(None, help="keep tags on >= this many images [2]"),
    head_min_images: Optional[int] = typer.Option(None, help="head/tail cut [5000]"),
    countries: Optional[List[str]] = typer.Option(None, help="candidates only from these countries"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="parallel processes [1]"),
    format: Optional[str] = FormatOpt,
    tags_field: Optional[str] = TagsFieldOpt,
    labels: Optional[str] = LabelsOpt,
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Count hashtags in dumps, canonicalize them with WordNet, write DIR/vocab.json.

    Dumps: JSONL/TSV (plain, .gz, .zst, .bz2), YFCC100M metadata files, img2dataset folders or
    parquet files; the format of each is detected, or set with --format."""
    from swagcli import recipes, ui
    from swagcli.prep.vocab import build

    r = recipes.load("vocab", recipe, flags={
        "dumps": dumps or None, "out": str(out) if out else None, "min_count": min_count,
        "head_min_images": head_min_images, "countries": _split(countries), "workers": workers,
        "format": format, "fields.tags": tags_field, "labels": labels}, overrides=set_)
    with _locked(r.out, "vocab"), ui.StageProgress() as prog:
        doc = build(r, prog, **_prep_mapper(r, "swag-vocab"))
    ui.vocab_report(doc, r.out)


@vocab_app.command("canon")
def vocab_canon(
    tags: List[str] = typer.Argument(..., help="hashtags, with or without '#'"),
    vocab: Optional[Path] = typer.Option(None, help="also show the canonical hashtag in this vocabulary"),
):
    """Print the WordNet synsets (canonical hashtag) of each tag, as Listing 1 maps it."""
    from rich.table import Table
    from rich.text import Text

    from swagcli.prep.canon import Canonicalizer, normalize_tag
    from swagcli.prep.vocab import Vocab
    from swagcli.ui import console

    v = Vocab.load(vocab) if vocab else None
    canon = Canonicalizer()
    t = Table(title_justify="left")
    t.add_column("tag")
    t.add_column("canonical synsets")
    if v:
        t.add_column("in vocabulary")
    for raw in tags:
        tag = normalize_tag(raw)
        syn = canon.synsets(tag)
        row = ["#" + tag, " ".join(sorted(syn)) if syn else Text("- (dropped)", style="dim")]
        if v:
            i = v.tag_to_id.get(tag)
            row.append(f"{v.names[i]} (id {i})" if i is not None else Text("-", style="dim"))
        t.add_row(*row)
    console.print(t)


@vocab_app.command("show")
def vocab_show(path: Path = typer.Argument(..., help="vocabulary directory or vocab.json"),
               top: int = typer.Option(12, help="rows of the top-hashtag table")):
    """Summarise a vocabulary."""
    from rich.text import Text

    from swagcli import ui
    from swagcli.prep.vocab import Vocab

    v = Vocab.load(path)
    ui.console.print(Text.assemble((str(path), "bold"), f": swag {v.doc.get('swag_version', '?')}, "
                                   f"WordNet {v.doc.get('wordnet', '?')}"))
    ui.vocab_report(v.doc, None, top=top)


# -- sample ---------------------------------------------------------------------------------------
@sample_app.command("run")
def sample_run(
    dumps: Optional[List[str]] = typer.Argument(None, help="dump files, globs or brace ranges"),
    vocab: Optional[Path] = typer.Option(None, help="vocab.json or its directory"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory"),
    samples: Optional[int] = typer.Option(None, "--samples", "-m", help="M: total samples"),
    strategy: Optional[str] = typer.Option(None, help="head_tail | sqrt | natural | uniform | balanced "
                                           "(cap: --set t=N)"),
    alpha: Optional[float] = typer.Option(None, help="head share (head_tail) [0.7]"),
    label_noise: Optional[float] = typer.Option(None, help="share of hashtags replaced [0]"),
    seed: Optional[int] = typer.Option(None, help="random seed [0]"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="parallel processes [1]"),
    format: Optional[str] = FormatOpt,
    tags_field: Optional[str] = TagsFieldOpt,
    labels: Optional[str] = typer.Option(None, "--labels", help="hashtags | caption | both [as the vocabulary]"),
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Draw M samples (head/tail resampling by default) and write the plan to DIR.

    From an img2dataset folder, the plan's ids are the shards' keys: `swag pretrain --plan DIR`
    then reads that folder's tar shards as they are."""
    from swagcli import recipes, ui
    from swagcli.prep.sample import build

    r = recipes.load("sample", recipe, flags={
        "dumps": dumps or None, "vocab": str(vocab) if vocab else None,
        "out": str(out) if out else None, "samples": samples, "strategy": strategy,
        "alpha": alpha, "label_noise": label_noise, "seed": seed, "workers": workers,
        "format": format, "fields.tags": tags_field, "labels": labels}, overrides=set_)
    with _locked(r.out, "sample"), ui.StageProgress() as prog:
        summary = build(r, prog, **_prep_mapper(r, "swag-sample"))
    ui.sample_report(summary, r.out)


@sample_app.command("export")
def sample_export(plan: Path = typer.Argument(..., help="a plan directory from `swag sample`")):
    """Print one `id<TAB>multiplicity` line per sampled image."""
    from swagcli.prep.sample import iter_plan

    out = sys.stdout
    for ids, mult in iter_plan(plan):
        out.writelines(f"{i}\t{m}\n" for i, m in zip(ids.tolist(), mult.tolist()))


# -- pretrain -------------------------------------------------------------------------------------
@app.command("pretrain")
def pretrain(
    recipe: Optional[Path] = RecipeOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory"),
    plan: Optional[Path] = typer.Option(None, help="sample plan directory (data.plan)"),
    shards: Optional[List[str]] = typer.Option(None, help="image shards (data.shards)"),
    resume: Optional[str] = typer.Option(None, help="auto | never | CHECKPOINT"),
    wait: bool = typer.Option(False, "--wait", help="SLURM: wait for the job and report its result"),
    status: Optional[Path] = typer.Option(None, "--status", help="where this run directory stands (and its SLURM job)"),
    cancel: Optional[Path] = typer.Option(None, "--cancel", help="cancel the SLURM job of this run directory"),
    set_: Optional[List[str]] = SetOpt,
):
    """Pretrain a timm model to predict hashtags (locally, N local processes, or SLURM)."""
    from swagcli import recipes, ui
    from swagcli import launch
    from swagcli.train.stages import stage_recipes, train_stages

    if status and not (Path(status) / "slurm-job.json").is_file():  # a local run: where it stands
        from swagcli.train.resume import progress

        if not Path(status).is_dir():
            raise SwagError(f"{status}: no such run directory")
        ui.console.print(ui.kv_table(f"Run {status}", progress(Path(status))))
        return
    if status or cancel:
        job, info = launch.cancel_slurm(cancel) if cancel else launch.slurm_job(status)
        rows = [("state", job.state), ("stdout", info["stdout"]), ("stderr", info["stderr"]),
                ("action", "cancelled" if cancel else "-")]
        if status:
            from swagcli.train.resume import progress

            rows += progress(Path(status))
        ui.console.print(ui.kv_table(f"SLURM job {info['job_id']}", rows))
        return

    r = recipes.load("pretrain", recipe, flags={
        "out": str(out) if out else None, "resume": resume, "data.plan": str(plan) if plan else None,
        "data.shards": list(shards) if shards else None}, overrides=set_)
    if not r.out:
        raise SwagError("pretrain: no run directory (--out DIR or 'out:' in the recipe)")
    stage_recipes(r)  # every stage is checked before anything runs
    if r.launcher.slurm is not None:
        job = launch.submit_slurm(train_stages, r, Path(r.out), "swag-pretrain")
        info = {"job_id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        ui.console.print(ui.kv_table("Submitted to SLURM", [
            ("job id", job.job_id), ("stdout", info["stdout"]), ("stderr", info["stderr"]),
            ("status", f"swag pretrain --status {r.out}"), ("cancel", f"swag pretrain --cancel {r.out}")]))
        if wait:
            ui.pretrain_report(launch.wait_slurm(job, info))
        return
    with _locked(r.out, "pretrain"):
        result = launch.run_local(train_stages, r, r.launcher.local.processes, Path(r.out))
    ui.pretrain_report(result)
    _exit_if_interrupted(result)


# -- export ---------------------------------------------------------------------------------------
@app.command("export")
def export(
    source: Optional[str] = typer.Argument(None, help="a swag run or checkpoint directory"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder"),
    format: Optional[str] = typer.Option(None, "--format", help="timm (a timm / Hugging Face Hub folder) | "
                                         "torchvision (weights its architectures load strictly) [timm]"),
    ema: Optional[bool] = typer.Option(None, "--ema/--no-ema", help="a finetune run's EMA weights"),
    backbone_only: Optional[bool] = typer.Option(None, "--backbone-only/--with-head", help="drop the head"),
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Write a checkpoint as the folder timm and the Hub load (config.json with the hashtags as
    label_names, model.safetensors, a model card), or as torchvision weights."""
    from swagcli import recipes, ui
    from swagcli.export import run

    r = recipes.load("export", recipe, flags={"source": source, "out": str(out) if out else None,
                                              "format": format, "ema": ema, "backbone_only": backbone_only},
                     overrides=set_)
    with _locked(r.out, "export", keep_file=False):  # the folder is meant to be uploaded as it is
        res = run(r)
    ui.console.print(ui.kv_table("Exported", [
        ("checkpoint", res["source"]), ("format", res["format"]), ("model", res["model"]),
        ("head", f"{res['labels']:,} labels" if res["head"] else "none (features only)"),
        ("weights", "EMA" if res["ema"] else "raw")]))
    ui.console.print(ui.wrote(*res["files"]))


# -- synth ----------------------------------------------------------------------------------------
@app.command("synth")
def synth(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory"),
    posts: Optional[int] = typer.Option(None, help="posts (images) [20000]"),
    concepts: Optional[int] = typer.Option(None, help="concept synsets [300]"),
    seed: Optional[int] = typer.Option(None, help="random seed [0]"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="parallel processes [1]"),
    layout: Optional[List[str]] = typer.Option(None, "--layout", help="also write the posts as yfcc "
                                               "(YFCC100M metadata) and/or img2dataset (a download folder)"),
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Write the built-in synthetic hashtag world (dumps, image shards, downstream sets)."""
    from swagcli import recipes, ui
    from swagcli.prep import synth as synth_mod

    r = recipes.load("synth", recipe, flags={
        "out": str(out) if out else None, "posts": posts, "concepts": concepts, "seed": seed,
        "workers": workers, "layouts": _split(layout)}, overrides=set_)
    if not r.out:
        raise SwagError("synth: no output directory (--out DIR or 'out:' in the recipe)")
    with _locked(r.out, "synth"), ui.StageProgress() as prog:
        summary = synth_mod.run(r, prog)
    ui.console.print(ui.kv_table(f"Synthetic world in {r.out}", list(summary.items())))


# -- demo -----------------------------------------------------------------------------------------
@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="where the demo writes"),
    posts: Optional[int] = typer.Option(None, help="size of the synthetic world"),
    workers: int = typer.Option(2, "--workers", "-j"),
):
    """Run the pipeline end to end on the synthetic world: synth -> vocab -> sample -> pretrain."""
    from swagcli.demo import run_demo

    with _locked(out, "demo"):
        run_demo(out, posts=posts, workers=workers)


@app.command("findings")
def findings(
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r",
                                          help="a findings suite [recipes/ablations/findings.yaml]"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="working directory (cached: reruns resume)"),
    study: Optional[List[str]] = typer.Option(None, "--study", help="run only these studies (file stems), repeatable"),
    seeds: Optional[int] = typer.Option(None, help="seeds per arm [the suite's]"),
    report: Optional[Path] = typer.Option(None, help="also write findings.md and the PNGs here (e.g. docs/findings)"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j"),
    set_: Optional[List[str]] = SetOpt,
):
    """The papers' ablations (sampling, label noise, loss, init, Platt, MAE) on the synthetic world."""
    from swagcli import recipes, ui
    from swagcli.demo import RECIPE_DIR
    from swagcli.findings.runner import run

    path = recipe or RECIPE_DIR / "ablations" / "findings.yaml"
    r = recipes.load("findings", path, flags={"out": str(out) if out else None, "workers": workers,
                                              "report": str(report) if report else None}, overrides=set_)
    with _locked(r.out, "findings"), ui.StageProgress() as progress:
        doc = run(r, Path(path).resolve().parent, only=_split(study), seeds=seeds,
                  log=ui.console.print, progress=progress)
    ui.findings_report(doc)


# -- recipe ---------------------------------------------------------------------------------------
@recipe_app.command("validate")
def recipe_validate(files: List[Path] = typer.Argument(..., help="recipe files")):
    """Check recipes against their command's schema (unknown keys are errors)."""
    from rich.text import Text

    from swagcli import recipes
    from swagcli.ui import console, err_console

    bad = 0
    for f in files:
        try:
            kind = recipes.kind_of(f)
            recipes.load(kind, f)
            console.print(Text.assemble(("ok", "green"), f"   {f} ({kind})"))
        except SwagError as e:
            err_console.print(f"error: {e}", highlight=False)
            bad += 1
    if bad:
        raise typer.Exit(2)


@recipe_app.command("show")
def recipe_show(file: Path = typer.Argument(..., help="recipe file"),
                set_: Optional[List[str]] = SetOpt):
    """Print the resolved recipe (defaults filled in, overrides applied)."""
    from swagcli import recipes

    kind = recipes.kind_of(file)
    typer.echo(recipes.dump(recipes.load(kind, file, overrides=set_), kind), nl=False)


# -- transfer ---------------------------------------------------------------------------------------
def _transfer_flags(checkpoint, model, train, val) -> dict:
    """The source and data flags as typed recipe values (never YAML text: a path may hold quotes,
    colons or brackets)."""
    return {"source.checkpoint": checkpoint or None, "source.model": model or None,
            "data.train": list(train) if train else None, "data.val": list(val) if val else None}


CheckpointOpt = typer.Option(None, "--checkpoint", "-c", help="swag run/checkpoint dir, or a timm weight file")
ModelOpt = typer.Option(None, "--model", help="timm model name (weight files and random init)")
TrainOpt = typer.Option(None, "--train", help="train split: class folders or webdataset shards")
ValOpt = typer.Option(None, "--val", help="validation split: class folders or webdataset shards")


@app.command("probe")
def probe(
    checkpoint: Optional[str] = CheckpointOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory"),
    train: Optional[List[str]] = TrainOpt,
    val: Optional[List[str]] = ValOpt,
    model: Optional[str] = ModelOpt,
    fraction: Optional[List[float]] = typer.Option(None, "--fraction", "-f",
                                                   help="low-shot fraction(s) of train, repeatable [1.0]"),
    seeds: Optional[int] = typer.Option(None, help="subsets per fraction below 1 [3]"),
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Linear probe: logistic regression on frozen features (cached), top-1/top-5 by fraction."""
    from swagcli import recipes, ui
    from swagcli.evaluate.probe import run

    r = recipes.load("probe", recipe, flags={"out": str(out) if out else None, "seeds": seeds,
                                             "fractions": list(fraction) if fraction else None,
                                             **_transfer_flags(checkpoint, model, train, val)}, overrides=set_)
    with _locked(r.out, "probe"), ui.StageProgress() as progress:
        result = run(r, progress)
    ui.probe_report(result)


@app.command("finetune")
def finetune(
    checkpoint: Optional[str] = CheckpointOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory"),
    train: Optional[List[str]] = TrainOpt,
    val: Optional[List[str]] = ValOpt,
    model: Optional[str] = ModelOpt,
    head_init: Optional[str] = typer.Option(None, "--head-init", help="random | zeroshot"),
    fraction: Optional[float] = typer.Option(None, "--fraction", "-f", help="class-stratified part of train [1.0]"),
    lr_grid: Optional[List[float]] = typer.Option(None, "--lr-grid", help="learning rates to try on a held-out split"),
    resume: Optional[str] = typer.Option(None, help="auto | never | CHECKPOINT"),
    wait: bool = typer.Option(False, "--wait", help="SLURM: wait for the job and report its result"),
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Finetune the whole network with a new head (locally, N local processes, or SLURM)."""
    from swagcli import launch, recipes, ui
    from swagcli.evaluate.finetune import run

    r = recipes.load("finetune", recipe, flags={"out": str(out) if out else None, "head_init": head_init,
                                                "fraction": fraction, "resume": resume,
                                                "lr_grid": list(lr_grid) if lr_grid else None,
                                                **_transfer_flags(checkpoint, model, train, val)}, overrides=set_)
    if not r.out:
        raise SwagError("finetune: no run directory (--out DIR or 'out:' in the recipe)")
    if r.launcher.slurm is not None:
        job = launch.submit_slurm(run, r, Path(r.out), "swag-finetune")
        info = {"job_id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        ui.console.print(ui.kv_table("Submitted to SLURM", [
            ("job id", job.job_id), ("stdout", info["stdout"]), ("stderr", info["stderr"])]))
        if wait:
            ui.finetune_report(launch.wait_slurm(job, info))
        return
    with _locked(r.out, "finetune"):
        result = launch.run_local(run, r, r.launcher.local.processes, Path(r.out))
    ui.finetune_report(result)
    _exit_if_interrupted(result)


# -- zeroshot ---------------------------------------------------------------------------------------
ZsCheckpoint = typer.Argument(None, help="swag run or checkpoint directory (with its hashtag head)")
ZsData = typer.Argument(None, help="labelled set: a folder of class folders, or webdataset shards")
ClassesOpt = typer.Option(None, "--classes", help="class list file (one wnid or synset per line, label "
                          "order), or 'imagenet'; default: the class names themselves")


def _zeroshot_recipe(checkpoint, data, out, classes, recipe, set_, platt=None, **flags):
    from swagcli import recipes

    return recipes.load("zeroshot", recipe, flags={
        "out": str(out) if out else None, **_transfer_flags(checkpoint, None, None, data),
        "data.classes": classes or None, "platt.enabled": platt, **flags}, overrides=set_)


@zeroshot_app.command("run")
def zeroshot_run(
    checkpoint: Optional[str] = ZsCheckpoint,
    data: Optional[List[str]] = ZsData,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory"),
    platt: Optional[bool] = typer.Option(None, "--platt/--no-platt", help="also fit Platt scaling (default: on)"),
    aggregation: Optional[str] = typer.Option(None, "--aggregation", "-a", help="auto | sum | mean | max"),
    classes: Optional[str] = ClassesOpt,
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Classify DATA with CHECKPOINT's hashtag head: top-1/top-5, calibration, class histogram."""
    from swagcli import ui
    from swagcli.evaluate.zeroshot import run

    r = _zeroshot_recipe(checkpoint, data, out, classes, recipe, set_, platt, aggregation=aggregation)
    with _locked(r.out, "zeroshot"), ui.StageProgress() as progress:
        result = run(r, progress)
    ui.zeroshot_report(result)


@zeroshot_app.command("map")
def zeroshot_map(
    checkpoint: Optional[str] = ZsCheckpoint,
    data: Optional[List[str]] = ZsData,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write mapping.json and mapping.tsv here"),
    classes: Optional[str] = ClassesOpt,
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Print (and with --out save) the class -> hashtag map, its path similarities, and the classes
    no hashtag reaches."""
    from swagcli import ui
    from swagcli.evaluate.zeroshot import load, write_mapping

    r = _zeroshot_recipe(checkpoint, data, out, classes, recipe, set_)
    _, _, _, mapping = load(r)
    ui.mapping_report(mapping)
    if r.out:
        with _locked(r.out, "zeroshot map"):
            write_mapping(mapping, Path(r.out))
        ui.console.print(ui.wrote(f"{r.out}/mapping.json", f"{r.out}/mapping.tsv"))


# -- fairness ---------------------------------------------------------------------------------------
@app.command("fairness")
def fairness(
    checkpoint: Optional[str] = typer.Argument(None, help="swag run or checkpoint directory (with its hashtag head)"),
    manifest: Optional[str] = typer.Argument(None, help="CSV or JSONL manifest: one row per image (path, attributes, "
                                             "country, label)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output directory"),
    attribute: Optional[List[str]] = typer.Option(None, "--attribute", "-a", help="manifest column to group images "
                                                  "by for the associations (repeatable)"),
    mapping: Optional[str] = typer.Option(None, "--mapping", help="hashtag -> class file for the geography "
                                          "(default: WordNet's map of the labels)"),
    associations: Optional[bool] = typer.Option(None, "--associations/--no-associations",
                                                help="hashtag associations per group (default: on)"),
    geography: Optional[bool] = typer.Option(None, "--geography/--no-geography",
                                             help="accuracy per country and the 80% rule (default: on)"),
    recipe: Optional[Path] = RecipeOpt,
    set_: Optional[List[str]] = SetOpt,
):
    """Associations of the hashtag head with groups of people, and its zero-shot accuracy per country:
    report.html, fairness.json, CSV tables and figures."""
    from swagcli import recipes, ui
    from swagcli.evaluate.fairness import run

    r = recipes.load("fairness", recipe, flags={
        "out": str(out) if out else None, "source.checkpoint": checkpoint or None,
        "data.manifest": manifest or None, "associations.attributes": _split(attribute),
        "geography.mapping": mapping or None, "associations.enabled": associations,
        "geography.enabled": geography}, overrides=set_)
    with _locked(r.out, "fairness"), ui.StageProgress() as progress:
        result = run(r, progress)
    ui.fairness_report(result)


app.add_typer(zeroshot_app, name="zeroshot")


def main(argv: Optional[List[str]] = None) -> None:
    """The entry point: every failure a user can cause or meet ends here as one line on stderr.

    Exit codes: 0 finished; 2 bad input or a failure named in the message (nothing half-written is
    left); 128 + N interrupted by signal N (130 Ctrl-C, 143 SIGTERM): a run stopped this way wrote a
    checkpoint where it could and resumes when the same command is run again. Once a stop signal
    has arrived, an exception nobody named (the ``Interrupted`` a signal raised can land in code
    that catches it and raises something else: a lazy import did) ends the command as
    interrupted too, not as a traceback."""
    from swagcli.signals import STOP, clear_stop, name
    from swagcli.ui import err_console

    clear_stop()
    try:
        _main(argv)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        if not STOP["requested"]:
            raise
        signum = STOP["signum"] or signal.SIGTERM
        err_console.print(f"interrupted ({name(signum)})", highlight=False, soft_wrap=True, markup=False)
        sys.exit(128 + int(signum))


def _main(argv: Optional[List[str]]) -> None:
    from typer import exceptions as typer_exc
    from typer._click import exceptions as click_exc

    from swagcli.errors import Interrupted
    from swagcli.fileio import os_error
    from swagcli.signals import interrupt_on_term
    from swagcli.ui import err_console

    def fail(msg: str, code: int) -> None:
        err_console.print(f"error: {msg}", highlight=False, soft_wrap=True, markup=False)
        sys.exit(code)

    try:
        with interrupt_on_term():
            rv = app(args=argv, prog_name="swag", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except SwagError as e:
        msg = str(e)
        if "Original Traceback" in msg:  # re-raised from a DataLoader worker: keep the message
            msg = msg.strip().splitlines()[-1].split("SwagError: ", 1)[-1]
        fail(msg, e.exit_code)
    except click_exc.NoArgsIsHelpError:
        sys.exit(2)  # the help was printed
    except click_exc.UsageError as e:
        where = e.ctx.command_path if e.ctx else "swag"
        fail(f"{e.format_message()} (see: {where} --help)", 2)
    except click_exc.ClickException as e:
        fail(e.format_message(), e.exit_code)
    except typer_exc.Exit as e:
        sys.exit(e.exit_code)
    except Interrupted as e:  # not an error: resumable
        err_console.print(str(e), highlight=False, soft_wrap=True, markup=False)
        sys.exit(e.exit_code)
    except (typer_exc.Abort, KeyboardInterrupt):
        fail("interrupted (Ctrl-C)", 130)
    except RuntimeError as e:  # a DataLoader worker that died (torch raises it anywhere)
        from swagcli.signals import worker_death

        e = worker_death(e)
        if isinstance(e, Interrupted):
            err_console.print(str(e), highlight=False, soft_wrap=True, markup=False)
            sys.exit(e.exit_code)
        if isinstance(e, SwagError):
            fail(str(e), 2)
        raise e
    except OSError as e:  # a writer or reader not wrapped in swagcli.fileio: still one line
        if e.errno is None:
            raise
        fail(str(os_error(e)), 2)


if __name__ == "__main__":
    main()
