"""Read a weights file of any supported format into a flat {name: tensor} state dict.

Formats are recognised by content (the suffix is only a tie-breaker), so a misnamed file still loads or fails with a
precise message:

- zip archive: OpenAI TorchScript `.pt` (its tensors read by `kshot.safe_load.read_torchscript_tensors`, which never
  runs the archive's code), or a `torch.save` zip checkpoint read with `load_torch_file` (weights_only=True) only;
- `.safetensors` (8-byte little-endian header length, then a JSON header);
- Jittor/JCLIP `.pkl` (pickle, with or without Jittor's SHA-1 trailer), read by `jittor_pkl.read_jittor_pkl`;
- a legacy (pre-zip) `torch.save` pickle, again with `weights_only=True`.

Training checkpoints wrapping the weights in `{'state_dict': ...}` and DataParallel `module.` prefixes are unwrapped.
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.errors import CheckpointError
from kshot.safe_load import load_torch_file, read_torchscript_tensors

from .jittor_pkl import MAGIC as JITTOR_MAGIC
from .jittor_pkl import read_jittor_pkl

logger = logging.getLogger(__name__)

SUPPORTED = "OpenAI TorchScript .pt, torch state dict .pt/.pth/.bin, .safetensors, Jittor/JCLIP .pkl"
PICKLE_SUFFIXES = (".pkl", ".pickle")


def sniff_format(path: Path) -> str:
    """Return 'torchscript' | 'torch_zip' | 'safetensors' | 'jittor_pkl' | 'torch_legacy' for the file at `path`.

    Raises:
        CheckpointError: missing, empty, unreadable, or not one of the supported formats.
    """
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    with path.open("rb") as f:
        head = f.read(16)
        f.seek(max(0, size - len(JITTOR_MAGIC)))
        tail = f.read()
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: damaged zip checkpoint (truncated?): {e}") from None
        is_jit = any(n.endswith("constants.pkl") or "/code/" in n for n in names)
        return "torchscript" if is_jit else "torch_zip"
    if size >= 10:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 8 + header_len <= size:
            return "safetensors"
    if tail == JITTOR_MAGIC:
        return "jittor_pkl"
    if head[:1] == b"\x80":  # a pickle protocol opcode
        if path.suffix.lower() in PICKLE_SUFFIXES:
            return "jittor_pkl"
        return "torch_legacy"
    if path.suffix.lower() == ".safetensors":
        raise CheckpointError(f"{path}: damaged .safetensors file (bad header)")
    raise CheckpointError(f"{path}: not a recognised checkpoint format (supported: {SUPPORTED})")


def _safetensors_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, json errors
        raise CheckpointError(f"{path}: cannot read .safetensors file (truncated or corrupt?): {e}") from None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found a {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; not a weights file")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load any supported weights file as CPU tensors, keeping the saved dtypes.

    Args:
        path: the checkpoint file.

    Returns:
        {parameter name: tensor}; TorchScript files keep OpenAI's extra `input_resolution`, `context_length`,
        `vocab_size` entries (the model builder drops them).

    Raises:
        CheckpointError: missing/empty/unknown file, damaged data, or pickled objects that are not tensors.
    """
    p = Path(path)
    kind = sniff_format(p)
    logger.debug("reading %s as %s", p, kind)
    if kind == "torchscript":
        state = read_torchscript_tensors(p)
    elif kind == "safetensors":
        state = _safetensors_state(p)
    elif kind == "jittor_pkl":
        arrays = read_jittor_pkl(p)
        half = sum(v.dtype == np.float16 for v in arrays.values())
        if half:
            logger.warning("%s: %d of %d arrays are fp16; they are widened to the model's float32 on load (values "
                           "unchanged)", p, half, len(arrays))
        state = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    else:
        state = load_torch_file(p)
    state = _unwrap(state, p)
    if not state:
        raise CheckpointError(f"{p}: checkpoint holds no tensors")
    return state


def describe_shapes(state: dict[str, Any], limit: int = 8) -> str:
    """A short 'name [shape]' listing for error messages."""
    items = [f"{k} {list(v.shape)}" for k, v in list(state.items())[:limit]]
    more = f", ... ({len(state)} tensors)" if len(state) > limit else ""
    return ", ".join(items) + more
