"""Infer a CLIP architecture (open_clip model config) from the shapes of an OpenAI-layout state dict.

OpenAI's `clip/model.py: build_model` reads the architecture off the weights; this is kshot's own version of that
reading, returning an open_clip config dict (`embed_dim`, `vision_cfg`, `text_cfg`). What the shapes give:

- vision ViT (`visual.proj` present): width = `visual.conv1.weight`[0], patch = its kernel size, layers = number of
  `visual.transformer.resblocks.<i>`, image size = patch * sqrt(`visual.positional_embedding`[0] - 1);
- vision ModifiedResNet (`visual.layer1.0.conv1.weight` present): width = that weight's [0], layers = blocks in each of
  `visual.layer1..4`, image size = 32 * sqrt(`visual.attnpool.positional_embedding`[0] - 1);
- text: context length = `positional_embedding`[0], vocab = `token_embedding.weight`[0], width = `ln_final.weight`[0],
  layers = number of `transformer.resblocks.<i>`;
- embed dim = `text_projection`[1] (equal to the vision output width); MLP ratio = `mlp.c_fc.weight`[0] / width.

Head counts are not visible in the shapes. Both OpenAI and open_clip use 64-wide heads (text heads = width // 64,
vision heads = width // 64 for ViT and width * 32 // 64 for ModifiedResNet), and open_clip's default
`head_width=64` applies that to the vision tower; the text head count is written explicitly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kshot.errors import CheckpointError

HEAD_WIDTH = 64
"""Attention head width of every OpenAI CLIP and open_clip CLIP tower (OpenAI clip/model.py, open_clip model.py)."""
_VISION_KEYS = {"image_size", "layers", "width", "patch_size", "mlp_ratio", "head_width"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_DEFAULTS = {"mlp_ratio": 4.0, "head_width": HEAD_WIDTH}


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in state[key].shape)
    except KeyError:
        raise CheckpointError(
            f"not an OpenAI-layout CLIP state dict: missing {key!r}. Name the architecture explicitly "
            "(-b open_clip:<ARCH>@<file>) if the file holds another layout"
        ) from None


def _count_blocks(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if not idx:
        return 0
    if idx != set(range(max(idx) + 1)):
        raise CheckpointError(f"state dict has gaps in the blocks under {prefix!r}: {sorted(idx)}")
    return len(idx)


def _square_side(tokens: int, what: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"{what} has {tokens} positions, not a square grid")
    return side


def _mlp_ratio(state: Mapping[str, Any], prefix: str, width: int) -> float:
    hidden = _shape(state, f"{prefix}0.mlp.c_fc.weight")[0]
    return hidden / width


def _vision_cfg(state: Mapping[str, Any]) -> dict[str, Any]:
    if "visual.proj" in state:  # ViT
        width, _, patch, patch_w = _shape(state, "visual.conv1.weight")
        if patch != patch_w:
            raise CheckpointError(f"non-square patch {patch}x{patch_w} in visual.conv1.weight")
        layers = _count_blocks(state, "visual.transformer.resblocks.")
        if layers == 0:
            raise CheckpointError("ViT state dict has no visual.transformer.resblocks")
        grid = _square_side(_shape(state, "visual.positional_embedding")[0] - 1, "visual.positional_embedding")
        cfg: dict[str, Any] = {"image_size": grid * patch, "layers": layers, "width": width, "patch_size": patch}
        ratio = _mlp_ratio(state, "visual.transformer.resblocks.", width)
        if ratio != _DEFAULTS["mlp_ratio"]:
            cfg["mlp_ratio"] = ratio
        return cfg
    if "visual.layer1.0.conv1.weight" in state:  # ModifiedResNet
        layers = [_count_blocks(state, f"visual.layer{i}.") for i in (1, 2, 3, 4)]
        if 0 in layers:
            raise CheckpointError(f"ModifiedResNet state dict has an empty stage: blocks per stage {layers}")
        width = _shape(state, "visual.layer1.0.conv1.weight")[0]
        grid = _square_side(
            _shape(state, "visual.attnpool.positional_embedding")[0] - 1, "visual.attnpool.positional_embedding"
        )
        return {"image_size": grid * 32, "layers": layers, "width": width, "patch_size": None}
    raise CheckpointError(
        "not an OpenAI-layout CLIP state dict: neither 'visual.proj' (ViT) nor 'visual.layer1.0.conv1.weight' "
        "(ModifiedResNet) is present. Name the architecture explicitly (-b open_clip:<ARCH>@<file>)"
    )


def _text_cfg(state: Mapping[str, Any]) -> dict[str, Any]:
    width = _shape(state, "ln_final.weight")[0]
    layers = _count_blocks(state, "transformer.resblocks.")
    if layers == 0:
        raise CheckpointError("CLIP state dict has no text transformer.resblocks")
    cfg: dict[str, Any] = {
        "context_length": _shape(state, "positional_embedding")[0],
        "vocab_size": _shape(state, "token_embedding.weight")[0],
        "width": width,
        "heads": max(1, width // HEAD_WIDTH),
        "layers": layers,
    }
    ratio = _mlp_ratio(state, "transformer.resblocks.", width)
    if ratio != _DEFAULTS["mlp_ratio"]:
        cfg["mlp_ratio"] = ratio
    return cfg


def _check_metadata(state: Mapping[str, Any], cfg: dict[str, Any]) -> None:
    """OpenAI TorchScript files also store input_resolution / context_length / vocab_size: they must agree."""
    expected = {
        "input_resolution": cfg["vision_cfg"]["image_size"],
        "context_length": cfg["text_cfg"]["context_length"],
        "vocab_size": cfg["text_cfg"]["vocab_size"],
    }
    for key, value in expected.items():
        if key in state and int(state[key].reshape(-1)[0]) != value:
            stored = int(state[key].reshape(-1)[0])
            raise CheckpointError(f"state dict stores {key}={stored} but its shapes give {value}")


def infer_clip_arch(state: Mapping[str, Any]) -> dict[str, Any]:
    """Read an open_clip model config off an OpenAI-layout CLIP state dict (see the module docstring).

    Args:
        state: {name: tensor or numpy array}; only shapes are read.

    Returns:
        {'embed_dim': int, 'vision_cfg': {...}, 'text_cfg': {...}} as open_clip's model_configs/*.json spell it
        (activation is not part of it: QuickGELU cannot be read from weights).

    Raises:
        CheckpointError: keys are missing or shapes are inconsistent.
    """
    vision = _vision_cfg(state)
    text = _text_cfg(state)
    embed_dim = _shape(state, "text_projection")[1]
    if "visual.proj" in state:
        vis_out = _shape(state, "visual.proj")[1]
    else:
        vis_out = _shape(state, "visual.attnpool.c_proj.weight")[0]
    if vis_out != embed_dim:
        raise CheckpointError(f"image embedding width {vis_out} differs from text embedding width {embed_dim}")
    cfg = {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text}
    _check_metadata(state, cfg)
    return cfg


def _normalised(cfg: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Comparable form of a plain CLIP config, or None when it uses options kshot does not infer."""
    if set(cfg) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}:
        return None
    vision, text = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
    if set(vision) - _VISION_KEYS or set(text) - _TEXT_KEYS:
        return None
    for part in (vision, text):
        for key, default in _DEFAULTS.items():
            part.setdefault(key, default)
    text.pop("head_width", None)
    if isinstance(vision.get("layers"), (list, tuple)):
        vision["layers"] = tuple(vision["layers"])
    return (
        cfg.get("embed_dim"),
        tuple(sorted(vision.items())),
        tuple(sorted(text.items())),
        bool(cfg.get("quick_gelu", False)),
    )


