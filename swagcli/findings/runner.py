"""`swag findings`: the papers' ablations on the synthetic world (WSL §3, SWAG Tables 2-4, MAWS).

A *suite* (:class:`~swagcli.recipes.FindingsRecipe`) names one synthetic world, the base recipes
every arm starts from and the *studies* (:class:`~swagcli.recipes.AblationRecipe`, one per
ablation under ``recipes/ablations/``). Each arm of a study is its sample and pretrain keys over
the bases; for every seed it is sampled, pretrained and evaluated with the same probe (and
zero-shot where a study asks), and the paper's directions (``"sqrt > natural"``) are checked on
the differences paired by seed.

Everything is cached under ``OUT`` by the hash of what produced it (``plans/<h>``,
``runs/<h>/{pretrain,probe,zeroshot}``, each with a ``done.json``): arms that are the same
setting in several studies (the baseline is in most) are computed once, a rerun recomputes
nothing, and an interrupted run resumes (pretraining from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from swagcli import recipes as R
from swagcli.errors import SwagError
from swagcli.runinfo import atomic_write_text


@dataclass
class Study:
    name: str
    path: Path
    recipe: R.AblationRecipe


@dataclass
class Job:
    """One arm at one seed: the resolved sample, pretrain, probe and zero-shot recipes."""

    study: str
    arm: str
    seed: int
    sample: dict | None
    pretrain: dict | None
    probe: dict
    zeroshot: dict | None
    keys: dict = field(default_factory=dict)
    vocab: dict | None = None  # the arm's own vocab recipe (None: the suite's vocabulary)
    world: dict = field(default_factory=dict)  # the synth recipe of the study's world
    world_dir: Path | None = None  # where it is written (OUT/world, or OUT/worlds/<key>/world)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_studies(suite: R.FindingsRecipe, base_dir: Path, only: list[str] | None = None) -> list[Study]:
    """The suite's studies (``only``: those whose file stem is listed), each validated."""
    studies = []
    for entry in suite.studies:
        path = Path(entry)
        path = path if path.is_absolute() else base_dir / path
        if path.suffix not in (".yaml", ".yml"):
            path = path.with_suffix(".yaml")
        studies.append(Study(path.stem, path, R.load("ablation", path)))
    if only:
        known = {s.name for s in studies}
        missing = [o for o in only if o not in known]
        if missing:
            raise SwagError(f"--study {missing[0]}: not a study of this suite ({', '.join(sorted(known))})")
        studies = [s for s in studies if s.name in only]
    return studies


