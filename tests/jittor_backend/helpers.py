"""Helpers of the Jittor-backend tests: small random-init CLIPs (ViT and ModifiedResNet, open_clip `CLIP`) as
Backbones, fake interpreters, and the skip marker for machines without Jittor.

The ResNet's BatchNorm statistics and affine weights are randomised (open_clip zero-inits every `bn3.weight`, which
would make each residual branch vanish and leave most of the tower untested).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch

from kshot.backbones.base import Backbone, PreprocessCfg, hash_state_dict, make_fingerprint
from kshot.jittor_backend.runtime import jittor_available

TEXT_CFG = {"context_length": 12, "vocab_size": 300, "width": 64, "heads": 2, "layers": 2}
VIT_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                           "head_width": 16}, "text_cfg": TEXT_CFG}
RN_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16, "patch_size": None},
          "text_cfg": TEXT_CFG}

JITTOR_REASON = jittor_available()
needs_jittor = pytest.mark.skipif(JITTOR_REASON is not None, reason=f"no Jittor interpreter: {JITTOR_REASON}")


def build_clip(cfg: dict, quick_gelu: bool, seed: int) -> torch.nn.Module:
    """Seeded open_clip.CLIP in eval mode; BatchNorm stats and weights randomised."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**cfg, quick_gelu=quick_gelu).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 2.0)
    return model


def as_backbone(model: torch.nn.Module, spec: str) -> Backbone:
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    cfg = PreprocessCfg(image_size=size)
    return Backbone(spec=spec, arch=spec, model=model, preprocess=lambda img: img, preprocess_cfg=cfg,
                    tokenizer=None, embed_dim=model.text_projection.shape[1],
                    fingerprint=make_fingerprint(spec, hash_state_dict(model.state_dict()), cfg),
                    logit_scale=float(model.logit_scale.detach().exp()))


def probe_inputs(model: torch.nn.Module, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 3, S, S] and token rows [n, L] whose highest id (the EOT) sits at different positions."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    ctx, vocab = TEXT_CFG["context_length"], TEXT_CFG["vocab_size"]
    tokens = torch.zeros(n, ctx, dtype=torch.long)
    for i in range(n):
        length = 3 + 3 * i
        tokens[i, :length] = torch.randint(1, vocab - 1, (length,), generator=g)
        tokens[i, length - 1] = vocab - 1
    return images, tokens


def fake_python(folder: Path, body: str) -> str:
    """An executable shell script standing in for a Python interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)
