"""The CLIP layout the Jittor backend runs, read off parameter shapes, and the exact key set it needs.

Stdlib-only (the Jittor worker imports it in an interpreter that may have neither torch nor kshot's dependencies).
Key names are OpenAI's `clip/model.py` names, which JCLIP keeps and open_clip's `CLIP` state dict uses too. What the
shapes give is the reading of `kshot.backbones.clip_arch` (ViT: `visual.proj` present; ModifiedResNet:
`visual.layer1.0.conv1.weight` present); what they cannot give — head counts and the activation — comes from the
torch model and travels in the job (defaults: 64-wide heads, QuickGELU, as OpenAI CLIP and JCLIP).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kshot.backbones.clip_arch import describe_mismatch
from kshot.errors import CheckpointError

HEAD_WIDTH = 64
"""Attention head width of OpenAI CLIP / JCLIP towers (used when the job names no head count)."""
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")
IGNORED_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
"""Entries of OpenAI TorchScript / open_clip state dicts that are not parameters of the forward."""
_IGNORED_SUFFIXES = (".num_batches_tracked",)

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class ClipLayout:
    """Sizes of a CLIP in OpenAI layout.

    Attributes:
        vision: 'vit' or 'resnet' (ModifiedResNet).
        embed_dim: joint embedding width.
        image_size: input side in pixels.
        vision_width: ViT width, or the ResNet stem width (64 for RN50).
        vision_layers: ViT blocks, or blocks per ResNet stage (4 values).
        patch_size: ViT patch side (None for ResNets).
        vision_heads: ViT attention heads, or heads of the ResNet attention pool.
        vision_mlp: ViT MLP hidden width (0 for ResNets).
        context_length, vocab_size, text_width, text_layers, text_heads, text_mlp: the text transformer.
        activation: 'quick_gelu' (OpenAI/JCLIP), 'gelu' (erf) or 'gelu_tanh', as the torch model uses.
        ln_eps: LayerNorm epsilon; bn_eps: BatchNorm epsilon (torch defaults 1e-5).
    """

    vision: str
    embed_dim: int
    image_size: int
    vision_width: int
    vision_layers: Any
    patch_size: int | None
    vision_heads: int
    vision_mlp: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    activation: str = "quick_gelu"
    ln_eps: float = 1e-5
    bn_eps: float = 1e-5

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["vision_layers"], tuple):
            d["vision_layers"] = list(d["vision_layers"])
        return d


def shapes_of(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{name: shape} of arrays or tensors."""
    return {k: tuple(int(n) for n in v.shape) for k, v in state.items()}


