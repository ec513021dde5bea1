"""The prompt learner: learned vectors injected at the token-embedding level of a frozen CLIP text tower.

`PromptLearner` holds the learnable groups (CoOp's context, ATPrompt's attribute tokens, ...) as parameters and the
frozen token embeddings of everything else as a buffer. `forward()` assembles every prompt of its `Layout` (one
gather + `where`, no Python loop over classes), runs the frozen text tower and returns the un-normalised text
features at the end-of-text token. With a per-image bias (CoCoOp's meta-net output) it returns one set of text
features per image.

Only the learner's own parameters can receive gradients; the tower's weights are used as constants (callers wrap
training in `frozen(model)`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from kshot.errors import ConfigError
from kshot.methods.prompting.layout import Layout
from kshot.methods.prompting.tower import TextTower


@dataclass(frozen=True)
class GroupSpec:
    """One group of learned vectors.

    Attributes:
        name: group name (also the artifact tensor name).
        size: vectors in the group.
        csc: class-specific: one copy of the group per class (CoOp's CSC), shape [C, size, W].
        conditional: receives the per-image meta-net bias (CoCoOp; ATPrompt+CoCoOp biases class tokens only).
    """

    name: str
    size: int
    csc: bool = False
    conditional: bool = False


class PromptLearner(nn.Module):
    """Learned prompts over a frozen text tower.

    Args:
        tower: the text tower (not registered as a sub-module, so `parameters()` are the prompt vectors only).
        layout: token layout of R recipes x C classes (bank offsets follow `groups` order).
        groups: the learned groups.
        init: initial value per group, [size, W] (or [C, size, W] for csc groups).
    """

    def __init__(self, tower: TextTower, layout: Layout, groups: list[GroupSpec], init: dict[str, torch.Tensor]):
        super().__init__()
        self.tower = tower
        self.groups = list(groups)
        self.num_recipes, self.num_classes = layout.num_recipes, layout.num_classes
        if [g.name for g in groups] != list(layout.offsets):
            raise ConfigError(f"layout groups {list(layout.offsets)} != learner groups {[g.name for g in groups]}")
        width, c, dev = tower.width, layout.num_classes, tower.device
        self.vectors = nn.ParameterDict()
        for g in groups:
            want = (c, g.size, width) if g.csc else (g.size, width)
            t = init[g.name]
            if tuple(t.shape) != want:
                raise ConfigError(f"group {g.name!r}: initial value has shape {tuple(t.shape)}, expected {want}")
            self.vectors[g.name] = nn.Parameter(t.detach().to(dev, torch.float32).clone())
        self.register_buffer("tok", tower.embed(layout.ids), persistent=False)
        self.register_buffer("slot", layout.slot.to(dev), persistent=False)
        self.register_buffer("eot", layout.eot.to(dev), persistent=False)
        self.register_buffer("row_class", layout.row_class.to(dev), persistent=False)
        flags = [torch.full((g.size,), g.conditional) for g in groups]
        cond = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
        self.register_buffer("cond", cond.to(dev), persistent=False)
        self.csc = any(g.csc for g in groups)
        self.conditional = bool(cond.any())

    def bank(self, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Flat bank of learned vectors: [P, W], [C, P, W] (csc); with bias [B, W]: [B, P, W] or [B, C, P, W]."""
        c, width = self.num_classes, self.tower.width
        if not self.groups:
            bank = torch.zeros(0, width, device=self.tok.device)
        elif self.csc:
            bank = torch.cat([self.vectors[g.name] if g.csc else self.vectors[g.name].expand(c, -1, -1)
                              for g in self.groups], dim=1)
        else:
            bank = torch.cat([self.vectors[g.name] for g in self.groups], dim=0)
        if bias is None:
            return bank
        shift = bias[:, None, :] * self.cond[None, :, None].to(bias.dtype)  # [B, P, W]
        return bank[None] + (shift[:, None] if self.csc else shift)

    def embeddings(self, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings [N, L, W] (N = R*C rows), or [B, N, L, W] with a bias [B, W]."""
        bank = self.bank(bias)
        if bank.shape[-2] == 0:  # nothing learned: the hard prompt
            return self.tok if bias is None else self.tok[None].expand(bias.shape[0], -1, -1, -1)
        idx = self.slot.clamp(min=0)
        learn = (self.slot >= 0)[..., None]
        if bias is None:
            vals = bank[self.row_class[:, None], idx] if self.csc else bank[idx]
            return torch.where(learn, vals.to(self.tok.dtype), self.tok)
        vals = bank[:, self.row_class[:, None], idx] if self.csc else bank[:, idx]
        return torch.where(learn[None], vals.to(self.tok.dtype), self.tok[None])

    def forward(self, bias: torch.Tensor | None = None, deep: Sequence[torch.Tensor] = (),
                deep_start: int = 1) -> torch.Tensor:
        """Text features [R, C, D] (un-normalised), or [B, R, C, D] with a per-image bias [B, W]; `deep` prompts
        replace the tokens from `deep_start` in the deeper blocks (`TextTower.encode`)."""
        x = self.embeddings(bias)
        r, c = self.num_recipes, self.num_classes
        if bias is None:
            return self.tower.encode(x, self.eot, deep, deep_start).view(r, c, -1)
        b = x.shape[0]
        feats = self.tower.encode(x.flatten(0, 1), self.eot.repeat(b))
        return feats.view(b, r, c, -1)

    def export(self) -> dict[str, torch.Tensor]:
        """Learned vectors by group name (detached, CPU)."""
        return {name: p.detach().cpu() for name, p in self.vectors.items()}


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily turn off gradients of every parameter of `module` (restored afterwards)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def word_vectors(tower: TextTower, ids: list[int]) -> torch.Tensor:
    """Token embeddings [len(ids), W] (float32) of the given ids, for word initialisation."""
    return tower.embed(torch.tensor(ids, dtype=torch.long)).float().cpu()


def normal_vectors(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    """N(0, std^2) vectors drawn from `generator` (CoOp: std 0.02; ATPrompt attribute tokens: 0.01)."""
    return torch.randn(shape, generator=generator) * std
