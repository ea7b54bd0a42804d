"""Recipes: one pydantic model per command, YAML files, dotted overrides, the resolved dump.

Precedence, lowest first: the model's defaults (SPEC.md's), the recipe file, the command's own
flags, then ``--set key=value`` overrides. Unknown keys are errors everywhere. Every failure is
a :class:`SwagError` naming the file and the field.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from swagcli.errors import SwagError
from swagcli.prep.canon import ALLOWED_SENSES
from swagcli.prep import FORMATS


INT_MAX = 2**63 - 1  # what numpy's int64 (and torch's) hold


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _in_range(cls, v):
        """Integers beyond int64 (``--samples 99999999999999999999999``) are refused here, not deep in
        numpy; floats must be finite (``allow_inf_nan``)."""
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_MAX:
            raise ValueError(f"out of range (at most {INT_MAX:,})")
        return v


# -- reading sources (vocab, sample) ---------------------------------------------------------------
SourceFormat = Literal[FORMATS]


class FieldsSpec(Recipe):
    """Where a post's parts are in sources with named fields (jsonl, parquet, img2dataset JSON /
    parquet metadata); null = the usual names (jsonl: id, hashtags, caption, country)."""

    id: str | None = Field(None, description="id field (img2dataset: always the shard key)")
    tags: str | None = Field(None, description="tags field: a list, or a string split by tags_sep")
    tags_sep: str | None = Field(None, description="what separates the tags of a string tags field; null = "
                                 "a comma if the field has one, else white space")
    caption: str | None = Field(None, description="caption field (its noun phrases with labels: caption | "
                                "both; its #tags when a post has no tags)")
    country: str | None = Field(None, description="country field")

    @field_validator("tags_sep")
    @classmethod
    def _sep(cls, v):
        if v is not None and v == "":
            raise ValueError("an empty separator splits nothing: null (comma or white space) or a string")
        return v


class CaptionSpec(Recipe):
    """How a caption's noun phrases become raw tags (SPEC.md §8, :mod:`swagcli.prep.captions`)."""

    max_words: int = Field(3, ge=1, le=6, description="longest phrase tried (word n-grams, longest first)")
    stop: list[str] | None = Field(None, description="phrases that name the medium, not the content, dropped "
                                   "(lemmas: 'photo' also drops 'photos'); null = swag's list "
                                   "(swagcli.prep.captions.MEDIUM_WORDS); [] = keep everything")
    stop_extra: list[str] = Field(default_factory=list, description="added to the stop list")
    function_words: bool = Field(True, description="never read English function words as nouns "
                                 "('can', 'may', 'will', ...: swagcli.prep.captions.FUNCTION_WORDS)")


# -- swag vocab ---------------------------------------------------------------------------------
class VocabRecipe(Recipe):
    """`swag vocab build`: hashtag dumps -> canonical hashtag vocabulary (SPEC.md §1)."""

    dumps: list[str] = Field(default_factory=list, description="dump files, globs or brace ranges")
    out: str | None = Field(None, description="output directory (vocab.json, report, plot)")
    format: SourceFormat = Field("auto", description=" | ".join(FORMATS))
    fields: FieldsSpec = Field(default_factory=FieldsSpec)
    min_count: int = Field(2, ge=1, description="keep tags used on at least this many images")
    countries: list[str] | None = Field(
        None, description="candidates only from posts of these countries (paper: [US]); null = all")
    allowed_senses: list[str] = Field(default_factory=lambda: list(ALLOWED_SENSES))
    min_len: int = Field(3, ge=1, description="Listing 1's MIN_LEN")
    head_min_images: int = Field(5000, ge=1, description="head: canonical hashtags on >= this many images")
    caption_hashtags: bool = Field(True, description="take #tags from the caption of posts without hashtags")
    labels: Literal["hashtags", "caption", "both"] = Field(
        "hashtags", description="a post's raw tags: its hashtags | its caption's noun phrases (WordNet "
        "nouns, SPEC.md §8) | both")
    caption: CaptionSpec = Field(default_factory=CaptionSpec)
    workers: int = Field(1, ge=1, description="processes counting shards in parallel")
    launcher: "PrepLauncher" = Field(default_factory=lambda: PrepLauncher(),
                                     description="slurm: count shards as a SLURM job array")

    @field_validator("allowed_senses")
    @classmethod
    def _senses(cls, v):
        from swagcli.wordnet import LEXNAMES

        known = {name for name, _ in LEXNAMES}
        bad = [s for s in v if s not in known]
        if bad:
            raise ValueError(f"unknown WordNet lexname(s) {bad}; e.g. noun.animal, noun.artifact")
        if not v:
            raise ValueError("at least one sense is needed")
        return v


