"""GDA: Gaussian discriminant analysis on CLIP features (Wang et al., "A Hard-to-Beat Baseline for Training-free
CLIP-based Adaptation", ICLR 2024).

Class means μ_c and one shared precision matrix give a linear classifier, added to zero-shot CLIP::

    Σ⁻¹    = D · (S + tr(S)/(n − 1) · I)⁻¹          S = Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ over the n training rows
    W      = μ Σ⁻¹   [C, D]                         b_c = log p_c − ½ μ_c Σ⁻¹ μ_cᵀ   (p_c = 1/C)
    logits = s · f Tᵀ + α · (f Wᵀ + b)

with T [C, D] the text classifier and s the logit scale. Facts from `mrflogs/ICLR24 @ 560fe211 : main_few_shots.py`
(`run`): the shrinkage estimate is literally `D · pinv((n−1)·cov + trace(cov)·I)` with `cov` the covariance of the
class-centred rows (so (n−1)·cov = S); the prior is uniform; α is the first best of [1e-4, 1e-3, …, 100] by
validation accuracy (strict `>`, starting from best accuracy 0 and α = 0.1); the shots are 10 augmented passes
(`configs/*/imagenet.yaml: augment_epoch 10`).

kshot departures and additions:
- α is searched on `task.val` only (the official ImageNet script sets val = test). Without a validation split α is
  `init_alpha` (the official starting value 0.1).
- The training rows are the plain shot features plus, when cached, their augmented views (`use_aug_views`); the
  official code uses the augmented passes only.
- S + tr(S)/(n−1)·I is symmetric positive definite whenever tr(S) > 0, so one Cholesky solve (float64) replaces the
  pseudo-inverse (same matrix). When tr(S) = 0 — one row per class without views, or duplicated features — S has no
  information and the official pinv returns 0 (GDA term = log prior only); kshot then uses the documented isotropic
  fallback Σ⁻¹ = D · I (unit-norm features spread evenly over D dimensions), i.e. a nearest-class-mean head, and logs
  a warning.
- Without text weights (image-only backbones) the logits are the pure GDA classifier f Wᵀ + b (`needs_text=False`).
- The fitted state is one linear head, weight = s·T + α·W and bias = α·b (W, b without text), so that exports
  (Jittor `.pkl`) carry a plain weight + bias.
Every class needs at least one training row (a class mean); classes without shots are an error naming them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kshot.errors import CheckpointError, ConfigError
from kshot.methods import refit
from kshot.methods._lp_common import training_rows
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task, check_val_covers

log = logging.getLogger(__name__)

#: The official α list (`main_few_shots.py: run`).
OFFICIAL_ALPHAS = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class GDAConfig:
    """GDA hyper-parameters (defaults: `mrflogs/ICLR24 @ 560fe211 : main_few_shots.py`).

    Attributes:
        alphas: weights of the GDA logits searched on `task.val`. Official [1e-4, …, 100].
        init_alpha: α without a validation split (the official initial `best_alpha` 0.1).
        use_aug_views: also use the cached augmented views of the shots as rows (official: 10 augmented passes).
    """

    alphas: tuple[float, ...] = OFFICIAL_ALPHAS
    init_alpha: float = 0.1
    use_aug_views: bool = True

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ConfigError("gda: alphas must list at least one value")


def gda_head(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Closed-form GDA head from rows x [n, D] with labels y [n] (every class present).

    Returns:
        W [C, D], b [C] (float64) and whether the isotropic fallback was used (tr(S) = 0).
    """
    xd = x.double()
    n, d = xd.shape
    counts = torch.bincount(y, minlength=num_classes).to(xd.dtype)
    mus = torch.zeros(num_classes, d, dtype=xd.dtype, device=xd.device).index_add_(0, y, xd) / counts[:, None]
    centred = xd - mus[y]
    centred = centred - centred.mean(dim=0)  # as `cov()` re-centres (a no-op up to rounding)
    scatter = centred.T @ centred  # (n − 1) · cov
    trace = float(scatter.trace())
    fallback = not trace > 0.0 or n < 2
    if fallback:
        log.warning("gda: the class-centred features have no spread (one row per class or duplicates); using the "
                    "isotropic precision D * I (nearest class mean)")
        w = d * mus
    else:
        reg = scatter + (trace / (n - 1)) * torch.eye(d, dtype=xd.dtype, device=xd.device)
        w = d * torch.cholesky_solve(mus.T, torch.linalg.cholesky(reg)).T  # μ Σ⁻¹ (Σ⁻¹ symmetric)
    b = math.log(1.0 / num_classes) - 0.5 * (w * mus).sum(dim=1)
    return w, b, fallback


