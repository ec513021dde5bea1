"""Parent side: a kshot CLIP backbone -> {OpenAI/JCLIP parameter name: float32 array} + the layout Jittor needs.

open_clip's `CLIP` (and the toy CLIP, which is one) names its parameters exactly as OpenAI's `clip/model.py` and
JCLIP do, so the state dict converts name for name. What the weights cannot tell — attention head counts, the
activation (QuickGELU for OpenAI/JCLIP weights, exact GELU for most open_clip configs), LayerNorm/BatchNorm epsilons —
is read from the torch modules and sent with the job. Variants with no JCLIP counterpart (attentional pooler,
average pooling, LayerScale, no ln_pre, a Linear text projection, non-causal or non-argmax text pooling, HF text
towers, timm image towers) are refused by name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from kshot.errors import CheckpointError
from kshot.jittor_backend.arch import ClipLayout, check_keys, read_layout, shapes_of

log = logging.getLogger(__name__)

_SKIP_SUFFIXES = (".num_batches_tracked",)


def numpy_state(state: Mapping[str, Any], source: str = "state dict") -> dict[str, np.ndarray]:
    """{name: tensor or array} -> {name: float32 numpy array}; fp16/bf16/fp64 entries are converted with one logged
    note; integer entries (OpenAI's metadata, BatchNorm counters) are dropped.

    Raises:
        CheckpointError: an entry is neither a tensor nor an array.
    """
    out: dict[str, np.ndarray] = {}
    converted: dict[str, int] = {}
    for key, value in state.items():
        if key.endswith(_SKIP_SUFFIXES):
            continue
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu()
            if not t.is_floating_point():
                continue
            dtype = str(t.dtype).removeprefix("torch.")
            arr = t.float().contiguous().numpy()
        elif isinstance(value, np.ndarray):
            if value.dtype.kind != "f":
                continue
            dtype = str(value.dtype)
            arr = np.ascontiguousarray(value, dtype=np.float32)
        else:
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor or array")
        if dtype != "float32":
            converted[dtype] = converted.get(dtype, 0) + 1
        out[key] = arr
    if converted:
        what = ", ".join(f"{n} {d}" for d, n in sorted(converted.items()))
        log.warning("%s: converted %s arrays to float32 for Jittor (JCLIP runs in float32)", source, what)
    return out


def _class(module: Any) -> str:
    return type(module).__name__


def _activation(mlp: nn.Module, where: str) -> str:
    act = getattr(mlp, "gelu", None)
    name = _class(act)
    if name == "QuickGELU":
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    raise CheckpointError(f"{where}: activation {name} has no Jittor counterpart (QuickGELU or GELU only)")


def _first_block(transformer: nn.Module, where: str) -> nn.Module:
    blocks = getattr(transformer, "resblocks", None)
    if not blocks or _class(blocks[0]) != "ResidualAttentionBlock":
        raise CheckpointError(f"{where}: only open_clip's standard ResidualAttentionBlock transformer converts "
                              f"(found {_class(blocks[0]) if blocks else 'no blocks'})")
    block = blocks[0]
    for ls in ("ls_1", "ls_2"):
        if not isinstance(getattr(block, ls, nn.Identity()), nn.Identity):
            raise CheckpointError(f"{where}: LayerScale ({ls}) has no JCLIP counterpart")
    return block


def _vision_facts(visual: nn.Module, spec: str) -> tuple[int, str | None, float]:
    """(heads, activation or None for ResNets, layer-norm eps) of the image tower; refuses variants."""
    kind = _class(visual)
    if kind == "ModifiedResNet":
        return int(visual.attnpool.num_heads), None, 1e-5
    if kind != "VisionTransformer":
        raise CheckpointError(f"{spec}: image tower {kind} has no JCLIP layout (ViT or ModifiedResNet CLIPs only)")
    odd = []
    if getattr(visual, "attn_pool", None) is not None:
        odd.append("attentional pooler")
    if getattr(visual, "pool_type", "tok") != "tok":
        odd.append(f"pool_type={visual.pool_type!r}")
    if getattr(visual, "final_ln_after_pool", False):
        odd.append("final_ln_after_pool")
    if isinstance(getattr(visual, "ln_pre", None), nn.Identity):
        odd.append("no ln_pre")
    if getattr(visual, "proj", None) is None:
        odd.append("no output projection")
    if odd:
        raise CheckpointError(f"{spec}: ViT options with no JCLIP counterpart: {', '.join(odd)}")
    block = _first_block(visual.transformer, f"{spec} image tower")
    return int(block.attn.num_heads), _activation(block.mlp, f"{spec} image tower"), float(block.ln_1.eps)


def clip_module(backbone: Any) -> nn.Module:
    """The open_clip `CLIP` module of a Backbone (or the module itself); refuses anything else by name."""
    model = getattr(backbone, "model", backbone)
    spec = getattr(backbone, "spec", _class(model))
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{spec}: not a torch module")
    if _class(model) == "CustomTextCLIP" or (hasattr(model, "visual") and hasattr(model, "text")
                                             and not hasattr(model, "token_embedding")):
        raise CheckpointError(f"{spec}: open_clip CustomTextCLIP (separate/HF text tower) has no JCLIP layout; only "
                              "OpenAI-style CLIPs (ViT or ModifiedResNet image tower + CLIP text transformer) run "
                              "in Jittor")
    needed = ("visual", "token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    lacking = [n for n in needed if not hasattr(model, n)]
    if lacking:
        raise CheckpointError(f"{spec}: not a CLIP ({_class(model)} lacks {', '.join(lacking)}); the Jittor backend "
                              "runs CLIP models only (image-only backbones such as timm models are not supported)")
    return model


def jittor_layout(model: nn.Module, state_shapes: Mapping[str, tuple[int, ...]], spec: str = "backbone") -> ClipLayout:
    """The ClipLayout of an open_clip CLIP: sizes from the shapes, heads/activation/eps from the modules."""
    if isinstance(model.text_projection, nn.Linear) or getattr(model, "attn_mask", None) is None:
        raise CheckpointError(f"{spec}: a Linear text projection or a non-causal text transformer has no JCLIP "
                              "counterpart")
    pool = getattr(model, "text_pool_type", "argmax")
    if pool != "argmax":
        raise CheckpointError(f"{spec}: text pooling {pool!r}; JCLIP pools at the highest token id ('argmax')")
    text_block = _first_block(model.transformer, f"{spec} text tower")
    text_act = _activation(text_block.mlp, f"{spec} text tower")
    vision_heads, vision_act, _ = _vision_facts(model.visual, spec)
    if vision_act is not None and vision_act != text_act:
        raise CheckpointError(f"{spec}: image tower uses {vision_act} but text tower {text_act}; JCLIP has one "
                              "activation")
    bn_eps = float(model.visual.bn1.eps) if hasattr(model.visual, "bn1") else 1e-5
    return read_layout(state_shapes, vision_heads=vision_heads, text_heads=int(text_block.attn.num_heads),
                       activation=text_act, ln_eps=float(model.ln_final.eps), bn_eps=bn_eps)


def jclip_state(backbone: Any) -> tuple[dict[str, np.ndarray], ClipLayout]:
    """A CLIP backbone (kshot Backbone or open_clip CLIP module) -> ({JCLIP name: float32 array}, layout).

    The dict holds every parameter and BatchNorm statistic of the forward plus `logit_scale`, under the names
    JCLIP's `model.load_parameters` / kshot's Jittor CLIP expect.

    Raises:
        CheckpointError: not an OpenAI-style CLIP (names what is missing or unsupported), or keys that do not fit.
    """
    model = clip_module(backbone)
    spec = getattr(backbone, "spec", _class(model))
    state = numpy_state(model.state_dict(), spec)
    state = {k: v for k, v in state.items() if k != "attn_mask" and k != "logit_bias"}
    layout = jittor_layout(model, shapes_of(state), spec)
    check_keys(shapes_of(state), layout, spec)
    return state, layout


def check_clip_state(state: Mapping[str, Any], source: str = "state dict", **layout_facts: Any) -> ClipLayout:
    """Read the layout of an OpenAI/JCLIP-layout state dict and check every key, naming those that do not fit.

    Args:
        state: {name: array or tensor}, e.g. from `kshot.backbones.read_jittor_pkl`.
        layout_facts: `vision_heads`, `text_heads`, `activation` when known (defaults: 64-wide heads, QuickGELU).

    Raises:
        CheckpointError: another architecture's key names (listed), missing or wrongly shaped keys.
    """
    shapes = shapes_of(state)
    layout = read_layout(shapes, **layout_facts)
    check_keys(shapes, layout, source)
    return layout
