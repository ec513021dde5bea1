"""Small builders shared by tests: a tiny fake CLIP-like backbone and image trees on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from kshot.backbones.base import Backbone, PreprocessCfg, hash_state_dict, make_fingerprint
from kshot.features.featureset import FeatureSet


class _TinyEncoder(nn.Module):
    """Mean colour + a few pooled conv channels -> embedding; bag-of-characters text tower."""

    def __init__(self, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.text = nn.Embedding(128, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens).mean(dim=1)


def tiny_backbone(dim: int = 16, seed: int = 0, image_size: int = 16) -> Backbone:
    from torchvision.transforms import v2 as T

    model = _TinyEncoder(dim, seed).eval()
    cfg = PreprocessCfg(image_size=image_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize_mode="squash")
    pre = T.Compose([T.Resize((image_size, image_size)), T.ToImage(), T.ToDtype(torch.float32, scale=True),
                     T.Normalize(cfg.mean, cfg.std)])

    def tokenize(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 24, dtype=torch.long)
        for i, t in enumerate(texts):
            codes = [min(ord(c), 127) for c in t[:24]]
            out[i, : len(codes)] = torch.tensor(codes)
        return out

    fp = make_fingerprint("tiny", hash_state_dict(model.state_dict()), cfg)
    return Backbone("test:tiny", "tiny", model, pre, cfg, tokenize, dim, fp, logit_scale=10.0)


def write_image_folder(root: Path, classes: dict[str, list[tuple[int, int, int]]], size: int = 12,
                       seed: int = 0) -> Path:
    """root/<class>/<i>.png with noisy solid colours; returns root."""
    rng = np.random.default_rng(seed)
    for name, colours in classes.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i, c in enumerate(colours):
            arr = np.clip(np.array(c)[None, None, :] + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


def sample_features(means: torch.Tensor, per_class: int, noise: float, gen: torch.Generator, views: int = 0,
                    classes: list[int] | None = None) -> FeatureSet:
    """Synthetic L2-normalised features: `per_class` noisy copies of each class mean [C, D] (of `classes`, default
    all), with `views` augmented views at half the noise."""
    c, d = means.shape
    keep = torch.tensor(classes if classes is not None else list(range(c)), dtype=torch.long)
    labels = keep.repeat_interleave(per_class)
    x = F.normalize(means[labels] + noise * torch.randn(len(labels), d, generator=gen) / d**0.5, dim=-1)
    aug = None
    if views:
        aug = F.normalize(x[None] + 0.5 * noise * torch.randn(views, len(labels), d, generator=gen) / d**0.5, dim=-1)
    return FeatureSet(features=x, labels=labels, paths=[f"img{i}.jpg" for i in range(len(labels))], aug_features=aug)
