"""How a model is spread over the processes: ``strategy: ddp | fsdp``, and the sharded checkpoints
of ``fsdp``.

* ``ddp``: every process holds the whole model, optimizer state and gradients; gradients are
  averaged by DistributedDataParallel.
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on every transformer block (every stage
  of a conv net) and on the model: parameters, gradients and optimizer state are sharded over
  the processes, a block's parameters gathered only while it runs; under bf16 the gathered
  parameters are bf16 and gradients are reduced in fp32 (``MixedPrecisionPolicy``). One process
  holds the model whole (there is nothing to shard it over) and writes the same checkpoints.

A sharded checkpoint (:func:`save_state` / :func:`load_state`) is written with
``torch.distributed.checkpoint``: every process writes its shards of the weights and of AdamW's
moments to ``step-N/sharded/`` as safetensors files whose headers say where each shard lies in its
tensor (no pickle: ``.metadata`` is not written), so it loads on any number of processes, each
reading the pieces of its own shards. Rank 0 then writes the consolidated ``model.safetensors``
from those files (:func:`consolidate`, one tensor at a time), which evaluation, ``init.from`` and
``swag export`` read as they read any checkpoint: none of them needs the run's GPUs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from swagcli.errors import SwagError

SHARDED = "sharded"
# safetensors' dtype names -> torch's
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def _options():
    """Flat state dicts (``state.<param>.<key>``): they reshard over any number of processes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True)


def units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """What is sharded on its own, then gathered while it runs: a ViT's blocks (an MAE's decoder
    blocks too), a conv net's stages (timm's ``stages`` or RegNet's ``s1..s4``)."""
    bb = getattr(model, "backbone", model)
    found: list[torch.nn.Module] = []
    if hasattr(bb, "blocks"):
        found += list(bb.blocks)
    elif hasattr(bb, "stages"):
        found += list(bb.stages)
    else:
        found += [m for n, m in bb.named_children() if n[:1] == "s" and n[1:].isdigit()]
    found += list(getattr(model, "decoder_blocks", []))
    return found


class Parallel:
    """The model as the training step calls it (``module``), the model itself (``model``, whose
    state checkpoints hold) and ``no_sync()`` (micro-batches of an accumulation that do not reduce
    gradients)."""

    def __init__(self, model, module, strategy: str, sharded: bool):
        self.model, self.module, self.strategy, self.sharded = model, module, strategy, sharded

    def no_sync(self):
        if self.sharded:
            return _fsdp_no_sync(self.model)
        if isinstance(self.module, torch.nn.parallel.DistributedDataParallel):
            return self.module.no_sync()
        return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def check(strategy: str, dtype) -> None:
    if strategy == "fsdp" and dtype == torch.float16:
        raise SwagError("strategy fsdp: precision fp16 is not supported (its loss scaling sees one shard of "
                        "the gradients per process); use bf16 (A100 and later) or fp32")


def wrap(model: torch.nn.Module, strategy: str, env, dtype) -> Parallel:
    """``model`` spread over ``env``'s processes by ``strategy`` (in place for fsdp: its parameters
    become shards; build the optimizer after this)."""
    check(strategy, dtype)
    if strategy == "ddp":
        module = torch.nn.parallel.DistributedDataParallel(model) if env.distributed else model
        return Parallel(model, module, "ddp", False)
    if not env.distributed:
        return Parallel(model, model, "fsdp", False)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype is not None else \
        MixedPrecisionPolicy()
    parts = units(model)
    if not parts:
        raise SwagError(f"strategy fsdp: found no blocks or stages to shard in {type(model.backbone).__name__}")
    for i, part in enumerate(parts):  # the last block's parameters are needed again first in backward
        fully_shard(part, mp_policy=mp, reshard_after_forward=i < len(parts) - 1)
    fully_shard(model, mp_policy=mp)
    return Parallel(model, model, "fsdp", True)


