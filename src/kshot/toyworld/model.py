"""The tiny CLIP of the toy world, built from open_clip's own `CLIP` class, and its image preprocessing.

Architecture defaults come from the feasibility prototype (reference/toyworld-feasibility.md, run B): ViT width 128,
4 layers, head width 32, patch 8 at 32 px; text width 128, 3 layers, 4 heads; embedding 128 (about 1.5M parameters).
Text pooling is open_clip's default 'argmax', which reads the end-of-text token because the toy tokenizer gives it
the highest id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from kshot.backbones.base import PreprocessCfg
from kshot.errors import ConfigError

# Per-channel statistics of 20k pretraining images of the shipped world (measured, rounded to 3 digits).
TOY_MEAN: tuple[float, float, float] = (0.386, 0.381, 0.372)
TOY_STD: tuple[float, float, float] = (0.203, 0.184, 0.193)


@dataclass(frozen=True)
class ToyClipCfg:
    """Tower sizes of the tiny CLIP (defaults: prototype run B)."""

    embed_dim: int = 128
    image_size: int = 32
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_head_width: int = 32
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    context_length: int = 32  # longest caption is 20 tokens; room for 16 learned context tokens + a spelled name
    vocab_size: int = 105  # set from the tokenizer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ToyClipCfg":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown ToyClipCfg keys {sorted(unknown)}")
        return cls(**d)


def build_toy_clip(cfg: ToyClipCfg) -> torch.nn.Module:
    """A randomly initialised `open_clip.CLIP` of the given sizes (initialisation uses torch's global RNG state;
    callers seed it inside `torch.random.fork_rng`)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(
        layers=cfg.vision_layers,
        width=cfg.vision_width,
        head_width=cfg.vision_head_width,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
    )
    text = CLIPTextCfg(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.text_width,
        heads=cfg.text_heads,
        layers=cfg.text_layers,
        pool_type="argmax",
    )
    return open_clip.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text)


def toy_preprocess_cfg(image_size: int = 32) -> PreprocessCfg:
    """Preprocessing of the tiny CLIP as data: squash-resize to the model size, toy-world mean/std."""
    return PreprocessCfg(
        image_size=image_size, mean=TOY_MEAN, std=TOY_STD, interpolation="bicubic", resize_mode="squash"
    )


def images_to_tensor(images: np.ndarray, cfg: PreprocessCfg | None = None) -> torch.Tensor:
    """uint8 images [N, H, W, 3] (already at the model size) -> normalised float tensor [N, 3, H, W]."""
    cfg = cfg or toy_preprocess_cfg(images.shape[1])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (x - mean) / std


class ToyPreprocess:
    """PIL image (any mode, any size) -> normalised float tensor [3, S, S]: RGB, squash-resize, toy mean/std."""

    def __init__(self, cfg: PreprocessCfg) -> None:
        self.cfg = cfg

    def __call__(self, image: Any) -> torch.Tensor:
        from PIL import Image

        img = image.convert("RGB")
        s = self.cfg.image_size
        if img.size != (s, s):
            resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
            img = img.resize((s, s), resample[self.cfg.interpolation])
        return images_to_tensor(np.array(img, dtype=np.uint8)[None], self.cfg)[0]


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)` computed on the columns up to the longest sequence's end-of-text token.

    With the causal mask and end-of-text pooling, trailing padding cannot change the result, so this equals
    `encode_text` (up to float rounding) at a fraction of the cost for short captions. Returns un-normalised [N, D].
    """
    from open_clip.transformer import text_global_pool

    length = int(tokens.argmax(dim=-1).max()) + 1  # EOT has the highest id
    text = tokens[:, :length]
    x = model.token_embedding(text) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, text, model.text_pool_type)
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection
