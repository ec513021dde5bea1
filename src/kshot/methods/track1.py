"""Track1: the APE-style system of seed 003 (`XD-mu/JITTOR-Track1`, 4th Jittor AI Challenge, Track 1).

The seed's README is the spec (its code does not run; see `reference/challenge-and-seeds.md`). It combines:

1. **Channel distillation.** Keep Q channels by J = λ S − (1 − λ) V, with S a blend of a text-based and an
   image-based inter-class similarity per channel k (δ(x, x') = x_k·x'_k)::

       S = ρ · (1/C²) Σ_{i≠j} t_{i,k} t_{j,k} + (1 − ρ) · Σ_i P_i Σ_{j≠i} P_j (1/(M_i M_j)) Σ_{m,n} x^{i,m}_k x^{j,n}_k

   t_c the text features, x^{c,m} the cache keys of class c, P_i = 1/C_s the class prior over the C_s classes with
   shots (the shots are balanced). Both sums use the closed form (Σ v)² − Σ v² of `ape.cross_class_product_sum`
   (the image term on class means), so nothing loops over class pairs.
2. **Tip cache on the selected channels** with **KL confidence**: logits = R_fW + α R_f'F' (diag(R_F'W') L).
3. **Class residual** Res ∈ ℝ^{C×Q} (init 0) added to the text weights (Pad(Res), at the selected channels) and to
   the refined cache keys (Expand(Res), one row per key of its class)::

       R_fW   = s · f (W + Pad(Res))ᵀ
       R_f'F' = exp(−β (1 − f' (F' + Expand(Res))ᵀ))

   Unlike APE-T (whose official code modifies full-width channels in place) the cache affinity here lives in the
   refined space f', F', exactly as the README writes it.

Where the README is inconsistent, kshot follows APE's official code and makes the choice a config field:

- **Sign of V** (`variance`). The README defines V as a within-class variance and says to keep the *lowest*-variance
  channels, yet J = λS − (1−λ)V with the smallest J kept favours *high* V. Default "text_between_class": APE's V
  (variance over classes of the text weights; high between-class variance is good, so −(1−λ)V is consistent).
  "image_within_class": the README's prose — V_k = mean over classes of (1/M_c) Σ_m (x^{c,m}_k − x̄^c_k)², with a
  *plus* sign, J = λS + (1−λ)V, so that low within-class variance is kept.
- **α used twice.** The README's α blends the two similarity terms and also weighs the cache. Here the blend is
  `text_share` (ρ; no value is given anywhere: 0.5, an equal blend) and the cache weight is α (`init_alpha`).
- **KL against a one-hot.** R_F'W' = exp(γ D_KL(F'W'ᵀ ‖ L)) is infinite as written (p log(p/0)). kshot uses APE's
  KL(L ‖ p) = Σ_c L_c log₂((L_c + ε)/(p_c + ε)) ≈ −log₂ p_true with p = softmax(F'W'ᵀ) (unscaled cosines), computed
  once from the initial refined keys and text weights (`ape.kl_confidence`) and kept fixed during training.
- **Logit scale.** The README's R_fW has no temperature; APE and CLIP use s = 100 (`task.logit_scale`).

Defaults come from the seed's `configs/jittor.yaml`: λ = 0.3, Q = 700 (written for 1024-d features; on ViT-B/32's
512-d features the fraction rule of `ape.resolve_num_channels` keeps 350), grid scales [7, 7, 1] with
[200, 20, 20] steps, init β = 1, α = 0.8, γ = 0.1, AdamW lr 1e-4, eps 1e-3, weight decay 0.1 (APE-T's), 30 epochs,
batch 256. **The seed searches its hyper-parameters on the 4-shot training features themselves** (and would pick
the epoch there); kshot searches (β, α, γ) and picks the epoch on `task.val` only, and keeps the initial values
without one. Only the residual trains: `fitted_meta()["trainable_params"]` = C·Q (374 × 350 = 130,900 on
ViT-B/32; the seed's README declares "1.5M", which its formulas do not give).

Classes without shots (the B round's 29 car classes) have no cache entry and no image-based S term; they keep a
residual row (text term only) (`supports_empty_classes`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kshot.config import param
from kshot.errors import CheckpointError, ConfigError
from kshot.methods.ape import (between_class_variance, cross_class_product_sum, kl_confidence, project,
                               resolve_num_channels, search_ape, select_channels)
from kshot.methods.ape_t import pad_residual
from kshot.methods import refit
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.cache_ops import ClassBlocks, kernel_sum
from kshot.methods.checks import check_features
from kshot.methods.tip_adapter import cache_inputs, in_row_chunks, one_hot, validate_cache_policy
from kshot.methods.tip_adapter_f import TrainSchedule, train_epochs

log = logging.getLogger(__name__)

VARIANCE_MODES = ("text_between_class", "image_within_class")


def class_means(keys: torch.Tensor, key_labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of the keys [C, D] and a mask [C] of the classes that have at least one key."""
    sums = torch.zeros(num_classes, keys.shape[1], dtype=keys.dtype, device=keys.device).index_add_(0, key_labels,
                                                                                                    keys)
    counts = torch.bincount(key_labels, minlength=num_classes)
    has = counts > 0
    return sums / counts.clamp(min=1)[:, None].to(keys.dtype), has


