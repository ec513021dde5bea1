"""Export kshot artifacts as Jittor-loadable `.pkl` files (`kshot export --format jittor`).

Every export is one file written like `jt.save` (pickle protocol 4 + SHA-1 + `HCAJSLHD`; see
`kshot.backbones.jittor_pkl`), holding a plain dict that `jt.load` (or `pickle.load` after stripping the 28-byte
trailer) returns without any kshot or torch code:

* **backbone weights** — `{JCLIP/OpenAI parameter name: float32 array}` only, so JCLIP's
  `model.load_parameters(jt.load(path))` takes it as it takes a converted `ViT-B-32.pkl`; the sizes, head counts and
  activation go to `<file>.layout.json` beside it (JCLIP infers them from shapes assuming OpenAI's conventions, which
  a non-OpenAI model such as the toy CLIP does not follow: the export warns then); for the toy CLIP the sidecar
  also holds its config under `toy` (sizes, tokenizer vocabulary, preprocessing), so `-b file.pkl` rebuilds it;
* **a fitted method** (`kshot fit` folder) — `kshot_format="method/1"`, `method` (registered name), `config` and
  `meta` (JSON strings), then every tensor of `method.state_dict()` under its own name (Tip-Adapter's cache keys and
  values, LP++'s weights, linear heads, ...);
* **a continual run** (`kshot continual run` checkpoint) — `kshot_format="continual/1"`, `meta` (JSON: method, arch,
  task names, ...), then the shared weights (`backbone.<timm name>`), one head per task (`head.<task>.weight|bias`)
  and, for PackNet, the uint8 owner masks (`mask.<layer>`: 0 free, 1 pretrained, k + 2 task k).

Floating tensors are written as float32 (bf16/fp16 widened; JCLIP's own conversion calls `.float()`), integer and
bool tensors keep their dtype.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from kshot.backbones.jittor_pkl import save_jittor_pkl
from kshot.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

METHOD_FORMAT = "method/1"
CONTINUAL_FORMAT = "continual/1"
FORMATS = ("jittor",)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A detached CPU copy as numpy: floating types as float32, others unchanged."""
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()
    return t.contiguous().numpy()


def _tensors(state: Mapping[str, torch.Tensor], reserved: set[str]) -> dict[str, np.ndarray]:
    clash = sorted(set(state) & reserved)
    if clash:
        raise CheckpointError(f"tensor names {clash} clash with the export's own keys")
    return {k: to_numpy(v) for k, v in state.items()}


def method_to_jittor_dict(method: Any) -> dict[str, Any]:
    """A fitted `kshot.methods.Method` -> the `method/1` dict described in the module docstring."""
    from kshot.methods.base import config_to_dict

    if not getattr(method, "fitted_", False):
        raise CheckpointError(f"{method.name}: not fitted; nothing to export")
    head = {
        "kshot_format": METHOD_FORMAT,
        "method": method.name,
        "config": json.dumps(config_to_dict(method.config)),
        "meta": json.dumps({**method.fitted_meta(), **({"jittor_head": method.jittor_head} if method.jittor_head
                                                         else {})}),
    }
    return {**head, **_tensors(method.state_dict(), set(head))}


def continual_to_jittor_dict(path: str | Path) -> dict[str, Any]:
    """A continual-learning checkpoint (folder or either file) -> the `continual/1` dict."""
    from kshot.continual.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(path, device="cpu")
    learner = meta.get("learner", {})
    head = {
        "kshot_format": CONTINUAL_FORMAT,
        "meta": json.dumps({k: v for k, v in meta.items() if k not in ("token",)}, default=str),
        "method": str(learner.get("method", "")),
        "arch": str(learner.get("arch", "")),
    }
    return {**head, **_tensors(tensors, set(head))}


