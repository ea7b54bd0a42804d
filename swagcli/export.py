"""`swag export`: a swag checkpoint as the folder timm and the Hugging Face Hub load, or as weights
torchvision's architectures load.

``--format timm`` (default) writes ``config.json`` (timm's own writer: architecture, ``num_classes``,
``label_names`` = the hashtags (or classes) in head order, ``model_args``, the input size, mean and
std, ``pretrained_cfg``), ``model.safetensors`` (timm's keys) and a model card ``README.md``, so that
``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``hf-hub:`` after an upload) needs no
swag. The head is timm's classifier wherever timm can hold it (a RegNet, a ViT trained without the
pre-logits layer); a ViT with swag's pre-logits layer (Linear + tanh, which timm's ViT does not
have) is exported with ``num_classes=0`` and the pre-logits layer and the head in
``swag_head.safetensors``, the card showing the lines that apply them.

``--format torchvision`` writes ``model.safetensors`` in the layout of the torchvision architecture
(``regnet_y_*`` / ``regnet_x_*``, ``VisionTransformer`` with ``representation_size`` = the pre-logits
layer) that loads it strictly, and a ``config.json`` naming the constructor and its arguments.
Every export is checked before it is written: the exported model gives the checkpoint's logits.

``--ema``: a finetune run's EMA weights; ``--backbone-only``: no head.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from swagcli.errors import SwagError


def run(recipe) -> dict:
    """Export ``recipe.source`` (a swag run or checkpoint) into ``recipe.out``; returns what was written."""
    from swagcli.evaluate.transfer import load_swag
    from swagcli.fileio import out_dir
    from swagcli.train import checkpoint as ckpt_io

    if not recipe.source:
        raise SwagError("export: no source (a swag run or checkpoint directory)")
    if not recipe.out:
        raise SwagError("export: no output directory (--out DIR)")
    if not Path(recipe.source).is_dir():
        raise SwagError(f"{recipe.source}: not a swag run or checkpoint directory (weight files are exported "
                        "already; `swag probe -c FILE` reads them)")
    ckpt = ckpt_io.resolve(recipe.source)
    src = load_swag(ckpt)
    spec = src.meta
    model = src.model.eval()
    if recipe.ema:
        if spec.get("objective") != "finetune":
            raise SwagError(f"--ema: {ckpt} is not a finetune checkpoint (only finetuning keeps EMA weights)")
        ema = ckpt_io.load_train_state(ckpt).get("ema") or {}
        if not ema:
            raise SwagError(f"--ema: {ckpt} was trained without an EMA (ema: 0)")
        model.load_state_dict(ema)
    labels = _labels(src, ckpt)
    head = spec.get("objective") != "mae" and not recipe.backbone_only
    out = out_dir(recipe.out)
    x = torch.randn(2, 3, src.resolution, src.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = {"features": model.backbone(x), "logits": model(x) if head else None}
    if recipe.format == "timm":
        files = _timm(model, src, labels if head else None, out, x, want)
    else:
        files = _torchvision(model, src, labels if head else None, out, x, want)
    files.append(_card(src, ckpt, recipe, out, files, labels if head else None))
    return {"source": str(ckpt), "out": str(out), "format": recipe.format, "model": src.name,
            "head": bool(head), "labels": len(labels or []) if head else 0, "files": [str(f) for f in files],
            "ema": recipe.ema}


def _labels(src, ckpt: Path) -> list[str] | None:
    if src.vocab is not None:
        return list(src.vocab.names)
    f = ckpt / "classes.json"
    if f.is_file():
        return list(json.loads(f.read_text())["classes"])
    return None


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape or not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        diff = (a - b).abs().max().item() if a.shape == b.shape else f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
        raise SwagError(f"export: the exported model's {what} differ from the checkpoint's ({diff}); "
                        "nothing was written")


# -- timm / Hugging Face Hub ------------------------------------------------------------------------------
def _timm(model, src, labels, out: Path, x, want) -> list[Path]:
    import timm
    from timm.models._hub import save_config_for_hf

    from swagcli.fileio import atomic_file, atomic_write_text

    pre = isinstance(model.pre_logits, torch.nn.Sequential)
    in_timm = labels is not None and not pre  # timm's classifier can be the hashtag head
    tm = timm.create_model(src.name, pretrained=False, num_classes=len(labels) if in_timm else 0, **src.kwargs)
    sd = dict(model.backbone.state_dict())
    if in_timm:
        clf = tm.pretrained_cfg.get("classifier") or "head"
        clf = clf[0] if isinstance(clf, (list, tuple)) else clf
        sd.update({f"{clf}.weight": model.head.weight, f"{clf}.bias": model.head.bias})
    try:
        tm.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise SwagError(f"export: {src.name}'s weights do not fit timm's {src.name} ({str(e).splitlines()[0]})") from None
    tm.eval()
    with torch.no_grad():
        _close(tm.forward_head(tm.forward_features(x), pre_logits=True) if in_timm else tm(x), want["features"],
               "features")
        if in_timm:
            _close(tm(x), want["logits"], "logits")
    files = []
    with atomic_file(out / "model.safetensors", "wb") as f:
        f.write(_safetensors_bytes({k: v.contiguous() for k, v in tm.state_dict().items()}))
    files.append(out / "model.safetensors")
    m = src.meta
    data = {"input_size": (3, src.resolution, src.resolution), "interpolation": "bilinear", "crop_pct": 1.0,
            "crop_mode": "center", "mean": tuple(m.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(m.get("std", (0.229, 0.224, 0.225)))}
    tmp = out / ".config.json.tmp"
    save_config_for_hf(tm, str(tmp), model_config={"label_names": labels} if labels else None, data_config=data)
    cfg = json.loads(tmp.read_text())
    tmp.unlink()
    for k in ("license", "tag", "hf_hub_id", "url", "paper_ids", "origin_url", "notes"):
        cfg.get("pretrained_cfg", {}).pop(k, None)  # timm's own pretrained weights' facts, not these weights'
    cfg["swag"] = {"swag_version": m.get("swag_version"), "objective": m.get("objective"),
                   "step": m.get("step"), "pre_logits": pre,
                   "head": "timm classifier" if in_timm else ("swag_head.safetensors" if labels else None)}
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2) + "\n")
    files.append(out / "config.json")
    if labels is not None and pre:
        head = {"pre_logits.weight": model.pre_logits[0].weight, "pre_logits.bias": model.pre_logits[0].bias,
                "head.weight": model.head.weight, "head.bias": model.head.bias}
        with atomic_file(out / "swag_head.safetensors", "wb") as f:
            f.write(_safetensors_bytes({k: v.detach().contiguous() for k, v in head.items()},
                                       {"labels": json.dumps(labels)}))
        files.append(out / "swag_head.safetensors")
    return files


def _safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


# -- torchvision ----------------------------------------------------------------------------------------------
def _tv_regnet(timm_name: str, timm_sd: dict, num_classes: int):
    """The torchvision RegNet (builder name, model, torchvision -> timm key map) of a timm RegNet
    (``regnety_160`` -> ``regnet_y_16gf``), when its keys, through timm's converter, are exactly these."""
    import torchvision
    from timm.models.regnet import _filter_fn

    m = re.match(r"regnet([xy])_(\d+)", timm_name)
    if not m:
        return None, None, None
    gf = int(m.group(2)) / 10
    size = f"{int(round(gf * 1000))}mf" if gf < 1 else f"{gf:g}gf".replace(".", "_")
    name = f"regnet_{m.group(1)}_{size}"
    if name not in torchvision.models.list_models():
        return None, None, None
    tv = torchvision.models.get_model(name, num_classes=max(num_classes, 1))
    as_timm = _filter_fn({k: k for k in tv.state_dict()})  # values: the torchvision names
    mapping = {tv_key: timm_key for timm_key, tv_key in as_timm.items()}
    shapes = {mapping[k]: tuple(v.shape) for k, v in tv.state_dict().items()}
    if num_classes == 0:
        shapes = {k: v for k, v in shapes.items() if not k.startswith("head.fc.")}
    if shapes != {k: tuple(v.shape) for k, v in timm_sd.items()}:
        return None, None, None
    return name, tv, mapping