def match_builtin(cfg: Mapping[str, Any], quick_gelu: bool) -> str | None:
    """Name of the open_clip built-in config equal to `cfg` with this activation (e.g. 'ViT-B-32-quickgelu'), if any."""
    import open_clip

    target = _normalised({**cfg, "quick_gelu": quick_gelu})
    if target is None:
        return None
    for name in open_clip.list_models():
        builtin = open_clip.get_model_config(name)
        if builtin is not None and _normalised(builtin) == target:
            return name
    return None


def describe_arch(cfg: Mapping[str, Any], quick_gelu: bool) -> str:
    """A readable name for an inferred config that matches no built-in, e.g. 'ViT-w64-L2-p16-i64-e32-quickgelu'."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    if v.get("patch_size"):
        vision = f"ViT-w{v['width']}-L{v['layers']}-p{v['patch_size']}-i{v['image_size']}"
    else:
        vision = f"RN-w{v['width']}-L{'.'.join(str(n) for n in v['layers'])}-i{v['image_size']}"
    text = f"t{t['width']}x{t['layers']}-c{t['context_length']}-v{t['vocab_size']}"
    return f"{vision}-{text}-e{cfg['embed_dim']}" + ("-quickgelu" if quick_gelu else "")


def _examples(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def describe_mismatch(want: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]],
                      ignore: Callable[[str], bool] = lambda key: False) -> str:
    """'' when the names and shapes `got` fit `want`, else e.g. '1 missing: a | 2 unexpected: b, c | 1 with another
    shape: d [3, 4] (expected [4, 4])' (at most 5 names per part; `ignore` marks allowed extra names)."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want and not ignore(k)]
    wrong = [f"{k} {list(got[k])} (expected {list(want[k])})" for k in want if k in got
             and tuple(got[k]) != tuple(want[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_examples(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_examples(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} with another shape: {'; '.join(wrong[:5])}")
    return " | ".join(parts)
