"""Weight files from outside swag: which layout they are in, which architecture they hold, and that
architecture's timm state dict.

Layouts, recognised from the keys (nothing is downloaded; the file is read once, without
unpickling objects):

* ``swag``: a swag checkpoint's ``model.safetensors`` (``backbone.*``, ``pre_logits.*``, ``head.*``);
* ``timm``: a timm state dict (``patch_embed``/``blocks`` for a ViT, ``stem.conv``/``s1.b1`` for a
  RegNet, any other timm model);
* ``torchvision``: torchvision's RegNet (``stem.0``, ``trunk_output.blockN.blockN-M``, ``fc``),
  converted by timm's own RegNet filter, and ``VisionTransformer`` (``conv_proj``,
  ``encoder.layers.encoder_layer_i``, ``heads.pre_logits`` + ``heads.head``), converted here; the
  released SWAG weights (``IMAGENET1K_SWAG_*``) are in this layout;
* ``swag-hub``: the models of facebookresearch/SWAG's ``hubconf.py`` (``stem.stem.0``, ``proj`` +
  ``bn``, ``f.se.excitation``, ``head.fc``; ViT ``encoder.layers.layer_i``, position embeddings as
  (S, 1, D), ``head.layers.[pre_logits, head]``).

A ViT's pre-logits layer (torchvision's ``heads.pre_logits`` with ``representation_size``, the hub's
``head.layers.pre_logits``) becomes swag's pre-logits layer (Linear + tanh); a classifier in the file
is kept apart (:attr:`Converted.head`) and not loaded for transfer. The architecture is inferred
where the weights say enough (a RegNet's stage widths and depths; a ViT's width, depth, patch and
grid; a ViT's number of heads is not in its weights: ``width / 64``, as every released ViT has,
unless ``num_heads`` is given); ``--model`` overrides. ViT position embeddings are resampled to the
resolution asked for, as timm does.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from swagcli.errors import SwagError

VIT_SIZES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large", (1280, 32): "huge",
             (1408, 40): "giant", (1664, 48): "gigantic"}


@dataclass
class Converted:
    """A weight file as timm keys."""

    layout: str                       # swag | timm | torchvision | swag-hub
    family: str                       # regnet | vit | other
    backbone: dict                    # the timm backbone's state dict (no classifier)
    pre_logits: dict | None = None    # {"weight", "bias"}: swag's pre-logits Linear
    head: dict | None = None          # {"weight", "bias"}: the file's classifier (hashtags for swag files)
    shape: dict = field(default_factory=dict)  # what the weights say of the architecture

    def describe(self) -> str:
        s = self.shape
        if self.family == "vit":
            what = f"a ViT (width {s.get('embed_dim')}, {s.get('depth')} blocks, patch {s.get('patch_size')}, " \
                   f"{s.get('img_size')} px{', pre-logits layer' if self.pre_logits else ''})"
        elif self.family == "regnet":
            what = f"a RegNet ({s.get('stages')} stages of {s.get('depths')} blocks, widths {s.get('widths')})"
        else:
            what = f"{len(self.backbone)} tensors (e.g. {next(iter(self.backbone), '-')})"
        return f"{self.layout} weights of {what}"


# -- reading ------------------------------------------------------------------------------------------
def weight_file_error(path: Path, e: Exception) -> SwagError:
    """One line for a weight file ``torch.load(weights_only=True)`` refused. torch's own message
    for a pickle that needs other objects advises loading it with the check off: a pickle that
    imports a function can run any code, so the advice here is to convert the file instead."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    detail = detail.group(1).strip() if detail else ""
    names = re.findall(r"GLOBAL (\S+) was not an allowed global", detail)
    if names or "Unsupported global" in detail:
        what = f" ({', '.join(names[:3])})" if names else ""
        return SwagError(f"{path}: holds Python objects other than tensors{what}: a pickle that could run code "
                         "when loaded, so swag does not load it; if you trust it, convert it to .safetensors "
                         "or re-save a plain state dict of tensors (torch.save(model.state_dict(), ...))")
    if "weights_only" in text or "Weights only" in text:  # another refusal: never repeat its advice
        why = f": {detail[:160]}" if detail else ""
        return SwagError(f"{path}: not a readable weight file (not a torch zip archive or pickle of tensors "
                         f"only{why}); swag reads .safetensors or a plain state dict of tensors")
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return SwagError(f"{path}: not a readable weight file ({first[:200]})")