# -- swag sample --------------------------------------------------------------------------------
class SampleRecipe(Recipe):
    """`swag sample`: vocabulary + dumps -> sample plan (SPEC.md §2)."""

    vocab: str | None = Field(None, description="vocab.json (or its directory) from `swag vocab build`")
    dumps: list[str] = Field(default_factory=list, description="dump files, globs or brace ranges")
    out: str | None = Field(None, description="output directory (plan/, summary.json, plot)")
    format: SourceFormat = Field("auto", description=" | ".join(FORMATS))
    fields: FieldsSpec = Field(default_factory=FieldsSpec)
    caption_hashtags: bool = Field(True, description="take #tags from the caption of posts without hashtags")
    labels: Literal["hashtags", "caption", "both"] | None = Field(
        None, description="null = as the vocabulary was built (vocab.json sources.labels)")
    caption: CaptionSpec | None = Field(None, description="null = as the vocabulary was built")
    samples: int = Field(..., ge=1, description="M: total samples to draw (with replacement)")
    strategy: Literal["head_tail", "sqrt", "natural", "uniform", "balanced"] = Field(
        "head_tail", description="balanced: MetaCLIP's per-hashtag cap t (SPEC.md §9)")
    t: int = Field(20000, ge=1, description="balanced: a hashtag on more than t images keeps each with "
                   "probability t / count (MetaCLIP: 20,000; scale it down for toy data)")
    alpha: float = Field(0.7, ge=0, le=1, description="head share of the samples (head_tail)")
    label_noise: float = Field(0.0, ge=0, lt=1, description="p: share of hashtags replaced from the marginal")
    seed: int = 0
    holdout: float = Field(0.0, ge=0, lt=1, description="share of images held out (by id hash) for evaluation, "
                           "written once each to OUT/holdout")
    chunk: int = Field(65536, ge=1, description="images per draw chunk (memory bound)")
    spill: bool = Field(True, description="the weigh pass writes its arrays (~30 bytes an image, removed after) "
                        "so the draw does not parse the dumps again; false: parse them twice")
    workers: int = Field(1, ge=1, description="processes drawing shards in parallel")
    launcher: "PrepLauncher" = Field(default_factory=lambda: PrepLauncher(),
                                     description="slurm: weigh and draw shards as SLURM job arrays")


# -- swag pretrain ------------------------------------------------------------------------------
class ModelSpec(Recipe):
    name: str = Field("vit_base_patch16_224", description="any timm model name")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")
    pre_logits: bool | None = Field(None, description="extra linear layer before the head; null = ViTs only")


class OptimSpec(Recipe):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(4e-4, gt=0, description="peak lr at base_batch (scaled linearly with the batch)")
    base_batch: int = Field(8192, ge=1)
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = Field(0.1, ge=0)
    no_decay: Literal["bn", "norm_bias", "none"] = Field(
        "norm_bias", description="parameters without weight decay: bn = batch norm only (RegNetY)")
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    warmup_start_factor: float = Field(0.1, gt=0, le=1, description="warm-up starts at lr * this")
    grad_clip: float | None = Field(None, gt=0)


class DataSpec(Recipe):
    plan: str | None = Field(None, description="sample plan directory from `swag sample`")
    shards: list[str] = Field(default_factory=list, description="image webdataset shards (globs, brace ranges)")
    holdout: str | None = Field(None, description="plan of held-out images for hashtag accuracy (default: PLAN/holdout)")
    resolution: int = Field(224, ge=8)
    shuffle_buffer: int = Field(2000, ge=1)
    workers: int = Field(2, ge=0, description="DataLoader workers per process")
    streams: int | None = Field(None, ge=1, description="streams an epoch is dealt to, fixed for the run "
                                "(each has its shards, order and shuffle buffer; processes x workers play "
                                "them, so a resume on another number of either continues the epoch; "
                                "a resume on more workers than streams leaves the extra ones idle): "
                                "null = one per process x worker when the run starts (a resume keeps "
                                "the run's); set it higher (e.g. 2x) to let a resume use more")
    log_keys: bool = Field(False, description="write what every update trained on (update, stream, epoch, "
                           "offset, key per sample) to OUT/keys/")
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    max_pixels: int = Field(32_000_000, ge=1, description="pixel budget per image, checked on its header "
                            "before decoding: a JPEG over it is decoded at a reduced DCT scale (1/2..1/8) "
                            "that fits, anything else over it is skipped and counted as too_large")
    decode: Literal["cpu", "gpu"] = Field("cpu", description="where training JPEGs are decoded: cpu (PIL "
                                          "in the DataLoader workers) or gpu (the workers read headers and "
                                          "draw the same crops and flips; nvJPEG decodes on the training "
                                          "device; other formats and odd JPEGs still decode in the "
                                          "workers; without nvJPEG, torchvision decodes on the CPU in the "
                                          "training process)")


class SpeedSpec(Recipe):
    """Throughput settings (:mod:`swagcli.train.speed`); none changes what is trained."""

    compile: bool = Field(False, description="torch.compile the model (minutes of compilation first)")
    channels_last: bool = Field(False, description="NHWC weights and inputs (conv nets on GPUs)")
    grad_checkpointing: bool = Field(False, description="recompute block activations in backward (timm)")
    fused: Literal["auto", "on", "off"] = Field("auto", description="fused AdamW/SGD kernels (auto: on CUDA)")


