"""kshot.backbones: build a model and its preprocessing from a spec string (open_clip, local files, Jittor .pkl, timm,
the toy CLIP), with a stable fingerprint per loaded model. Start at `load_backbone`.

The names below are imported lazily, so `kshot.backbones.jittor_pkl` (numpy only) can be used where torch is absent,
e.g. in the Jittor worker interpreter.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backbone": "base",
    "PreprocessCfg": "base",
    "hash_state_dict": "base",
    "make_fingerprint": "base",
    "read_state_dict": "checkpoint",
    "infer_clip_arch": "clip_arch",
    "LoadOptions": "common",
    "read_jittor_pkl": "jittor_pkl",
    "save_jittor_pkl": "jittor_pkl",
    "BACKBONES": "loader",
    "load_backbone": "loader",
    "build_preprocess": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
