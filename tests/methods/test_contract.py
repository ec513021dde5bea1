"""The method contract, for every registered method: shapes, seed determinism, save/load, bad input."""

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import KshotError
from kshot.features.featureset import FeatureSet
from kshot.methods import METHODS, Task, create, load

C, K, D = 5, 2, 16
NAMES = [e.name for e in METHODS if not getattr(e.obj, "needs_backbone", False)]


def _fs(feats, labels):
    return FeatureSet(feats, labels, [f"{i}.png" for i in range(len(labels))])


def make_task(seed: int = 0, k: int = K) -> Task:
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(C, D, generator=g), dim=-1)

    def draw(n):
        labels = torch.arange(C).repeat_interleave(n)
        return _fs(F.normalize(means[labels] + 0.3 * torch.randn(len(labels), D, generator=g), dim=-1), labels)

    text = F.normalize(means + 0.5 * torch.randn(C, D, generator=g), dim=-1)
    test = draw(6)
    return Task(train=draw(k), val=draw(2), classnames=[f"c{i}" for i in range(C)], text_weights=text,
                unlabeled=_fs(test.features, torch.full((len(test),), -1)), logit_scale=100.0, seed=3)


@pytest.fixture(scope="module")
def task():
    return make_task()


@pytest.mark.parametrize("name", NAMES)
def test_shapes_determinism_and_round_trip(name, task, tmp_path):
    x = task.unlabeled.features
    a = create(name).fit(task)
    la = a.logits(x)
    assert la.shape == (len(x), C) and la.dtype == torch.float32 and torch.isfinite(la).all()
    lb = create(name).fit(task).logits(x)
    torch.testing.assert_close(la, lb, msg=f"{name} is not deterministic for a fixed seed")
    b = load(a.save(tmp_path / name))
    torch.testing.assert_close(b.logits(x), la, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_rejects_wrong_feature_dimension(name, task):
    m = create(name).fit(task)
    with pytest.raises((KshotError, ValueError, RuntimeError)):
        m.logits(torch.zeros(3, D + 1))


@pytest.mark.parametrize("name", NAMES)
def test_rejects_nan_features(name, task):
    bad = task.train.features.clone()
    bad[0, 0] = float("nan")
    t = Task(train=_fs(bad, task.train.labels), val=task.val, classnames=task.classnames,
             text_weights=task.text_weights, unlabeled=task.unlabeled)
    with pytest.raises(KshotError):
        create(name).fit(t)


@pytest.mark.parametrize("name", NAMES)
def test_empty_classes_supported_or_named(name, task):
    keep = task.train.labels != 2
    t = Task(train=task.train.subset(torch.nonzero(keep).flatten()), val=task.val.subset(
        torch.nonzero(task.val.labels != 2).flatten()), classnames=task.classnames, text_weights=task.text_weights,
        unlabeled=task.unlabeled, seed=1)
    cls = METHODS.get(name)
    if getattr(cls, "supports_empty_classes", False):
        logits = create(name).fit(t).logits(task.unlabeled.features)
        assert logits.shape == (len(task.unlabeled), C)
    else:
        with pytest.raises(KshotError, match="c2"):
            create(name).fit(t)
