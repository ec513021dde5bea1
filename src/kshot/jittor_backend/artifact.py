"""Read an exported method artifact (`kshot export --format jittor`, format `method/1`) without executing code.

Stdlib + numpy only, so the Jittor worker and the parent can both use it. The file is a `jt.save`-style pickle
(payload + SHA-1 + `HCAJSLHD`, see `kshot.backbones.jittor_pkl`) of a plain dict: `kshot_format`, `method`,
`config` and `meta` (JSON strings), and the method's `state_dict()` tensors as numpy arrays under their own names
(`kshot.interop.export.method_to_jittor_dict`). Unpickling allows only numpy's array/dtype constructors, the bytes
codec protocol 2 uses, `OrderedDict` and a Jittor `Var` (kept as its array); any other global is refused by name
before anything is called.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kshot.errors import CheckpointError

METHOD_FORMAT = "method/1"
_MAGIC = b"HCAJSLHD"
_TRAILER = 20 + len(_MAGIC)


class _Refused(Exception):
    pass


def _array(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise _Refused(f"array subclass {cls!r}")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)  # BUILD fills shape, dtype and data


def _dtype(spec: Any, *unused: Any) -> np.dtype:
    if not isinstance(spec, str):
        raise _Refused(f"dtype from {type(spec).__name__}")
    dt = np.dtype(spec)
    if dt.kind not in "biuf" or dt.fields is not None:
        raise _Refused(f"dtype {dt!r}")
    return dt


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
        raise _Refused(f"dtype {dtype!r}")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order).copy()


def _latin1(text: Any, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise _Refused("_codecs.encode of a non-latin1 string")
    return text.encode("latin1")


def _var(data: Any, *unused: Any) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise _Refused(f"jittor Var of {type(data).__name__}")
    return data


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    **{(f"{core}.multiarray", "_reconstruct"): _array for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.numeric", "_frombuffer"): _frombuffer for core in ("numpy.core", "numpy._core")},
    **{(mod, "Var"): _var for mod in ("jittor", "jittor_core", "jittor.jittor_core", "jittor_core.jittor_core")},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"persistent id {pid!r}")


def read_pickle_dict(path: str | Path) -> dict[str, Any]:
    """The dict in a `jt.save`-style (or plain) pickle, unpickled with the allowlist of the module docstring.

    Raises:
        CheckpointError: missing/corrupt file, bad trailer digest, a refused global, or not a dict with str keys.
    """
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read artifact ({e.strerror or e})") from None
    if blob.endswith(_MAGIC):
        if len(blob) < _TRAILER or hashlib.sha1(blob[:-_TRAILER]).digest() != blob[-_TRAILER:-len(_MAGIC)]:
            raise CheckpointError(f"{p}: SHA-1 does not match the Jittor trailer (corrupt or partial file)")
        blob = blob[:-_TRAILER]
    try:
        obj = _Unpickler(io.BytesIO(blob)).load()
    except _Refused as e:
        raise CheckpointError(f"{p}: refused to unpickle {e}: an exported artifact holds only arrays and "
                              "strings") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure of a damaged file
        raise CheckpointError(f"{p}: not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{p}: expected a dict with str keys, found {type(obj).__name__}")
    return obj


@dataclass
class MethodArtifact:
    """A parsed `method/1` export: method name, config, fitted meta and arrays."""

    method: str
    config: dict[str, Any]
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


def parse_method_artifact(doc: dict[str, Any], where: str = "artifact") -> MethodArtifact:
    """Check a `method/1` dict and split it into its parts.

    Raises:
        CheckpointError: another format (e.g. backbone weights or a continual checkpoint), bad JSON, or values that
            are neither arrays nor the four header strings.
    """
    fmt = doc.get("kshot_format")
    if fmt != METHOD_FORMAT:
        hint = " (a weights file has no header; pass a `kshot export` of a fitted method)" if fmt is None else ""
        raise CheckpointError(f"{where}: kshot_format is {fmt!r}, expected {METHOD_FORMAT!r}{hint}")
    header: dict[str, Any] = {}
    for key in ("method", "config", "meta"):
        if not isinstance(doc.get(key), str):
            raise CheckpointError(f"{where}: {key!r} must be a string")
    for key in ("config", "meta"):
        try:
            header[key] = json.loads(doc[key])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{where}: {key!r} is not valid JSON ({e})") from None
    arrays = {}
    for key, value in doc.items():
        if key in ("kshot_format", "method", "config", "meta"):
            continue
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{where}: entry {key!r} is a {type(value).__name__}, not an array")
        arrays[key] = value
    return MethodArtifact(doc["method"], header["config"], header["meta"], arrays)


def read_method_artifact(path: str | Path) -> MethodArtifact:
    """`parse_method_artifact(read_pickle_dict(path))`."""
    return parse_method_artifact(read_pickle_dict(path), str(path))
