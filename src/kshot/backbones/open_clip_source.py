"""open_clip backbones: named architectures with pretrained tags, random init, Hugging Face ids and local files.

Spec forms (the part after 'open_clip:'):

- `ARCH` or `ARCH@random`: open_clip config ARCH, random init with a fixed seed (tests, benchmarks);
- `ARCH@TAG`: open_clip pretrained weights (downloaded or cached); the tag's QuickGELU trait from open_clip's
  pretrained table is applied explicitly (open_clip 3.x otherwise only warns about a mismatch);
- `ARCH@/path/file`: config ARCH with weights from a local file (any format `checkpoint.read_state_dict` reads);
- `hf-hub:ORG/REPO`: passed to open_clip as is (needs the network or a filled HF cache).

A bare file path (see `loader.py`) infers the architecture from the weights (`clip_arch.infer_clip_arch`).
Preprocessing values come from open_clip's own per-model preprocess config, never from the name.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kshot.errors import CheckpointError, ConfigError

from .base import Backbone, PreprocessCfg, make_fingerprint
from .checkpoint import SUPPORTED, describe_shapes, read_state_dict
from .clip_arch import describe_arch, describe_mismatch, infer_clip_arch, match_builtin
from .common import RANDOM_TAG, LoadOptions, looks_like_path, quiet_root_log, seeded_init, weights_hash
from .transforms import build_preprocess

logger = logging.getLogger(__name__)

OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
"""Integer entries of OpenAI TorchScript state dicts that are not parameters."""
_RANDOM_INIT_LOG = ("No pretrained weights loaded",)


def _open_clip() -> Any:
    import open_clip

    return open_clip


def _model_config(arch: str) -> dict[str, Any]:
    cfg = _open_clip().get_model_config(arch)
    if cfg is None:
        names = _open_clip().list_models()
        close = difflib.get_close_matches(arch, names, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; {len(names)} are known (open_clip.list_models())"
        raise ConfigError(f"unknown open_clip architecture {arch!r}{hint}")
    return copy.deepcopy(cfg)


def offline_hint(arch: str) -> str:
    return (
        f"Supply the weights as a local file instead: 'open_clip:{arch}@/path/to/file' ({SUPPORTED}), or point "
        f"--backbone at the file itself (its architecture is read from the weights). "
        "On an offline machine set HF_HUB_OFFLINE=1 so downloads fail at once instead of retrying."
    )


def _reason(e: BaseException) -> str:
    return (str(e).strip().rstrip(".") or type(e).__name__).splitlines()[0]


def preprocess_cfg_of(model: nn.Module) -> PreprocessCfg:
    """kshot's PreprocessCfg from open_clip's per-model preprocess config (`model.visual.preprocess_cfg`)."""
    raw = dict(_open_clip().get_model_preprocess_cfg(model))
    size = raw.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ConfigError(f"non-square model input size {tuple(size)} is not supported")
        size = size[0]
    if raw.get("mode", "RGB") != "RGB":
        raise ConfigError(f"model expects image mode {raw['mode']!r}; only RGB is supported")
    defaults = PreprocessCfg()
    return PreprocessCfg(
        image_size=int(size),
        mean=tuple(float(v) for v in raw.get("mean", defaults.mean)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in raw.get("std", defaults.std)),  # type: ignore[arg-type]
        interpolation=str(raw.get("interpolation", defaults.interpolation)),
        resize_mode=str(raw.get("resize_mode", defaults.resize_mode)),
    )


def _embed_dim(model: nn.Module, cfg: dict[str, Any] | None) -> int:
    if cfg and "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    out = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(out, int):
        return out
    size = preprocess_cfg_of(model).image_size
    with torch.no_grad():
        return int(model.encode_image(torch.zeros(1, 3, size, size)).shape[-1])


def _finish(
    spec: str, arch: str, model: nn.Module, tokenizer: Any, cfg: dict[str, Any] | None, opts: LoadOptions,
    identity: Any, extra: dict[str, Any],
) -> Backbone:
    """Hash the CPU weights, attach preprocessing, move to the device and wrap as a Backbone."""
    model.eval()
    pcfg = preprocess_cfg_of(model)
    digest = weights_hash(model.state_dict())
    fingerprint = make_fingerprint(f"open_clip:{identity}", digest, pcfg)
    logit_scale = float(model.logit_scale.detach().exp().reshape(-1)[0]) if hasattr(model, "logit_scale") else 100.0
    embed_dim = _embed_dim(model, cfg)
    model.to(opts.device)
    return Backbone(
        spec=spec,
        arch=arch,
        model=model,
        preprocess=build_preprocess(pcfg),
        preprocess_cfg=pcfg,
        tokenizer=tokenizer,
        embed_dim=embed_dim,
        fingerprint=fingerprint,
        logit_scale=logit_scale,
        extra={"source": "open_clip", "weights_sha256": digest, "model_cfg": cfg, **extra},
    )


def _identity(arch_or_cfg: Any, quick_gelu: bool | None) -> str:
    return f"{arch_or_cfg}|quick_gelu={quick_gelu}"


def _create_named(arch: str, opts: LoadOptions, pretrained: str | None, force_quick_gelu: bool) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if opts.quick_gelu is not None:
        kwargs["quick_gelu"] = opts.quick_gelu  # model kwargs override the config in open_clip.create_model
    return _open_clip().create_model(
        arch, pretrained=pretrained, device="cpu", cache_dir=opts.cache_dir, force_quick_gelu=force_quick_gelu, **kwargs
    )


def _named_cfg(arch: str, opts: LoadOptions, tag_quick_gelu: bool = False) -> tuple[dict[str, Any], bool]:
    cfg = _model_config(arch)
    if opts.quick_gelu is not None:
        quick_gelu = opts.quick_gelu
    else:
        quick_gelu = bool(cfg.get("quick_gelu", False) or tag_quick_gelu)
    cfg["quick_gelu"] = quick_gelu
    return cfg, quick_gelu


def load_random(spec: str, arch: str, opts: LoadOptions) -> Backbone:
    """Config `arch`, seeded random init."""
    cfg, quick_gelu = _named_cfg(arch, opts)
    with seeded_init():
        model = _create_named(arch, opts, None, False)
    tok = _named_tokenizer(arch)
    return _finish(spec, arch, model, tok, cfg, opts, _identity(_canonical(cfg), quick_gelu), {"pretrained": None})


def load_tag(spec: str, arch: str, tag: str, opts: LoadOptions) -> Backbone:
    """Config `arch` with open_clip's pretrained weights `tag`."""
    oc = _open_clip()
    _model_config(arch)
    tag_cfg = oc.get_pretrained_cfg(arch, tag)
    if not tag_cfg:
        tags = oc.list_pretrained_tags_by_model(arch)
        raise CheckpointError(
            f"open_clip has no pretrained tag {tag!r} for {arch!r} (known: {', '.join(tags) or 'none'}) and no file "
            f"{tag!r} exists"
        )
    tag_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    cfg, quick_gelu = _named_cfg(arch, opts, tag_quick_gelu)
    try:
        model = _create_named(arch, opts, tag, force_quick_gelu=tag_quick_gelu and opts.quick_gelu is None)
    except Exception as e:
        raise CheckpointError(
            f"could not get open_clip weights {arch}@{tag} (offline, or not in the cache): {_reason(e)}. "
            + offline_hint(arch)
        ) from None
    tok = _named_tokenizer(arch)
    return _finish(spec, arch, model, tok, cfg, opts, _identity(_canonical(cfg), quick_gelu), {"pretrained": tag})