def _torchvision(model, src, labels, out: Path, x, want) -> list[Path]:
    import torchvision

    from swagcli.fileio import atomic_file, atomic_write_text
    from swagcli.weights import layout_family, vit_key

    n = len(labels) if labels else 0
    bb = model.backbone
    timm_sd = dict(bb.state_dict())
    if n:
        timm_sd.update({"head.fc.weight": model.head.weight, "head.fc.bias": model.head.bias})
    pre = isinstance(model.pre_logits, torch.nn.Sequential)
    family = layout_family(set(bb.state_dict()))
    if family == "regnet":
        if pre:
            raise SwagError("export --format torchvision: torchvision's RegNet has no pre-logits layer")
        name, tv, mapping = _tv_regnet(src.name, timm_sd, n)
        if name is None:
            raise SwagError(f"export --format torchvision: no torchvision RegNet has {src.name}'s layers")
        sd = {tv_key: timm_sd[timm_key] for tv_key, timm_key in mapping.items() if timm_key in timm_sd}
        ctor = {"builder": f"torchvision.models.{name}", "args": {"num_classes": n}}
    elif family == "vit":
        if getattr(bb, "global_pool", "token") != "token" or getattr(bb, "num_prefix_tokens", 1) != 1 \
                or not isinstance(getattr(bb, "fc_norm", torch.nn.Identity()), torch.nn.Identity):
            raise SwagError(f"export --format torchvision: {src.name} (pooling {bb.global_pool!r}) has no torchvision "
                            "VisionTransformer counterpart (a class token, then the final norm)")
        args = {"image_size": src.resolution, "patch_size": int(bb.patch_embed.patch_size[0]),
                "num_layers": len(bb.blocks), "num_heads": int(bb.blocks[0].attn.num_heads),
                "hidden_dim": int(bb.embed_dim), "mlp_dim": int(bb.blocks[0].mlp.fc1.out_features),
                "representation_size": int(bb.embed_dim) if pre else None, "num_classes": max(n, 1)}
        tv = torchvision.models.VisionTransformer(**args)
        sd = {k: timm_sd[vit_key(k)] for k in tv.state_dict() if not k.startswith("heads.")}
        if pre:
            sd.update({"heads.pre_logits.weight": model.pre_logits[0].weight,
                       "heads.pre_logits.bias": model.pre_logits[0].bias})
        if n:
            sd.update({"heads.head.weight": model.head.weight, "heads.head.bias": model.head.bias})
        ctor = {"builder": "torchvision.models.VisionTransformer", "args": {**args, "num_classes": n}}
    else:
        raise SwagError(f"export --format torchvision: {src.name} is neither a RegNet nor a ViT")
    sd = {k: v.detach().clone() for k, v in sd.items()}
    if n:
        tv.load_state_dict(sd, strict=True)  # the check the format promises
        tv.eval()
        with torch.no_grad():
            _close(tv(x), want["logits"], "logits")
    else:
        missing, unexpected = tv.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.startswith(("fc.", "heads.head.")) for k in missing), (missing, unexpected)
    with atomic_file(out / "model.safetensors", "wb") as f:
        f.write(_safetensors_bytes(sd))
    m = src.meta
    cfg = {"format": "torchvision", "torchvision": ctor, "label_names": labels, "input_size": [3, src.resolution,
           src.resolution], "mean": m.get("mean"), "std": m.get("std"), "timm_architecture": src.name,
           "swag": {"swag_version": m.get("swag_version"), "objective": m.get("objective"), "step": m.get("step")}}
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2) + "\n")
    return [out / "model.safetensors", out / "config.json"]