def backbone_to_jittor_dict(backbone: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A CLIP `Backbone` -> ({JCLIP parameter name: float32 array}, layout dict: sizes, heads, activation)."""
    from kshot.jittor_backend.weights import jclip_state

    state, layout = jclip_state(backbone)
    return state, layout.to_dict()


def openai_layout_problems(layout: Mapping[str, Any]) -> list[str]:
    """What JCLIP's `build_model` would get wrong when it infers the model from the weights' shapes alone: it
    assumes QuickGELU and one attention head per 64 channels (OpenAI's convention)."""
    out = []
    if layout["activation"] != "quick_gelu":
        out.append(f"activation {layout['activation']} (JCLIP assumes quick_gelu)")
    vision_heads = layout["vision_width"] // 64 if layout["vision"] == "vit" else layout["vision_width"] * 32 // 64
    if layout["vision_heads"] != vision_heads:
        out.append(f"{layout['vision_heads']} image-tower heads (JCLIP infers {vision_heads})")
    if layout["text_heads"] != layout["text_width"] // 64:
        out.append(f"{layout['text_heads']} text heads (JCLIP infers {layout['text_width'] // 64})")
    return out


def save_jittor_artifact(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write an export dict as a `jt.save`-style `.pkl` (atomic)."""
    return save_jittor_pkl(doc, path)


@dataclass(frozen=True)
class ExportResult:
    """What `export_jittor` wrote: the file, the kind of source, and its arrays' count and bytes."""

    path: Path
    kind: str
    arrays: int
    nbytes: int


def source_kind(path: Path) -> str:
    """'method' (a `kshot fit` folder) or 'continual' (a continual checkpoint folder/file), else a ConfigError."""
    from kshot.continual.checkpoint import META, TENSORS, checkpoint_dir

    if (path / "method.json").is_file():
        return "method"
    d = checkpoint_dir(path)
    if (d / META).is_file() or (d / TENSORS).is_file():
        return "continual"
    if path.is_dir() and (path / "packnet" / META).is_file():
        raise ConfigError(f"{path} is a continual run folder; export one method's checkpoint, e.g. {path / 'packnet'}")
    raise ConfigError(f"{path}: neither a fitted method folder (method.json) nor a continual checkpoint "
                      f"({META}); nothing to export")


def export_jittor(out: str | Path, source: str | Path | None = None, backbone: Any = None) -> ExportResult:
    """Write one Jittor `.pkl`: the artifact at `source` (method or continual checkpoint), or `backbone`'s weights.

    Raises:
        ConfigError: neither or both of `source` and `backbone`, or an unrecognised source.
        CheckpointError: unreadable or unfitted source.
    """
    from kshot.methods.base import load

    if (source is None) == (backbone is None):
        raise ConfigError("export needs exactly one of a source artifact or a backbone")
    if backbone is not None:
        kind, (doc, layout) = "backbone", backbone_to_jittor_dict(backbone)
        if backbone.extra.get("toy_config"):  # the toy CLIP: its tokenizer vocabulary and sizes rebuild it
            layout["toy"] = backbone.extra["toy_config"]
        sidecar = Path(str(out) + ".layout.json")
        sidecar.write_text(json.dumps(layout, indent=1))
        problems = openai_layout_problems(layout)
        if problems:
            log.warning("%s is not in OpenAI's layout (%s): JCLIP's build_model cannot infer it from the weights; "
                        "build the model from %s", backbone.spec, "; ".join(problems), sidecar)
    else:
        src = Path(source)
        if not src.exists():
            raise ConfigError(f"{src}: no such file or folder")
        kind = source_kind(src)
        doc = method_to_jittor_dict(load(src)) if kind == "method" else continual_to_jittor_dict(src)
    arrays = [v for v in doc.values() if isinstance(v, np.ndarray)]
    path = save_jittor_artifact(doc, out)
    log.info("wrote %s (%s, %d arrays)", path, kind, len(arrays))
    return ExportResult(path, kind, len(arrays), sum(a.nbytes for a in arrays))