def blended_similarity(text_weights: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
                       text_share: float) -> torch.Tensor:
    """The README's S per channel [D]: ρ·(1/C²)Σ_{i≠j} t_i t_j + (1−ρ)·Σ_{i≠j} P_i P_j x̄_i x̄_j, P_i = 1/C_s."""
    c = text_weights.shape[0]
    s_text = cross_class_product_sum(text_weights) / c**2
    means, has = class_means(keys, key_labels, c)
    s_image = cross_class_product_sum(means[has]) / int(has.sum()) ** 2
    return text_share * s_text + (1.0 - text_share) * s_image


def within_class_variance(keys: torch.Tensor, key_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean over classes with keys of the biased within-class variance (1/M_c)Σ_m (x_k − x̄_k)² -> [D]."""
    means, has = class_means(keys, key_labels, num_classes)
    sq = torch.zeros_like(means).index_add_(0, key_labels, (keys - means[key_labels]).square())
    counts = torch.bincount(key_labels, minlength=num_classes).clamp(min=1)[:, None].to(keys.dtype)
    return (sq / counts)[has].mean(dim=0)


def track1_criterion(text_weights: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, lam: float,
                     text_share: float, variance: str) -> torch.Tensor:
    """J [D] (small is kept): λS − (1−λ)V_between-class-text, or λS + (1−λ)V_within-class-image."""
    s = blended_similarity(text_weights, keys, key_labels, text_share)
    if variance == "text_between_class":
        return lam * s - (1.0 - lam) * between_class_variance(text_weights)
    return lam * s + (1.0 - lam) * within_class_variance(keys, key_labels, text_weights.shape[0])


def track1_logits(features: torch.Tensor, text_weights: torch.Tensor, keys_sel: torch.Tensor,
                  key_labels: torch.Tensor, channels: torch.Tensor, residual: torch.Tensor, blocks: ClassBlocks,
                  key_weights: torch.Tensor, alpha: float, beta: float, scale: float) -> torch.Tensor:
    """s·f(W + Pad(R))ᵀ + α·exp(−β(1 − f'(F' + R[y])ᵀ))·V -> [N, C].

    V = one-hot(key_labels) ⊙ key_weights [M] (the KL weights), applied as a per-class segment sum by `blocks`.
    """
    new_text = text_weights + pad_residual(residual, channels, text_weights.shape[1])
    new_keys = keys_sel + residual[key_labels]
    cache = kernel_sum(project(features, channels) @ new_keys.T, beta, blocks, key_weights)
    return torch.addmm(cache, features, new_text.T, beta=alpha, alpha=scale)


def track1_train_rows(features: torch.Tensor, text_weights: torch.Tensor, keys_sel: torch.Tensor,
                      channels: torch.Tensor, blocks: ClassBlocks, key_weights: torch.Tensor, beta: float,
                      scale: float) -> tuple[torch.Tensor, ...]:
    """The parts of `track1_logits` that training does not change, for features [N, D].

    With f'·(F'_m + R_c) = f'·F'_m + f'·R_c the kernel factors per class, exp(β f'·R_c) · exp(−β(1 − f'·F'_m)),
    so the weighted segment sum S [N, C] over the fixed keys is computed once. Returns (s·fWᵀ [N, C], f_Q [N, Q]
    the selected raw channels, f' [N, Q], S [N, C]).
    """
    feats_p = project(features, channels)
    sums = in_row_chunks(lambda f: kernel_sum(f @ keys_sel.T, beta, blocks, key_weights), feats_p)
    return scale * features @ text_weights.T, features[:, channels], feats_p, sums


def track1_train_logits(clip: torch.Tensor, feats_q: torch.Tensor, feats_p: torch.Tensor, sums: torch.Tensor,
                        residual: torch.Tensor, alpha: float, beta: float, scale: float) -> torch.Tensor:
    """`track1_logits` from `track1_train_rows`' parts: clip + s·f_Q Rᵀ + α·exp(β f'Rᵀ) ⊙ S -> [B, C]."""
    cache = torch.exp(beta * (feats_p @ residual.T)) * sums
    return torch.addmm(clip, feats_q, residual.T, alpha=scale) + alpha * cache


@dataclass(frozen=True)
class Track1Config:
    """Track1 hyper-parameters (defaults: `XD-mu/JITTOR-Track1:configs/jittor.yaml` unless noted).

    Attributes:
        lam: λ of J (`w_training_free[0]`): 0.3.
        channels: Q (`training_free_feat_num`): 700, a count (fraction rule above D) or a fraction if ≤ 1.
        reference_dim: width the counts were written for (APE's RN50 configs: 1024).
        text_share: ρ, weight of the text-based term in S (the README's first α; no value given: 0.5).
        variance: "text_between_class" (APE's code, default) or "image_within_class" (the README's prose).
        init_beta, init_alpha, init_gamma: 1, 0.8, 0.1; used in training and without a validation split.
        search: search (β, α, γ) on `task.val` after training.
        search_scale: [7, 7, 1]. search_steps: [200, 20, 20].
        cache_policy: see `TipAdapterConfig.cache_policy` (the seed averages 10 augmented passes: "mean").
        epochs: 30. batch_size: 256. lr: 1e-4. eps: 1e-3 (AdamW). weight_decay: 0.1 (the seed's APE-T port).
    """

    lam: float = param(0.3, ge=0, le=1)
    channels: float = param(700.0, gt=0)
    reference_dim: int = param(1024, ge=1)
    text_share: float = param(0.5, ge=0, le=1)
    variance: str = "text_between_class"
    init_beta: float = param(1.0, ge=0)
    init_alpha: float = param(0.8, ge=0)
    init_gamma: float = param(0.1, ge=0)
    search: bool = True
    search_scale: tuple[float, float, float] = param((7.0, 7.0, 1.0), gt=0)
    search_steps: tuple[int, int, int] = param((200, 20, 20), ge=1)
    cache_policy: str = "mean"
    epochs: int = param(30, ge=0)
    batch_size: int = param(256, ge=1)
    lr: float = param(1e-4, gt=0)
    eps: float = param(1e-3, gt=0)
    weight_decay: float = param(0.1, ge=0)

    def __post_init__(self) -> None:
        validate_cache_policy(self.cache_policy)
        if self.variance not in VARIANCE_MODES:
            raise ConfigError(f"variance must be one of {VARIANCE_MODES}, got {self.variance!r}")
        for name in ("lam", "text_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.search_scale) != 3 or len(self.search_steps) != 3:
            raise ConfigError("search_scale and search_steps need three values (beta, alpha, gamma)")
        TrainSchedule.of(self)  # validate now, not at fit time


@METHODS.register("track1", "Track1 (seed 003): blended channel selection, KL-weighted cache and a trained "
                            "class residual; beta/alpha/gamma and epoch on val")
class Track1(Method):
    name = "track1"
    config_cls = Track1Config
    cv_tunes: ClassVar[bool | None] = True

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' choices fixed (`kshot.methods.refit`)."""
        return {**refit.cache_values(metas, gamma=True), "epochs": refit.count(metas, "best_epoch")}
    supports_empty_classes: ClassVar[bool] = True

    def fit(self, task: Task) -> "Track1":
        cfg = self.config
        dev, text, keys, key_labels = cache_inputs(task, cfg.cache_policy, self.name)
        c, scale = task.num_classes, float(task.logit_scale)
        q = resolve_num_channels(cfg.channels, text.shape[1], cfg.reference_dim)
        crit = track1_criterion(text, keys, key_labels, cfg.lam, cfg.text_share, cfg.variance)
        channels = select_channels(crit, q)
        keys_sel = project(keys, channels)
        kl = kl_confidence(keys_sel, project(text, channels), key_labels)
        labels_1h = one_hot(key_labels, c)
        residual = torch.nn.Parameter(torch.zeros(c, q, device=dev))
        blocks = ClassBlocks.of(key_labels, c)
        train_weights = torch.exp(cfg.init_gamma * kl)

        def prepare(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return track1_train_rows(x, text, keys_sel, channels, blocks, train_weights, cfg.init_beta, scale)

        def forward(clip: torch.Tensor, feats_q: torch.Tensor, feats_p: torch.Tensor,
                    sums: torch.Tensor) -> torch.Tensor:
            return track1_train_logits(clip, feats_q, feats_p, sums, residual, cfg.init_alpha, cfg.init_beta, scale)

        trained = train_epochs([residual], forward, task.train, task.val, TrainSchedule.of(cfg), task.seed,
                               prepare)
        self.text_weights_, self.keys_sel_, self.key_labels_ = text, keys_sel, key_labels
        self.channels_, self.kl_, self.residual_ = channels, kl, residual.detach().clone()
        self.scale_, self.num_classes_ = scale, c
        with torch.no_grad():
            new_text = text + pad_residual(self.residual_, channels, text.shape[1])
            new_keys = keys_sel + self.residual_[key_labels]
            found = search_ape(cfg, task, lambda f: scale * f @ new_text.T,
                               lambda f: project(f, channels) @ new_keys.T, labels_1h, kl)
        self.beta_ = found.beta if found else cfg.init_beta
        self.alpha_ = found.alpha if found else cfg.init_alpha
        self.gamma_ = found.gamma if found else cfg.init_gamma
        self.val_accuracy_ = found.accuracy if found else None
        self.history_, self.best_epoch_ = trained.history, trained.best_epoch
        self.fitted_ = True
        log.info("track1: %d of %d channels, %d trainable parameters", q, text.shape[1], self.residual_.numel())
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.text_weights_.shape[1])
        dev = features.device
        key_labels = self.key_labels_.to(dev)
        args = (self.text_weights_.to(dev), self.keys_sel_.to(dev), key_labels, self.channels_.to(dev),
                self.residual_.to(dev), ClassBlocks.of(key_labels, self.num_classes_),
                torch.exp(self.gamma_ * self.kl_.to(dev)), self.alpha_, self.beta_, self.scale_)
        return in_row_chunks(lambda f: track1_logits(f, *args), features.float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"text_weights": self.text_weights_, "keys_sel": self.keys_sel_, "key_labels": self.key_labels_,
                "channels": self.channels_, "kl": self.kl_, "residual": self.residual_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"alpha": self.alpha_, "beta": self.beta_, "gamma": self.gamma_, "scale": self.scale_,
                "num_classes": self.num_classes_, "val_accuracy": self.val_accuracy_, "history": self.history_,
                "best_epoch": self.best_epoch_, "num_channels": int(self.channels_.numel()),
                "trainable_params": int(self.residual_.numel())}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self.text_weights_, self.keys_sel_, self.kl_ = state["text_weights"], state["keys_sel"], state["kl"]
            self.key_labels_, self.channels_ = state["key_labels"].long(), state["channels"].long()
            self.residual_ = state["residual"]
            self.alpha_, self.beta_, self.gamma_ = float(meta["alpha"]), float(meta["beta"]), float(meta["gamma"])
            self.scale_, self.num_classes_ = float(meta["scale"]), int(meta["num_classes"])
        except KeyError as e:
            raise CheckpointError(f"{self.name} artifact is missing {e}") from None
        self.val_accuracy_ = meta.get("val_accuracy")
        self.history_, self.best_epoch_ = meta.get("history", []), int(meta.get("best_epoch", -1))
