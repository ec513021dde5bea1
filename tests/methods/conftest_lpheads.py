"""Synthetic few-shot tasks for the linear-head tests (linear_probe, lpp, clip_adapter, inmap).

Imported explicitly: `from tests.methods.conftest_lpheads import make_task`. Class means lie on the unit sphere;
image features are noisy means; text weights are noisier means, so the shots (and, for InMaP, the unlabelled
test features) carry information the zero-shot classifier lacks.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from kshot.features.featureset import FeatureSet
from tests.helpers import sample_features as sample
from kshot.methods.base import Task


def make_task(c: int = 8, k: int = 8, d: int = 32, val_per_class: int = 4, test_per_class: int = 30,
              feat_noise: float = 0.8, text_noise: float = 1.5, views: int = 0, empty: tuple[int, ...] = (),
              seed: int = 0, with_val: bool = True, unlabeled: bool = False,
              logit_scale: float = 100.0) -> tuple[Task, FeatureSet]:
    """A learnable task and its held-out test split.

    Classes in `empty` get no shots (but val/test items). With `unlabeled=True` the test features (labels hidden)
    are the task's unlabelled set, as a transductive method receives them.
    """
    gen = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(c, d, generator=gen), dim=-1)
    text = F.normalize(means + text_noise * torch.randn(c, d, generator=gen) / d**0.5, dim=-1)
    shot_classes = [i for i in range(c) if i not in empty]
    if k:
        train = sample(means, k, feat_noise, gen, views=views, classes=shot_classes)
    else:
        train = FeatureSet(torch.zeros(0, d), torch.zeros(0, dtype=torch.long), [])
    val = sample(means, val_per_class, feat_noise, gen) if with_val else None
    test = sample(means, test_per_class, feat_noise, gen)
    unl = replace(test, labels=torch.full_like(test.labels, -1)) if unlabeled else None
    task = Task(train=train, classnames=[f"class{i}" for i in range(c)], text_weights=text, val=val, unlabeled=unl,
                logit_scale=logit_scale, seed=seed)
    return task, test


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(logits.argmax(-1).eq(labels).float().mean())


def zeroshot_accuracy(task: Task, test: FeatureSet) -> float:
    return accuracy(test.features @ task.text_weights.T, test.labels)


def tiny_task(**kw: object) -> Task:
    """The contract-size task: C=5, K=2, D=16."""
    task, _ = make_task(c=5, k=2, d=16, val_per_class=2, test_per_class=2, **kw)  # type: ignore[arg-type]
    return task


def bad_tasks(needs_text: bool = True) -> dict[str, tuple[Task, str]]:
    """Name -> (a task that `fit` must reject, a fragment of the expected message)."""
    task = tiny_task()
    nan_train = replace(task.train, features=task.train.features.clone())
    nan_train.features[3, 2] = float("nan")
    wide_val = replace(task.val, features=torch.cat([task.val.features, task.val.features[:, :1]], dim=1))
    short_val = task.val.subset((task.val.labels != 4).nonzero().flatten())
    empty_train = FeatureSet(torch.zeros(0, 16), torch.zeros(0, dtype=torch.long), [])
    out_of_range = replace(task.train, labels=task.train.labels.clone())
    out_of_range.labels[0] = 7
    cases = {
        "val_dim": (replace(task, val=wide_val), "dimension"),
        "nan": (replace(task, train=nan_train), "NaN"),
        "no_shots": (replace(task, train=empty_train), "K=0"),
        "val_missing_class": (replace(task, val=short_val), "validation split has no example"),
        "label_range": (replace(task, train=out_of_range), "outside"),
    }
    if needs_text:
        cases["class_count"] = (replace(task, classnames=task.classnames[:4]), "rows")
        cases["text_dim"] = (replace(task, text_weights=task.text_weights[:, :8]), "dimension")
        cases["no_text"] = (replace(task, text_weights=None), "text weights")
    return cases
