"""The image tower of an open_clip `CLIP` with visual prompts (MaPLe / PromptSRC / VPT-deep).

`ImageTower.encode(images, prompts)` is `VisionTransformer.forward` with n learned tokens appended after the
patch tokens: conv stem, class token, positional embeddings, then the first-layer prompts are concatenated at the end
of the sequence, `ln_pre`, the blocks (before block i = 1..len(prompts)-1 the last n tokens are replaced by
prompts[i], as `ResidualAttentionBlock_MaPLe` does), `ln_post` on the class token, projection. The prompts are
shared by every image. Only class-token pooling is supported (OpenAI ViTs, the toy CLIP).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kshot.errors import ConfigError
from kshot.methods.prompting.tower import run_blocks

_NEEDED = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")


class ImageTower:
    """View of a CLIP model's ViT image side.

    Raises:
        ConfigError: the image encoder is not an open_clip ViT with class-token pooling (e.g. a ResNet or timm
            model), so visual prompts cannot be inserted.
    """

    def __init__(self, model: nn.Module) -> None:
        visual = getattr(model, "visual", None)
        missing = [a for a in _NEEDED if not hasattr(visual, a)]
        if visual is None or missing:
            raise ConfigError(f"visual prompts need an open_clip ViT image tower; {type(visual).__name__} has no "
                              f"{', '.join(missing) or 'visual'}")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok" \
                or getattr(visual, "final_ln_after_pool", False):
            raise ConfigError("visual prompts need class-token pooling (pool_type 'tok', no attentional pooling)")
        self.visual = visual

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    @property
    def num_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    def encode(self, images: torch.Tensor, prompts: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """images [B, 3, S, S] (preprocessed), prompts: per layer [n, Wv] (first = the input-level tokens)
        -> un-normalised image features [B, D]."""
        v = self.visual
        dtype = v.conv1.weight.dtype
        x = v.conv1(images.to(dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype)[None, None].expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        if prompts:
            first = prompts[0].to(x.dtype)
            x = torch.cat([x, first[None].expand(x.shape[0], -1, -1)], dim=1)
        x = v.ln_pre(x)
        n = prompts[0].shape[0] if prompts else 0
        x = run_blocks(v.transformer, x, None, list(prompts[1:]), -n) if prompts else v.transformer(x)
        pooled = v.ln_post(x[:, 0])
        return pooled @ v.proj if v.proj is not None else pooled