class LocalLauncher(Recipe):
    processes: int = Field(1, ge=1, description="local processes (torch.distributed: gloo on CPU, nccl on GPU)")


class SlurmLauncher(Recipe):
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int | None = Field(None, ge=1, description="default: gpus_per_node, or 1 without GPUs")
    cpus_per_task: int = Field(1, ge=1)
    partition: str | None = None
    time: int = Field(60, ge=1, description="minutes")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem_gb: int | None = Field(None, ge=1)
    folder: str | None = Field(None, description="submitit logs (default: OUT/slurm)")
    max_requeues: int = Field(10, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict, description="other sbatch options")


class PrepLauncher(Recipe):
    """Data preparation runs locally (``workers`` processes) or as SLURM job arrays over shards."""

    slurm: SlurmLauncher | None = None


class LauncherSpec(Recipe):
    local: LocalLauncher = Field(default_factory=LocalLauncher)
    slurm: SlurmLauncher | None = None


class MaeSpec(Recipe):
    """Masked autoencoding (MAE; MAWS's pre-pretraining, SPEC.md §4): timm ViTs only."""

    mask_ratio: float = Field(0.75, gt=0, lt=1, description="share of patches hidden from the encoder")
    decoder_dim: int = Field(512, ge=8, description="decoder width (MAE: 512)")
    decoder_depth: int = Field(8, ge=1, description="decoder blocks (MAE: 8)")
    decoder_heads: int = Field(16, ge=1)
    norm_pix_loss: bool = Field(True, description="target: each patch's pixels normalized by their own "
                                "mean and variance (MAE's better target)")


