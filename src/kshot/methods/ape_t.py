"""APE-T (Zhu et al., ICCV'23, §3.4): APE's cache with a trainable category residual and per-image value weights.

Facts from `yangyangyang127/APE` (`utils.py: APE_Training`, `main.py: APE_T`, `configs/dtd.yaml`):

- Q channels are selected with APE's criterion (λ = `w_training[0]` = 0.2 in every config). A learnable category
  residual R ∈ ℝ^{C×Q} (init 0) is added to those channels of every cache key of class c and of the text weight of
  class c. Learnable per-entry value weights w ∈ ℝ^M (init 1) replace the KL weighting: values = L ⊙ w.
- logits = s · f (W + Pad(R))ᵀ + α · exp(−β (1 − f (F + Pad(R)[y])ᵀ)) · (L ⊙ w). **The affinity uses the full-width
  features with the selected channels modified in place** (keys are neither projected nor re-normalised), as the
  official code does; the paper's Eq. 13 uses the refined features f', F' instead (issue #15 notes the mismatch).
- AdamW (weight decay 0.1, lr 1e-3, eps 1e-3), per-step cosine schedule, 20 epochs (DTD; 20–200 by dataset),
  batch 256, cross-entropy (`SmoothCrossEntropy` with smoothing 0), at the initial α, β; best epoch on validation
  (official: the val split too, the test set for ImageNet); then (β, α) re-searched on validation.
- Official quirks not reproduced: the `APE_T` call is commented out in every commit; `APE_Training` calls
  `cal_criterion` with `only_use_txt=True` (text-only S unless a cached criterion file exists) and selects
  `training_free_feat_num` channels while sizing R with `training_feat_num`, so shapes clash in 8 of 11 configs.
  kshot computes APE's full criterion (text + cache pool) with λ = 0.2 and uses the same Q for selection and R.
- Q defaults to DTD's `training_feat_num` 700 (fraction rule of `ape.resolve_num_channels` for narrower features).

Classes without shots have no cache entry but keep their residual row (trained through the text term).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kshot.config import param
from kshot.errors import CheckpointError, ConfigError
from kshot.methods.ape import ape_criterion, resolve_num_channels, search_ape, select_channels
from kshot.methods import refit
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.cache_ops import ClassBlocks, kernel, kernel_sum
from kshot.methods.checks import check_features
from kshot.methods.tip_adapter import LOGIT_ROWS, cache_inputs, in_row_chunks, one_hot, validate_cache_policy
from kshot.methods.tip_adapter_f import TrainSchedule, train_epochs

log = logging.getLogger(__name__)


def pad_residual(residual: torch.Tensor, channels: torch.Tensor, dim: int) -> torch.Tensor:
    """Pad(R): R [C, Q] placed at `channels` of a zero [C, D] tensor (differentiable in R)."""
    out = torch.zeros(residual.shape[0], dim, dtype=residual.dtype, device=residual.device)
    return out.index_add(1, channels.to(residual.device), residual)


def ape_t_logits(features: torch.Tensor, text_weights: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor,
                 channels: torch.Tensor, residual: torch.Tensor, value_weights: torch.Tensor, num_classes: int,
                 alpha: float, beta: float, scale: float) -> torch.Tensor:
    """APE-T logits [N, C] for features [N, D] (official in-place channel modification, full-width affinity).

    The values L ⊙ w are one-hot by `key_labels`, so the cache term is a per-class segment sum (`cache_ops`).
    """
    pad = pad_residual(residual, channels, text_weights.shape[1])  # [C, D]
    new_text = text_weights + pad
    new_keys = keys + pad[key_labels]
    cache = kernel_sum(features @ new_keys.T, beta, ClassBlocks.of(key_labels, num_classes), value_weights)
    return torch.addmm(cache, features, new_text.T, beta=alpha, alpha=scale)


def ape_t_train_rows(features: torch.Tensor, text_weights: torch.Tensor, keys: torch.Tensor, blocks: ClassBlocks,
                     channels: torch.Tensor, beta: float, scale: float,
                     rows: int = LOGIT_ROWS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parts of `ape_t_logits` that training does not change, for features [N, D].

    With f·(F_m + Pad(R)_c) = f·F_m + f_Q·R_c (f_Q the selected channels) the kernel factors per class:
    exp(−β(1 − f·F_m − f_Q·R_c)) = exp(β f_Q·R_c) · exp(−β(1 − f·F_m)). Returns the clip logits s·fWᵀ [N, C],
    f_Q [N, Q] and the fixed kernel grouped by class [N, C, k] (filled `rows` images at a time: N·M floats).
    """
    kern = torch.empty(features.shape[0], blocks.num_classes, blocks.k, device=features.device)
    for i in range(0, features.shape[0], rows):
        kern[i:i + rows] = blocks.gather(kernel(features[i:i + rows] @ keys.T, beta))
    return scale * features @ text_weights.T, features[:, channels], kern