def load_hf_hub(spec: str, hub_id: str, opts: LoadOptions) -> Backbone:
    """`hf-hub:ORG/REPO`, configured and weighted by the hub repository."""
    oc = _open_clip()
    name = hub_id if hub_id.startswith("hf-hub:") else f"hf-hub:{hub_id}"
    try:
        model = oc.create_model(name, device="cpu", cache_dir=opts.cache_dir)
        tok = oc.get_tokenizer(name, cache_dir=opts.cache_dir)
    except Exception as e:
        raise CheckpointError(
            f"could not load {name} from the Hugging Face hub (offline, or not in the cache): {_reason(e)}. Download "
            "the repository elsewhere and pass its weights file with "
            "open_clip:<ARCH>@/path/to/open_clip_model.safetensors"
        ) from None
    return _finish(spec, name, model, tok, None, opts, _identity(name, None), {"pretrained": name})


def _derived_buffers(model: nn.Module) -> set[str]:
    """Names of non-persistent buffers (e.g. open_clip's `attn_mask`): TorchScript saves them; the model rebuilds
    them."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "_non_persistent_buffers_set", ())
    }


def _prepare_state(state: dict[str, torch.Tensor], model: nn.Module, path: Path, arch: str) -> dict[str, torch.Tensor]:
    """Drop non-parameter entries, adapt open_clip layout variants, and check every name and shape against `model`."""
    skip = set(OPENAI_METADATA_KEYS) | _derived_buffers(model)
    state = {k: v for k, v in state.items() if k not in skip}
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        from open_clip.model import convert_to_custom_text_state_dict

        state = convert_to_custom_text_state_dict(state)
    own = model.state_dict()
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].ndim != own["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    problems = describe_mismatch({k: v.shape for k, v in own.items()}, {k: v.shape for k, v in state.items()})
    if problems:
        raise CheckpointError(f"{path}: weights do not fit architecture {arch}: {problems}. File holds: "
                              f"{describe_shapes(state)}")
    return state


def load_file(spec: str, path: Path, opts: LoadOptions, arch: str | None = None) -> Backbone:
    """Weights from a local file; architecture `arch` (an open_clip config name) or inferred from the shapes.

    An inferred architecture equal to an open_clip built-in (e.g. OpenAI ViT-B/32 -> 'ViT-B-32-quickgelu') is built
    from that built-in, so it gets the same tokenizer, preprocessing and fingerprint as naming it.
    """
    oc = _open_clip()
    state = read_state_dict(path)
    name = arch
    if name is None:
        inferred = infer_clip_arch(state)
        quick_gelu = True if opts.quick_gelu is None else opts.quick_gelu
        name = match_builtin(inferred, quick_gelu)
        if name is None:
            cfg = {**inferred, "quick_gelu": quick_gelu}
            name = describe_arch(inferred, quick_gelu)
        logger.info("%s: inferred architecture %s", path, name)
        opts = LoadOptions(device=opts.device, cache_dir=opts.cache_dir, quick_gelu=quick_gelu)
    if oc.get_model_config(name) is not None:
        cfg, quick_gelu = _named_cfg(name, opts)
        with seeded_init(), quiet_root_log(*_RANDOM_INIT_LOG):
            model = _create_named(name, opts, None, False)
        tok = _named_tokenizer(name)
    else:
        with seeded_init():
            model = oc.CLIP(**cfg)
        defaults = dataclasses.asdict(oc.transform.PreprocessCfg())
        oc.set_model_preprocess_cfg(model, {**defaults, "size": model.visual.image_size})
        tok = _plain_tokenizer(cfg)
    model.load_state_dict(_prepare_state(state, model, path, name), strict=True)
    extra = {"pretrained": str(path), "inferred_arch": arch is None}
    return _finish(spec, name, model, tok, cfg, opts, _identity(_canonical(cfg), quick_gelu), extra)


def _canonical(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)


@functools.lru_cache(maxsize=16)
def _named_tokenizer(name: str) -> Any:
    """open_clip's tokenizer for a config name (cached: building the BPE tables takes ~0.3 s; tokenizers are
    stateless apart from a memo of encoded words)."""
    return _open_clip().get_tokenizer(name)


@functools.lru_cache(maxsize=16)
def _bpe_tokenizer(context_length: int) -> Any:
    return _open_clip().SimpleTokenizer(context_length=context_length)


def _plain_tokenizer(cfg: dict[str, Any]) -> Any:
    """CLIP's BPE tokenizer at the model's context length (for inferred configs that match no built-in)."""
    text = cfg["text_cfg"]
    if text["vocab_size"] < 49408:
        logger.warning(
            "text vocabulary of %d tokens is smaller than the CLIP BPE tokenizer's 49408: tokenize() output will not "
            "fit this model (pass token ids directly)", text["vocab_size"],
        )
    return _bpe_tokenizer(int(text["context_length"]))


def load_open_clip(spec: str, rest: str, opts: LoadOptions) -> Backbone:
    """Dispatch `open_clip:<rest>` to random init, a tag, a local file or a hub id (see the module docstring)."""
    if rest.startswith("hf-hub:"):
        return load_hf_hub(spec, rest, opts)
    arch, _, tag = rest.partition("@")
    arch = arch.strip()
    if not arch:
        raise ConfigError(f"backbone spec {spec!r} names no architecture (expected open_clip:ARCH[@TAG|@FILE])")
    if tag in ("", RANDOM_TAG):
        return load_random(spec, arch, opts)
    if looks_like_path(tag):
        _model_config(arch)
        return load_file(spec, Path(tag).expanduser(), opts, arch=arch)
    return load_tag(spec, arch, tag, opts)
