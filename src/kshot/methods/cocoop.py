"""CoCoOp: Conditional Context Optimization (Zhou et al., "Conditional Prompt Learning for Vision-Language Models",
CVPR 2022).

CoOp's context plus a meta-net π = Linear(D, D/16)-ReLU-Linear(D/16, W) of the (L2-normalised) image feature whose
output is added to every context token, so each image gets its own prompts: v_m(x) = v_m + π(x). Defaults follow
`KaiyangZhou/CoOp: configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`: 4 context tokens initialised from
"a photo of a", 10 epochs, batch 1, SGD lr 0.002 with 1 warm-up epoch + cosine.

Cost: text features are re-encoded per image (C prompts per image), so training and `logits()` run the text tower
B·C times per batch; `eval_batch_size` bounds the memory of `logits()`. `logits()` always needs the backbone
(attach it after `kshot.methods.load`, see `kshot.methods.prompting.method`). Image features come from the cache
instead of the official per-step image encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from kshot.config import param
from kshot.methods.base import METHODS
from kshot.methods.prompting.method import Design, PromptConfig, PromptMethod, context_block


@dataclass(frozen=True)
class CoCoOpConfig(PromptConfig):
    """CoCoOp's settings (official `vit_b16_c4_ep10_batch1_ctxv1`); shared fields are documented on `PromptConfig`.

    Attributes:
        eval_batch_size: images whose prompts are encoded together in `logits()` (memory ~ B·C prompts).
    """

    n_ctx: int = param(4, ge=1)
    ctx_init: str = "a photo of a"
    epochs: int | None = param(10, ge=0)
    batch_size: int = param(1, ge=1)
    eval_batch_size: int = param(64, ge=1)


@METHODS.register("cocoop", "CoCoOp: CoOp + image-conditioned context via a meta-net (needs the backbone)")
class CoCoOp(PromptMethod):
    name = "cocoop"
    config_cls = CoCoOpConfig

    def is_conditional(self) -> bool:
        return True

    def _design(self) -> Design:
        pieces, group, init = context_block(self.config, self.backbone_.tokenizer, conditional=True)
        return Design(recipes=[pieces], groups=[group], init={"ctx": init})