class InitSpec(Recipe):
    """Where the weights start (a fresh run only; a resumed run restores its checkpoint)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    from_: str | None = Field(None, alias="from", description="a swag run or checkpoint (e.g. an MAE stage): "
                              "its encoder (backbone.*) is loaded; decoder and heads are not")


class PretrainRecipe(Recipe):
    """`swag pretrain`: hashtag pretraining (SPEC.md §3), or MAE pre-pretraining (§4)."""

    out: str | None = Field(None, description="run directory (checkpoints, metrics, logs)")
    objective: Literal["wsp", "mae"] = Field("wsp", description="wsp = hashtag pretraining | mae = masked "
                                             "autoencoding (timm ViTs)")
    stages: list[dict[str, Any]] | None = Field(None, description="run several stages in OUT/<objective>, each "
                                                "this recipe with the stage's keys over it, each initialized "
                                                "from the one before (e.g. [{objective: mae, epochs: 1}, "
                                                "{objective: wsp}])")
    mae: MaeSpec = Field(default_factory=MaeSpec)
    init: InitSpec = Field(default_factory=InitSpec)
    freeze: Literal["none", "backbone"] = Field("none", description="backbone: train only the (pre-logits and) "
                                                "hashtag head on the init.from trunk, e.g. a released SWAG "
                                                "trunk given a head from a plan (its weights stay bit-identical)")
    model: ModelSpec = Field(default_factory=ModelSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    loss: Literal["softmax", "bce", "softmax_idf"] = Field(
        "softmax", description="softmax (1/K targets) | bce (per-hashtag sigmoid) | softmax_idf (SuperClass: "
        "targets weighted by log(N / df), SPEC.md §9)")
    batch_size: int = Field(8192, ge=1, le=8192, description="global batch (the paper caps it at 8192)")
    micro_batch: int | None = Field(None, ge=1, description="per process per step; the rest is accumulation")
    samples: int | None = Field(None, ge=1, description="training samples; default: the plan's total x epochs")
    epochs: float = Field(1.0, gt=0)
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="ddp: a full copy of the model per process | "
                                             "fsdp: parameters, gradients and optimizer state sharded over "
                                             "the processes (FSDP2, per block), sharded checkpoints that "
                                             "resume on any number of processes")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 autocast on GPUs "
                                                               "that have it, fp16 with loss scaling where not "
                                                               "(V100), fp32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1, description="steps")
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int | None = Field(None, ge=1, description="steps; the end of training always evaluates")
    eval_samples: int | None = Field(None, ge=1, description="cap on held-out images evaluated")
    tensorboard: bool = False
    resume: str = Field("auto", description="auto (latest checkpoint in OUT, if any) | never | a checkpoint path")
    launcher: LauncherSpec = Field(default_factory=LauncherSpec)


# -- transfer: swag probe / swag finetune ---------------------------------------------------------
class SourceSpec(Recipe):
    """The pretrained model to transfer: a swag run or checkpoint, or a timm weight file."""

    checkpoint: str | None = Field(None, description="swag run dir / step-N dir, or a local timm weight file "
                                   "(.safetensors, .pth, .bin); null = random init (a baseline)")
    model: str | None = Field(None, description="timm model name: needed for a weight file or random init")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")


class ImageBudget(Recipe):
    """What a transfer stage does with images it cannot use (``swagcli.images``)."""

    max_pixels: int = Field(32_000_000, ge=1, description="pixel budget per image, checked on its header "
                            "before decoding: a JPEG over it is decoded at a reduced DCT scale (1/2..1/8) "
                            "that fits, anything else over it is skipped and counted as too_large")
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="images that do not decode or are over "
                                    "max_pixels are skipped and counted; more than this fraction of a split "
                                    "(or all of it) stops the command")


class DownstreamSpec(ImageBudget):
    """A labelled image-classification set: ImageNet-layout folders or webdataset shards."""

    train: list[str] = Field(default_factory=list, description="train split: a folder of class folders, "
                             "or webdataset shards (KEY.jpg + KEY.cls)")
    val: list[str] = Field(default_factory=list, description="validation split, same forms")
    resolution: int | None = Field(None, ge=8, description="default: the model's (pretraining / Table 1)")
    workers: int = Field(2, ge=0, description="DataLoader workers")
    batch_size: int = Field(64, ge=1, description="images per forward pass when extracting / evaluating")

    @field_validator("train", "val", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v


class ProbeRecipe(Recipe):
    """`swag probe`: linear probe on frozen features (SPEC.md §5)."""

    out: str | None = Field(None, description="output directory (feature cache, probe.json, plot)")
    source: SourceSpec = Field(default_factory=SourceSpec)
    data: DownstreamSpec = Field(default_factory=DownstreamSpec)
    fractions: list[float] = Field(default_factory=lambda: [1.0], description="low-shot fractions of train (class-stratified)")
    seeds: int = Field(3, ge=1, description="subsets drawn per fraction below 1")
    heldout: float = Field(0.2, gt=0, lt=1, description="part of (each subset of) train that chooses the L2 strength")
    l2_grid: list[float] | None = Field(None, description="L2 strengths searched (default: 1e-1 .. 1e-6)")
    tol: float = Field(1e-4, gt=0, description="converged when the max-abs gradient of the mean objective "
                       "is below this (scikit-learn's lbfgs criterion and default)")
    max_iter: int = Field(10000, ge=1, description="L-BFGS iteration cap per fit")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v):
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("fractions must be in (0, 1]")
        return sorted(set(v))


class FinetuneOptim(Recipe):
    lr: float | None = Field(None, gt=0, description="peak lr at batch 512; null = SWAG Table 8 for the model and table8_dataset")
    table8_dataset: Literal["in1k", "in5k", "inat", "places", "cub"] = Field(
        "in1k", description="which Table 8 column gives the default lr")
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0, description="the paper uses none")
    warmup_fraction: float = Field(0.0, ge=0, lt=1)


class FinetuneRecipe(Recipe):
    """`swag finetune`: a new head, the whole network trained (SPEC.md §5)."""

    out: str | None = Field(None, description="run directory")
    source: SourceSpec = Field(default_factory=SourceSpec)
    data: DownstreamSpec = Field(default_factory=DownstreamSpec)
    optim: FinetuneOptim = Field(default_factory=FinetuneOptim)
    batch_size: int = Field(512, ge=1)
    micro_batch: int | None = Field(None, ge=1, description="per process per step; the rest is accumulation")
    updates: int | None = Field(None, ge=1, description="default: 500 / 10,000 / 20,000 by training-set size")
    mixup: float = Field(0.1, ge=0, description="mixup alpha (0: off)")
    ema: float = Field(1e-4, ge=0, lt=1, description="EMA weight of the new parameters per update: "
                       "avg = (1 - ema) * avg + ema * weights (0: off)")
    head_init: Literal["random", "zeroshot"] = Field(
        "random", description="zeroshot: start the head from the hashtag head via the class->hashtag map")
    fraction: float = Field(1.0, gt=0, le=1, description="class-stratified part of train used (low-shot)")
    lr_grid: list[float] = Field(default_factory=list, description="lrs tried on a held-out split first")
    heldout: float = Field(0.1, gt=0, lt=1, description="held-out part of train for lr_grid")
    grid_updates: int | None = Field(None, ge=1, description="updates per lr_grid trial (default: updates / 4)")
    sync_bn: bool = Field(True, description="synchronous batch norm across processes")
    speed: SpeedSpec = Field(default_factory=SpeedSpec)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int | None = Field(None, ge=1)
    tensorboard: bool = False
    resume: str = Field("auto", description="auto | never | a checkpoint path")
    launcher: LauncherSpec = Field(default_factory=LauncherSpec)


# -- swag zeroshot ------------------------------------------------------------------------------
class ZeroshotData(ImageBudget):
    """The labelled set classified zero-shot (labels are used only to score the result)."""

    val: list[str] = Field(default_factory=list, description="a folder of class folders, or webdataset "
                           "shards (KEY.jpg + KEY.cls)")
    classes: str | None = Field(None, description="what the classes are in WordNet: null = the class "
                                "names themselves (wnids such as n01440764 or synsets such as dog.n.01); "
                                "a file with one wnid or synset name per line in label order; "
                                "'imagenet' = the 1000 ImageNet-1k wnids timm ships")
    resolution: int | None = Field(None, ge=8, description="default: the model's pretraining resolution")
    workers: int = Field(2, ge=0, description="DataLoader workers")
    batch_size: int = Field(64, ge=1, description="images per forward pass")

    @field_validator("val", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v


class PlattSpec(Recipe):
    """Transductive Platt scaling (SPEC.md §6): p' = softmax(w * x + b), per-class w and b, fitted
    on the unlabelled predictions so that the mean p' is uniform over the classes."""

    enabled: bool = Field(True, description="fit and report Platt scaling (the paper: essential)")
    form: Literal["log", "prob"] = Field("log", description="x = log of the class score (default: cannot "
                                          "collapse, see SPEC §6) | prob = the score as printed (literal)")
    w_penalty: float = Field(1.0, ge=0, description="lambda of lambda * mean_c (w_c - 1)^2, which keeps w "
                             "near 1 (0: w free)")
    max_iter: int = Field(200, ge=1, description="L-BFGS iteration cap (after the bias fixed point)")


