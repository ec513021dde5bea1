"""timm image backbones: `timm:NAME[.TAG]`, `timm:NAME@random`, `timm:NAME[.TAG]@/path/weights`.

The model is created with `num_classes=0`, so its forward returns pooled pre-logits features (`encode_image`).
Preprocessing comes from timm's resolved data config for the model (`timm.data.resolve_model_data_config`): input
size, interpolation, mean/std, and `crop_pct` (short side resized to floor(size / crop_pct), then center-cropped).
Image-only: the backbone has no tokenizer and `logit_scale` 1.0.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from kshot.errors import CheckpointError, ConfigError

from .base import Backbone, PreprocessCfg, make_fingerprint
from .checkpoint import SUPPORTED, read_state_dict
from .common import RANDOM_TAG, LoadOptions, looks_like_path, seeded_init, weights_hash
from .transforms import build_preprocess

logger = logging.getLogger(__name__)

_CROP_MODES = {"center": "shortest", "squash": "squash"}
"""timm crop_mode -> kshot resize_mode (timm's 'border' mode has no kshot equivalent)."""


def _timm() -> Any:
    import timm

    return timm


def preprocess_of(model: nn.Module) -> tuple[PreprocessCfg, float]:
    """(PreprocessCfg, crop_pct) from timm's resolved data config for `model`."""
    data = _timm().data.resolve_model_data_config(model)
    _, h, w = data["input_size"]
    if h != w:
        raise ConfigError(f"timm model input size {h}x{w} is not square; only square inputs are supported")
    mode = data.get("crop_mode", "center")
    if mode not in _CROP_MODES:
        raise ConfigError(f"timm crop_mode {mode!r} is not supported (supported: {sorted(_CROP_MODES)})")
    crop_pct = float(data.get("crop_pct", 1.0) or 1.0)
    fields: dict[str, Any] = {
        "image_size": int(h),
        "mean": tuple(float(v) for v in data["mean"]),
        "std": tuple(float(v) for v in data["std"]),
        "interpolation": str(data.get("interpolation", "bicubic")),
        "resize_mode": _CROP_MODES[mode],
    }
    if "crop_pct" in {f.name for f in dataclasses.fields(PreprocessCfg)}:
        fields["crop_pct"] = crop_pct
    return PreprocessCfg(**fields), crop_pct


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if not names:
        return ()
    names = [names] if isinstance(names, str) else list(names)
    return tuple(f"{n}." for n in names)


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a local file into the headless model; the checkpoint's classifier weights are dropped."""
    state = read_state_dict(path)
    heads = _classifier_prefixes(model)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith(heads) and k not in own)} if heads else state
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit timm model: missing {missing[:3]} ({len(missing)}), unexpected "
            f"{unexpected[:3]} ({len(unexpected)}), shape mismatches {wrong[:3]} ({len(wrong)})"
        )
    model.load_state_dict(state, strict=True)


def load_timm(spec: str, rest: str, opts: LoadOptions) -> Backbone:
    """Build `timm:<rest>` (see the module docstring)."""
    timm = _timm()
    name, _, source = rest.partition("@")
    name = name.strip()
    if not name or not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r} in backbone spec {spec!r} (see timm.list_models())")
    weights_file: Path | None = None
    if source == RANDOM_TAG:
        pretrained = False
    elif source == "":
        pretrained = True
    elif looks_like_path(source):
        pretrained, weights_file = False, Path(source).expanduser()
    else:
        raise ConfigError(f"in {spec!r}: after '@' expected 'random' or a weights file, got {source!r}")
    try:
        with seeded_init():
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, cache_dir=opts.cache_dir)
    except Exception as e:
        if not pretrained:
            raise ConfigError(f"cannot build timm model {name!r}: {e}") from None
        raise CheckpointError(
            f"could not get pretrained timm weights for {name!r} (offline, not in the cache, or no weights for this "
            f"tag): {str(e).strip().rstrip('.')}. Supply a local file with 'timm:{name}@/path/to/model.safetensors' "
            f"({SUPPORTED}), or use 'timm:{name}@random' for random init. On an offline machine set HF_HUB_OFFLINE=1 "
            "so downloads fail at once instead of retrying"
        ) from None
    if weights_file is not None:
        _load_weights(model, weights_file)
    model.eval()
    pcfg, crop_pct = preprocess_of(model)
    digest = weights_hash(model.state_dict())
    identity = f"timm:{name.split('.')[0]}|crop_pct={crop_pct}"
    fingerprint = make_fingerprint(identity, digest, pcfg)
    embed_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    model.to(opts.device)
    return Backbone(
        spec=spec,
        arch=name,
        model=model,
        preprocess=build_preprocess(pcfg, crop_pct=crop_pct),
        preprocess_cfg=pcfg,
        tokenizer=None,
        embed_dim=embed_dim,
        fingerprint=fingerprint,
        logit_scale=1.0,
        extra={
            "source": "timm",
            "weights_sha256": digest,
            "crop_pct": crop_pct,
            "pretrained": str(weights_file) if weights_file else (name if pretrained else None),
        },
    )
