"""A seeded stratified hold-out: the test split of a labelled folder that has none (`kshot eval --holdout 0.2`)."""

from __future__ import annotations

import numpy as np

from kshot.data.dataset import Dataset
from kshot.errors import ConfigError, DataError


def holdout_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) int64 indices: round(fraction · n_c) items of every class c (at least 1, at most n_c - 1) go to
    the test side, drawn with a seeded permutation per class; the rest stay in the pool. Sorted, disjoint.

    Raises:
        ConfigError: `fraction` outside (0, 1).
        DataError: a class with fewer than 2 items (it cannot be on both sides).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--holdout {fraction}: expected a fraction of each class in (0, 1), e.g. 0.2")
    labels = np.asarray(labels, dtype=np.int64)
    if (labels < 0).any():
        raise DataError(f"--holdout: {int((labels < 0).sum())} image(s) have no label; a hold-out needs labelled data")
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise DataError(f"--holdout: class {int(c)} has {len(idx)} image(s); a hold-out needs at least 2 per class")
        n = min(max(int(round(fraction * len(idx))), 1), len(idx) - 1)
        test.extend(rng.permutation(idx)[:n].tolist())
    test_idx = np.sort(np.asarray(test, dtype=np.int64))
    pool_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return pool_idx, test_idx


def split_holdout(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(pool, test) datasets of a labelled dataset, by `holdout_indices` on its labels."""
    pool_idx, test_idx = holdout_indices(dataset.labels, fraction, seed)
    return dataset.subset(pool_idx), dataset.subset(test_idx)