class ZeroshotRecipe(Recipe):
    """`swag zeroshot`: classify with the hashtag head through the WordNet class map (SPEC.md §6)."""

    out: str | None = Field(None, description="output directory (prediction cache, zeroshot.json, plots)")
    source: SourceSpec = Field(default_factory=SourceSpec)
    data: ZeroshotData = Field(default_factory=ZeroshotData)
    aggregation: Literal["auto", "sum", "mean", "max"] = Field(
        "auto", description="class score from its hashtags: sum / mean of p_h, or max of p_h / N_h; "
        "auto = the paper's best per family (RegNetY: mean, sum with Platt; ViT and others: max)")
    platt: PlattSpec = Field(default_factory=PlattSpec)
    ece_bins: int = Field(15, ge=2, description="equal-width confidence bins of the calibration error")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


# -- swag fairness ------------------------------------------------------------------------------
class FairnessData(ImageBudget):
    """The images and their attributes: a manifest with one row per image."""

    manifest: str | None = Field(None, description="CSV (with a header row) or JSONL (one object per line) "
                                 "naming each image and its attribute columns")
    root: str | None = Field(None, description="where relative image paths start; default: the manifest's folder")
    path_column: str = Field("path", description="the manifest column with the image path")
    resolution: int | None = Field(None, ge=8, description="default: the model's pretraining resolution")
    workers: int = Field(2, ge=0, description="DataLoader workers")
    batch_size: int = Field(64, ge=1, description="images per forward pass")