def ape_t_train_logits(clip: torch.Tensor, feats_q: torch.Tensor, kern: torch.Tensor, residual: torch.Tensor,
                       value_weights: torch.Tensor, blocks: ClassBlocks, alpha: float, beta: float,
                       scale: float) -> torch.Tensor:
    """`ape_t_logits` from `ape_t_train_rows`' parts: clip + s·f_Q Rᵀ + α·exp(β f_Q Rᵀ) ⊙ Σ_k kern·w -> [B, C]."""
    fr = feats_q @ residual.T  # [B, C]
    cache = torch.exp(beta * fr) * (kern * blocks.gather(value_weights)).sum(-1)
    return clip + scale * fr + alpha * cache


@dataclass(frozen=True)
class APETConfig:
    """APE-T hyper-parameters (defaults: `yangyangyang127/APE:configs/dtd.yaml`, `main.py: APE_T`).

    Attributes:
        lam: λ of the channel criterion (`w_training[0]`). Official 0.2 in every config.
        channels: Q (`training_feat_num`), fraction if ≤ 1 else a count (see `ape.resolve_num_channels`). DTD 700.
        reference_dim: width the absolute counts refer to (RN50: 1024).
        init_beta, init_alpha: β, α during training and without a validation split. DTD 1, 3.
        search: re-search (β, α) on `task.val` after training.
        search_scale: β, α grid ends (exclusive). DTD [7, 7].
        search_steps: β, α grid sizes. DTD [200, 20].
        cache_policy: see `TipAdapterConfig.cache_policy`.
        epochs: DTD 20 (20–200 by dataset).
        batch_size: official 256.
        lr: DTD 1e-3 (1e-4 for ImageNet/Food/Pets/SUN).
        eps: AdamW epsilon, DTD 1e-3.
        weight_decay: official 0.1.
    """

    lam: float = param(0.2, ge=0, le=1)
    channels: float = param(700.0, gt=0)
    reference_dim: int = param(1024, ge=1)
    init_beta: float = param(1.0, ge=0)
    init_alpha: float = param(3.0, ge=0)
    search: bool = True
    search_scale: tuple[float, float] = param((7.0, 7.0), gt=0)
    search_steps: tuple[int, int] = param((200, 20), ge=1)
    cache_policy: str = "mean"
    epochs: int = param(20, ge=0)
    batch_size: int = param(256, ge=1)
    lr: float = param(1e-3, gt=0)
    eps: float = param(1e-3, gt=0)
    weight_decay: float = param(0.1, ge=0)

    def __post_init__(self) -> None:
        validate_cache_policy(self.cache_policy)
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lam must be in [0, 1], got {self.lam}")
        if len(self.search_scale) != 2 or len(self.search_steps) != 2:
            raise ConfigError("search_scale and search_steps need two values (beta, alpha)")
        TrainSchedule.of(self)  # validate now, not at fit time


@METHODS.register("ape_t", "APE-T: APE with a trained category residual and value weights (ICCV'23); "
                           "best epoch and beta/alpha on val")