@contextlib.contextmanager
def gathered(model):
    """The root's own parameters gathered (for a method that is not ``forward``, e.g. MAE's
    ``reconstruct``; the blocks gather themselves as they run)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


# -- sharded checkpoints ------------------------------------------------------------------------
def _split(sd: dict) -> tuple[dict, dict]:
    return ({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)},
            {k: v for k, v in sd.items() if not isinstance(v, torch.Tensor)})


def state(model, opt) -> tuple[dict, dict]:
    """(tensors every process saves its shards of: ``model.*`` and ``optim.*``, the optimizer's
    other entries (learning rates, betas: the same on every process, rank 0 keeps them))."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt, options=_options())
    ot, other = _split(osd)
    return {"model": _split(msd)[0], "optim": ot}, _plain(other)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def write(tensors: dict, folder: Path) -> None:
    """Every process's shards into ``folder`` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    with _quiet():
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))


@contextlib.contextmanager
def _quiet():
    """Without torch's warning that one process saves or loads alone: that is what it is for."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def load_state(ckpt: Path, model, opt, other: dict) -> None:
    """Restore ``model`` and ``opt`` from ``ckpt``'s shards, however many processes wrote them and
    however many read them now (collective when distributed). ``other``: the optimizer's entries
    kept by rank 0 (``train_state['optimizer']['other']``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    folder = Path(ckpt) / SHARDED
    if not folder.is_dir():
        raise SwagError(f"{ckpt}: not a sharded checkpoint (written by strategy ddp): resume it with strategy ddp")
    tensors, _ = state(model, opt)  # the targets, sharded as this run shards them (optimizer state initialized)
    try:
        with _quiet():
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(folder)))
    except Exception as e:  # noqa: BLE001 - a missing or damaged shard file, or another model
        raise SwagError(f"{folder}: cannot load the sharded state ({str(e).strip().splitlines()[-1][:200]})") from None
    set_state_dict(model, opt, model_state_dict=tensors["model"], optim_state_dict={**tensors["optim"], **other},
                   options=_options())


def shard_damage(ckpt: Path, processes: int | None) -> tuple[str, str] | None:
    """(file, why) when ``ckpt``'s shard files are not all there and whole, else None."""
    from swagcli.train.checkpoint import _safetensors_damage

    folder = Path(ckpt) / SHARDED
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if processes is not None and len(files) < processes:
        return str(folder), f"{len(files)} of its {processes} shard files"
    for f in files:
        why = _safetensors_damage(f)
        if why:
            return str(f), why
    return None


def consolidate(folder: Path, out_file: Path, metadata: dict | None = None) -> int:
    """The full model from the shard files in ``folder`` (``model.*`` keys) as one safetensors file,
    read and written one tensor at a time (memory: the largest tensor; each shard file opened
    once); returns its tensors."""
    import json
    import struct

    from safetensors import safe_open

    pieces: dict[str, list] = {}  # key -> [(file, saved key, offsets, shape)]
    dtypes: dict[str, str] = {}
    sizes: dict[str, list[int]] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            info = json.loads((h.metadata() or {}).get("DCP_SHARDING_INFO", "{}"))
            for key in h.keys():
                if not key.startswith("model."):
                    continue
                sl = h.get_slice(key)
                shape = list(sl.get_shape())
                off = info.get(key, {}).get("saved_offsets", [0] * len(shape))
                pieces.setdefault(key, []).append((f, off, shape))
                dtypes[key] = sl.get_dtype()
                full = sizes.setdefault(key, [0] * len(shape))
                for i, (o, n) in enumerate(zip(off, shape)):
                    full[i] = max(full[i], o + n)
    if not pieces:
        raise SwagError(f"{folder}: no model shards")
    names = sorted(pieces)
    header, pos = {}, 0
    for key in names:
        n = DTYPES[dtypes[key]].itemsize
        for d in sizes[key]:
            n *= d
        header[key[len("model."):]] = {"dtype": dtypes[key], "shape": sizes[key], "data_offsets": [pos, pos + n]}
        pos += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(out_file, "wb") as out, contextlib.ExitStack() as files:
        handles = {f: files.enter_context(safe_open(str(f), framework="pt"))
                   for f in {f for parts in pieces.values() for f, _, _ in parts}}
        out.write(struct.pack("<Q", len(head)))
        out.write(head)
        for key in names:
            full = torch.zeros(sizes[key], dtype=DTYPES[dtypes[key]])
            for f, off, shape in pieces[key]:
                full[tuple(slice(o, o + n) for o, n in zip(off, shape))] = handles[f].get_tensor(key)
            out.write(full.reshape(-1).view(torch.uint8).numpy().tobytes() if full.numel() else b"")
        out.flush()
    return len(names)
