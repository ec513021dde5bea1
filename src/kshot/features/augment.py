"""Augmented views of the shots, as Tip-Adapter/APE and seed 002 cache them.

Policies:
  * ``tip`` — RandomResizedCrop(scale 0.5–1, bicubic) + horizontal flip; Tip-Adapter/APE average 10 such views per shot.
  * ``seed002`` — horizontal flip + brightness/contrast/saturation jitter at the full view; seed 002 keeps these
    features *alongside* the originals as extra cache entries.
Every view is deterministic: view v of item i is drawn from a generator seeded by (seed, v, i), so a cache can be
rebuilt or resumed bit-for-bit regardless of batching or worker count.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from kshot.errors import ConfigError

POLICIES = ("none", "tip", "seed002")


@dataclass(frozen=True)
class AugmentPolicy:
    """Which augmentation and how many views.

    Attributes:
        name: 'none' | 'tip' | 'seed002'.
        views: number of augmented views per image (0 = none).
        seed: base seed of the per-view generators.
    """

    name: str = "none"
    views: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ConfigError(f"unknown augmentation policy {self.name!r}; choose one of {', '.join(POLICIES)}")
        if self.views < 0 or (self.name == "none") != (self.views == 0):
            raise ConfigError("augmentation 'none' takes views=0 and any other policy views>=1")

    def key(self) -> dict:
        return {"name": self.name, "views": self.views, "seed": self.seed}


def build_augment(policy: AugmentPolicy, image_size: int) -> T.Compose | None:
    """PIL -> PIL transform of the policy at the model's input size, or None for 'none'."""
    if policy.name == "tip":
        return T.Compose([
            T.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=0.5),
        ])
    if policy.name == "seed002":
        return T.Compose([
            T.RandomHorizontalFlip(p=0.5),
            T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
        ])
    return None


def view_seed(policy: AugmentPolicy, view: int, index: int) -> int:
    digest = hashlib.sha256(f"{policy.seed}:{view}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


_RNG_LOCK = threading.Lock()  # torchvision draws from torch's process-wide RNG: one seeded view at a time


def apply_view(aug: T.Compose, image: Image.Image, seed: int) -> Image.Image:
    """Apply `aug` with torch's RNG seeded to `seed`, leaving the caller's RNG state untouched (thread-safe:
    torchvision's transforms draw from the global generator, so concurrent views are serialised)."""
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return aug(image)
