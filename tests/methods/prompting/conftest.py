"""Small random-init CLIP backbones for prompt-learning tests: the toy CLIP (word+character tokenizer) and a narrow
open_clip CLIP with OpenAI's BPE tokenizer, both wrapped as kshot `Backbone`s, plus synthetic feature tasks."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from kshot.backbones.base import Backbone, hash_state_dict, make_fingerprint
from kshot.features.featureset import FeatureSet
from kshot.methods.base import Task

TOY_NAMES = ["red star", "blue circle", "green square", "yellow heart", "white ring"]


def _wrap(model: torch.nn.Module, tokenizer, spec: str, embed_dim: int) -> Backbone:
    from kshot.toyworld.model import ToyPreprocess, toy_preprocess_cfg

    cfg = toy_preprocess_cfg(32)
    fp = make_fingerprint(spec, hash_state_dict(model.state_dict()), cfg)
    return Backbone(spec, spec, model.eval(), ToyPreprocess(cfg), cfg, tokenizer, embed_dim, fp, logit_scale=20.0)


@lru_cache(maxsize=4)
def make_toy_backbone(seed: int = 0) -> Backbone:
    from kshot.toyworld.captions import caption_words
    from kshot.toyworld.model import ToyClipCfg, build_toy_clip
    from kshot.toyworld.tokenizer import ToyTokenizer, build_vocab

    tok = ToyTokenizer(build_vocab(caption_words()), 32)
    cfg = ToyClipCfg(vocab_size=tok.vocab_size, text_layers=2, vision_layers=1, embed_dim=32, text_width=64,
                     vision_width=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_toy_clip(cfg)
    return _wrap(model, tok, f"test:toy{seed}", cfg.embed_dim)


@lru_cache(maxsize=2)
def make_bpe_backbone(seed: int = 0) -> Backbone:
    import open_clip

    text = {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    vision = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    return _wrap(model, open_clip.SimpleTokenizer(context_length=24), f"test:bpe{seed}", 16)


@pytest.fixture(scope="session")
def toy_bb() -> Backbone:
    """Shared (cached) instance: tests must not change its weights."""
    return make_toy_backbone()


@pytest.fixture(scope="session")
def bpe_bb() -> Backbone:
    return make_bpe_backbone()


def feature_task(backbone: Backbone, classnames: list[str], k: int = 4, seed: int = 0, noise: float = 0.3,
                 n_val: int = 2) -> tuple[Task, FeatureSet]:
    """Class means on the unit sphere + noise (dimension = the backbone's); returns (task, test set)."""
    g = torch.Generator().manual_seed(seed)
    c, d = len(classnames), backbone.embed_dim
    means = F.normalize(torch.randn(c, d, generator=g), dim=-1)

    def draw(n: int) -> FeatureSet:
        labels = torch.arange(c).repeat_interleave(n)
        x = F.normalize(means[labels] + noise * torch.randn(len(labels), d, generator=g), dim=-1)
        return FeatureSet(x, labels, [f"{i}.png" for i in range(len(labels))])

    task = Task(train=draw(k), val=draw(n_val) if n_val else None, classnames=list(classnames),
                logit_scale=backbone.logit_scale, backbone=backbone, seed=seed)
    return task, draw(3)
