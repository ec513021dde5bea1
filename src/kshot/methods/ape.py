"""APE (Zhu et al., "Not All Features Matter: Enhancing Few-shot CLIP with Adaptive Prior Refinement", ICCV'23).

Training-free. A channel-refinement criterion keeps the Q feature channels that separate the classes best, a
Tip-style cache runs on those channels, and each cache entry is re-weighted by how badly the text classifier
explains it. Facts from `yangyangyang127/APE` (`utils.py: cal_criterion`, `main.py: APE`, `configs/*.yaml`):

- **Criterion.** Pool per class = its text feature plus its cache features. S_k = mean of x_{i,k}·x_{j,k} over all
  ordered cross-class pairs of pool members; V_k = (unbiased) variance over classes of W_{·,k};
  J_k = λ S_k − (1 − λ) V_k; keep the Q channels with the smallest J. The official code runs four nested Python
  loops over class pairs and samples; here S uses the closed form
  Σ_{i≠j} Σ_{m,n} x_{i,m,k} x_{j,n,k} = (Σ_c s_{c,k})² − Σ_c s_{c,k}², s_c the per-class sum, divided by the number
  of ordered cross-class pairs (Σn_c)² − Σn_c² (this also covers classes with fewer or no shots).
- **Primes.** f', F', W' are the selected channels of image features, cache keys and text weights, re-normalised.
- **KL weighting.** KL_i = Σ_c L_ic log₂((L_ic + ε)/(p_ic + ε)) with p = softmax over classes of the *unscaled*
  cosines F'W'ᵀ and ε = 1e-6 (official). Against a one-hot L this is KL(L‖p) = −log₂ p_true (up to ε): large for
  shots the text classifier misclassifies. Cache values become L ⊙ exp(γ·KL).
- **Logits.** s · f Wᵀ (all channels) + α · exp(−β (1 − f'F'ᵀ)) · (L ⊙ exp(γ KL)).
- **Search.** (β, α, γ) over 200 × 20 × 20 values (β, α ∈ [0.1, s), γ ∈ [0, s)) on validation features. The
  official ImageNet run uses the test set as validation; kshot only uses `task.val` (initial values without it).
- **Defaults** come from `configs/dtd.yaml` (λ = 0.5 as for Caltech101; Q = 400; grid scales [7, 7, 1]; init
  β = 1, α = 3, γ = 0.1). Q counts were written for RN50's 1024-d features: an absolute Q larger than the feature
  width D is read as the fraction Q/1024 of D (`resolve_num_channels`).

Classes without shots have no cache entry; their pool is the text feature alone (`supports_empty_classes`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kshot.config import param
from kshot.errors import CheckpointError, ConfigError, DataError
from kshot.methods import refit
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.cache_ops import ClassBlocks, kernel_sum
from kshot.methods.checks import check_features
from kshot.methods.search import cache_kernel, grid_search, linear_grid
from kshot.methods.tip_adapter import cache_inputs, in_row_chunks, one_hot, validate_cache_policy

log = logging.getLogger(__name__)

KL_EPS = 1e-6  # official epsilon inside the log of APE's KL confidence


def resolve_num_channels(channels: float, dim: int, reference_dim: int = 1024) -> int:
    """Number of channels Q to keep out of `dim`.

    `channels` in (0, 1] is a fraction of `dim`; a larger value is an absolute count, and an absolute count above
    `dim` is read as the fraction `channels / reference_dim` (the official counts refer to 1024-d RN50 features).
    """
    if channels <= 0:
        raise ConfigError(f"channels must be positive, got {channels}")
    if channels <= 1:
        q = round(channels * dim)
    elif channels <= dim:
        q = int(round(channels))
    else:
        if channels > reference_dim:
            raise ConfigError(f"channels={channels} exceeds both the feature width {dim} and reference_dim "
                              f"{reference_dim}")
        q = round(channels / reference_dim * dim)
    return max(1, min(dim, q))


def cross_class_product_sum(class_vectors: torch.Tensor) -> torch.Tensor:
    """Σ_{i≠j} v_{i,k} v_{j,k} for class_vectors [C, D] -> [D], as (Σ_i v_i)² − Σ_i v_i² (no loop over pairs)."""
    return class_vectors.sum(dim=0).square() - class_vectors.square().sum(dim=0)


def pooled_cross_class_similarity(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """APE's S: mean over all ordered cross-class pairs of x_{i,k}·x_{j,k} over a labelled pool -> [D].

    Args:
        feats: [P, D] pool members (text features and cache keys).
        labels: [P] their classes in [0, num_classes).
    """
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, labels.to(feats.device), feats)
    counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
    pairs = counts.sum().square() - counts.square().sum()
    if pairs <= 0:
        raise DataError("channel criterion needs pool members from at least two classes")
    return cross_class_product_sum(sums) / pairs


def between_class_variance(text_weights: torch.Tensor) -> torch.Tensor:
    """APE's V: unbiased variance over classes of each channel of the text weights [C, D] -> [D]."""
    if text_weights.shape[0] < 2:
        raise DataError("channel criterion needs at least two classes")
    return text_weights.var(dim=0, unbiased=True)


