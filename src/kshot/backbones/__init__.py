"""kshot.backbones: build a model and its preprocessing from a spec string (open_clip, local files, Jittor .pkl, timm,
the toy CLIP), with a stable fingerprint per loaded model. Start at `load_backbone`."""

from .base import Backbone, PreprocessCfg, hash_state_dict, make_fingerprint
from .checkpoint import read_state_dict
from .clip_arch import infer_clip_arch
from .common import LoadOptions
from .jittor_pkl import read_jittor_pkl, save_jittor_pkl
from .loader import BACKBONES, load_backbone
from .transforms import build_preprocess

__all__ = [
    "BACKBONES",
    "Backbone",
    "LoadOptions",
    "PreprocessCfg",
    "build_preprocess",
    "hash_state_dict",
    "infer_clip_arch",
    "load_backbone",
    "make_fingerprint",
    "read_jittor_pkl",
    "read_state_dict",
    "save_jittor_pkl",
]
