"""CoOp: Context Optimization (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

The prompt of class c is [SOS][v1..vM][CLASS_c][.][EOS]; the context vectors v are learned by cross-entropy on
exp(s)·cos(f, g_c), g_c being the frozen text encoder's output at EOS, and nothing else trains. Defaults follow the
official configs (`KaiyangZhou/CoOp: configs/trainers/CoOp/rn50*.yaml`, `scripts/coop/main.sh`): M=16 random
N(0, 0.02²) vectors, class at the end, SGD lr 0.002 + 1 warm-up epoch + cosine, batch 32, 50/100/200 epochs for
1/2-4/8+ shots, the last epoch is kept (no model selection, so `task.val` is not used).

Differences from the official trainer: image features come from the cache (augmented views drawn per epoch when
cached, instead of re-cropping every step), fp32 on CPU / bf16 autocast on CUDA instead of fp16, and batches come from
an explicit seeded generator. Needs `Task.backbone`; see `kshot.methods.prompting.method` for loading with a backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from kshot.methods.base import METHODS
from kshot.methods.prompting.method import Design, PromptConfig, PromptMethod, context_block


@dataclass(frozen=True)
class CoOpConfig(PromptConfig):
    """CoOp's settings; every field and the source of its default is documented on `PromptConfig`."""


@METHODS.register("coop", "CoOp: learned prompt context on the frozen CLIP text tower (needs the backbone)")
class CoOp(PromptMethod):
    name = "coop"
    config_cls = CoOpConfig
    #: `kshot.methods.prompting.presets` schedules apply to this method.
    follows_prompt_presets = True

    def _design(self) -> Design:
        pieces, group, init = context_block(self.config, self.backbone_.tokenizer)
        return Design(recipes=[pieces], groups=[group], init={"ctx": init})
