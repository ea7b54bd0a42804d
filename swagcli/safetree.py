"""Nested state (a training state: optimizer, scheduler, grad scaler, RNG, counters) saved and
loaded without pickle.

``save_tree(obj, path)`` writes one safetensors file: every tensor of ``obj`` as a tensor of the
file (named ``0``, ``1``, ... in the order met), and the structure as JSON in the file's metadata
(``__metadata__["tree"]``, beside ``"format": "swag-tree/1"``). Loading it reads a JSON document
and raw tensor bytes; nothing in the file is code, so a planted or forged file can at worst hold
wrong numbers, never run anything. ``load_tree(path)`` gives back the same tree, exactly:

* ``None``, ``bool``, ``int`` (any size), ``float`` (nan, +-inf and -0.0 included), ``str``;
* ``list``, ``tuple`` and ``dict`` with ``str`` or ``int`` keys (kept apart: ``{1: x}`` is not
  ``{"1": x}``), in their order;
* tensors of any dtype (those safetensors lacks, such as complex128, as their raw bytes), with
  their shape, on the CPU, as plain tensors (no autograd state; views come back as copies).

Subclasses come back as their base type (an ``OrderedDict`` state dict as a ``dict``, a
``torch.Size`` as a ``tuple``, an ``nn.Parameter`` as a tensor).

In the JSON, scalars are themselves; a container or a tensor is an object with one field that
says what it is: ``{"list": [...]}``, ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}``,
``{"tensor": "3"}`` (``{"tensor": "3", "dtype": "complex128", "shape": [2]}`` for raw bytes), and
``{"float": "nan" | "inf" | "-inf"}``, so the document is strict JSON. Anything else (a set, an
object, a function, a numpy array) is a ``TypeError`` on saving, before anything is written.

A file that is missing, truncated, not safetensors, or not a tree is a one-line
:class:`~swagcli.errors.SwagError` naming it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from swagcli.errors import SwagError
from swagcli.fileio import atomic_file, os_error

FORMAT = "swag-tree/1"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_NATIVE = None  # the dtypes safetensors stores as themselves (filled on first use)


def _native_dtypes() -> set:
    global _NATIVE
    if _NATIVE is None:
        from safetensors.torch import _TYPES  # {"F32": torch.float32, ...}

        _NATIVE = set(_TYPES.values())
    return _NATIVE


class _Encoder:
    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set = set()

    def tensor(self, t: torch.Tensor) -> dict:
        name = str(len(self.tensors))
        t = t.detach().to("cpu").contiguous()
        node = {"tensor": name}
        if t.dtype not in _native_dtypes():
            if t.is_quantized or t.layout != torch.strided:
                raise TypeError(f"save_tree: cannot store a {t.layout} {t.dtype} tensor")
            node.update(dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape))
            t = t.reshape(-1).view(torch.uint8) if t.numel() else torch.zeros(0, dtype=torch.uint8)
        # safetensors refuses tensors that share memory, or that are part of a larger storage
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and (ptr in self._storages or t.untyped_storage().nbytes() != t.nbytes):
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel():
            self._storages.add(ptr)
        self.tensors[name] = t
        return node

    def encode(self, obj, where: str = "tree"):
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            if math.isfinite(obj):
                return float(obj)
            return {"float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if isinstance(obj, torch.Tensor):
            return self.tensor(obj)
        if isinstance(obj, (list, tuple)):
            kind = "list" if isinstance(obj, list) else "tuple"
            return {kind: [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            pairs = []
            for k, v in obj.items():
                if type(k) is not str and type(k) is not int:
                    raise TypeError(f"save_tree: {where}: a {type(k).__name__} key ({k!r}); "
                                    "keys must be str or int")
                pairs.append([k, self.encode(v, f"{where}[{k!r}]")])
            return {"dict": pairs}
        raise TypeError(f"save_tree: {where}: cannot store a {type(obj).__name__} "
                        "(only None, bool, int, float, str, list, tuple, dict and tensors)")


def save_tree(obj, path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` (a safetensors file), atomically: the file appears complete or
    not at all, and a ``TypeError`` for something that cannot be stored leaves it untouched."""
    from safetensors.torch import save_file

    enc = _Encoder()
    tree = json.dumps(enc.encode(obj), allow_nan=False, separators=(",", ":"))
    path = Path(path)
    with atomic_file(path, "wb") as f:  # safetensors writes the file by name; atomic_file syncs it
        try:
            save_file(enc.tensors, f.name, metadata={"format": FORMAT, "tree": tree})
        except OSError as e:
            raise os_error(e, path) from None
    return path


class _Bad(Exception):
    pass


class _Decoder:
    def __init__(self, f):
        self.f = f
        self.names = set(f.keys())

    def tensor(self, node: dict) -> torch.Tensor:
        name = node["tensor"]
        if type(name) is not str or name not in self.names:
            raise _Bad(f"its tree names a tensor it does not hold ({str(name)[:40]!r})")
        t = self.f.get_tensor(name)
        if "dtype" in node:
            dtype = getattr(torch, str(node["dtype"]), None)
            shape = node.get("shape")
            if not isinstance(dtype, torch.dtype) or type(shape) is not list \
                    or not all(type(n) is int and n >= 0 for n in shape) or t.dtype != torch.uint8:
                raise _Bad(f"bad raw tensor {name!r}")
            t = t.view(dtype).reshape(shape) if t.numel() else torch.zeros(shape, dtype=dtype)
        return t

    def decode(self, node):
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is list:
            raise _Bad("a bare list in its tree")
        if type(node) is dict and len(node) >= 1:
            if "tensor" in node and set(node) <= {"tensor", "dtype", "shape"}:
                return self.tensor(node)
            if len(node) == 1:
                (kind, value), = node.items()
                if kind in ("list", "tuple") and type(value) is list:
                    items = [self.decode(v) for v in value]
                    return items if kind == "list" else tuple(items)
                if kind == "dict" and type(value) is list:
                    out = {}
                    for pair in value:
                        if type(pair) is not list or len(pair) != 2 or type(pair[0]) not in (str, int):
                            raise _Bad("a bad dict entry in its tree")
                        out[pair[0]] = self.decode(pair[1])
                    return out
                if kind == "float" and value in _NONFINITE:
                    return _NONFINITE[value]
        raise _Bad(f"an unknown node in its tree ({json.dumps(node)[:60]})")


def load_tree(path: str | os.PathLike):
    """The tree :func:`save_tree` wrote to ``path``; tensors on the CPU. Raises a one-line
    :class:`SwagError` naming the file when it cannot be read as one."""
    from safetensors import safe_open

    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(path))
        os.stat(path)
    except OSError as e:
        raise os_error(e, path, "read") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or not isinstance(meta.get("tree"), str):
                raise _Bad(f"not a swag state file (format {meta.get('format')!r})")
            return _Decoder(f).decode(json.loads(meta["tree"]))
    except _Bad as e:
        raise SwagError(f"{path}: unreadable state file: {e}") from None
    except (FileNotFoundError, PermissionError) as e:
        raise os_error(e, path, "read") from None
    except RecursionError:
        raise SwagError(f"{path}: unreadable state file: its tree is nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - safetensors' own errors: truncated, not safetensors
        detail = " ".join(str(e).split())[:160] or type(e).__name__
        raise SwagError(f"{path}: unreadable state file (truncated or not a swag state file: "
                        f"{detail})") from None
