"""Fixtures of the pipeline tests: a small toy-world challenge export and small toy CLIPs (random and, when shipped,
the pretrained one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kshot.toyworld import World, export_world, load_toy_clip, save_toy_clip
from kshot.toyworld.checkpoint import ASSETS_DIR, CONFIG_NAME
from kshot.toyworld.model import ToyClipCfg, build_toy_clip, toy_preprocess_cfg
from kshot.toyworld.pretrain import make_tokenizer

#: Domains of the replica: 8 Novel + 16 Creatures (the 'Thu-dog' analogue) with training images, 8 Unseen without.
DOMAINS = ("Novel", "Creatures", "Unseen")


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """Challenge layout: 32 classes (24 with 6 pool images each, 8 unseen), 5 test images per class, hidden labels."""
    out = tmp_path_factory.mktemp("toy_challenge")
    export_world(World(), "challenge", out, domains=DOMAINS, n_train=6, n_val=0, n_test=5, seed=0)
    return out


@pytest.fixture(scope="session")
def small_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised, narrow toy CLIP checkpoint (fast; features carry little class information)."""
    tok = make_tokenizer(32)
    cfg = ToyClipCfg(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1,
                     text_heads=2, embed_dim=32, vocab_size=tok.vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = build_toy_clip(cfg).eval()
    out = tmp_path_factory.mktemp("small_clip")
    save_toy_clip(out, model, tok, cfg, toy_preprocess_cfg(32), {})
    return out


@pytest.fixture(scope="session")
def small_clip(small_clip_dir):
    return load_toy_clip(small_clip_dir)


@pytest.fixture(scope="session")
def trained_clip():
    """The shipped pretrained toy CLIP; tests of accuracy claims skip until it is shipped."""
    if not (ASSETS_DIR / CONFIG_NAME).is_file():
        pytest.skip("the pretrained toy CLIP (kshot/toyworld/assets) is not shipped yet")
    return load_toy_clip()


def fast_overrides() -> dict:
    """Overrides that keep the toy cascade within a few seconds on a 2-core CPU."""
    return {"cv_folds": 2, "stages.lpp.params": {"iters": 100}, "stages.creature_net.epochs": 3,
            "stages.creature_net.t_max": 3, "stages.creature_net.cv_folds": 2, "estimate_per_class": 2}