# -- the model card ---------------------------------------------------------------------------------------------
def _run_facts(ckpt: Path) -> tuple[dict, dict, dict]:
    """(the run's result.json, its plan's summary, its recipe), where they can still be read."""
    import yaml

    run = ckpt.parent.parent
    result, plan, rec = {}, {}, {}
    try:
        result = json.loads((run / "result.json").read_text())
    except (OSError, ValueError):
        pass
    try:
        rec = yaml.safe_load((ckpt / "recipe.yaml").read_text()) or {}
        plan_dir = (rec.get("data") or {}).get("plan")
        if plan_dir:
            plan = json.loads((Path(plan_dir) / "plan.json").read_text()).get("summary", {})
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        pass
    return result, plan, rec if isinstance(rec, dict) else {}


def _recipe_line(rec: dict, meta: dict) -> str | None:
    """How it was trained, in one line, from its recipe (read as plain YAML)."""
    opt = rec.get("optim") or {}
    if not rec or not isinstance(opt, dict):
        return None
    parts = [f"{meta.get('samples', rec.get('samples', '?')):,} samples" if isinstance(meta.get("samples"), int)
             else None, f"batch {rec.get('batch_size')}" if rec.get("batch_size") else None,
             f"{opt.get('name', '?')} lr {opt.get('lr')} at batch {opt.get('base_batch')}" if opt.get("lr") else None,
             f"loss {rec['loss']}" if rec.get("loss") else None,
             f"trunk frozen ({(rec.get('init') or {}).get('from')})" if rec.get("freeze") == "backbone" else None]
    parts = [p for p in parts if p]
    return "- training: " + ", ".join(parts) + " (the whole recipe: recipe.yaml of the checkpoint)" if parts else None


