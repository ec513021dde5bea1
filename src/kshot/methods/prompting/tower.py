"""The frozen text tower of an open_clip `CLIP`, run on token *embeddings* so that some of them can be learned.

`TextTower.encode(x, eot)` is `CLIP.encode_text` from the embedding step on: add positional embeddings, run the
transformer (causal mask), final layer norm, take the feature at the end-of-text position, project. The end-of-text
position is passed explicitly (the prompt builder knows where it put it), which is what open_clip's 'argmax' and 'eos'
pooling select for tokenized text; so for a hard prompt the result equals `encode_text` of its tokens.

With a causal mask, columns after the last end-of-text token cannot change the pooled feature, so callers may pass
sequences trimmed to `max(eot) + 1` columns (much cheaper than the full 77); `can_trim` says whether that is exact.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from kshot.errors import ConfigError

_NEEDED = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


class TextTower:
    """View of a CLIP model's text side.

    Args:
        model: an `open_clip.CLIP` (OpenAI layout, or the toy CLIP built from the same class).

    Raises:
        ConfigError: the model has no token-embedding text tower (e.g. an image-only model or a Hugging Face text
            tower), or pools text in a way prompt learning cannot follow.
    """

    def __init__(self, model: nn.Module) -> None:
        missing = [a for a in _NEEDED if not hasattr(model, a)]
        if missing:
            raise ConfigError(f"prompt learning needs an open_clip CLIP text tower; {type(model).__name__} has no "
                              f"{', '.join(missing)}")
        self.pool_type = getattr(model, "text_pool_type", "argmax")
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise ConfigError(f"prompt learning cannot follow text pooling {self.pool_type!r}")
        self.model = model

    @property
    def width(self) -> int:
        """Width W of the token embeddings."""
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def can_trim(self) -> bool:
        """True when sequences may be cut after their last end-of-text token without changing the result."""
        return getattr(self.model, "attn_mask", None) is not None and self.pool_type != "last"

    @property
    def token_embedding(self) -> torch.Tensor:
        """The frozen embedding table [V, W]."""
        return self.model.token_embedding.weight

    def cast_dtype(self) -> torch.dtype:
        get = getattr(self.model.transformer, "get_cast_dtype", None)
        return get() if callable(get) else self.token_embedding.dtype

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [..., L] -> embeddings [..., L, W] (no gradient)."""
        return self.model.token_embedding(ids.to(self.device)).to(self.cast_dtype())

    @property
    def num_layers(self) -> int:
        """Transformer blocks of the text tower (the limit of a deep prompt's depth)."""
        return len(self.model.transformer.resblocks)

    def encode(self, x: torch.Tensor, eot: torch.Tensor, deep: Sequence[torch.Tensor] = (),
               deep_start: int = 1) -> torch.Tensor:
        """Prompt embeddings x [N, L, W] (L <= context length) and end-of-text positions eot [N] -> features [N, D].

        The features are not normalised (as `encode_text(normalize=False)`). `deep` [n, W] tensors are deep prompts
        (MaPLe/PromptSRC): before block i = 1..len(deep) the n tokens from `deep_start` are replaced by deep[i-1]
        (block 0 sees the prompt's own learned tokens; blocks after the last deep prompt keep what they receive).
        """
        m = self.model
        length = x.shape[1]
        if length > self.context_length:
            raise ConfigError(f"prompt of {length} tokens exceeds the text context of {self.context_length}")
        if length < self.context_length and not self.can_trim:
            raise ConfigError("this text tower attends to padding: pass full-length sequences")
        x = x.to(self.cast_dtype()) + m.positional_embedding[:length].to(self.cast_dtype())
        mask = getattr(m, "attn_mask", None)
        mask = None if mask is None else mask[:length, :length]
        x = m.transformer(x, attn_mask=mask) if not deep else run_blocks(m.transformer, x, mask, deep, deep_start)
        x = m.ln_final(x)
        if self.pool_type == "first":
            pooled = x[:, 0]
        elif self.pool_type == "last":
            pooled = x[:, -1]
        else:
            pooled = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)]
        proj = m.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj


def run_blocks(transformer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, deep: Sequence[torch.Tensor],
               start: int) -> torch.Tensor:
    """open_clip `Transformer.forward` on x [N, L, W] with deep prompts: before block i (1 <= i <= len(deep)) the
    tokens [start, start + n) (start < 0: counted from the end) become deep[i-1] [n, W]. Honours the transformer's
    batch_first and grad_checkpointing."""
    blocks = transformer.resblocks
    if len(deep) >= len(blocks):
        raise ConfigError(f"{len(deep) + 1} prompt layers exceed the {len(blocks)} transformer blocks")
    for i, block in enumerate(blocks):
        if 1 <= i <= len(deep):
            p = deep[i - 1].to(x.dtype)
            s = start if start >= 0 else x.shape[1] + start
            x = torch.cat([x[:, :s], p[None].expand(x.shape[0], -1, -1), x[:, s + p.shape[0]:]], dim=1)
        y = x if getattr(transformer, "batch_first", True) else x.transpose(0, 1)
        if getattr(transformer, "grad_checkpointing", False) and torch.is_grad_enabled():
            y = checkpoint(block, y, None, None, mask, use_reentrant=False)
        else:
            y = block(y, attn_mask=mask)
        x = y if getattr(transformer, "batch_first", True) else y.transpose(0, 1)
    return x