def read_state_dict(path: str | Path) -> dict:
    """The tensors of a weight file (``.safetensors``, or a torch file read with
    ``weights_only=True``), wrappers (``state_dict``, ``model``, ``module.``) unwrapped."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles objects
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise weight_file_error(path, e) from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SwagError(f"{path}: not a state dict of tensors")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


# -- recognising and converting ---------------------------------------------------------------------
def layout_of(sd: dict) -> tuple[str, str]:
    """(layout, family) of a state dict, from its keys."""
    keys = set(sd)
    if any(k.startswith("backbone.") for k in keys) and any(k.startswith("head.") for k in keys):
        inner = {k[len("backbone."):] for k in keys if k.startswith("backbone.")}
        return "swag", layout_family(inner)
    if "stem.stem.0.weight" in keys and any(k.startswith("trunk_output.") for k in keys):
        return "swag-hub", "regnet"
    if "stem.0.weight" in keys and any(k.startswith("trunk_output.") for k in keys):
        return "torchvision", "regnet"
    if "conv_proj.weight" in keys and "encoder.pos_embedding" in keys:
        hub = any(k.startswith("encoder.layers.layer_") for k in keys)
        return ("swag-hub" if hub else "torchvision"), "vit"
    return "timm", layout_family(keys)


def layout_family(keys: set) -> str:
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "vit"
    if "stem.conv.weight" in keys and any(k.startswith("s1.b1.") for k in keys):
        return "regnet"
    return "other"


def _hub_regnet_to_torchvision(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        k = k.replace("stem.stem.", "stem.")
        k = re.sub(r"(block\d+-\d+)\.proj\.weight$", r"\1.proj.0.weight", k)
        k = re.sub(r"(block\d+-\d+)\.bn\.", r"\1.proj.1.", k)
        k = k.replace("f.se.excitation.0.", "f.se.fc1.").replace("f.se.excitation.2.", "f.se.fc2.")
        k = re.sub(r"\.f\.c\.weight$", ".f.c.0.weight", k)
        k = k.replace(".f.final_bn.", ".f.c.1.")
        k = k.replace("head.fc.", "fc.")
        out[k] = v
    return out


def vit_key(k: str) -> str:
    """The timm name of a torchvision / SWAG hub ViT tensor (``pre_logits.*`` and ``head.*`` for the
    heads; the name itself when it is none of these)."""
    if k == "class_token":
        return "cls_token"
    if k == "encoder.pos_embedding":
        return "pos_embed"
    if k.startswith("conv_proj."):
        return "patch_embed.proj." + k.split(".", 1)[1]
    if k.startswith("encoder.ln."):
        return "norm." + k.rsplit(".", 1)[1]
    if m := re.match(r"encoder\.layers\.(?:encoder_)?layer_(\d+)\.(.*)", k):
        i, rest = m.groups()
        for a, b in (("ln_1.", "norm1."), ("ln_2.", "norm2."), ("self_attention.in_proj_", "attn.qkv."),
                     ("self_attention.out_proj.", "attn.proj."), ("mlp.0.", "mlp.fc1."), ("mlp.3.", "mlp.fc2."),
                     ("mlp.linear_1.", "mlp.fc1."), ("mlp.linear_2.", "mlp.fc2.")):
            rest = rest.replace(a, b)
        return f"blocks.{i}.{rest}"
    if m := re.match(r"(?:heads|head\.layers)\.(pre_logits|head)\.(weight|bias)$", k):
        return f"{m.group(1)}.{m.group(2)}"
    return k


def _vit_to_timm(sd: dict) -> tuple[dict, dict | None, dict | None]:
    """torchvision / SWAG hub ViT -> (timm backbone, pre-logits, head)."""
    out, pre, head = {}, {}, {}
    for k, v in sd.items():
        t = vit_key(k)
        if t == "pos_embed" and v.shape[0] != 1:
            v = v.permute(1, 0, 2).contiguous()  # the hub's (S, 1, D)
        if t.startswith("pre_logits."):
            pre[t.split(".")[1]] = v
        elif t.startswith("head."):
            head[t.split(".")[1]] = v
        else:
            out[t] = v  # an unknown name stays, for the strict load to name
    return out, pre or None, head or None


def _split_head(sd: dict, family: str) -> tuple[dict, dict | None]:
    """A timm state dict -> (backbone, classifier)."""
    names = {"regnet": ("head.fc.",), "vit": ("head.",)}.get(family, ("head.fc.", "head.", "fc.", "classifier."))
    for prefix in names:
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if part and set(part) <= {"weight", "bias"}:
            return {k: v for k, v in sd.items() if not k.startswith(prefix)}, part
    return sd, None


def convert(sd: dict) -> Converted:
    """A state dict in any known layout as timm keys."""
    layout, family = layout_of(sd)
    pre = head = None
    if layout == "swag":
        backbone = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        pre = {k.split(".")[-1]: v for k, v in sd.items() if k.startswith("pre_logits.0.")} or None
        head = {k.split(".")[-1]: v for k, v in sd.items() if k.startswith("head.")} or None
    elif family == "regnet" and layout in ("torchvision", "swag-hub"):
        from timm.models.regnet import _filter_fn  # timm's own converter of torchvision RegNets

        tv = _hub_regnet_to_torchvision(sd) if layout == "swag-hub" else sd
        backbone, head = _split_head(_filter_fn(dict(tv)), "regnet")
    elif family == "vit" and layout in ("torchvision", "swag-hub"):
        backbone, pre, head = _vit_to_timm(sd)
    else:
        backbone, head = _split_head(sd, family)
    backbone = {k: v for k, v in backbone.items() if not k.endswith("num_batches_tracked")}
    return Converted(layout, family, backbone, pre, head, _shape(backbone, family))


def _shape(sd: dict, family: str) -> dict:
    if family == "vit":
        w = sd.get("patch_embed.proj.weight")
        pos = sd.get("pos_embed")
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        if w is None or pos is None:
            return {"depth": depth}
        d, p = int(w.shape[0]), int(w.shape[-1])
        prefix = 1 if "cls_token" in sd else 0
        grid = int(round((pos.shape[1] - prefix) ** 0.5))
        fc1 = sd.get("blocks.0.mlp.fc1.weight")
        return {"embed_dim": d, "depth": depth, "patch_size": p, "img_size": grid * p,
                "mlp_ratio": (fc1.shape[0] / d) if fc1 is not None else 4.0, "class_token": bool(prefix)}
    if family == "regnet":
        stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"s(\d+)\.", k))})
        depths = [len({k.split(".")[1] for k in sd if k.startswith(f"s{s}.b")}) for s in stages]
        widths = [int(sd[f"s{s}.b1.conv3.conv.weight"].shape[0]) for s in stages if f"s{s}.b1.conv3.conv.weight" in sd]
        return {"stages": len(stages), "depths": depths, "widths": widths}
    return {}


# -- which timm model -----------------------------------------------------------------------------------
def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}


@functools.lru_cache(maxsize=None)
def _timm_shapes(name: str, kwargs_items: tuple = ()) -> dict:
    import timm

    with torch.device("meta"):
        m = timm.create_model(name, pretrained=False, num_classes=0, **dict(kwargs_items))
    return _shapes(m.state_dict())


def infer_model(conv: Converted) -> tuple[str, dict] | None:
    """The timm (name, kwargs) whose backbone has exactly the file's tensors, or None."""
    import timm

    want = _shapes(conv.backbone)
    if conv.family == "regnet":
        names = [n for n in timm.list_models("regnet[xyz]_*") if not n.endswith("_sgn")]
        names.sort(key=lambda n: (n.endswith("_tv"), n))  # timm's own rounding first
        return next(((n, {}) for n in names if _timm_shapes(n) == want), None)
    if conv.family == "vit":
        s = conv.shape
        if "embed_dim" not in s:
            return None
        kwargs = {"img_size": s["img_size"], "patch_size": s["patch_size"], "embed_dim": s["embed_dim"],
                  "depth": s["depth"], "num_heads": max(1, s["embed_dim"] // 64), "mlp_ratio": s["mlp_ratio"],
                  "class_token": s["class_token"], "global_pool": "token" if s["class_token"] else "avg"}
        size = VIT_SIZES.get((s["embed_dim"], s["depth"]))
        name = f"vit_{size}_patch{s['patch_size']}_{s['img_size']}" if size else None
        if name and name in timm.list_models(name) and s["mlp_ratio"] == 4.0 and s["class_token"]:
            return name, {}
        return "vit_base_patch16_224", kwargs
    return None


def check_fits(conv: Converted, own: dict, model_name: str, path) -> None:
    """One line when the file's backbone is not the model's: how many tensors matched, what the
    file looks like."""
    theirs = _shapes(conv.backbone)
    mine = _shapes(own)
    fit = sum(1 for k, v in mine.items() if theirs.get(k) == v)
    if fit == len(mine):  # (tensors the model does not have, such as auxiliary heads, are left out)
        return
    missing = [k for k in mine if k not in theirs]
    wrong = [k for k in mine if k in theirs and theirs[k] != mine[k]]
    detail = f"e.g. {missing[0]} missing" if missing else \
        f"e.g. {wrong[0]}: {theirs[wrong[0]]} in the file, {mine[wrong[0]]} here"
    guess = infer_model(conv)
    hint = f"; it looks like {guess[0]}{' with ' + str(guess[1]) if guess[1] else ''} (drop --model to use it)" \
        if guess and guess[0] != model_name else ""
    raise SwagError(f"{path}: {conv.describe()}: {fit} of {len(mine)} {model_name} backbone tensors match "
                    f"({detail}){hint}")


def resampled(backbone: torch.nn.Module, sd: dict) -> dict:
    """``sd`` with a ViT's position embeddings resampled to ``backbone``'s grid (as timm does)."""
    own = backbone.state_dict()
    pos = sd.get("pos_embed")
    if pos is None or "pos_embed" not in own or pos.shape == own["pos_embed"].shape or pos.ndim != 3 \
            or pos.shape[-1] != own["pos_embed"].shape[-1]:
        return sd
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(backbone, "no_embed_class", False) else getattr(backbone, "num_prefix_tokens", 1)
    return {**sd, "pos_embed": resample_abs_pos_embed(pos, new_size=list(backbone.patch_embed.grid_size),
                                                       num_prefix_tokens=prefix)}


def load_backbone(backbone: torch.nn.Module, conv: Converted, model_name: str, path) -> None:
    """The converted backbone into ``backbone`` (a timm model with ``num_classes=0``), every tensor
    checked; ViT position embeddings resampled to the model's grid."""
    sd = resampled(backbone, conv.backbone)
    check_fits(Converted(conv.layout, conv.family, sd, conv.pre_logits, conv.head, conv.shape),
               backbone.state_dict(), model_name, path)
    backbone.load_state_dict(sd, strict=False)


def model_for_file(path, model: str | None, kwargs: dict | None, resolution: int | None = None,
                   num_classes: int = 1):
    """(HashtagModel with the file's backbone (and pre-logits layer) loaded, converted file, timm name,
    kwargs): the architecture the file says unless ``model`` names one."""
    from swagcli.train.models import build_model

    conv = convert(read_state_dict(path))
    kwargs = dict(kwargs or {})
    name = model
    if not name:
        guess = infer_model(conv)
        if guess is None:
            raise SwagError(f"{path}: {conv.describe()}: which timm model this is cannot be told from the weights; "
                            "name it (--model NAME, source.model)")
        name, inferred = guess
        kwargs = {**inferred, **kwargs}
    if resolution and conv.family == "vit":
        kwargs["img_size"] = resolution
    m = build_model(name, num_classes, kwargs, pre_logits=conv.pre_logits is not None)
    load_backbone(m.backbone, conv, name, path)
    if conv.pre_logits is not None:
        lin = m.pre_logits[0]
        if tuple(conv.pre_logits["weight"].shape) != tuple(lin.weight.shape):
            raise SwagError(f"{path}: its pre-logits layer is {tuple(conv.pre_logits['weight'].shape)}, "
                            f"{tuple(lin.weight.shape)} here")
        lin.load_state_dict(conv.pre_logits)
    return m, conv, name, kwargs