def plan_jobs(suite: R.FindingsRecipe, studies: list[Study], out: Path, seeds: int | None = None) -> list[Job]:
    """Every (study, arm, seed), validated before anything runs (a typo fails in a second, not
    after an hour of training). Seeds: ``seeds`` if given, else the suite's or the study's own,
    whichever is more."""
    jobs = []
    for st in studies:
        world_data = R.merge(suite.world, st.recipe.world)
        world_key = _key(world_data)
        world = out / "world" if world_data == suite.world else out / "worlds" / world_key / "world"
        R.validate("synth", {**world_data, "out": "-"}, f"{st.path}: world")
        down = world / "downstream"
        fractions = sorted({R.metric_spec(m)[1] for m in st.recipe.metrics if m.startswith("probe")} | {1.0})
        wants_zeroshot = any(m.startswith("zeroshot") for m in st.recipe.metrics)
        n_seeds = seeds or max(suite.seeds, st.recipe.seeds or 0)
        for arm in st.recipe.arms:
            for seed in range(n_seeds):
                where = f"{st.path}: arms[{arm.name}]"
                probe = R.merge(suite.probe, {"fractions": fractions, "seed": seed,
                                             "data": {"train": [str(down / "train")], "val": [str(down / "val")],
                                                      "workers": min(suite.workers, 2)}})
                zeroshot = (R.merge(suite.zeroshot, {"data": {"val": [str(down / "val")],
                                                             "workers": min(suite.workers, 2)}})
                            if wants_zeroshot else None)
                if arm.pretrain is None:  # random weights: no sample plan, no pretraining
                    model = suite.pretrain.get("model", {})
                    probe["source"] = {"checkpoint": None, "model": model.get("name"), "kwargs": model.get("kwargs", {})}
                    if wants_zeroshot:
                        raise SwagError(f"{where}: zero-shot needs a hashtag head (pretrain: null has none)")
                    job = Job(st.name, arm.name, seed, None, None, probe, None)
                    job.keys = {"run": _key("random", world_key, _canonical("probe", probe, where))}
                else:
                    vocab_data, vocab_dir = None, world.parent / "vocab"
                    if arm.vocab:  # the arm's own vocabulary, cached by what makes it
                        vocab_data = R.merge(suite.vocab, arm.vocab)
                        vocab_c = _canonical("vocab", {**vocab_data, "dumps": ["-"]}, where + ".vocab")
                        vocab_dir = out / "vocabs" / _key("vocab", world_key, vocab_c)
                    sample = R.merge(R.merge(suite.sample, st.recipe.sample), R.merge(arm.sample, {"seed": seed}))
                    sample.update(vocab=str(vocab_dir), dumps=[str(world / "dumps")],
                                  workers=suite.workers)
                    sample_c = _canonical("sample", sample, where + ".sample")
                    held = [m for m in st.recipe.metrics if m in ("head_top1", "tail_top1")]
                    if held and not sample_c["holdout"]:
                        raise SwagError(f"{where}: metric {held[0]} needs held-out images; give the study "
                                        "sample: {holdout: 0.05}")
                    pretrain = R.merge(suite.pretrain, R.merge(arm.pretrain, {"seed": seed}))
                    pretrain.setdefault("data", {})["shards"] = [str(world / "images" / "*.tar")]
                    pretrain["data"].setdefault("workers", min(suite.workers, 2))
                    pretrain_c = _canonical("pretrain", pretrain, where + ".pretrain")
                    job = Job(st.name, arm.name, seed, sample, pretrain, probe, zeroshot, vocab=vocab_data)
                    plan_key = _key("plan", world_key, suite.vocab if vocab_data is None else vocab_c, sample_c)
                    job.keys = {"plan": plan_key, "run": _key("run", plan_key, pretrain_c)}
                job.world, job.world_dir = world_data, world
                R.validate("probe", R.merge(probe, {"out": "x"}), where + " (probe)")
                if zeroshot:
                    R.validate("zeroshot", R.merge(zeroshot, {"out": "x"}), where + " (zeroshot)")
                jobs.append(job)
    # one evaluation per run, with every fraction and zero-shot any of its studies asks for
    need: dict = {}
    for j in jobs:
        n = need.setdefault(j.keys["run"], {"fractions": set(), "zeroshot": None})
        n["fractions"] |= set(j.probe["fractions"])
        n["zeroshot"] = n["zeroshot"] or j.zeroshot
    for j in jobs:
        j.probe["fractions"] = sorted(need[j.keys["run"]]["fractions"])
        j.zeroshot = need[j.keys["run"]]["zeroshot"]
    return jobs


def _canonical(kind: str, data: dict, where: str) -> dict:
    """The recipe validated, with every default filled in (``out`` aside): two arms that spell
    the same setting differently (``loss: softmax`` or nothing) hash alike."""
    recipe = R.validate(kind, {**data, "out": "-"}, where)
    full = json.loads(recipe.model_dump_json(by_alias=True))
    full.pop("out")
    if kind == "pretrain" and recipe.stages:  # each stage resolved (what it inherits spelled out)
        from swagcli.train.stages import stage_recipes

        full["stages"] = [json.loads(r.model_dump_json(by_alias=True, exclude={"out", "init"}))
                          for r in stage_recipes(recipe)]
    return full


def _done(path: Path, key: str) -> dict | None:
    f = path / "done.json"
    if f.is_file():
        d = json.loads(f.read_text())
        if d.get("key") == key:
            return d
    return None


