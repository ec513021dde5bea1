"""Synthetic few-shot tasks and bad-input cases shared by the cache-method tests (tip_adapter, tip_adapter_f, ape,
ape_t, track1, search). Imported explicitly: `from tests.methods.conftest_cachemethods import make_task`.

Class means lie on the unit sphere; image features are noisy means; text weights are *noisier* means, so a few shots
carry information the zero-shot classifier lacks.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kshot.features.featureset import FeatureSet
from kshot.methods.base import Task
from tests.helpers import sample_features


def make_task(c: int = 20, k: int = 16, d: int = 32, val_per_class: int = 4, test_per_class: int = 30,
              feat_noise: float = 1.5, text_noise: float = 1.5, text_gap: float = 4.0, views: int = 0,
              empty: tuple[int, ...] = (), seed: int = 0, with_val: bool = True) -> tuple[Task, FeatureSet]:
    """A learnable task and its held-out test split; classes in `empty` get no shots (but val/test items).

    `text_gap` adds a shared direction to every text weight (CLIP's modality gap), so image-text cosines are small
    (≈ 0.2) as with CLIP and the logit scale 100 gives realistic logit spreads.
    """
    gen = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(c, d, generator=gen), dim=-1)
    shared = F.normalize(torch.randn(d, generator=gen), dim=0)
    means = F.normalize(means - (means @ shared)[:, None] * shared, dim=-1)  # class means orthogonal to the gap
    text = F.normalize(text_gap * shared + means + text_noise * torch.randn(c, d, generator=gen) / d**0.5, dim=-1)
    shot_classes = [i for i in range(c) if i not in empty]
    train = sample_features(means, k, feat_noise, gen, views=views, classes=shot_classes) if k else FeatureSet(
        torch.zeros(0, d), torch.zeros(0, dtype=torch.long), [])
    val = sample_features(means, val_per_class, feat_noise, gen) if with_val else None
    test = sample_features(means, test_per_class, feat_noise, gen)
    task = Task(train=train, classnames=[f"class{i}" for i in range(c)], text_weights=text, val=val, seed=seed)
    return task, test


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(logits.argmax(-1).eq(labels).float().mean())


def zeroshot_accuracy(task: Task, test: FeatureSet) -> float:
    return accuracy(test.features @ task.text_weights.T, test.labels)


def bad_tasks() -> dict[str, tuple[Task, str]]:
    """Name -> (a task that must be rejected by `fit`, a fragment of the expected message)."""
    task, _ = make_task(c=5, k=2, d=16, val_per_class=2, test_per_class=2)
    nan_train = replace(task.train, features=task.train.features.clone())
    nan_train.features[3, 2] = float("nan")
    wide_val = replace(task.val, features=torch.cat([task.val.features, task.val.features[:, :1]], dim=1))
    short_val = task.val.subset((task.val.labels != 4).nonzero().flatten())
    empty_train = FeatureSet(torch.zeros(0, 16), torch.zeros(0, dtype=torch.long), [])
    return {
        "class_count": (replace(task, classnames=task.classnames[:4]), "rows"),
        "text_dim": (replace(task, text_weights=task.text_weights[:, :8]), "dimension"),
        "val_dim": (replace(task, val=wide_val), "dimension"),
        "nan": (replace(task, train=nan_train), "NaN"),
        "no_shots": (replace(task, train=empty_train), "K=0"),
        "val_missing_class": (replace(task, val=short_val), "validation split has no example"),
        "no_text": (replace(task, text_weights=None), "text weights"),
    }


BAD_CASES = list(bad_tasks())
FAST_GRID_2 = {"search_steps": (20, 6)}
FAST_GRID_3 = {"search_steps": (20, 6, 4)}


def assert_rejects(name: str, case: str, **overrides) -> None:
    """`fit` on the bad task `case` raises a kshot error whose message contains the expected fragment."""
    from kshot.errors import KshotError
    from kshot.methods import create

    task, fragment = bad_tasks()[case]
    with pytest.raises(KshotError, match=fragment):
        create(name, **overrides).fit(task)


def assert_logits_input_checks(method, dim: int) -> None:
    """`logits` rejects features of the wrong width and non-finite features."""
    from kshot.errors import DataError

    with pytest.raises(DataError, match="dimension"):
        method.logits(torch.randn(3, dim + 1))
    bad = F.normalize(torch.randn(3, dim), dim=-1)
    bad[1, 0] = float("inf")
    with pytest.raises(DataError, match="NaN/inf"):
        method.logits(bad)


def assert_round_trip(method, features: torch.Tensor, path) -> None:
    """save -> kshot.methods.load gives the same class and identical logits."""
    from kshot.methods import load

    method.save(path)
    loaded = load(path)
    assert type(loaded) is type(method)
    assert torch.equal(method.logits(features), loaded.logits(features))
    assert loaded.fitted_meta() == method.fitted_meta()
