"""Small helpers shared by the linear-head methods (linear_probe, lpp, clip_adapter, inmap).

Training-set assembly (optionally stacking the augmented views of the shots), validation accuracy,
model selection bookkeeping and seeded random generators. No method logic lives here.
"""

from __future__ import annotations

import torch

from kshot.features.featureset import FeatureSet


def training_rows(fs: FeatureSet, use_aug_views: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a head trains on.

    Args:
        fs: the labelled shots.
        use_aug_views: when True and `fs.aug_features` exists, the V augmented views are stacked under the clean
            view as extra samples with the same labels.

    Returns:
        features float32 [M, D] (M = N or N·(V+1)) and labels int64 [M].
    """
    feats, labels = fs.features.float(), fs.labels
    if use_aug_views and fs.aug_features is not None and fs.aug_features.shape[0] > 0:
        views = fs.aug_features.to(feats.device).float()
        feats = torch.cat([feats, views.reshape(-1, feats.shape[1])], dim=0)
        labels = labels.repeat(views.shape[0] + 1)
    return feats, labels.to(feats.device)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] of logits [N, C] against labels [N]."""
    if labels.numel() == 0:
        return 0.0
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`; draw on CPU then move, so results do not depend on the device."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def seen_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Bool mask [C]: classes with at least one labelled row."""
    return torch.bincount(labels.cpu(), minlength=num_classes).gt(0).to(labels.device)
