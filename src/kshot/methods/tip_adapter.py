"""Tip-Adapter (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV'22).

A key-value cache built from the few shots is added to zero-shot CLIP::

    logits = s · f Wᵀ + α · exp(−β (1 − f Fᵀ)) · L

with W [C, D] the text classifier, F [M, D] the cache keys (shot features), L [M, C] one-hot cache values and s the
logit scale. Facts from `gaopengcuhk/Tip-Adapter` (`utils.py: build_cache_model, search_hp`, `configs/*.yaml`):

- Cache keys average 10 augmented passes of each shot (random resized crop 0.5–1 + flip), then L2-normalise. Here,
  when the shots carry `aug_features` [V, N, D], the V views are averaged per shot and re-normalised
  (`cache_policy="mean"`). The official code averages un-normalised encoder outputs; the cached views are already
  normalised, so the average weights views equally (a small, documented difference). `cache_policy="concat"` keeps
  the un-augmented features *and* every view as separate cache entries (seed 002's policy: augmented features are
  used "together with the originals"). Without `aug_features` both policies use the plain shot features.
- α, β are searched on a 200 (β ∈ [0.1, 7)) × 20 (α ∈ [0.1, 3)) grid on the validation split, starting from
  β = 1, α = 1.17 (ImageNet/Pets configs). The official ImageNet script searches on the *test* features; kshot only
  ever searches on `task.val`. Without a validation split the initial values are used.
- Paper and code swap the names α/β (issue #4); we follow the code: β sharpens the affinity, α weighs the cache.

Classes without shots simply have no cache entry: their logit is the zero-shot one (`supports_empty_classes`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kshot.config import param
from kshot.errors import CheckpointError, ConfigError
from kshot.features.featureset import FeatureSet
from kshot.methods import refit
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.cache_ops import ClassBlocks, kernel_sum
from kshot.methods.checks import check_features, check_task, check_val_covers
from kshot.methods.search import SearchResult, cache_kernel, grid_search, linear_grid

log = logging.getLogger(__name__)

CACHE_POLICIES = ("mean", "concat")


@dataclass(frozen=True)
class TipAdapterConfig:
    """Tip-Adapter hyper-parameters (defaults: `gaopengcuhk/Tip-Adapter:configs/imagenet.yaml`, same for Pets).

    Attributes:
        init_beta: β used when there is no validation split (and during Tip-F training). Official: 1.
        init_alpha: α likewise. Official: 1.17.
        search: search (β, α) on `task.val` when it is given. Official `search_hp: True`.
        search_scale: upper ends (exclusive) of the β and α grids. Official [7, 3].
        search_steps: number of β and α values. Official [200, 20].
        cache_policy: "mean" (official: average the augmented views per shot) or "concat" (seed 002: originals
            and views as separate cache entries).
    """

    init_beta: float = param(1.0, ge=0)
    init_alpha: float = param(1.17, ge=0)
    search: bool = True
    search_scale: tuple[float, float] = param((7.0, 3.0), gt=0)
    search_steps: tuple[int, int] = param((200, 20), ge=1)
    cache_policy: str = "mean"

    def __post_init__(self) -> None:
        validate_cache_policy(self.cache_policy)
        if len(self.search_scale) != 2 or len(self.search_steps) != 2:
            raise ConfigError("search_scale and search_steps need two values (beta, alpha)")


def validate_cache_policy(policy: str) -> None:
    if policy not in CACHE_POLICIES:
        raise ConfigError(f"cache_policy must be one of {CACHE_POLICIES}, got {policy!r}")


def build_cache(train: FeatureSet, policy: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Cache keys and their labels from the labelled shots.

    Args:
        train: the shots; `aug_features` [V, N, D] are used when present.
        policy: "mean" — one key per shot, the L2-normalised mean of its V views (or the plain feature without
            views); "concat" — the N plain features followed by the V·N views, as separate keys.

    Returns:
        keys [M, D] float32 L2-normalised and labels [M] int64.
    """
    validate_cache_policy(policy)
    feats, labels, aug = train.features.float(), train.labels, train.aug_features
    if aug is None or aug.shape[0] == 0:
        return feats.clone(), labels.clone()
    aug = aug.float()
    if policy == "mean":
        return F.normalize(aug.mean(dim=0), dim=-1), labels.clone()
    keys = torch.cat([feats, aug.reshape(-1, feats.shape[1])], dim=0)
    return keys, labels.repeat(aug.shape[0] + 1)


