"""The exported graph: uint8 images [N, 3, S, S] -> normalise -> image encoder -> L2 normalise -> method head.

It is the computation `kshot predict` performs on CPU from already resized/cropped uint8 images
(`kshot.features.extract._encode_step` without autocast, then `Method.logits`), written as one module so a tracer can
record it. Resizing and cropping stay outside the graph (they depend on each image's size); `preprocess.json` beside
an export says how to do them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kshot.backbones.base import Backbone
from kshot.features.tensor_transforms import Normalizer

INPUT, OUTPUT = "images", "logits"
LABELS_FILE, PREPROCESS_FILE = "labels.json", "preprocess.json"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks): ties an export's sidecars to its model file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Encoder(nn.Module):
    """`Backbone.encode_image` as a module holding the backbone's model (so its weights are the module's)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.model = backbone.model
        self._encode = backbone.encode_image  # a bound method of the backbone; it calls self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._encode(images)


class ImageClassifier(nn.Module):
    """uint8 [N, 3, S, S] RGB crops -> float32 logits [N, C].

    Args:
        backbone: the backbone the method was fitted on (its mean/std are folded into one multiply-add).
        head: L2-normalised features [N, D] -> logits [N, C] (`Method.exportable_head()`).
    """

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.encoder = _Encoder(backbone)
        self.head = head
        scale, shift = Normalizer(backbone.preprocess_cfg.mean, backbone.preprocess_cfg.std).consts(torch.device("cpu"))
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.image_size = int(backbone.preprocess_cfg.image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(-self.shift, images.float(), self.scale)  # (x / 255 - mean) / std
        features = F.normalize(self.encoder(x).float(), dim=-1)
        return self.head(features)


def build_graph(backbone: Backbone, method: Any) -> ImageClassifier:
    """The eval-mode CPU graph of a fitted method on its backbone.

    Raises:
        ExportError: the method's inference is not encoder + a fixed head (from `method.exportable_head()`).
    """
    head = method.exportable_head()
    backbone.to("cpu")
    return ImageClassifier(backbone, head).eval()


def example_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Seeded random uint8 images [n, 3, size, size] (tracing input and the export's self-check)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
