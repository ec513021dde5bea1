"""`FeatureSet`: cached image features of a dataset (or a subset) as methods consume them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch


@dataclass
class FeatureSet:
    """L2-normalised image features with labels.

    Attributes:
        features: float32 [N, D], each row L2-normalised (the un-augmented view).
        labels: int64 [N]; -1 where unknown (unlabelled test images).
        paths: N item paths (relative to the dataset root), for result files and debugging.
        aug_features: optional float32 [V, N, D] of V augmented views (each row L2-normalised).
        domains: optional N domain names.
        skipped: (path, reason) of images dropped because they could not be read.
    """

    features: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    aug_features: torch.Tensor | None = None
    domains: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(f"features must be [N, D], got {tuple(self.features.shape)}")
        n = self.features.shape[0]
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be [N]={n}, got {tuple(self.labels.shape)}")
        if len(self.paths) != n:
            raise ValueError(f"expected {n} paths, got {len(self.paths)}")
        if self.aug_features is not None and self.aug_features.shape[1:] != self.features.shape:
            raise ValueError("aug_features must be [V, N, D] matching features")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> "FeatureSet":
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return replace(
            self,
            features=self.features[idx],
            labels=self.labels[idx],
            paths=[self.paths[int(i)] for i in idx],
            aug_features=None if self.aug_features is None else self.aug_features[:, idx],
            domains=None if self.domains is None else [self.domains[int(i)] for i in idx],
        )

    def to(self, device: str | torch.device) -> "FeatureSet":
        return replace(
            self,
            features=self.features.to(device),
            labels=self.labels.to(device),
            aug_features=None if self.aug_features is None else self.aug_features.to(device),
        )
