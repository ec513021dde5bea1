"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023; `muzairkhattak/multimodal-prompt-learning:
trainers/maple.py`, `clip/model.py`).

Coupled vision-language deep prompts. Text: the context tokens t_0 [n, Wt] of the prompt "[t_0] <rest of ctx_init>
CLASS." (block 0) and t_i [n, Wt] replacing them before blocks i = 1..J-1. Vision: the image tokens of every prompted
layer are projections of the text ones, v_0 = F_0(t_0), v_i = F_i(t_i) with F_i = Linear(Wt, Wv) (the coupling
functions), appended after the patch tokens (before `ln_pre`) and replaced before blocks 1..J-1. Loss: cross-entropy
on s · cos(f(x), g_c). Everything in CLIP is frozen; t_i and F_i are learned.

Defaults from `configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml`: N_CTX 2, PROMPT_DEPTH 9, CTX_INIT
"a photo of a" (t_0 = the embeddings of "a photo"; "of a" stays in the prompt), deeper t_i ~ N(0, 0.02²),
F_i torch's default Linear init, 5 epochs, batch 4, SGD lr 0.0035 (momentum 0.9, wd 5e-4), 1 warm-up epoch at 1e-5
+ cosine; the last epoch is kept. The depth must fit both towers (ViT-B/16: 12 layers; the toy CLIP: 3 text,
4 vision — use `depth=3` there).

Departures: bf16 autocast on CUDA (theirs fp16 weights), seeded per-sample crops from the shared engine
(`kshot.tuning.engine`). The artifact keeps the visual prompts the coupling layers produce (all inference needs)
and every trainable tensor, coupling layers included (`init=<run>` continues training from them). Training and
`logits` conventions: see `kshot.methods.prompting.deep`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from kshot.methods.base import METHODS
from kshot.methods.prompting.deep import DeepPromptConfig, DeepPromptMethod
from kshot.methods.prompting.tower import TextTower
from kshot.methods.prompting.vision import ImageTower


@dataclass(frozen=True)
class MapleConfig(DeepPromptConfig):
    """MaPLe's settings (official `vit_b16_c2_ep5_batch4_2ctx`); fields are documented on `DeepPromptConfig`."""


def seeded_linear(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with torch's default init (kaiming-uniform weight, U(±1/√d_in) bias) drawn from `generator`."""
    layer = nn.Linear(d_in, d_out)
    bound = 1.0 / math.sqrt(d_in)
    with torch.no_grad():
        layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
        layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
    return layer


class MapleParams(nn.Module):
    """Deeper text prompts t_1..t_{J-1} and the coupling layers F_0..F_{J-1}."""

    def __init__(self, depth: int, n_ctx: int, text_width: int, vision_width: int, generator: torch.Generator):
        super().__init__()
        self.deep_text = nn.ParameterList([nn.Parameter(torch.randn(n_ctx, text_width, generator=generator) * 0.02)
                                           for _ in range(depth - 1)])
        self.couple = nn.ModuleList([seeded_linear(text_width, vision_width, generator) for _ in range(depth)])


@METHODS.register("maple", "MaPLe: coupled deep prompts in both CLIP towers, trained on the shot images")
class Maple(DeepPromptMethod):
    name = "maple"
    config_cls = MapleConfig

    def _build(self, tower: TextTower, image: ImageTower, generator: torch.Generator) -> nn.Module:
        return MapleParams(int(self.config.depth), int(self.config.n_ctx), tower.width, image.width, generator)

    def _prompts(self, params: nn.Module, ctx: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        text = [ctx] + list(params.deep_text)
        return list(params.deep_text), [f(t) for f, t in zip(params.couple, text)]
