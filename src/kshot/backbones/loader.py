"""`load_backbone(spec)`: one entry point from a spec string to a loaded `Backbone`, via the `BACKBONES` registry.

Spec forms:

| spec | meaning |
|---|---|
| `open_clip:ARCH` / `open_clip:ARCH@random` | open_clip config, seeded random init |
| `open_clip:ARCH@TAG` | open_clip pretrained tag (e.g. `open_clip:ViT-B-32@openai`, `open_clip:RN101@openai`) |
| `open_clip:ARCH@/path/file` | open_clip config with weights from a local .pt/.pth/.bin/.safetensors/.pkl |
| `open_clip:hf-hub:ORG/REPO`, `hf-hub:ORG/REPO` | Hugging Face hub id, passed to open_clip (online or cached) |
| `/path/file` or `file:/path/file` | CLIP weights file, architecture inferred from the shapes (or `arch=`) |
| `/path/toy.pkl` (+ `toy.pkl.layout.json`) | the tiny CLIP exported by `kshot export --backbone toy:clip` |
| `timm:NAME[.TAG]` | timm pretrained image model (online or cached) |
| `timm:NAME@random`, `timm:NAME@/path/file` | timm random init / local weights |
| `toy:clip` | the shipped tiny CLIP of `kshot.toyworld` |
| `toy:clip@/path/file.safetensors` | the tiny CLIP with other weights (e.g. from `kshot lora merge`) |

A new source registers `BACKBONES.add(prefix, loader)`, where `loader(spec, rest, options) -> Backbone` receives the
whole spec, the text after `prefix:` and the `LoadOptions`.
"""

from __future__ import annotations

import importlib
import json
import inspect
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from kshot.errors import CheckpointError, ConfigError
from kshot.registry import Registry

from .base import Backbone
from .common import LoadOptions
from .open_clip_source import load_file, load_hf_hub, load_open_clip
from .timm_source import load_timm

logger = logging.getLogger(__name__)
SourceLoader = Callable[[str, str, LoadOptions], Backbone]
BACKBONES: Registry[SourceLoader] = Registry("backbone source")
_PREFIX = re.compile(r"^([A-Za-z][\w.-]+):(.*)$", re.DOTALL)  # two+ chars, so 'C:\\x' stays a path


def _load_path(spec: str, rest: str, opts: LoadOptions) -> Backbone:
    path = Path(rest).expanduser()
    toy = _toy_sidecar(path)
    if toy is not None:  # a `kshot export --backbone toy:clip` file: rebuilt from the config its sidecar carries
        return _toy_loader()(spec=spec, weights=path, config=toy, device=opts.device).to(opts.device)
    return load_file(spec, path, opts)


def _toy_sidecar(path: Path) -> dict | None:
    """The toy CLIP config in `<file>.layout.json` (written by `kshot export --format jittor --backbone toy:clip`),
    or None when there is no such sidecar or it describes another model."""
    sidecar = Path(str(path) + ".layout.json")
    if not sidecar.is_file():
        return None
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{sidecar}: unreadable layout sidecar ({e})") from None
    return doc.get("toy") if isinstance(doc, dict) else None


def _toy_loader() -> Callable[..., Backbone]:
    """`load_toy_clip` of the toy world (imported by name: the toy world sits above the backbones)."""
    for module in ("kshot.toyworld.checkpoint", "kshot.toyworld.model"):
        try:
            fn = getattr(importlib.import_module(module), "load_toy_clip", None)
        except ImportError as e:
            logger.debug("toy:clip: %s not importable: %s", module, e)
            continue
        if fn is not None:
            return fn
    raise ConfigError("toy:clip is not available: kshot.toyworld provides no load_toy_clip()")


def _load_hf(spec: str, rest: str, opts: LoadOptions) -> Backbone:
    return load_hf_hub(spec, rest, opts)


def _load_toy(spec: str, rest: str, opts: LoadOptions) -> Backbone:
    name, _, weights = rest.partition("@")
    if name != "clip":
        raise ConfigError(f"unknown toy backbone {spec!r}; the toy world ships 'toy:clip' (or toy:clip@WEIGHTS)")
    load_toy_clip = _toy_loader()
    params = inspect.signature(load_toy_clip).parameters
    kwargs = {k: v for k, v in (("device", opts.device), ("spec", spec), ("weights", weights or None)) if k in params}
    return load_toy_clip(**kwargs).to(opts.device)


BACKBONES.add("open_clip", load_open_clip, "open_clip architectures: ARCH, ARCH@TAG, ARCH@/path/weights, hf-hub:ID")
BACKBONES.add("hf-hub", _load_hf, "Hugging Face hub open_clip model id (online or cached)")
BACKBONES.add("timm", load_timm, "timm image models: NAME[.TAG], NAME@random, NAME@/path/weights")
BACKBONES.add("toy", _load_toy, "the shipped tiny CLIP of the toy world (toy:clip)")
BACKBONES.add("file", _load_path, "a local CLIP weights file; architecture inferred from its shapes")


def split_spec(spec: str) -> tuple[str, str]:
    """('prefix', 'rest') for registered prefixes, else ('file', spec) for a path."""
    m = _PREFIX.match(spec)
    if m and m.group(1) in BACKBONES:
        return m.group(1), m.group(2)
    return "file", spec


def load_backbone(
    spec: str,
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    quick_gelu: bool | None = None,
) -> Backbone:
    """Load a backbone from a spec string (forms in the module docstring).

    Args:
        spec: e.g. 'open_clip:ViT-B-32@openai', '/weights/ViT-B-32.pkl', 'timm:convnextv2_base.fcmae_ft_in1k'.
        device: device the model is moved to.
        cache_dir: download cache for pretrained weights.
        arch: open_clip architecture for a bare file spec (same as 'open_clip:ARCH@FILE'); None infers it.
        quick_gelu: force (True/False) QuickGELU for open_clip models; None = config / tag / file default
            (see `LoadOptions`).

    Returns:
        The loaded Backbone in eval mode on `device`, with its fingerprint computed from the CPU weights.

    Raises:
        ConfigError: malformed spec, unknown prefix/architecture/model.
        CheckpointError: missing, unreadable, unsafe or mismatching weights; pretrained weights not downloadable.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"backbone spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    opts = LoadOptions(device=device, cache_dir=None if cache_dir is None else str(cache_dir), quick_gelu=quick_gelu)
    prefix, rest = split_spec(spec)
    if prefix == "file":
        if rest.startswith("file:"):
            rest = rest[len("file:"):]
        if arch is not None:
            return load_open_clip(spec, f"{arch}@{rest}", opts)
        if not Path(rest).expanduser().exists():
            known = ", ".join(f"{e.name}:" for e in BACKBONES if e.name != "file")
            raise CheckpointError(
                f"backbone {spec!r}: no such file, and not a registered source prefix ({known}); e.g. "
                "open_clip:ViT-B-32@openai, timm:resnet50.a1_in1k, toy:clip, /path/to/ViT-B-32.pkl"
            )
    elif arch is not None:
        raise ConfigError(f"arch={arch!r} only applies to a file spec, not {spec!r}")
    return BACKBONES.get(prefix)(spec, rest, opts)