def cache_inputs(task: Task, cache_policy: str, method: str
                 ) -> tuple[torch.device, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a cache method's task and build its cache on the features' device.

    Returns:
        (device, text weights [C, D] float32, cache keys [M, D], key labels [M]).
    """
    check_task(task, needs_shots=True, supports_empty_classes=True, method=method)
    check_val_covers(task, method)
    dev = task.train.features.device
    keys, key_labels = build_cache(task.train, cache_policy)
    return dev, task.text_weights.float().to(dev), keys.to(dev), key_labels.to(dev)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels [M] -> float32 [M, C] one-hot cache values."""
    return F.one_hot(labels.long(), num_classes).float()


LOGIT_ROWS = 2048  # images per chunk in `logits`: bounds the [rows, M] affinity matrix (128 MB at M = 16k)


def in_row_chunks(fn: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
                  rows: int = LOGIT_ROWS) -> torch.Tensor:
    """fn(features [N, D]) -> [N, C], applied `rows` images at a time (the cache affinity is [N, M])."""
    if features.shape[0] <= rows:
        return fn(features)
    return torch.cat([fn(features[i:i + rows]) for i in range(0, features.shape[0], rows)])


def tip_logits(features: torch.Tensor, text_weights: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               alpha: float, beta: float, scale: float) -> torch.Tensor:
    """s · f Wᵀ + α · exp(−β(1 − f Kᵀ)) · V for features [N, D], W [C, D], K [M, D], V [M, C] -> [N, C]."""
    return scale * features @ text_weights.T + alpha * cache_kernel(features @ keys.T, beta) @ values


def tip_block_logits(features: torch.Tensor, text_weights: torch.Tensor, keys: torch.Tensor, blocks: ClassBlocks,
                     alpha: float, beta: float, scale: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """`tip_logits` with one-hot values given by `blocks` (entry weights `weight` [M] or 1): a segment sum, O(N·M)."""
    return torch.addmm(kernel_sum(features @ keys.T, beta, blocks, weight), features, text_weights.T,
                       beta=alpha, alpha=scale)


def search_tip(cfg: TipAdapterConfig, task: Task, text_weights: torch.Tensor, affinity_fn: Any,
               values: torch.Tensor) -> SearchResult | None:
    """Search (β, α) on `task.val` for a Tip-style model; `affinity_fn(features [N, D]) -> [N, M]`."""
    if not cfg.search or task.val is None or len(task.val) == 0:
        log.info("no validation split: keeping beta=%s alpha=%s", cfg.init_beta, cfg.init_alpha)
        return None
    val_f = task.val.features.float().to(text_weights.device)
    with torch.no_grad():
        return grid_search(task.logit_scale * val_f @ text_weights.T, affinity_fn(val_f), values,
                           task.val.labels.to(val_f.device),
                           linear_grid(cfg.search_scale[0], cfg.search_steps[0]),
                           linear_grid(cfg.search_scale[1], cfg.search_steps[1]))


@METHODS.register("tip_adapter", "Tip-Adapter: training-free cache of shot features added to zero-shot CLIP "
                                 "(ECCV'22); alpha/beta searched on val")
class TipAdapter(Method):
    name = "tip_adapter"
    config_cls = TipAdapterConfig
    cv_tunes: ClassVar[bool | None] = True
    jittor_head: ClassVar[str | None] = "tip"

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' choices fixed (`kshot.methods.refit`)."""
        return refit.cache_values(metas)
    supports_empty_classes: ClassVar[bool] = True

    def fit(self, task: Task) -> "TipAdapter":
        dev, text, self.keys_, self.key_labels_ = cache_inputs(task, self.config.cache_policy, self.name)
        self.text_weights_ = text.clone()
        self.scale_ = float(task.logit_scale)
        self.num_classes_ = task.num_classes
        values = one_hot(self.key_labels_, self.num_classes_)
        found = search_tip(self.config, task, self.text_weights_, lambda f: f @ self.keys_.T, values)
        self.beta_ = found.beta if found else self.config.init_beta
        self.alpha_ = found.alpha if found else self.config.init_alpha
        self.val_accuracy_ = found.accuracy if found else None
        self.fitted_ = True
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.keys_.shape[1])
        dev = features.device
        keys = self.keys_.to(dev)
        blocks = ClassBlocks.of(self.key_labels_.to(dev), self.num_classes_)
        text = self.text_weights_.to(dev)
        return in_row_chunks(lambda f: tip_block_logits(f, text, keys, blocks, self.alpha_, self.beta_, self.scale_),
                             features.float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"text_weights": self.text_weights_, "keys": self.keys_, "key_labels": self.key_labels_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"alpha": self.alpha_, "beta": self.beta_, "scale": self.scale_, "num_classes": self.num_classes_,
                "val_accuracy": self.val_accuracy_, "cache_size": int(self.keys_.shape[0])}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self.text_weights_, self.keys_ = state["text_weights"], state["keys"]
            self.key_labels_ = state["key_labels"].long()
            self.alpha_, self.beta_, self.scale_ = float(meta["alpha"]), float(meta["beta"]), float(meta["scale"])
            self.num_classes_ = int(meta["num_classes"])
        except KeyError as e:
            raise CheckpointError(f"{self.name} artifact is missing {e}") from None
        self.val_accuracy_ = meta.get("val_accuracy")
