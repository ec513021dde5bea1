"""JCLIP's (and OpenAI CLIP's) golden check: ViT-B/32 on `CLIP.png` against three captions.

OpenAI's README prints `[[0.9927937 0.00421068 0.00299572]]` for `CLIP.png` against ["a diagram", "a dog", "a cat"]
with the released ViT-B/32 weights, and JCLIP's README reports the same numbers for its Jittor port. kshot ships the
image (tests/assets/golden/, MIT licence notice beside it) and an opt-in test (`tests/interop/test_golden.py`) because
the weights cannot be downloaded in CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GOLDEN_TEXTS: tuple[str, ...] = ("a diagram", "a dog", "a cat")
GOLDEN_PROBS: tuple[float, ...] = (0.9927937, 0.00421068, 0.00299572)
"""OpenAI CLIP README / JCLIP README, ViT-B/32 (CUDA, fp16 weights)."""


def golden_probs(backbone: Any, image_path: str | Path, texts: tuple[str, ...] = GOLDEN_TEXTS) -> np.ndarray:
    """Softmax over `texts` of `logit_scale * cos(image, text)` for one image -> float64 [len(texts)]."""
    from kshot.data.images import load_image

    image = backbone.preprocess(load_image(Path(image_path)))[None].to(backbone.device)
    with torch.no_grad():
        img = F.normalize(backbone.encode_image(image).float(), dim=-1)
        txt = F.normalize(backbone.encode_text(backbone.tokenize(list(texts)).to(backbone.device)).float(), dim=-1)
        probs = (backbone.logit_scale * img @ txt.T).softmax(dim=-1)
    return probs[0].double().cpu().numpy()