class AssociationSpec(Recipe):
    """Which hashtags each group of an attribute is predicted more (or less) often (SWAG App. F.2)."""

    enabled: bool = True
    attributes: list[str] = Field(default_factory=list, description="manifest columns to group images by "
                                  "(e.g. skin_tone, age, gender, race)")
    top_k: int = Field(5, ge=1, le=100, description="hashtags predicted per image (the paper: 5)")
    top_n: int = Field(20, ge=1, description="hashtags ranked and plotted per group (the paper: 20)")
    min_group: int = Field(30, ge=1, description="groups with fewer images are reported but not ranked, "
                           "and left out of the other groups' average")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples (images within each group) for the "
                           "confidence intervals of the differences; 0 = none")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the bootstrap intervals")
    buckets: dict[str, float] = Field(default_factory=lambda: {"age": 10.0}, description="numeric columns "
                                      "cut into buckets of this width (age 10: 0-10, 10-20, ...)")
    seed: int = 0

    @field_validator("attributes", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v


class GeographySpec(Recipe):
    """Per-country zero-shot accuracy and the 80% rule between countries (SWAG App. F.1)."""

    enabled: bool = True
    country_column: str = "country"
    label_column: str = Field("label", description="the class of each image")
    mapping: str | None = Field(None, description="hashtag -> class mapping: a file of lines 'CLASS #tag "
                                "#tag ...', or JSON {class: [tags]} (or `swag zeroshot map`'s mapping.json); "
                                "null = WordNet's map (labels must be wnids or synset names)")
    aggregation: Literal["auto", "sum", "mean", "max"] = Field("auto", description="as in `swag zeroshot`")
    platt: bool = Field(False, description="Platt-scale the class scores before taking the argmax")
    ratio: float = Field(0.8, gt=0, le=1, description="a class counts against country r when its accuracy "
                         "there is below ratio x its accuracy in country c (the 80% rule)")
    min_images: int = Field(1, ge=1, description="images a class needs in both countries to be compared")


class FairnessRecipe(Recipe):
    """`swag fairness`: associations and geographic accuracy of the hashtag head (SPEC.md §7)."""

    out: str | None = Field(None, description="output directory (report.html, fairness.json, CSVs, figures)")
    source: SourceSpec = Field(default_factory=SourceSpec)
    data: FairnessData = Field(default_factory=FairnessData)
    associations: AssociationSpec = Field(default_factory=AssociationSpec)
    geography: GeographySpec = Field(default_factory=GeographySpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


# -- swag export --------------------------------------------------------------------------------
class ExportRecipe(Recipe):
    """`swag export`: a swag checkpoint as a timm / Hugging Face Hub folder, or torchvision weights."""

    source: str | None = Field(None, description="a swag run or checkpoint directory")
    out: str | None = Field(None, description="output folder (config.json, model.safetensors, README.md)")
    format: Literal["timm", "torchvision"] = Field("timm", description="timm: the folder timm.create_model("
                                                   "'local-dir:OUT') and the Hub load | torchvision: weights its "
                                                   "RegNet / VisionTransformer load strictly")
    ema: bool = Field(False, description="a finetune run's EMA weights instead of its raw ones")
    backbone_only: bool = Field(False, description="no head: the backbone's features only")


# -- swag synth ---------------------------------------------------------------------------------
class SynthRecipe(Recipe):
    """`swag synth`: the built-in synthetic hashtag world."""

    out: str | None = Field(None, description="output directory")
    seed: int = 0
    posts: int = Field(20000, ge=10, description="hashtag posts (and images)")
    concepts: int = Field(300, ge=10, description="WordNet concept synsets the world is made of")
    zipf_exponent: float = Field(1.1, gt=0, description="concept frequency ~ rank^-s")
    concept_looks: Literal["family", "glyph"] = Field(
        "family", description="family: a concept is its family's shape and background in colours and a "
        "grating of its own; glyph: every concept of a family has the family's shape, background, colours "
        "and grating, and shows a 4x4 glyph of its own on a panel (a look the other concepts do not teach)")
    dump_shards: int = Field(8, ge=1)
    gzip_fraction: float = Field(0.5, ge=0, le=1, description="share of dump shards gzip-compressed")
    image_size: int = Field(64, ge=16, le=512)
    images_per_shard: int = Field(2000, ge=10, description="webdataset shard size")
    extra_concept_prob: float = Field(0.35, ge=0, le=1, description="chance a post shows a second concept")
    junk_tags_mean: float = Field(1.0, ge=0, description="mean filler tags per post (#love, #instagood, ...)")
    missing_tag_prob: float = Field(0.1, ge=0, le=1, description="chance a shown concept is not tagged")
    wrong_tag_prob: float = Field(0.05, ge=0, le=1, description="chance of a tag of a concept not shown")
    caption_only_prob: float = Field(0.05, ge=0, le=1, description="posts with hashtags only in the caption")
    bad_line_prob: float = Field(0.002, ge=0, le=1, description="corrupt dump lines (skipped by readers)")
    countries: dict[str, float] = Field(
        default_factory=lambda: {"US": 0.5, "GB": 0.15, "IN": 0.15, "BR": 0.1, "NG": 0.1})
    downstream_classes: int = Field(40, ge=2)
    downstream_families: int | None = Field(None, ge=1, description="classes only from the concepts of this "
                                            "many families: fine-grained (same shapes and backgrounds)")
    downstream_tail: float = Field(0.0, ge=0, le=1, description="share of the downstream classes taken from "
                                   "the tail (the concepts past those holding half the posts), the rest "
                                   "from the head; 0: evenly spaced ranks, head to tail")
    downstream_noise: float = Field(1.0, ge=0, description="pixel-noise factor of the downstream images")
    downstream_distractors: float = Field(0.0, ge=0, le=1, description="share of downstream images that also "
                                          "show a random other concept in a corner")
    downstream_train_per_class: int = Field(30, ge=1)
    downstream_val_per_class: int = Field(20, ge=1)
    group_images: int = Field(1200, ge=0, description="images of the fairness set")
    groups: list[str] = Field(default_factory=lambda: ["A", "B", "C"])
    planted_group: str = "B"
    planted_strength: float = Field(0.35, ge=0, le=1, description="extra chance the planted concept is shown for the planted group")
    layouts: list[Literal["yfcc", "img2dataset"]] = Field(
        default_factory=list, description="also write the posts as YFCC100M metadata (yfcc/) and/or an "
        "img2dataset folder (img2dataset/: tar shards, parquet, stats)")
    video_prob: float = Field(0.02, ge=0, le=1, description="yfcc layout: a video line after this share of posts")
    failed_download_prob: float = Field(0.05, ge=0, lt=1, description="img2dataset layout: share of failed downloads")
    workers: int = Field(1, ge=1)


# -- swag findings: the papers' ablations on the synthetic world ---------------------------------
_SLUG = r"^[a-z0-9][a-z0-9_.-]*$"


class ArmSpec(Recipe):
    """One setting of an ablation: keys over the suite's sample and pretrain recipes."""

    name: str = Field(..., pattern=_SLUG, description="short id, used in `expect` (a-z, 0-9, _ . -)")
    label: str | None = Field(None, description="how tables and plots name it (default: name)")
    vocab: dict[str, Any] = Field(default_factory=dict, description="keys over the suite's vocab recipe: "
                                  "this arm's own vocabulary (e.g. labels: caption)")
    sample: dict[str, Any] = Field(default_factory=dict, description="keys over the suite's sample recipe")
    pretrain: dict[str, Any] | None = Field(default_factory=dict, description="keys over the suite's "
                                            "pretrain recipe; null = no pretraining (random weights)")
    x: float | None = Field(None, description="position on a line plot's x axis (e.g. the noise level)")


class PaperSpec(Recipe):
    source: str = Field(..., description="where the paper reports it (e.g. 'WSL Fig. 4')")
    claim: str = Field(..., description="the direction the paper reports, in words")
    metric: str | None = Field(None, description="what the paper's numbers measure")
    values: dict[str, float] = Field(default_factory=dict, description="the paper's number per arm")


class AblationRecipe(Recipe):
    """One study of `swag findings`: arms pretrained and evaluated alike, the paper's direction
    written as comparisons (``"sqrt > natural"``; ``"a[zeroshot_platt] > a[zeroshot]"``)."""

    title: str
    paper: PaperSpec
    metrics: list[str] = Field(default_factory=lambda: ["probe"], description="probe (100% of labels), "
                               "probe@F (a fraction F of them), zeroshot, zeroshot_platt, head_top1 / "
                               "tail_top1 (held-out hashtag top-1 on head- / tail-hashtag images; the "
                               "sample recipe needs a holdout)")
    world: dict[str, Any] = Field(default_factory=dict, description="keys over the suite's world: this study "
                                  "runs on a world of its own (made once, cached like the rest)")
    sample: dict[str, Any] = Field(default_factory=dict, description="keys over the suite's sample recipe for "
                                   "every arm of this study (an arm's own keys go over them)")
    arms: list[ArmSpec] = Field(..., min_length=1)
    expect: list[str] = Field(default_factory=list, description="'A > B': A's metric exceeds B's (each "
                              "metric, or the one in brackets), paired by seed")
    plot: Literal["bars", "line"] = "bars"
    seeds: int | None = Field(None, ge=1, description="seeds for this study when the suite has fewer (a "
                              "small difference needs more); --seeds overrides both")
    notes: str | None = Field(None, description="what was tried, printed under the study in the report")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v):
        for m in v:
            metric_spec(m)
        return v

    @field_validator("arms")
    @classmethod
    def _arms(cls, v):
        names = [a.name for a in v]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names repeat: {names}")
        return v

    @field_validator("expect")
    @classmethod
    def _expect(cls, v, info):
        arms = {a.name for a in info.data.get("arms") or []}
        for e in v:
            for side in parse_expect(e):
                if arms and side[0] not in arms:
                    raise ValueError(f"{e!r}: no arm named {side[0]!r}")
        return v


def metric_spec(name: str) -> tuple[str, float | None]:
    """``probe`` -> ("probe", 1.0); ``probe@0.1`` -> ("probe", 0.1); ``zeroshot[_platt]``."""
    m = re.fullmatch(r"probe(?:@([0-9.]+))?", name)
    if m:
        f = float(m.group(1)) if m.group(1) else 1.0
        if not 0 < f <= 1:
            raise ValueError(f"metric {name!r}: the fraction must be in (0, 1]")
        return "probe", f
    if name in ("zeroshot", "zeroshot_platt", "head_top1", "tail_top1"):
        return name, None
    raise ValueError(f"unknown metric {name!r} (probe, probe@F, zeroshot, zeroshot_platt, head_top1, tail_top1)")


def parse_expect(text: str) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """``"a > b"`` / ``"a[m] > b[m2]"`` -> ((a, m), (b, m2)); metric None = each of the study's."""
    side = r"\s*([a-z0-9][a-z0-9_.-]*)\s*(?:\[\s*([a-z0-9_.@]+)\s*\])?\s*"
    m = re.fullmatch(side + ">" + side, text)
    if not m:
        raise ValueError(f"expect {text!r}: write 'A > B' or 'A[metric] > B[metric]'")
    for metric in (m.group(2), m.group(4)):
        if metric:
            metric_spec(metric)
    return (m.group(1), m.group(2)), (m.group(3), m.group(4))


class FindingsRecipe(Recipe):
    """`swag findings`: a synthetic world, the base recipes every arm starts from, the studies."""

    out: str | None = Field(None, description="working directory (world, plans, runs, report)")
    studies: list[str] = Field(..., min_length=1, description="ablation recipes (paths relative to this file)")
    seeds: int = Field(3, ge=1, description="seeds per arm (sample plan, initial weights, data order)")
    world: dict[str, Any] = Field(default_factory=dict, description="a synth recipe's keys")
    vocab: dict[str, Any] = Field(default_factory=dict, description="a vocab recipe's keys")
    sample: dict[str, Any] = Field(default_factory=dict, description="a sample recipe's keys (every arm's base)")
    pretrain: dict[str, Any] = Field(default_factory=dict, description="a pretrain recipe's keys (every arm's base)")
    probe: dict[str, Any] = Field(default_factory=dict, description="a probe recipe's keys")
    zeroshot: dict[str, Any] = Field(default_factory=dict, description="a zeroshot recipe's keys")
    workers: int = Field(2, ge=1, description="processes and data-loader workers")
    report: str | None = Field(None, description="also write the report (markdown + PNGs) into this folder")


VocabRecipe.model_rebuild()
SampleRecipe.model_rebuild()

RECIPES: dict[str, type[Recipe]] = {
    "vocab": VocabRecipe,
    "sample": SampleRecipe,
    "pretrain": PretrainRecipe,
    "probe": ProbeRecipe,
    "zeroshot": ZeroshotRecipe,
    "finetune": FinetuneRecipe,
    "fairness": FairnessRecipe,
    "synth": SynthRecipe,
    "export": ExportRecipe,
    "findings": FindingsRecipe,
    "ablation": AblationRecipe,
}


# -- loading ------------------------------------------------------------------------------------
def _fmt_loc(loc) -> str:
    return ".".join(str(p) for p in loc) or "(recipe)"


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def merge(base: dict, over: dict | None) -> dict:
    """``over``'s keys over a copy of ``base``, nested sections merged key by key (a stage over
    its recipe, an arm over a suite's base); neither input is changed or shared."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def set_dotted(data: dict, key: str, value: Any, what: str | None = None) -> None:
    """data["a"]["b"]["c"] = value for ``key`` ``a.b.c`` (sections created as needed); the value is
    taken as it is: a command-line flag's typed value, never re-read as YAML text."""
    what = what or key
    parts = key.strip().split(".")
    if not all(parts):
        raise SwagError(f"{what}: empty key")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise SwagError(f"{what}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_override(data: dict, dotted: str) -> None:
    """``--set a.b.c=value`` -> data["a"]["b"]["c"] = yaml(value)."""
    if "=" not in dotted:
        raise SwagError(f"--set {dotted!r}: expected key=value")
    key, value = dotted.split("=", 1)
    set_dotted(data, key, _parse_value(value), f"--set {dotted!r}")


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (not: the last wins)."""


def _strict_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:
            continue  # an unhashable key: construct_mapping says so below
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (lines {first} and {key_node.start_mark.line + 1})",
                key_node.start_mark)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SwagError(f"{p}: recipe file not found" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SwagError(f"{p}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise SwagError(f"{p}: not a UTF-8 text file") from None
    except OSError as e:
        from swagcli.fileio import os_error

        raise os_error(e, p, "read") from None
    if data is None:
        raise SwagError(f"{p}: the recipe is empty (no keys); an empty recipe would silently run the defaults")
    if not isinstance(data, dict):
        raise SwagError(f"{p}: a recipe is a YAML mapping of keys to values")
    return data


def validate(kind: str, data: dict, source: str = "recipe") -> Recipe:
    model = RECIPES[kind]
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key for a {kind} recipe"
        raise SwagError(f"{source}: {_fmt_loc(err['loc'])}: {msg}{more}") from None


def load(kind: str, path: str | Path | None = None, flags: dict | None = None,
         overrides: list[str] | None = None) -> Recipe:
    """Defaults < recipe file < flags (those not None; dotted keys such as ``source.checkpoint``
    reach into sections, values as typed) < --set overrides (YAML values)."""
    data: dict = read_yaml(path) if path else {}
    data.pop("kind", None) if data.get("kind") == kind else None
    if "kind" in data:
        raise SwagError(f"{path}: kind: this is a {data['kind']!r} recipe, not a {kind!r} one")
    for k, v in (flags or {}).items():
        if v is not None:
            set_dotted(data, k, v)
    for o in overrides or []:
        apply_override(data, o)
    return validate(kind, data, str(path) if path else "recipe")


def kind_of(path: str | Path) -> str:
    """The command a recipe file belongs to: its `kind:` key, else its folder under recipes/."""
    data = read_yaml(path)
    kind = data.get("kind") or Path(path).resolve().parent.name
    if kind not in RECIPES:
        raise SwagError(f"{path}: cannot tell which command this recipe is for "
                        f"(add 'kind: <{'|'.join(RECIPES)}>' or keep it under recipes/<command>/)")
    return kind


def dump(recipe: Recipe, kind: str | None = None) -> str:
    data = json.loads(recipe.model_dump_json(by_alias=True))
    if kind:
        data = {"kind": kind, **data}
    return yaml.safe_dump(data, sort_keys=False)
