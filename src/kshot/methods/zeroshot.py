"""Zero-shot CLIP classification (Radford et al., 2021): logits = scale · f Wᵀ with W the text classifier.

The text classifier (single template or an ensemble) is built upstream by `kshot.text` and handed in via
`Task.text_weights`; this method only stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task


@dataclass(frozen=True)
class ZeroShotConfig:
    """No hyper-parameters: the logit scale comes from the task (the model's own, 100 for CLIP)."""


@METHODS.register("zeroshot", "CLIP zero-shot: cosine similarity to prompt embeddings (single template or ensemble)")
class ZeroShot(Method):
    name = "zeroshot"
    config_cls = ZeroShotConfig
    cv_tunes = False
    jittor_head = "zeroshot"

    supports_empty_classes = True

    def fit(self, task: Task) -> "ZeroShot":
        check_task(task, needs_shots=False, method=self.name)
        self.weights_ = task.text_weights.float().clone()
        self.scale_ = float(task.logit_scale)
        self.fitted_ = True
        return self

    def for_classes(self, classnames: list[str], text_weights: torch.Tensor | None) -> "ZeroShot | None":
        """Zero-shot on other classes: their text weights, the same logit scale."""
        if text_weights is None:
            return None
        moved = type(self)(self.config)
        moved.weights_, moved.scale_, moved.fitted_ = text_weights.float().clone(), self.scale_, True
        return moved

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.weights_.shape[1])
        return self.scale_ * features.float() @ self.weights_.to(features.device).T

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"scale": self.scale_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weights_ = state["weights"]
        self.scale_ = float(meta["scale"])