def ape_criterion(text_weights: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, lam: float) -> torch.Tensor:
    """J = λ S − (1 − λ) V over the pool {text feature + cache keys} of every class -> [D]; small J is kept."""
    c = text_weights.shape[0]
    pool = torch.cat([text_weights, keys], dim=0)
    pool_labels = torch.cat([torch.arange(c, device=key_labels.device), key_labels])
    s = pooled_cross_class_similarity(pool.float(), pool_labels, c)
    return lam * s - (1.0 - lam) * between_class_variance(text_weights.float())


def select_channels(criterion: torch.Tensor, q: int) -> torch.Tensor:
    """Indices [q] (ascending) of the q smallest criterion values; ties go to the lower channel index."""
    order = torch.argsort(criterion, stable=True)
    return order[:q].sort().values


def project(x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Selected channels of x [N, D], L2-normalised -> [N, Q]."""
    return F.normalize(x[:, channels.to(x.device)], dim=-1)


def kl_confidence(keys_sel: torch.Tensor, text_sel: torch.Tensor, key_labels: torch.Tensor) -> torch.Tensor:
    """APE's per-entry KL_i = Σ_c L_ic log₂((L_ic + ε)/(p_ic + ε)), p = softmax(F'W'ᵀ) unscaled -> [M] (bits)."""
    p = (keys_sel @ text_sel.T).softmax(dim=-1)
    values = one_hot(key_labels, text_sel.shape[0])
    return (values * torch.log2((values + KL_EPS) / (p + KL_EPS))).sum(dim=-1)


def ape_logits(features: torch.Tensor, text_weights: torch.Tensor, keys_sel: torch.Tensor, values: torch.Tensor,
               channels: torch.Tensor, alpha: float, beta: float, scale: float) -> torch.Tensor:
    """s · f Wᵀ + α · exp(−β (1 − f'F'ᵀ)) · values, f' the projected features; values [M, C] already weighted."""
    return scale * features @ text_weights.T + alpha * cache_kernel(project(features, channels) @ keys_sel.T,
                                                                    beta) @ values


def ape_block_logits(features: torch.Tensor, text_weights: torch.Tensor, keys_sel: torch.Tensor, blocks: ClassBlocks,
                     weight: torch.Tensor, channels: torch.Tensor, alpha: float, beta: float,
                     scale: float) -> torch.Tensor:
    """`ape_logits` with one-hot values by `blocks` and entry weights `weight` [M] (exp(γ·KL)): a segment sum."""
    cache = kernel_sum(project(features, channels) @ keys_sel.T, beta, blocks, weight)
    return torch.addmm(cache, features, text_weights.T, beta=alpha, alpha=scale)


@dataclass(frozen=True)
class APEConfig:
    """APE hyper-parameters (defaults: `yangyangyang127/APE:configs/dtd.yaml`).

    Attributes:
        lam: λ of J = λS − (1−λ)V (`w_training_free[0]`). DTD/Caltech 0.5 (ImageNet 0.7).
        channels: Q (`training_free_feat_num`): a fraction of D if ≤ 1, else a count (see `resolve_num_channels`).
            DTD 400.
        reference_dim: feature width the absolute counts were written for (RN50: 1024).
        init_beta, init_alpha, init_gamma: values without a validation split. DTD 1, 3, 0.1.
        search: search (β, α, γ) on `task.val`.
        search_scale: β, α, γ grid ends (exclusive). DTD [7, 7, 1].
        search_steps: β, α, γ grid sizes. DTD [200, 20, 20].
        cache_policy: see `TipAdapterConfig.cache_policy` (official: "mean" of 10 augmented views).
    """

    lam: float = param(0.5, ge=0, le=1)
    channels: float = param(400.0, gt=0)
    reference_dim: int = param(1024, ge=1)
    init_beta: float = param(1.0, ge=0)
    init_alpha: float = param(3.0, ge=0)
    init_gamma: float = param(0.1, ge=0)
    search: bool = True
    search_scale: tuple[float, float, float] = param((7.0, 7.0, 1.0), gt=0)
    search_steps: tuple[int, int, int] = param((200, 20, 20), ge=1)
    cache_policy: str = "mean"

    def __post_init__(self) -> None:
        validate_cache_policy(self.cache_policy)
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"lam must be in [0, 1], got {self.lam}")
        if len(self.search_scale) != 3 or len(self.search_steps) != 3:
            raise ConfigError("search_scale and search_steps need three values (beta, alpha, gamma)")


