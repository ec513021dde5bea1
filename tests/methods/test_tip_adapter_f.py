"""Tip-Adapter-F: loss trajectory against a literal re-implementation of the official loop, epoch choice on val,
augmented views as training inputs, save/load, bad inputs, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import ConfigError
from kshot.methods import create
from kshot.features.featureset import FeatureSet
from kshot.methods import Task
from kshot.methods.tip_adapter_f import TrainSchedule, epoch_inputs, train_epochs
from tests.methods.conftest_cachemethods import (BAD_CASES, FAST_GRID_2, accuracy, assert_logits_input_checks,
                                                 assert_rejects, assert_round_trip, make_task, zeroshot_accuracy)


def reference_tip_f(task, epochs, lr=1e-3, eps=1e-4, alpha=1.17, beta=1.0, scale=100.0):
    """`run_tip_adapter_F` on cached features, full batch: a bias-free linear layer initialised from the cache."""
    x, y = task.train.features, task.train.labels
    adapter = nn.Linear(x.shape[1], x.shape[0], bias=False)
    adapter.weight = nn.Parameter(x.clone())
    values = F.one_hot(y, task.num_classes).float()
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr, eps=eps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    losses = []
    for _ in range(epochs):
        logits = scale * x @ task.text_weights.T + alpha * ((-1) * (beta - beta * adapter(x))).exp() @ values
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses, adapter.weight.detach()


def test_loss_trajectory_matches_reference():
    task, _ = make_task(c=8, k=8, d=16, with_val=False)
    m = create("tip_adapter_f", epochs=15, lr=5e-3).fit(task)
    ref_losses, ref_keys = reference_tip_f(task, 15, lr=5e-3)
    got = [row["loss"] for row in m.fitted_meta()["history"]]
    assert got == pytest.approx(ref_losses, rel=1e-4, abs=1e-6)
    assert ref_losses[-1] < ref_losses[0]  # it does learn
    torch.testing.assert_close(m.keys_, ref_keys, atol=1e-5, rtol=1e-5)
    assert m.fitted_meta()["best_epoch"] == 14  # no val: the last epoch


def test_best_epoch_is_chosen_on_val():
    task, _ = make_task(c=10, k=8, d=16, feat_noise=2.0)
    m = create("tip_adapter_f", epochs=12, lr=2e-2, **FAST_GRID_2).fit(task)
    hist = m.fitted_meta()["history"]
    val_accs = [row["val_acc"] for row in hist]
    assert m.best_epoch_ == val_accs.index(max(val_accs))
    with torch.no_grad():  # the kept keys reproduce the best val accuracy at the initial alpha/beta
        v = task.val.features
        values = F.one_hot(task.train.labels, 10).float()
        logits = 100 * v @ task.text_weights.T + 1.17 * torch.exp(-(1 - v @ m.keys_.T)) @ values
    assert accuracy(logits, task.val.labels) == pytest.approx(max(val_accs))


def test_augmented_views_are_the_training_inputs():
    task, _ = make_task(c=5, k=4, d=16, views=6)
    x = epoch_inputs(task.train, torch.Generator().manual_seed(0))
    aug = task.train.aug_features
    which = [[v for v in range(6) if torch.equal(x[n], aug[v, n])] for n in range(len(x))]
    assert all(len(w) == 1 for w in which) and len({w[0] for w in which}) > 1
    a = create("tip_adapter_f", epochs=5, **FAST_GRID_2).fit(task)
    b = create("tip_adapter_f", epochs=5, **FAST_GRID_2).fit(task)
    assert a.fitted_meta()["history"] == b.fitted_meta()["history"]
    task_plain = make_task(c=5, k=4, d=16, views=0)[0]
    c = create("tip_adapter_f", epochs=5, **FAST_GRID_2).fit(task_plain)
    assert a.fitted_meta()["history"][0]["loss"] != c.fitted_meta()["history"][0]["loss"]


def test_beats_zero_shot_at_16_shots():
    task, test = make_task(k=16)
    m = create("tip_adapter_f").fit(task)
    acc, zs = accuracy(m.logits(test.features), test.labels), zeroshot_accuracy(task, test)
    assert acc > zs + 0.05, (acc, zs)
    assert m.fitted_meta()["trainable_params"] == 20 * 16 * 32


def test_empty_classes_round_trip_and_determinism(tmp_path):
    task, test = make_task(c=6, k=4, d=16, empty=(2,))
    a = create("tip_adapter_f", epochs=4, **FAST_GRID_2).fit(task)
    b = create("tip_adapter_f", epochs=4, **FAST_GRID_2).fit(task)
    assert torch.equal(a.logits(test.features), b.logits(test.features))
    zs = 100 * test.features @ task.text_weights.T
    assert torch.allclose(a.logits(test.features)[:, 2], zs[:, 2], atol=1e-4)  # no cache entry for class 2
    assert_round_trip(a, test.features, tmp_path / "tipf")
    assert_logits_input_checks(a, 16)


def test_bad_schedule():
    with pytest.raises(ConfigError, match=r"TipAdapterFConfig\.lr must be > 0, got 0\.0"):
        create("tip_adapter_f", lr=0.0)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs(case):
    assert_rejects("tip_adapter_f", case, epochs=2, **FAST_GRID_2)


@pytest.mark.parametrize("views", [0, 3])
def test_train_epochs_prepares_once_per_distinct_input(views):
    """`prepare` runs once for val and once in all (plain shots) or once per epoch (a fresh augmented view)."""
    task, _ = make_task(c=4, k=4, d=8, val_per_class=2)
    if views:
        aug = F.normalize(task.train.features[None] + 0.1 * torch.randn(views, *task.train.features.shape), dim=-1)
        task = Task(train=FeatureSet(task.train.features, task.train.labels, task.train.paths, aug_features=aug),
                    val=task.val, classnames=task.classnames, text_weights=task.text_weights)
    weight = torch.nn.Parameter(torch.zeros(4, 8))
    calls = []

    def prepare(x):
        calls.append(len(x))
        return (x, x.sum(-1))

    def forward(x, s):
        assert s.shape == x.shape[:1]
        return x @ weight.T

    train_epochs([weight], forward, task.train, task.val, TrainSchedule(5, 6, 1e-2, 1e-4, 0.0), 0, prepare)
    assert calls.count(len(task.val)) == 1
    assert calls.count(len(task.train)) == (5 if views else 1)
