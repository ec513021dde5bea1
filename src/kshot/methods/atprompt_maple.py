"""ATPrompt on MaPLe (Li et al., ICCV 2025, `zhengli97/ATPrompt`: its MaPLe variant, trained with MaPLe's
`configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml`).

MaPLe (`kshot.methods.maple`) whose text prompt is ATPrompt's [a¹×m][ATTR₁]…[aᵏ×m][ATTRₖ][ctx×n]<rest of
ctx_init> CLASS . — attribute soft tokens a (N(0, 0.01²), m = n by default) before each fixed attribute word, learned
at the input layer; the deep text prompts and, through the coupling layers, the visual prompts come from the class
soft tokens ctx, as in the official variant. Attributes: `attributes`, else the paper's for `dataset`, else
ImageNet's ("color", "shape"). (kshot registers the deep ATPrompt variants under their own names; `atprompt` itself
stays the shallow CoOp/CoCoOp one.)
"""

from __future__ import annotations

from dataclasses import dataclass

from kshot.data.benchmarks import get_benchmark
from kshot.methods.atprompt import FALLBACK_ATTRIBUTES
from kshot.methods.base import METHODS
from kshot.methods.maple import Maple, MapleConfig


@dataclass(frozen=True)
class ATPromptMapleConfig(MapleConfig):
    """MaPLe's settings plus `dataset` (whose published attributes to use when `attributes` is empty)."""

    dataset: str = ""


def resolve_attributes(attributes: tuple[str, ...], dataset: str) -> tuple[str, ...]:
    """Configured words, else the paper's for the benchmark `dataset`, else ImageNet's."""
    if attributes:
        return tuple(attributes)
    return tuple(get_benchmark(dataset).attributes) if dataset else FALLBACK_ATTRIBUTES


@METHODS.register("atprompt_maple", "ATPrompt + MaPLe: attribute-anchored text prompts on coupled deep V-L prompts")
class ATPromptMaple(Maple):
    name = "atprompt_maple"
    config_cls = ATPromptMapleConfig

    def attributes(self) -> tuple[str, ...]:
        return resolve_attributes(tuple(self.config.attributes), self.config.dataset)
