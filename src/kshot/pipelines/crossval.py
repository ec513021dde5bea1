"""Hyper-parameters from the shots alone: K-fold cross-validation within the few shots, then one refit on all of them.

The challenge allows 4 training images per class and nothing else, so by default a method's validation-tuned
hyper-parameters (Tip-Adapter's α/β, LP++'s iteration, the probe's C, a training method's epoch) are chosen like this:

1. Each class's shots are put in a seeded order; shot j goes to fold j mod F (F = min(`cv_folds`, fewest shots of
   any class), so every fold's validation split holds every class that has shots, as `check_val_covers` requires).
2. For each fold the method is fitted with `train` = the other folds and `val` = this fold, so it runs its own
   search exactly as it would on a validation split.
3. The values each fold chose are read from `fitted_meta()` and combined by the lower median (`median_low`, which
   is always a value some fold actually chose); epochs/iterations become "best index + 1".
4. The method is refitted on all shots with those values fixed and its search switched off (the method's own
   `refit_overrides`, helpers in `kshot.methods.refit`; `cv_tunes` says whether it has a rule).

Methods without a rule (and methods that tune nothing on validation data: zeroshot, inmap) are fitted once without a
validation split, with their documented defaults. Cost: F + 1 fits instead of 1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from kshot.methods import METHODS, Task, create

log = logging.getLogger(__name__)


def shot_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Validation row indices of each fold: within each class a seeded order, shot j -> fold j mod `folds`.

    Args:
        labels: int [N] labels of the shots.
        folds: number of folds F (>= 2).
        seed: order seed (one generator per class, `default_rng([seed, class, 7])`).

    Returns:
        F int64 arrays of row indices, disjoint, covering every row.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out: list[list[int]] = [[] for _ in range(folds)]
    for c in np.unique(labels).tolist():
        rows = np.flatnonzero(labels == c)
        order = np.random.default_rng([int(seed), int(c), 7]).permutation(rows)
        for j, r in enumerate(order.tolist()):
            out[j % folds].append(r)
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in out]


def effective_folds(labels: np.ndarray, requested: int) -> int:
    """min(requested, fewest shots of any class); < 2 means cross-validation is not possible."""
    labels = np.asarray(labels)
    if requested < 2 or labels.size == 0:
        return 0
    counts = np.bincount(labels[labels >= 0])
    counts = counts[counts > 0]
    return int(min(requested, counts.min()))


@dataclass
class CVOutcome:
    """What cross-validation chose.

    Attributes:
        overrides: config overrides applied to the final fit ({} when nothing was tuned).
        folds: folds used (0 = no cross-validation).
        fold_meta: the chosen values of each fold (the keys the rule reads).
        note: one line for the report.
    """

    overrides: dict[str, Any] = field(default_factory=dict)
    folds: int = 0
    fold_meta: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def choose_by_crossval(method: str, params: Mapping[str, Any], task: Task, folds: int, seed: int) -> CVOutcome:
    """Run the fold fits of `method` on `task.train` and return the refit overrides (see the module docstring).

    Args:
        method: registry name.
        params: the stage's config overrides (kept in every fold fit and in the refit).
        task: the stage's task on all shots (its `val` is ignored).
        folds: requested folds (`PipelineConfig.cv_folds`).
        seed: fold-order seed.
    """
    cls = METHODS.get(method) if method in METHODS else None
    if cls is None or cls.cv_tunes is None:
        return CVOutcome(note=f"no cross-validation rule for {method!r}: its documented defaults are used")
    if not cls.cv_tunes:
        return CVOutcome(note=f"{method} tunes nothing on validation data")
    labels = task.train.labels.cpu().numpy()
    f = effective_folds(labels, folds)
    if f < 2:
        return CVOutcome(note=f"cross-validation needs >= 2 shots in every class and cv_folds >= 2 (got {folds}); "
                              "documented defaults used")
    metas: list[dict[str, Any]] = []
    all_rows = np.arange(len(labels))
    for k, val_rows in enumerate(shot_folds(labels, f, seed)):
        train_rows = np.setdiff1d(all_rows, val_rows)
        fold_task = replace(task, train=task.train.subset(train_rows), val=task.train.subset(val_rows))
        m = create(method, **dict(params)).fit(fold_task)
        metas.append(dict(m.fitted_meta()))
        log.debug("%s fold %d/%d: %s", method, k + 1, f, metas[-1])
    overrides = cls.refit_overrides(metas)
    keys = sorted({k for k in ("alpha", "beta", "gamma", "best_epoch", "best_iter", "C", "rho", "best_step",
                               "val_accuracy", "val_acc") if k in metas[0]})
    fold_meta = [{k: m.get(k) for k in keys} for m in metas]
    log.info("%s: cross-validation within the shots (%d folds) chose %s", method, f, overrides)
    return CVOutcome(overrides=overrides, folds=f, fold_meta=fold_meta,
                     note=f"chosen by {f}-fold cross-validation within the shots")
