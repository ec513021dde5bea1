"""Resumable training checkpoints: tensors in safetensors, progress in JSON, both written atomically (no pickle).

Layout of a checkpoint folder: `step-<N>.safetensors` (adapter and optimiser tensors) and `checkpoint.json`
(`{"step": N, "tensors": "step-<N>.safetensors", "meta": {...}}`). The JSON is replaced last, so it always names a
complete tensor file: a kill at any moment leaves the previous checkpoint readable. Older tensor files are removed
after the JSON points at the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from kshot.errors import CheckpointError

INDEX = "checkpoint.json"


def save_checkpoint(folder: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write the checkpoint of `step` into `folder`; returns the JSON path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}.safetensors"
    tmp = folder / f".{name}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, folder / name)
    doc = folder / f".{INDEX}.tmp"
    doc.write_text(json.dumps({"step": int(step), "tensors": name, "meta": meta}, indent=1))
    os.replace(doc, folder / INDEX)
    for old in folder.glob("step-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / INDEX


def load_checkpoint(folder: str | Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """(step, tensors, meta) of the last checkpoint in `folder`, or None when there is none.

    Raises:
        CheckpointError: the index or its tensor file is unreadable.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = Path(folder) / INDEX
    if not index.is_file():
        return None
    try:
        doc = json.loads(index.read_text())
        tensors = load_file(str(Path(folder) / doc["tensors"]))
    except (json.JSONDecodeError, KeyError, OSError, SafetensorError) as e:
        raise CheckpointError(f"{index}: unreadable training checkpoint ({e})") from None
    return int(doc["step"]), tensors, dict(doc.get("meta", {}))
