"""The one place kshot reads torch-serialised files; nothing here executes code stored in a file.

- `load_torch_file`: `torch.load(..., weights_only=True)` on CPU, i.e. torch's restricted unpickler (tensors,
  containers and plain scalars only). Every `torch.save` file kshot reads (weights, resume checkpoints) goes here.
- `read_torchscript_tensors`: the tensors of a TorchScript archive (OpenAI's CLIP `.pt` files) **without** running
  `torch.jit.load`. A TorchScript zip holds `<root>/data.pkl` (the module tree, pickled protocol 2), `<root>/data/<key>`
  (raw little-endian storage bytes) and `<root>/code/` (TorchScript source). `torch.jit.load` compiles that code and
  runs each class's TorchScript `__setstate__`, so a crafted archive can write files or worse while it loads. Here the
  pickle is read with an allowlist: `__torch__.*` classes become inert `ScriptObject` placeholders (their state is
  stored, no method of the file is ever called), tensors are rebuilt from storage bytes with `as_strided`, and any
  other global (`os.system`, `builtins.eval`, ...) is refused with a `CheckpointError` naming it. The archive layout
  and opcodes follow PyTorch `torch/csrc/jit/serialization/pickler.cpp` (objects: `GLOBAL __torch__.X`,
  `EMPTY_TUPLE NEWOBJ <state> BUILD`; tensors: `torch._utils._rebuild_tensor_v2` over the persistent id
  `('storage', torch.<X>Storage, key, location, numel)`).

A test (tests/test_safe_load.py) greps `src/` so that `torch.load(`, `pickle.load(` and `jit.load(` appear nowhere else.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from kshot.errors import CheckpointError

logger = logging.getLogger(__name__)

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)` with kshot's error messages.

    Raises:
        CheckpointError: the file holds Python objects other than tensors/containers/scalars, or is damaged.
    """
    p = Path(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such file") from None
    except Exception as e:  # torch raises UnpicklingError/RuntimeError/EOFError etc. depending on the damage
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{p}: refused - the file holds Python objects other than tensors, and kshot only loads torch files "
                f"with weights_only=True ({msg})"
            ) from None
        raise CheckpointError(f"{p}: cannot read torch checkpoint (truncated or corrupt?): {msg}") from None


class ScriptObject:
    """An inert stand-in for a pickled TorchScript object: it only remembers its class name and state."""

    qualname = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:  # called by pickle's BUILD: store, never interpret
        self.state = state


class _Refused(Exception):
    pass


def _script_class(qualname: str) -> type:
    return type("ScriptObject", (ScriptObject,), {"qualname": qualname})


def _storage_type(name: str) -> Any:
    return ("storage_type", _STORAGE_DTYPES[name])


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise _Refused(f"tensor over a non-storage {type(storage).__name__}")
    try:
        return storage.as_strided(tuple(size), tuple(stride), int(offset))
    except (RuntimeError, TypeError, ValueError) as e:
        raise _Refused(f"tensor of size {size} does not fit its storage ({e})") from None


def _first(value: Any, *_: Any) -> Any:
    return value


def _as_list(items: Any) -> list[Any]:
    return list(items)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _first,
    **{("torch.jit._pickle", f"build_{k}list"): _as_list for k in ("int", "double", "bool", "tensor")},
    **{("torch", name): _storage_type(name) for name in _STORAGE_DTYPES},
}


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._root = archive, root
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], tuple) and pid[1][:1] == ("storage_type",)):
            raise _Refused(f"persistent id {pid!r}")
        dtype, key = pid[1][1], str(pid[2])
        if key not in self._storages:
            try:
                raw = bytearray(self._archive.read(f"{self._root}/data/{key}"))
            except KeyError:
                raise _Refused(f"storage {key!r} missing from the archive") from None
            item = torch.empty((), dtype=dtype).element_size()
            if len(raw) % item:
                raise _Refused(f"storage {key!r} has {len(raw)} bytes, not a multiple of {item}")
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def _collect(obj: ScriptObject, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if not isinstance(obj.state, dict):
        logger.debug("%s: TorchScript object %s has a custom state; its tensors are not read", prefix, obj.qualname)
        return
    for key, value in obj.state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(key)] = value
        elif isinstance(value, ScriptObject):
            _collect(value, f"{prefix}{key}.", out, seen)


def read_torchscript_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """{dotted attribute name: tensor} of every tensor attribute in a TorchScript archive, on CPU, no code run.

    The names are those of `torch.jit.load(path).state_dict()` for modules without a custom `__getstate__`
    (parameters, buffers and tensor attributes, dotted by submodule).

    Raises:
        CheckpointError: not a TorchScript zip, damaged, or naming a global outside the tensor allowlist.
    """
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            roots = [n[: -len("/data.pkl")] for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not roots:
                raise CheckpointError(f"{p}: not a TorchScript archive (no <root>/data.pkl)")
            obj = _ArchiveUnpickler(z, roots[0], z.read(f"{roots[0]}/data.pkl")).load()
    except _Refused as e:
        raise CheckpointError(f"{p}: refused to read the TorchScript archive: {e} (only tensors and module "
                              "attributes are read; kshot never runs an archive's code)") from None
    except (zipfile.BadZipFile, OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: damaged TorchScript archive (truncated or corrupt?): {e}") from None
    if not isinstance(obj, ScriptObject):
        raise CheckpointError(f"{p}: the archive's data.pkl holds a {type(obj).__name__}, not a TorchScript module")
    out: dict[str, torch.Tensor] = {}
    _collect(obj, "", out, set())
    return out


def load_own_torchscript(path: str | os.PathLike[str]) -> torch.jit.ScriptModule:
    """Run-able TorchScript module of a file kshot itself has just written (`kshot export` checks its own graph).

    `torch.jit.load` executes the archive's code, so it is never used on a file a user hands to kshot (those go
    through `read_torchscript_tensors`); this is only for the export's self-check, right after `torch.jit.save`.
    """
    return torch.jit.load(str(path), map_location="cpu")
