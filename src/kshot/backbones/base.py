"""The loaded-backbone contract every encoder source returns.

A `Backbone` wraps a torch module with its tokenizer, preprocessing and a stable fingerprint. CLIP-like
backbones implement both towers; image-only models (timm) raise on `encode_text`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class PreprocessCfg:
    """Image preprocessing, as the library defines it (never inferred from a model name).

    Attributes:
        image_size: side of the square input in pixels.
        mean, std: per-channel normalisation of [0, 1] RGB values.
        interpolation: 'bicubic' | 'bilinear' | 'nearest'.
        resize_mode: 'shortest' (resize short side, then center crop), 'squash' (resize to a square) or 'longest'.
        crop_pct: center-crop fraction (timm's eval transform resizes to image_size / crop_pct first); 1.0 = none.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_pct: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "crop_pct": self.crop_pct,
        }


def hash_state_dict(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over sorted names, dtypes, shapes and raw bytes of a state dict (stable across runs)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_fingerprint(arch: str, weights_hash: str, preprocess: PreprocessCfg) -> str:
    """Fingerprint = hash(architecture, weights hash, preprocessing). 16 hex chars."""
    payload = json.dumps({"arch": arch, "weights": weights_hash, "pre": preprocess.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Backbone:
    """A loaded encoder.

    Attributes:
        spec: the spec string it was loaded from (e.g. 'open_clip:ViT-B-32@openai', 'toy:clip', a file path).
        arch: architecture name.
        model: the torch module (eval mode).
        preprocess: PIL image -> float tensor [3, H, W].
        preprocess_cfg: what `preprocess` does, as data.
        tokenizer: list of strings -> int64 tensor [N, context_length]; None for image-only models.
        embed_dim: width of the embeddings `encode_image` returns.
        fingerprint: stable id of architecture + weights + preprocessing (used as feature-cache key).
        logit_scale: the model's learned temperature (exp'ed), 100 for OpenAI CLIP; 1.0 for image-only models.
    """

    spec: str
    arch: str
    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    preprocess_cfg: PreprocessCfg
    tokenizer: Callable[[list[str]], torch.Tensor] | None
    embed_dim: int
    fingerprint: str
    logit_scale: float = 100.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None and hasattr(self.model, "encode_text")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "Backbone":
        self.model.to(device)
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] (preprocessed) -> un-normalised embeddings [N, embed_dim]."""
        if hasattr(self.model, "encode_image"):
            return self.model.encode_image(images)
        return self.model(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, L] int64 -> un-normalised text embeddings [N, embed_dim]."""
        if not self.has_text:
            raise TypeError(f"backbone {self.spec!r} is an image-only model and has no text encoder")
        return self.model.encode_text(tokens)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise TypeError(f"backbone {self.spec!r} has no tokenizer")
        return self.tokenizer(texts)
