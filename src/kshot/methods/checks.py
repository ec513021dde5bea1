"""Input checks shared by methods: each raises a specific error instead of producing silent garbage."""

from __future__ import annotations

import torch

from kshot.errors import ConfigError, DataError
from kshot.features.featureset import FeatureSet
from kshot.methods.base import Task


def check_features(features: torch.Tensor, dim: int | None = None, *, what: str = "features") -> None:
    """features [N, D]: finite, 2-D, and of width `dim` when given."""
    if features.ndim != 2:
        raise DataError(f"{what} must be [N, D], got shape {tuple(features.shape)}")
    if dim is not None and features.shape[1] != dim:
        raise DataError(f"{what} have dimension {features.shape[1]} but the method was fitted on dimension {dim}")
    if not torch.isfinite(features).all():
        bad = (~torch.isfinite(features)).any(dim=1).nonzero().flatten()[:5].tolist()
        raise DataError(f"{what} contain NaN/inf (rows {bad}...)")


def classes_without_shots(task: Task) -> list[int]:
    """Class indices with no labelled training example."""
    counts = torch.bincount(task.train.labels[task.train.labels >= 0], minlength=task.num_classes)
    return counts.eq(0).nonzero().flatten().tolist()


def check_task(task: Task, *, needs_shots: bool = True, needs_text: bool = True, supports_empty_classes: bool = False,
               method: str = "method") -> None:
    """Validate a task before fitting.

    Raises:
        DataError: shapes/dims disagree, features are not finite, labels are out of range, no shots where shots are
            needed, or classes without shots for a method that cannot handle them (names them).
    """
    c = task.num_classes
    if needs_text and task.text_weights is None:
        raise ConfigError(f"{method} needs text weights (a CLIP backbone); this task has none")
    if task.text_weights is not None:
        if task.text_weights.shape[0] != c:
            raise DataError(f"text weights have {task.text_weights.shape[0]} rows but the task has {c} classes")
        check_features(task.text_weights, what="text weights")
    dim = task.text_weights.shape[1] if task.text_weights is not None else None
    for name, fs in (("train", task.train), ("val", task.val), ("unlabeled", task.unlabeled)):
        if fs is None or len(fs) == 0:
            continue
        check_features(fs.features, dim, what=f"{name} features")
        dim = fs.features.shape[1]
        if name != "unlabeled":
            _check_labels(fs, c, name)
    if needs_shots and len(task.train) == 0:
        raise DataError(f"{method} needs at least one labelled shot (K=0 shots given; -k/--shots >= 1); zeroshot and "
                        "inmap accept K=0")
    if needs_shots and not supports_empty_classes:
        empty = classes_without_shots(task)
        if empty:
            names = ", ".join(task.classnames[i] for i in empty[:10])
            raise DataError(f"{method} needs shots for every class; {len(empty)} classes have none: {names}"
                            + (" ..." if len(empty) > 10 else ""))


def _check_labels(fs: FeatureSet, num_classes: int, name: str) -> None:
    labels = fs.labels
    if (labels < 0).any():
        raise DataError(f"{name} features include unlabelled items (label -1)")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{name} label {int(labels.max())} is outside the {num_classes} classes")


def check_val_covers(task: Task, method: str) -> None:
    """A validation split used for search must cover every class that has shots."""
    if task.val is None:
        return
    have = set(task.train.labels.tolist())
    seen = set(task.val.labels.tolist())
    missing = sorted(have - seen)
    if missing:
        names = ", ".join(task.classnames[i] for i in missing[:10])
        raise DataError(f"{method}: the validation split has no example of {len(missing)} classes: {names}")
