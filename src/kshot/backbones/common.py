"""Shared by every backbone source: load options, spec-string helpers, seeded init, log filtering, weights hash."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import hash_state_dict

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".pkl", ".pickle", ".ckpt")
"""File endings that mark the part after '@' in a spec as a local file rather than a pretrained tag."""
RANDOM_TAG = "random"
"""The '@random' tag: random initialisation (also what an open_clip spec without '@' means)."""
INIT_SEED = 0
"""Seed of random initialisation, so `open_clip:ARCH` / `timm:NAME@random` give the same weights (and fingerprint)
on every load. A forked RNG is used: the global torch RNG is left untouched."""


@dataclass(frozen=True)
class LoadOptions:
    """How to load a backbone.

    Attributes:
        device: where the model is moved after loading (weights are read and hashed on CPU).
        cache_dir: download cache for open_clip/timm pretrained weights (None: the libraries' defaults).
        quick_gelu: activation of an open_clip model built from a file or name; None = the config's own setting,
            or True for an architecture inferred from a file (OpenAI CLIP, JCLIP and their conversions use QuickGELU;
            the weights cannot tell).
    """

    device: str | torch.device = "cpu"
    cache_dir: str | None = None
    quick_gelu: bool | None = None


def looks_like_path(text: str) -> bool:
    """True when `text` names a file (has a directory part or a weights suffix, or exists) rather than a tag."""
    return (
        "/" in text
        or os.sep in text
        or text.lower().endswith(WEIGHT_SUFFIXES)
        or (bool(text) and Path(text).expanduser().exists())
    )


@contextlib.contextmanager
def seeded_init(seed: int = INIT_SEED) -> Iterator[None]:
    """Run model construction with a fixed seed on a forked CPU RNG (the caller's RNG state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def quiet_root_log(*prefixes: str) -> Iterator[None]:
    """Hide root-logger records starting with `prefixes` (open_clip logs 'initialized randomly' before we load)."""
    flt = _DropMessages(prefixes)
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """`base.hash_state_dict` of a state dict (0-d tensors such as `logit_scale` included)."""
    return hash_state_dict(state)
