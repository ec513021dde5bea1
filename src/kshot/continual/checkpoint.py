"""One checkpoint per run: `checkpoint.safetensors` (shared weights, masks, heads) + `checkpoint.json` (config,
schedule position, accuracy matrix, learner state). No pickle.

Both files are written atomically (temporary file + rename), tensors first; each carries the same token, a hash of
the save's content (tensors and metadata, wall-clock seconds left out), so a JSON paired with the tensors of another
save is detected, and a resumed run writes the same bytes as an uninterrupted one. The tensors' header also carries
the metadata (seconds left out): a save killed between the two renames (new tensors, old JSON) is repaired from it
when the checkpoint is next read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from kshot.errors import CheckpointError
from kshot.outputs import atomic_write, atomic_write_text, write_safetensors

log = logging.getLogger(__name__)

FORMAT = "kshot.continual.checkpoint/1"
TENSORS, META = "checkpoint.safetensors", "checkpoint.json"


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors and JSON `meta` into `directory`; returns the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    token = content_token(flat, meta)
    # one metadata key: safetensors writes several in a random (hash map) order, and the file must be reproducible
    header = {"kshot": json.dumps({"format": FORMAT, "token": token, "meta": _without_seconds(meta)}, sort_keys=True,
                                  default=str)}
    atomic_write(directory / TENSORS, lambda p: write_safetensors(flat, p, header))
    payload = {"format": FORMAT, "token": token, **meta}
    atomic_write_text(directory / META, json.dumps(payload, indent=1))
    return directory / META


def content_token(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """16 hex chars over the tensors (names, dtypes, shapes, bytes) and `meta` without its `seconds` fields."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(_without_seconds(meta), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _without_seconds(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _without_seconds(v) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [_without_seconds(v) for v in x]
    return x


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory for a path that is the directory, its JSON or its tensors file."""
    p = Path(path)
    return p.parent if p.name in (TENSORS, META) else p


def has_checkpoint(directory: Path) -> bool:
    return (directory / META).is_file() and (directory / TENSORS).is_file()


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON half of a checkpoint (no tensors read)."""
    d = checkpoint_dir(path)
    _repair_meta(d)
    f = d / META
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {d} ({META} missing)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable checkpoint metadata: {e}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{f}: not a kshot continual checkpoint (format {meta.get('format')!r})")
    return meta


def _repair_meta(d: Path) -> None:
    """Rewrite `META` from the tensors' header when they come from a newer save (a kill between the two renames of
    `save_checkpoint`); anything else (no tensors, an older format, a damaged file) is left to the readers' errors."""
    from safetensors import safe_open

    if not (d / TENSORS).is_file():
        return
    try:
        with safe_open(str(d / TENSORS), framework="pt") as st:
            saved = json.loads((st.metadata() or {}).get("kshot", "{}"))
    except Exception:  # damaged: load_checkpoint names it
        return
    if saved.get("format") != FORMAT or "meta" not in saved:
        return
    try:
        current = json.loads((d / META).read_text(encoding="utf-8")).get("token")
    except (OSError, json.JSONDecodeError, AttributeError):
        current = None
    if current != saved["token"]:
        log.warning("%s: %s is from an interrupted save; rebuilt from %s's header", d, META, TENSORS)
        atomic_write_text(d / META, json.dumps({"format": FORMAT, "token": saved["token"], **saved["meta"]},
                                               indent=1))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor],
                                                                                   dict[str, Any]]:
    """(tensors, meta) of the checkpoint at `path` (directory or either file)."""
    from safetensors import safe_open

    d = checkpoint_dir(path)
    meta = read_meta(d)
    f = d / TENSORS
    try:
        with safe_open(str(f), framework="pt", device=str(device)) as st:
            header = st.metadata() or {}
            token = json.loads(header["kshot"]).get("token") if "kshot" in header else header.get("token")
            tensors = {k: st.get_tensor(k) for k in st.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing (the checkpoint has metadata but no tensors)") from None
    except Exception as e:  # safetensors raises its own error types for truncated or damaged files
        raise CheckpointError(f"{f}: cannot read (truncated or damaged?): {e}") from None
    if token != meta.get("token"):
        raise CheckpointError(f"{d}: {TENSORS} and {META} come from different saves (token mismatch)")
    return tensors, meta