class APET(Method):
    name = "ape_t"
    config_cls = APETConfig
    cv_tunes: ClassVar[bool | None] = True

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' choices fixed (`kshot.methods.refit`)."""
        return {**refit.cache_values(metas), "epochs": refit.count(metas, "best_epoch")}
    supports_empty_classes: ClassVar[bool] = True

    def fit(self, task: Task) -> "APET":
        cfg = self.config
        dev, text, keys, key_labels = cache_inputs(task, cfg.cache_policy, self.name)
        q = resolve_num_channels(cfg.channels, text.shape[1], cfg.reference_dim)
        channels = select_channels(ape_criterion(text, keys, key_labels, cfg.lam), q)
        residual = torch.nn.Parameter(torch.zeros(task.num_classes, q, device=dev))
        value_weights = torch.nn.Parameter(torch.ones(keys.shape[0], device=dev))
        c, scale = task.num_classes, float(task.logit_scale)

        blocks = ClassBlocks.of(key_labels, c)

        def prepare(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return ape_t_train_rows(x, text, keys, blocks, channels, cfg.init_beta, scale)

        def forward(clip: torch.Tensor, feats_q: torch.Tensor, kern: torch.Tensor) -> torch.Tensor:
            return ape_t_train_logits(clip, feats_q, kern, residual, value_weights, blocks, cfg.init_alpha,
                                      cfg.init_beta, scale)

        trained = train_epochs([residual, value_weights], forward, task.train, task.val, TrainSchedule.of(cfg),
                               task.seed, prepare)
        self.text_weights_, self.keys_, self.key_labels_, self.channels_ = text, keys, key_labels, channels
        self.residual_, self.value_weights_ = residual.detach().clone(), value_weights.detach().clone()
        self.scale_, self.num_classes_ = scale, c
        with torch.no_grad():
            pad = pad_residual(self.residual_, channels, text.shape[1])
            new_text, new_keys = text + pad, keys + pad[key_labels]
            values = one_hot(key_labels, c) * self.value_weights_[:, None]
            found = search_ape(cfg, task, lambda f: scale * f @ new_text.T, lambda f: f @ new_keys.T, values, None)
        self.beta_ = found.beta if found else cfg.init_beta
        self.alpha_ = found.alpha if found else cfg.init_alpha
        self.val_accuracy_ = found.accuracy if found else None
        self.history_, self.best_epoch_ = trained.history, trained.best_epoch
        self.fitted_ = True
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.text_weights_.shape[1])
        dev = features.device
        args = (self.text_weights_.to(dev), self.keys_.to(dev), self.key_labels_.to(dev), self.channels_.to(dev),
                self.residual_.to(dev), self.value_weights_.to(dev), self.num_classes_, self.alpha_, self.beta_,
                self.scale_)
        return in_row_chunks(lambda f: ape_t_logits(f, *args), features.float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"text_weights": self.text_weights_, "keys": self.keys_, "key_labels": self.key_labels_,
                "channels": self.channels_, "residual": self.residual_, "value_weights": self.value_weights_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"alpha": self.alpha_, "beta": self.beta_, "scale": self.scale_, "num_classes": self.num_classes_,
                "val_accuracy": self.val_accuracy_, "history": self.history_, "best_epoch": self.best_epoch_,
                "num_channels": int(self.channels_.numel()),
                "trainable_params": int(self.residual_.numel() + self.value_weights_.numel())}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self.text_weights_, self.keys_ = state["text_weights"], state["keys"]
            self.key_labels_, self.channels_ = state["key_labels"].long(), state["channels"].long()
            self.residual_, self.value_weights_ = state["residual"], state["value_weights"]
            self.alpha_, self.beta_ = float(meta["alpha"]), float(meta["beta"])
            self.scale_, self.num_classes_ = float(meta["scale"]), int(meta["num_classes"])
        except KeyError as e:
            raise CheckpointError(f"{self.name} artifact is missing {e}") from None
        self.val_accuracy_ = meta.get("val_accuracy")
        self.history_, self.best_epoch_ = meta.get("history", []), int(meta.get("best_epoch", -1))
