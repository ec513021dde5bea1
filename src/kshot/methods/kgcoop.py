"""KgCoOp: Knowledge-guided Context Optimization (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided
Context Optimization", CVPR 2023; `htyao89/KgCoOp: trainers/kgcoop.py`).

CoOp's context, trained with cross-entropy plus λ times the distance of the learned class text features w_c to the
hand-crafted ones w_c^clip (the frozen encoder on the hand-written prompt):

    L = CE(s · cos(f, w), y) + λ · (1 − mean_c cos(w_c, w_c^clip))

The official code writes the distance as 1 − mean cosine (`score = 1.0 - torch.mean(cos(text_features,
text_features_old))`); for unit vectors that is half the mean squared L2 distance of the paper. Defaults from the
official configs (`configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml`, `scripts/base2new_train.sh`): λ = W = 8.0,
4 context tokens initialised from "a photo of a" (CTX_INIT True), 100 epochs, batch 128, SGD lr 0.002 with 1 warm-up
epoch at 1e-5 + cosine; the hand-crafted prompt is the dataset's CoOp template (`CUSTOM_TEMPLATES`).

Hand-crafted features here: `template` when given (or the `dataset`'s CoOp template), else the task's text classifier
(`Task.text_weights`, kshot's hand-crafted prompts for the dataset), else "a photo of a {}.". Image features come from
the cache, as CoOp (see `kshot.methods.coop`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import param
from kshot.data.benchmarks import get_benchmark
from kshot.errors import DataError
from kshot.methods.base import METHODS, Task
from kshot.methods.prompting.learner import PromptLearner
from kshot.methods.prompting.method import Design, PromptConfig, PromptMethod, context_block
from kshot.methods.prompting.train import Schedule


@dataclass(frozen=True)
class KgCoOpConfig(PromptConfig):
    """KgCoOp's settings (official `vit_b16_ep100_ctxv1`, W=8.0); shared fields are documented on `PromptConfig`.

    Attributes:
        weight: λ, the weight of the distance to the hand-crafted features (official TRAINER.COOP.W = 8.0).
        template: hand-crafted prompt with {} ("" = the dataset's template, the task's text classifier, or
            "a photo of a {}.").
        dataset: CoOp benchmark whose template to use when `template` is empty.
        epochs: None = 100 (official, for every shot count).
    """

    n_ctx: int = param(4, ge=1)
    ctx_init: str = "a photo of a"
    batch_size: int = param(128, ge=1)
    weight: float = param(8.0, ge=0)
    template: str = ""
    dataset: str = ""


@METHODS.register("kgcoop", "KgCoOp: CoOp kept close to the hand-crafted prompts' text features (needs the backbone)")
class KgCoOp(PromptMethod):
    name = "kgcoop"
    config_cls = KgCoOpConfig

    def _schedule(self, shots: int) -> Schedule:
        c = self.config
        return Schedule(epochs=c.epochs if c.epochs is not None else 100, batch_size=c.batch_size, lr=c.lr,
                        momentum=c.momentum, weight_decay=c.weight_decay, warmup_epochs=c.warmup_epochs,
                        warmup_lr=c.warmup_lr)

    def _design(self) -> Design:
        pieces, group, init = context_block(self.config, self.backbone_.tokenizer)
        return Design(recipes=[pieces], groups=[group], init={"ctx": init})

    def _prepare(self, task: Task, generator: torch.Generator) -> dict[str, Any]:
        c, bb = self.config, task.backbone
        template = c.template or (get_benchmark(c.dataset).template if c.dataset else "")
        if not template and task.text_weights is not None:
            hand, source = task.text_weights.float(), "task text classifier"
        else:
            template = template or "a photo of a {}."
            if "{}" not in template:
                raise DataError(f"kgcoop template must contain {{}}, got {template!r}")
            with torch.no_grad():
                tokens = bb.tokenize([template.format(n) for n in task.classnames]).to(bb.device)
                hand, source = bb.encode_text(tokens).float(), template
        if hand.shape != (len(task.classnames), bb.embed_dim):
            raise DataError(f"kgcoop: hand-crafted text features have shape {tuple(hand.shape)}, expected "
                            f"({len(task.classnames)}, {bb.embed_dim})")
        self.hand_ = F.normalize(hand, dim=-1).to(self.tower_.device)
        return {"hand_crafted": source, "weight": float(c.weight)}

    def _loss(self, learner: PromptLearner, meta_net: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
              scale: float) -> torch.Tensor:
        text = F.normalize(learner()[0].float(), dim=-1)  # [C, D]
        ce = F.cross_entropy(scale * x.float() @ text.T, y)
        distance = 1.0 - F.cosine_similarity(text, self.hand_, dim=1, eps=1e-7).mean()
        return ce + float(self.config.weight) * distance