def _card(src, ckpt: Path, recipe, out: Path, files: list[Path], labels) -> Path:
    from swagcli.fileio import atomic_write_text

    m = src.meta
    result, plan, rec = _run_facts(ckpt)
    objective = {"wsp": "hashtag pretraining (weakly-supervised, SWAG)", "mae": "MAE pre-pretraining (MAWS)",
                 "finetune": "finetuning"}.get(m.get("objective"), m.get("objective"))
    lines = ["---", "library_name: timm" if recipe.format == "timm" else "library_name: torchvision",
             "tags: [image-classification, swag, weakly-supervised]",
             "license: ''  # set the licence of these weights and of the data they were trained on", "---", "",
             f"# {src.name} ({objective})", "",
             f"Exported by swag {m.get('swag_version', '?')} from `{ckpt}` (step {m.get('step', '?')}"
             f"{', EMA weights' if recipe.ema else ''}).", "",
             "## Model", "",
             f"- architecture: timm `{src.name}`" + (f" with `{json.dumps(src.kwargs)}`" if src.kwargs else ""),
             f"- input: {src.resolution} x {src.resolution} px, mean {m.get('mean')}, std {m.get('std')} (resize the "
             "short side, then a center crop)",
             f"- head: {len(labels):,} " + ("hashtags" if src.vocab is not None else "classes") if labels else
             "- head: none (features only)",
             f"- pre-logits layer (Linear + tanh before the head): {'yes' if m.get('pre_logits') else 'no'}", ""]
    how = _recipe_line(rec, m)
    if plan or result or how:
        lines += ["## Training, data and results", ""] + ([how] if how else [])
        if plan:
            lines += [f"- plan: {plan.get('unique_images', 0):,} unique images, {plan.get('total_samples', 0):,} "
                      f"samples ({plan.get('strategy', '?')}), {plan.get('hashtags', '?')} hashtags"]
        if "eval_top1" in result:
            lines += [f"- held-out hashtag accuracy: top-1 {result['eval_top1']:.2%}, top-5 {result['eval_top5']:.2%} "
                      f"({result.get('eval_images', 0):,} images)"]
            lines += [f"- held-out top-1 on the images tagged with {k} hashtags only: {result[f'eval_{k}_top1']:.2%} "
                      f"({result[f'eval_{k}_images']:,} images)" for k in ("head", "tail") if f"eval_{k}_top1" in result]
        if "top1" in result:
            lines += [f"- validation top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%}"]
        lines.append("")
    lines += ["## Use", "", "```python"]
    if recipe.format == "timm":
        lines += ["import timm", f"model = timm.create_model('local-dir:{out}', pretrained=True).eval()  # or hf-hub:"
                  "<you>/<repo> after uploading this folder"]
        if labels and m.get("pre_logits"):
            lines += ["# the hashtag head: swag's pre-logits layer (Linear + tanh), then the classifier",
                      "import json, torch", "from safetensors import safe_open",
                      f"with safe_open('{out}/swag_head.safetensors', 'pt') as f:",
                      "    h = {k: f.get_tensor(k) for k in f.keys()}; labels = json.loads(f.metadata()['labels'])",
                      "features = model(images)  # [N, D]",
                      "logits = torch.tanh(features @ h['pre_logits.weight'].T + h['pre_logits.bias']) "
                      "@ h['head.weight'].T + h['head.bias']"]
        elif labels:
            lines += ["logits = model(images)  # labels: config.json label_names"]
        else:
            lines += ["features = model(images)"]
    else:
        args = json.loads((out / "config.json").read_text())["torchvision"]
        lines += ["import torch, torchvision", "from safetensors.torch import load_file",
                  f"model = {args['builder']}(**{args['args']!r})" if labels else
                  f"model = {args['builder']}(**{ {**args['args'], 'num_classes': 1}!r})",
                  f"model.load_state_dict(load_file('{out}/model.safetensors'){'' if labels else ', strict=False'})"]
    lines += ["```", "", "Files: " + ", ".join(f"`{Path(f).name}`" for f in files) + ".", ""]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    atomic_write_text(out / "README.md", text)
    return out / "README.md"