def _get(shapes: Shapes, key: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError:
        raise CheckpointError(f"not an OpenAI/JCLIP-layout CLIP state dict: missing {key!r}") from None


def _blocks(shapes: Shapes, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
    if idx and idx != set(range(max(idx) + 1)):
        raise CheckpointError(f"state dict has gaps in the blocks under {prefix!r}: {sorted(idx)}")
    return len(idx)


def _side(tokens: int, what: str) -> int:
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise CheckpointError(f"{what} has {tokens} positions, not a square grid")
    return side


def _foreign_hint(shapes: Shapes) -> str:
    sample = sorted(shapes)[:6]
    return f"its keys look like another layout, e.g. {sample}" if sample else "it is empty"


def read_layout(shapes: Shapes, *, vision_heads: int | None = None, text_heads: int | None = None,
                activation: str = "quick_gelu", ln_eps: float = 1e-5, bn_eps: float = 1e-5) -> ClipLayout:
    """Read a ClipLayout off parameter shapes (module docstring); head counts default to width / 64.

    Raises:
        CheckpointError: neither a ViT nor a ModifiedResNet CLIP (names a few of the keys found), or inconsistent
            shapes.
    """
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if "visual.proj" in shapes:
        width, _, patch, _ = _get(shapes, "visual.conv1.weight")
        grid = _side(_get(shapes, "visual.positional_embedding")[0] - 1, "visual.positional_embedding")
        layers: Any = _blocks(shapes, "visual.transformer.resblocks.")
        if layers == 0:
            raise CheckpointError("ViT CLIP state dict has no visual.transformer.resblocks.<i> entries")
        vision = dict(vision="vit", image_size=grid * patch, vision_width=width, vision_layers=layers,
                      patch_size=patch, vision_heads=vision_heads or max(1, width // HEAD_WIDTH),
                      vision_mlp=_get(shapes, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0])
    elif "visual.layer1.0.conv1.weight" in shapes:
        width = _get(shapes, "visual.layer1.0.conv1.weight")[0]
        layers = tuple(_blocks(shapes, f"visual.layer{i}.") for i in (1, 2, 3, 4))
        if 0 in layers:
            raise CheckpointError(f"ModifiedResNet state dict has an empty stage: blocks per stage {list(layers)}")
        grid = _side(_get(shapes, "visual.attnpool.positional_embedding")[0] - 1,
                     "visual.attnpool.positional_embedding")
        vision = dict(vision="resnet", image_size=grid * 32, vision_width=width, vision_layers=layers,
                      patch_size=None, vision_heads=vision_heads or max(1, width * 32 // HEAD_WIDTH), vision_mlp=0)
    else:
        raise CheckpointError(
            "not an OpenAI/JCLIP-layout CLIP state dict: neither 'visual.proj' (ViT) nor "
            f"'visual.layer1.0.conv1.weight' (ModifiedResNet) is present; {_foreign_hint(shapes)}"
        )
    text_width = _get(shapes, "ln_final.weight")[0]
    text_layers = _blocks(shapes, "transformer.resblocks.")
    if text_layers == 0:
        raise CheckpointError("CLIP state dict has no text transformer.resblocks.<i> entries")
    return ClipLayout(
        embed_dim=_get(shapes, "text_projection")[1],
        context_length=_get(shapes, "positional_embedding")[0],
        vocab_size=_get(shapes, "token_embedding.weight")[0],
        text_width=text_width,
        text_layers=text_layers,
        text_heads=text_heads or max(1, text_width // HEAD_WIDTH),
        text_mlp=_get(shapes, "transformer.resblocks.0.mlp.c_fc.weight")[0],
        activation=activation,
        ln_eps=ln_eps,
        bn_eps=bn_eps,
        **vision,
    )


def _ln(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def _bn(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{n}": (width,) for n in ("weight", "bias", "running_mean", "running_var")}


def _transformer(prefix: str, width: int, layers: int, hidden: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        b = f"{prefix}{i}."
        out.update(_ln(b + "ln_1", width))
        out.update({b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                    b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,)})
        out.update(_ln(b + "ln_2", width))
        out.update({b + "mlp.c_fc.weight": (hidden, width), b + "mlp.c_fc.bias": (hidden,),
                    b + "mlp.c_proj.weight": (width, hidden), b + "mlp.c_proj.bias": (width,)})
    return out


def _resnet(lay: ClipLayout) -> dict[str, tuple[int, ...]]:
    w = lay.vision_width
    out: dict[str, tuple[int, ...]] = {"visual.conv1.weight": (w // 2, 3, 3, 3), "visual.conv2.weight":
                                       (w // 2, w // 2, 3, 3), "visual.conv3.weight": (w, w // 2, 3, 3)}
    out.update({**_bn("visual.bn1", w // 2), **_bn("visual.bn2", w // 2), **_bn("visual.bn3", w)})
    inplanes = w
    for stage, blocks in enumerate(lay.vision_layers):
        planes = w * 2 ** stage
        for j in range(blocks):
            b = f"visual.layer{stage + 1}.{j}."
            out.update({b + "conv1.weight": (planes, inplanes, 1, 1), b + "conv2.weight": (planes, planes, 3, 3),
                        b + "conv3.weight": (4 * planes, planes, 1, 1)})
            out.update({**_bn(b + "bn1", planes), **_bn(b + "bn2", planes), **_bn(b + "bn3", 4 * planes)})
            if j == 0 and (stage > 0 or inplanes != 4 * planes):
                out[b + "downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                out.update(_bn(b + "downsample.1", 4 * planes))
            inplanes = 4 * planes
    dim, grid = w * 32, lay.image_size // 32
    out["visual.attnpool.positional_embedding"] = (grid * grid + 1, dim)
    for name in ("q_proj", "k_proj", "v_proj"):
        out[f"visual.attnpool.{name}.weight"], out[f"visual.attnpool.{name}.bias"] = (dim, dim), (dim,)
    out["visual.attnpool.c_proj.weight"], out["visual.attnpool.c_proj.bias"] = (lay.embed_dim, dim), (lay.embed_dim,)
    return out


def expected_shapes(lay: ClipLayout) -> dict[str, tuple[int, ...]]:
    """Every parameter (and BatchNorm statistic) the forward of `lay` reads, with its shape."""
    if lay.vision == "vit":
        w, grid = lay.vision_width, lay.image_size // lay.patch_size
        out = {"visual.class_embedding": (w,), "visual.positional_embedding": (grid * grid + 1, w),
               "visual.proj": (w, lay.embed_dim), "visual.conv1.weight": (w, 3, lay.patch_size, lay.patch_size)}
        out.update({**_ln("visual.ln_pre", w), **_ln("visual.ln_post", w)})
        out.update(_transformer("visual.transformer.resblocks.", w, lay.vision_layers, lay.vision_mlp))
    else:
        out = _resnet(lay)
    t = lay.text_width
    out.update({"token_embedding.weight": (lay.vocab_size, t), "positional_embedding": (lay.context_length, t),
                "text_projection": (t, lay.embed_dim), **_ln("ln_final", t)})
    out.update(_transformer("transformer.resblocks.", t, lay.text_layers, lay.text_mlp))
    return out


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key == "logit_scale" or key.endswith(_IGNORED_SUFFIXES)


def check_keys(shapes: Shapes, lay: ClipLayout, source: str = "state dict") -> None:
    """Raise a CheckpointError naming the missing, unexpected and wrongly shaped keys of `shapes` for `lay`.

    `logit_scale`, BatchNorm `num_batches_tracked` and OpenAI's integer metadata entries are allowed extras.
    """
    problems = describe_mismatch(expected_shapes(lay), shapes, _ignored)
    if problems:
        kind = f"ViT CLIP (width {lay.vision_width})" if lay.vision == "vit" else "ModifiedResNet CLIP"
        raise CheckpointError(f"{source}: keys do not fit a {kind} in OpenAI/JCLIP layout: {problems}")


def layout_from_dict(d: Mapping[str, Any]) -> ClipLayout:
    """Inverse of `ClipLayout.to_dict` (a job file's 'layout')."""
    d = dict(d)
    if isinstance(d.get("vision_layers"), list):
        d["vision_layers"] = tuple(d["vision_layers"])
    try:
        return ClipLayout(**d)
    except TypeError as e:
        raise CheckpointError(f"bad CLIP layout in job: {e}") from None