def _mark(path: Path, key: str, **info) -> dict:
    d = {"key": key, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    atomic_write_text(path / "done.json", json.dumps(d, indent=1) + "\n")
    return d


class Runner:
    """Runs the steps of the jobs, each at most once, reporting through ``log(text)``."""

    def __init__(self, suite: R.FindingsRecipe, out: Path, log=print, progress=None):
        self.suite, self.out, self.log, self.progress = suite, out, log, progress
        self.computed = 0  # steps run (not found in the cache)
        self.worlds: set = set()  # the world folders made or found this run

    def world(self, world: dict | None = None, w: Path | None = None) -> None:
        """A world (the suite's, or a study's own in ``w``) and the suite's vocabulary of it."""
        from swagcli.prep import synth, vocab

        world = self.suite.world if world is None else world
        w = w or self.out / "world"
        key = _key(world)
        if not _done(w, key):
            self.log("synthetic world: " + ", ".join(f"{k}={v}" for k, v in world.items()))
            synth.run(R.validate("synth", {**world, "out": str(w), "workers": self.suite.workers},
                                 "findings: world"), self.progress)
            _mark(w, key)
            self.computed += 1
        vkey = _key(key, self.suite.vocab)
        v = w.parent / "vocab"
        if not _done(v, vkey):
            vocab.build(R.validate("vocab", {**self.suite.vocab, "dumps": [str(w / "dumps")], "out": str(v),
                                             "workers": self.suite.workers}, "findings: vocab"), self.progress)
            _mark(v, vkey)
            self.computed += 1

    def vocab(self, job: Job) -> None:
        """The arm's own vocabulary (``arms[].vocab``), where it has one and it is not cached."""
        from swagcli.prep import vocab

        if job.vocab is None:
            return
        v = Path(job.sample["vocab"])
        if not _done(v, v.name):
            self.log("vocabulary: " + ", ".join(f"{k}={val}" for k, val in job.vocab.items()))
            shutil.rmtree(v, ignore_errors=True)
            vocab.build(R.validate("vocab", {**job.vocab, "dumps": [str(job.world_dir / "dumps")],
                                             "out": str(v), "workers": self.suite.workers},
                                   "findings: vocab"), self.progress)
            _mark(v, v.name)
            self.computed += 1

    def plan(self, job: Job) -> Path:
        from swagcli.prep import sample

        self.vocab(job)
        d = self.out / "plans" / job.keys["plan"]
        if not _done(d, job.keys["plan"]):
            shutil.rmtree(d, ignore_errors=True)
            summary = sample.build(R.validate("sample", {**job.sample, "out": str(d)}), self.progress)
            self.computed += 1
            _mark(d, job.keys["plan"], unique_images=summary.get("unique_images"),
                  total_samples=summary.get("total_samples"))
        return d

    def pretrain(self, job: Job, plan: Path) -> Path:
        from swagcli.train.dist import DistEnv
        from swagcli.train.stages import stage_recipes, train_stages

        d = self.out / "runs" / job.keys["run"] / "pretrain"
        data = R.merge(job.pretrain, {"out": str(d), "data": {"plan": str(plan)}})
        r = R.validate("pretrain", data)
        final = Path(stage_recipes(r)[-1].out) if r.stages else d
        if not _done(d, job.keys["run"]):
            res = train_stages(r, DistEnv(), progress=self.progress is not None)
            if res["status"] != "finished":
                raise SwagError(f"{d}: pretraining stopped ({res['status']}); rerun to resume")
            self.computed += 1
            _mark(d, job.keys["run"], checkpoint=str(final), steps=res["step"])
        return final

    def evaluate(self, job: Job, checkpoint: Path | None) -> dict:
        from swagcli.evaluate import probe, zeroshot

        base = self.out / "runs" / job.keys["run"]
        metrics = {}
        pdata = R.merge(job.probe, {"out": str(base / "probe")})
        if checkpoint is not None:
            pdata["source"] = {"checkpoint": str(checkpoint)}
        pkey = _key(pdata)
        got = _done(base / "probe", pkey)
        if not got:
            res = probe.run(R.validate("probe", pdata), self.progress)
            self.computed += 1
            got = _mark(base / "probe", pkey, summary=res["summary"])
        for s in got["summary"]:
            metrics["probe" if s["fraction"] >= 1 else f"probe@{s['fraction']:g}"] = s["top1"]
        if job.zeroshot is not None:
            zdata = R.merge(job.zeroshot, {"out": str(base / "zeroshot"), "source": {"checkpoint": str(checkpoint)}})
            zkey = _key(zdata)
            got = _done(base / "zeroshot", zkey)
            if not got:
                res = zeroshot.run(R.validate("zeroshot", zdata), self.progress)
                self.computed += 1
                got = _mark(base / "zeroshot", zkey, top1={k: v["top1"] for k, v in res["results"].items()})
            metrics["zeroshot"] = got["top1"]["no_platt"]
            if "platt" in got["top1"]:
                metrics["zeroshot_platt"] = got["top1"]["platt"]
        return metrics

    def job(self, job: Job) -> dict:
        """Run what is not cached; ``seconds``: the compute behind the result (summed over the
        runs that made it, cached or not)."""
        t0, before = time.time(), self.computed
        if job.world_dir not in self.worlds:
            self.world(job.world, job.world_dir)
            self.worlds.add(job.world_dir)
        if job.pretrain is None:
            metrics = self.evaluate(job, None)
        else:
            checkpoint = self.pretrain(job, self.plan(job))
            metrics = self.evaluate(job, checkpoint)
            metrics.update(hashtag_metrics(checkpoint))
        spent = self.out / "runs" / job.keys["run"] / "seconds.json"
        total = json.loads(spent.read_text())["seconds"] if spent.is_file() else 0.0
        if self.computed != before:
            total += time.time() - t0
            atomic_write_text(spent, json.dumps({"seconds": round(total, 1)}) + "\n")
        return {"study": job.study, "arm": job.arm, "seed": job.seed, "run": job.keys["run"],
                "metrics": metrics, "seconds": round(total, 1)}


def hashtag_metrics(run_dir: Path) -> dict:
    """``head_top1`` / ``tail_top1`` of a finished pretraining run (its ``result.json``): held-out
    hashtag top-1 on the images tagged with head (tail) hashtags only; absent without a holdout."""
    try:
        res = json.loads((Path(run_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return {f"{k}_top1": res[f"eval_{k}_top1"] for k in ("head", "tail") if res.get(f"eval_{k}_top1") is not None}


def paired(values_a: list, values_b: list) -> dict:
    """The paired difference A - B over seeds: mean, sample std, wins, and a verdict.

    ``holds``: mean > 0 and, with two or more seeds, the mean is at least two standard errors
    (a paired t of 2: about 90% one-sided with 3 seeds); ``weak``: the mean is > 0 but not that
    clear; ``reversed``: the opposite holds (mean < 0 by at least two standard errors, two or more
    seeds); ``fails``: otherwise (no clear difference either way)."""
    d = np.asarray(values_a, float) - np.asarray(values_b, float)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    se = sd / np.sqrt(n) if n > 1 else 0.0
    if mean <= 0:
        verdict = "reversed" if n > 1 and mean < 0 and -mean >= 2 * se else "fails"
    elif n == 1 or mean >= 2 * se:
        verdict = "holds"
    else:
        verdict = "weak"
    return {"mean": mean, "std": sd, "se": float(se), "n": n, "wins": int((d > 0).sum()),
            "diffs": d.tolist(), "verdict": verdict}


def compare(study: Study, results: list[dict]) -> list[dict]:
    """Each expectation of a study on each metric it names (or each of the study's)."""
    by = {}
    for r in results:
        if r["study"] == study.name:
            for m, v in r["metrics"].items():
                by.setdefault((r["arm"], m), {})[r["seed"]] = v
    rows = []
    for text in study.recipe.expect:
        (a, ma), (b, mb) = R.parse_expect(text)
        pairs = [(ma, mb)] if ma or mb else [(m, m) for m in study.recipe.metrics]
        for ma_, mb_ in pairs:
            ma_, mb_ = ma_ or study.recipe.metrics[0], mb_ or study.recipe.metrics[0]
            va, vb = by.get((a, ma_), {}), by.get((b, mb_), {})
            seeds = sorted(set(va) & set(vb))
            if not seeds:
                continue
            rows.append({"expect": text, "a": a, "b": b, "metric_a": ma_, "metric_b": mb_,
                         **paired([va[s] for s in seeds], [vb[s] for s in seeds])})
    return rows


def table(study: Study, results: list[dict]) -> list[dict]:
    """Per arm and metric: the values by seed, their mean and std."""
    rows = []
    for arm in study.recipe.arms:
        rs = sorted((r for r in results if r["study"] == study.name and r["arm"] == arm.name),
                    key=lambda r: r["seed"])
        for m in study.recipe.metrics:
            vals = [r["metrics"][m] for r in rs if m in r["metrics"]]
            if vals:
                rows.append({"arm": arm.name, "label": arm.label or arm.name, "metric": m, "x": arm.x,
                             "values": vals, "mean": float(np.mean(vals)),
                             "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                             "paper": study.recipe.paper.values.get(arm.name)})
    return rows


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the working directory where it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run(suite: R.FindingsRecipe, base_dir: Path, only: list[str] | None = None,
        seeds: int | None = None, log=print, progress=None) -> dict:
    """Run (or resume) the suite; write ``findings.json``, ``findings.md`` and the plots into
    ``OUT/report`` (and ``suite.report``, if set); return the findings."""
    from swagcli.findings import report
    from swagcli.runinfo import stamp

    if not suite.out:
        raise SwagError("findings: no output directory (--out DIR or 'out:' in the recipe)")
    out = Path(suite.out)
    t0 = time.time()
    studies = load_studies(suite, base_dir, only)
    jobs = plan_jobs(suite, studies, out, seeds)
    stamp(out, "findings", suite)
    runner = Runner(suite, out, log, progress)
    results, cache = [], {}
    for i, job in enumerate(jobs):
        if job.keys["run"] not in cache:
            log(f"[{i + 1}/{len(jobs)}] {job.study} · {job.arm} · seed {job.seed}")
            before = runner.computed
            cache[job.keys["run"]] = runner.job(job)
            m = cache[job.keys["run"]]["metrics"]
            log("    " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in m.items())
                + ("  (cached)" if runner.computed == before else ""))
        results.append({**cache[job.keys["run"]], "study": job.study, "arm": job.arm, "seed": job.seed})
    n_seeds = {st.name: 1 + max(j.seed for j in jobs if j.study == st.name) for st in studies}
    doc = {"suite": str(suite.out), "seeds": max(n_seeds.values()), "world": suite.world,
           "seconds": round(time.time() - t0, 1),
           "compute_seconds": round(sum(r["seconds"] for r in cache.values()), 1), "studies": []}
    for st in studies:
        doc["studies"].append({"name": st.name, "recipe": _shown(st.path), "title": st.recipe.title,
                               "paper": st.recipe.paper.model_dump(), "metrics": st.recipe.metrics,
                               "plot": st.recipe.plot, "notes": st.recipe.notes, "seeds": n_seeds[st.name],
                               "world": st.recipe.world,
                               "table": table(st, results), "expect": compare(st, results)})
    doc["runs"] = results
    dirs = [out / "report"] + ([Path(suite.report)] if suite.report else [])
    doc.setdefault("created", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    doc.setdefault("commit", report._commit())
    everything = [st.name for st in load_studies(suite, base_dir)] if only else None
    for d in dirs:  # --study: the other studies of a report already there are kept
        report.write(report.merged(doc, d, everything) if only else doc, d)
    return {**doc, "report": [str(d / "findings.md") for d in dirs]}