def search_ape(cfg: Any, task: Task, clip_logits_fn: Any, affinity_fn: Any, values: torch.Tensor,
               scores: torch.Tensor | None) -> Any:
    """Search (β, α[, γ]) on `task.val`; `*_fn(features [N, D])` give the clip logits and cache affinity.

    With `scores` the γ grid (start 0, APE's `gamma_list`) is searched too. Returns None without a validation split.
    """
    if not cfg.search or task.val is None or len(task.val) == 0:
        log.info("no validation split: keeping the initial hyper-parameters")
        return None
    val_f = task.val.features.float().to(values.device)
    gammas = linear_grid(cfg.search_scale[2], cfg.search_steps[2], start=0.0) if scores is not None else None
    with torch.no_grad():
        return grid_search(clip_logits_fn(val_f), affinity_fn(val_f), values, task.val.labels.to(values.device),
                           linear_grid(cfg.search_scale[0], cfg.search_steps[0]),
                           linear_grid(cfg.search_scale[1], cfg.search_steps[1]), gammas, scores)


@METHODS.register("ape", "APE: training-free cache on refined channels with KL-confidence weights (ICCV'23); "
                         "beta/alpha/gamma searched on val")
class APE(Method):
    name = "ape"
    config_cls = APEConfig
    cv_tunes: ClassVar[bool | None] = True
    jittor_head: ClassVar[str | None] = "ape"

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' choices fixed (`kshot.methods.refit`)."""
        return refit.cache_values(metas, gamma=True)
    supports_empty_classes: ClassVar[bool] = True

    def fit(self, task: Task) -> "APE":
        cfg = self.config
        dev, text, keys, key_labels = cache_inputs(task, cfg.cache_policy, self.name)
        q = resolve_num_channels(cfg.channels, text.shape[1], cfg.reference_dim)
        channels = select_channels(ape_criterion(text, keys, key_labels, cfg.lam), q)
        keys_sel, text_sel = project(keys, channels), project(text, channels)
        kl = kl_confidence(keys_sel, text_sel, key_labels)
        values = one_hot(key_labels, task.num_classes)
        scale = float(task.logit_scale)
        found = search_ape(cfg, task, lambda f: scale * f @ text.T, lambda f: project(f, channels) @ keys_sel.T,
                           values, kl)
        self.text_weights_, self.keys_sel_, self.key_labels_ = text, keys_sel, key_labels
        self.channels_, self.kl_ = channels, kl
        self.scale_, self.num_classes_ = scale, task.num_classes
        self.beta_ = found.beta if found else cfg.init_beta
        self.alpha_ = found.alpha if found else cfg.init_alpha
        self.gamma_ = found.gamma if found else cfg.init_gamma
        self.val_accuracy_ = found.accuracy if found else None
        self.fitted_ = True
        return self

    def weighted_values(self, device: torch.device) -> torch.Tensor:
        """L ⊙ exp(γ·KL) [M, C] on `device`."""
        kl = self.kl_.to(device)
        return one_hot(self.key_labels_.to(device), self.num_classes_) * torch.exp(self.gamma_ * kl)[:, None]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.text_weights_.shape[1])
        dev = features.device
        text, keys = self.text_weights_.to(dev), self.keys_sel_.to(dev)
        blocks = ClassBlocks.of(self.key_labels_.to(dev), self.num_classes_)
        weight = torch.exp(self.gamma_ * self.kl_.to(dev))
        channels = self.channels_.to(dev)
        return in_row_chunks(lambda f: ape_block_logits(f, text, keys, blocks, weight, channels, self.alpha_,
                                                        self.beta_, self.scale_), features.float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"text_weights": self.text_weights_, "keys_sel": self.keys_sel_, "key_labels": self.key_labels_,
                "channels": self.channels_, "kl": self.kl_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"alpha": self.alpha_, "beta": self.beta_, "gamma": self.gamma_, "scale": self.scale_,
                "num_classes": self.num_classes_, "val_accuracy": self.val_accuracy_,
                "num_channels": int(self.channels_.numel()), "cache_size": int(self.keys_sel_.shape[0])}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self.text_weights_, self.keys_sel_, self.kl_ = state["text_weights"], state["keys_sel"], state["kl"]
            self.key_labels_, self.channels_ = state["key_labels"].long(), state["channels"].long()
            self.alpha_, self.beta_, self.gamma_ = float(meta["alpha"]), float(meta["beta"]), float(meta["gamma"])
            self.scale_, self.num_classes_ = float(meta["scale"]), int(meta["num_classes"])
        except KeyError as e:
            raise CheckpointError(f"{self.name} artifact is missing {e}") from None
        self.val_accuracy_ = meta.get("val_accuracy")
