"""Read an exported method artifact (`kshot export --format jittor`, format `method/1`) without executing code.

Stdlib + numpy only (the Jittor worker uses it too). The file is a `jt.save`-style pickle of a plain dict:
`kshot_format`, `method`, `config` and `meta` (JSON strings), and the method's `state_dict()` tensors as numpy arrays
under their own names (`kshot.interop.export.method_to_jittor_dict`). It is read with kshot's restricted unpickler
(`kshot.backbones.jittor_pkl.read_jittor_artifact`): any global other than numpy's array constructors, a torch tensor
or a Jittor Var is refused by name before anything is called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kshot.backbones.jittor_pkl import read_jittor_artifact
from kshot.errors import CheckpointError

METHOD_FORMAT = "method/1"


def read_pickle_dict(path: str | Path) -> dict[str, Any]:
    """The dict in a `jt.save`-style (or plain) pickle: arrays and plain str/int/float/bool values only.

    Raises:
        CheckpointError: missing/corrupt file, bad trailer digest, a refused global, or not a dict with str keys.
    """
    return read_jittor_artifact(path)


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