def select_alpha(zs_val: torch.Tensor, gda_val: torch.Tensor, labels: torch.Tensor, alphas: tuple[float, ...],
                 init_alpha: float) -> tuple[float, float]:
    """Official selection: the first α with strictly higher val accuracy than all before (start: accuracy 0, α init).

    Args:
        zs_val: [N, C] zero-shot logits (scaled, or zeros without text); gda_val: [N, C] GDA logits; labels [N].

    Returns:
        (α, its validation accuracy in [0, 1]).
    """
    total = zs_val[None] + torch.tensor(alphas, dtype=gda_val.dtype, device=gda_val.device)[:, None, None] * gda_val
    acc = total.argmax(dim=-1).eq(labels.to(total.device)[None]).double().mean(dim=1)  # [A]
    best = int(torch.argmax(acc))  # first maximum
    if float(acc[best]) <= 0.0:
        return init_alpha, 0.0
    return float(alphas[best]), float(acc[best])


@METHODS.register("gda", "GDA: Gaussian discriminant analysis head (shared shrunk covariance) + zero-shot, "
                         "alpha searched on val (ICLR'24)")
class GDA(Method):
    """GDA on cached features (module docstring: formula, official facts, departures)."""

    name = "gda"
    config_cls = GDAConfig
    needs_text: ClassVar[bool] = False
    supports_empty_classes: ClassVar[bool] = False
    jittor_head: ClassVar[str | None] = "linear"  # f Wᵀ + b from the saved weight, bias
    cv_tunes: ClassVar[bool | None] = True

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' median α as the only candidate and the no-val value."""
        alpha = refit.median(metas, "alpha")
        return {"alphas": (alpha,), "init_alpha": alpha}

    def fit(self, task: Task) -> "GDA":
        cfg = self.config
        check_task(task, needs_shots=True, needs_text=False, supports_empty_classes=False, method=self.name)
        check_val_covers(task, self.name)
        x, y = training_rows(task.train, cfg.use_aug_views)
        w, b, self.fallback_ = gda_head(x, y, task.num_classes)
        dev = x.device
        self.scale_ = float(task.logit_scale)
        self.alpha_, self.val_accuracy_ = cfg.init_alpha, None
        text = task.text_weights.double().to(dev) if task.text_weights is not None else None
        if text is not None and task.val is not None and len(task.val) > 0:
            vx = task.val.features.double().to(dev)
            self.alpha_, self.val_accuracy_ = select_alpha(self.scale_ * vx @ text.T, vx @ w.T + b, task.val.labels,
                                                           cfg.alphas, cfg.init_alpha)
            log.info("gda: alpha=%s (val acc %.4f)", self.alpha_, self.val_accuracy_)
        # one linear head (what the Jittor export carries): s·T + α·W, α·b; or W, b without text
        self.weight_ = (w if text is None else self.scale_ * text + self.alpha_ * w).float().contiguous()
        self.bias_ = (b if text is None else self.alpha_ * b).float().contiguous()
        self.fitted_ = True
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.weight_.shape[1])
        dev = features.device
        return torch.addmm(self.bias_.to(dev), features.float(), self.weight_.to(dev).T)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"alpha": self.alpha_, "scale": self.scale_, "val_accuracy": self.val_accuracy_,
                "isotropic_fallback": self.fallback_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self.weight_, self.bias_ = state["weight"].float(), state["bias"].float()
            self.alpha_, self.scale_ = float(meta["alpha"]), float(meta["scale"])
        except KeyError as e:
            raise CheckpointError(f"{self.name} artifact is missing {e}") from None
        self.val_accuracy_ = meta.get("val_accuracy")
        self.fallback_ = bool(meta.get("isotropic_fallback", False))
