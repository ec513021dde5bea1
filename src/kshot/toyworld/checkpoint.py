"""Save and load the tiny CLIP as fp16 safetensors + a JSON config, and wrap it as a kshot `Backbone`.

The JSON holds everything needed to rebuild the model and reproduce its inputs: the tower sizes, the tokenizer
vocabulary and context length, the world spec, the preprocessing, the pretraining recipe and measured accuracies.
The shipped checkpoint lives in `kshot/toyworld/assets/` (`toy_clip.safetensors`, `toy_clip.json`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from kshot.backbones.base import Backbone, PreprocessCfg, hash_state_dict, make_fingerprint
from kshot.errors import CheckpointError
from kshot.toyworld.model import ToyClipCfg, ToyPreprocess, build_toy_clip
from kshot.toyworld.tokenizer import ToyTokenizer

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
WEIGHTS_NAME = "toy_clip.safetensors"
CONFIG_NAME = "toy_clip.json"
FORMAT_VERSION = 1


def save_toy_clip(
    out_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: ToyTokenizer,
    model_cfg: ToyClipCfg,
    preprocess: PreprocessCfg,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write `toy_clip.safetensors` (fp16) and `toy_clip.json` into `out_dir`; returns the JSON path.

    Args:
        meta: extra JSON-able fields (world spec, recipe, command, wall time, accuracies).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    config = {
        "format_version": FORMAT_VERSION,
        "arch": "toy-clip",
        "model": model_cfg.to_dict(),
        "tokenizer": {"vocab": tokenizer.vocab, "context_length": tokenizer.context_length},
        "preprocess": preprocess.to_dict(),
        **(meta or {}),
    }
    path = out / CONFIG_NAME
    path.write_text(json.dumps(config, indent=1) + "\n")
    return path


def read_toy_config(path: str | Path | None = None) -> dict[str, Any]:
    """The JSON config of a toy checkpoint directory (default: the shipped assets)."""
    p = Path(path) if path is not None else ASSETS_DIR
    if p.is_dir():
        p = p / CONFIG_NAME
    if not p.exists():
        raise CheckpointError(f"toy CLIP config not found: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"toy CLIP config {p} is not valid JSON: {e}") from e


#: The config keys that rebuild the model and its inputs (what a Jittor export's layout sidecar carries).
MODEL_KEYS = ("format_version", "arch", "model", "tokenizer", "preprocess")


def load_toy_model(path: str | Path | None = None, weights: str | Path | None = None, config: dict | None = None
                   ) -> tuple[torch.nn.Module, ToyTokenizer, PreprocessCfg, dict]:
    """Rebuild the model (fp32, eval mode), its tokenizer and preprocessing from a checkpoint directory.

    Args:
        weights: a state dict to use instead of the directory's weights (e.g. `kshot lora merge` output): a
            safetensors file, or any file `kshot.backbones.checkpoint.read_state_dict` reads (a Jittor `.pkl`).
        config: the config itself (its `MODEL_KEYS`, e.g. from a `kshot export --format jittor` layout sidecar)
            instead of the directory's JSON; then `weights` is required.
    """
    from safetensors.torch import load_file

    from kshot.backbones.checkpoint import read_state_dict

    root = Path(path) if path is not None else ASSETS_DIR
    if root.suffix == ".json":
        root = root.parent
    cfg = read_toy_config(root) if config is None else config
    where = root / CONFIG_NAME if config is None else f"the toy CLIP config beside {weights}"
    if cfg.get("format_version") != FORMAT_VERSION or cfg.get("arch") != "toy-clip":
        raise CheckpointError(f"{where} is not a toy CLIP config of format {FORMAT_VERSION}")
    if config is not None and weights is None:
        raise CheckpointError("a toy CLIP config without a checkpoint directory needs its weights file")
    weights = root / WEIGHTS_NAME if weights is None else Path(weights)
    if not weights.exists():
        raise CheckpointError(f"toy CLIP weights not found: {weights}")
    model_cfg = ToyClipCfg.from_dict(cfg["model"])
    tok = ToyTokenizer(cfg["tokenizer"]["vocab"], cfg["tokenizer"]["context_length"])
    pre = cfg["preprocess"]
    pre_cfg = PreprocessCfg(
        image_size=pre["image_size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
        interpolation=pre["interpolation"], resize_mode=pre["resize_mode"],
    )
    with torch.random.fork_rng(devices=[]):  # init is overwritten; keep the caller's RNG untouched
        model = build_toy_clip(model_cfg)
    state = load_file(str(weights)) if weights.suffix == ".safetensors" else read_state_dict(weights)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise CheckpointError(f"toy CLIP weights {weights} do not match its config: {e}") from e
    return model.eval(), tok, pre_cfg, cfg


def load_toy_clip(
    path: str | Path | None = None, device: str | torch.device = "cpu", spec: str = "toy:clip",
    weights: str | Path | None = None, config: dict | None = None,
) -> Backbone:
    """The tiny CLIP as a kshot `Backbone` (default: the shipped checkpoint in kshot/toyworld/assets; `weights` and
    `config` as in `load_toy_model`).

    The tokenizer maps list[str] -> int64 [N, 32]; preprocess maps a PIL image -> float [3, 32, 32] (RGB, squash
    resize, toy mean/std); `logit_scale` is the model's learned temperature. `extra['toy_config']` holds the
    config's `MODEL_KEYS`, so an export can carry what rebuilds it.
    """
    model, tok, pre_cfg, cfg = load_toy_model(path, weights, config)
    model.to(device)
    fingerprint = make_fingerprint("toy-clip", hash_state_dict(model.state_dict()), pre_cfg)
    return Backbone(
        spec=spec,
        arch="toy-clip",
        model=model,
        preprocess=ToyPreprocess(pre_cfg),
        preprocess_cfg=pre_cfg,
        tokenizer=tok,
        embed_dim=int(cfg["model"]["embed_dim"]),
        fingerprint=fingerprint,
        logit_scale=float(model.logit_scale.detach().exp()),
        extra={"world": cfg.get("world"), "metrics": cfg.get("metrics"), "recipe": cfg.get("recipe"),
               "toy_config": {k: cfg[k] for k in MODEL_KEYS}},
    )
