"""kshot.toyworld: the procedural captioned-image world and the tiny CLIP pretrained on it (the offline default
backbone `toy:clip` and the fixture of the behavioural tests). See README.md in this folder."""

from .checkpoint import load_toy_clip, load_toy_model, save_toy_clip
from .export import export_challenge, export_coop, export_imagefolder, export_world
from .generator import DOMAINS, Attributes, SplitPart, ToyClass, ToySplit, World, WorldSpec
from .pretrain import PretrainConfig, PretrainResult, pretrain
from .render import RenderCfg
from .tokenizer import ToyTokenizer

__all__ = [
    "DOMAINS",
    "Attributes",
    "PretrainConfig",
    "PretrainResult",
    "RenderCfg",
    "SplitPart",
    "ToyClass",
    "ToySplit",
    "ToyTokenizer",
    "World",
    "WorldSpec",
    "export_challenge",
    "export_coop",
    "export_imagefolder",
    "export_world",
    "load_toy_clip",
    "load_toy_model",
    "pretrain",
    "save_toy_clip",
]
