"""ATPrompt on PromptSRC (Li et al., ICCV 2025, `zhengli97/ATPrompt`: its PromptSRC variant, trained with
PromptSRC's `configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml`).

PromptSRC (`kshot.methods.promptsrc`) whose text prompt carries ATPrompt's attribute block before the class soft
tokens (see `kshot.methods.atprompt_maple` for the layout and the choice of attributes); the deep text prompts replace
the class soft tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from kshot.methods.atprompt_maple import resolve_attributes
from kshot.methods.base import METHODS
from kshot.methods.promptsrc import PromptSRC, PromptSRCConfig


@dataclass(frozen=True)
class ATPromptPromptSRCConfig(PromptSRCConfig):
    """PromptSRC's settings plus `dataset` (whose published attributes to use when `attributes` is empty)."""

    dataset: str = ""


@METHODS.register("atprompt_promptsrc", "ATPrompt + PromptSRC: attribute-anchored text prompts on regulated deep "
                  "V+L prompts")
class ATPromptPromptSRC(PromptSRC):
    name = "atprompt_promptsrc"
    config_cls = ATPromptPromptSRCConfig

    def attributes(self) -> tuple[str, ...]:
        return resolve_attributes(tuple(self.config.attributes), self.config.dataset)
