"""Evaluation preprocessing built from a `PreprocessCfg`: PIL image -> normalised float tensor [3, S, S].

The steps follow open_clip's `image_transform(is_train=False)` and timm's eval transform, with one deliberate change:
the image is converted to RGB *first* (open_clip converts after resizing), so palette, grey and RGBA images are
resampled as RGB. Resize modes:

- 'shortest': resize the short side to S / crop_pct (floor; crop_pct = 1 for CLIP, timm's value for timm models),
  keeping the aspect ratio, then center-crop S x S (OpenAI CLIP, JCLIP, torchvision `Resize(int)`);
- 'squash': resize both sides to S / crop_pct, ignoring aspect ratio, then center-crop S x S (SigLIP-style);
- 'longest': resize the long side to S, keeping the aspect ratio, then pad the short side centred with black.

The returned object is a small picklable class (safe for DataLoader workers).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from kshot.errors import ConfigError

from .base import PreprocessCfg

_INTERPOLATION = ("bicubic", "bilinear", "nearest")  # torchvision InterpolationMode values
RESIZE_MODES = ("shortest", "squash", "longest")


class ImagePreprocess:
    """Callable PIL image -> float32 tensor [3, S, S]; see the module docstring for the steps."""

    def __init__(self, cfg: PreprocessCfg, crop_pct: float = 1.0):
        if cfg.interpolation not in _INTERPOLATION:
            raise ConfigError(f"interpolation {cfg.interpolation!r} is not one of {sorted(_INTERPOLATION)}")
        if cfg.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode {cfg.resize_mode!r} is not one of {RESIZE_MODES}")
        if not 0.0 < crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if cfg.image_size <= 0:
            raise ConfigError(f"image_size must be positive, got {cfg.image_size}")
        self.cfg = cfg
        self.crop_pct = crop_pct
        self._tf: Any = None  # torchvision.transforms.functional, imported on first use (it is slow to import)
        self._mean = list(cfg.mean)
        self._std = list(cfg.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess expects a PIL image, got {type(image).__name__}")
        if self._tf is None:
            from torchvision.transforms import InterpolationMode, functional

            self._tf, self._interp = functional, InterpolationMode(self.cfg.interpolation)
        TF = self._tf
        size = self.cfg.image_size
        img = image if image.mode == "RGB" else image.convert("RGB")
        if self.cfg.resize_mode == "longest":
            w, h = img.size
            ratio = max(w, h) / size
            new = (max(1, round(h / ratio)), max(1, round(w / ratio)))
            img = TF.resize(img, list(new), interpolation=self._interp)
            img = TF.center_crop(TF.pad(img, _pad_to(new, size), fill=0), [size, size])
        else:
            scaled = math.floor(size / self.crop_pct) if self.crop_pct < 1.0 else size
            target: Any = scaled if self.cfg.resize_mode == "shortest" else [scaled, scaled]
            img = TF.center_crop(TF.resize(img, target, interpolation=self._interp), [size, size])
        return TF.normalize(TF.to_tensor(img), self._mean, self._std)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tf": None}  # modules do not pickle (DataLoader workers)

    def __repr__(self) -> str:
        return f"ImagePreprocess({self.cfg.to_dict()}, crop_pct={self.crop_pct})"


def _pad_to(hw: tuple[int, int], size: int) -> list[int]:
    h, w = hw
    left, top = (size - w) // 2, (size - h) // 2
    return [max(0, left), max(0, top), max(0, size - w - left), max(0, size - h - top)]


def build_preprocess(cfg: PreprocessCfg, *, crop_pct: float | None = None) -> ImagePreprocess:
    """Build the eval transform for `cfg`.

    Args:
        cfg: size, mean/std, interpolation and resize mode.
        crop_pct: fraction of the resized image kept by the center crop (timm's `crop_pct`); defaults to
            `cfg.crop_pct` when the config has that field, else 1.0 (CLIP: resize straight to the crop size).

    Raises:
        ConfigError: unknown interpolation or resize mode, or a crop_pct outside (0, 1].
    """
    if crop_pct is None:
        crop_pct = float(getattr(cfg, "crop_pct", 1.0))
    return ImagePreprocess(cfg, crop_pct)
