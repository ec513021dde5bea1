"""ZS-LP and CLAP: parity with the official training loop re-stated literally, no-validation behaviour, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kshot.methods import create
from kshot.methods.clap import epoch_lr, ZSLPConfig
from tests.methods.conftest_cachemethods import (BAD_CASES, accuracy, assert_logits_input_checks, assert_rejects,
                                                 assert_round_trip, make_task, zeroshot_accuracy)

#: 8 epochs of 5 batches: long enough to exercise warm-up, cosine decay and momentum; at unit-norm prototypes and
#: lr 0.1 the trajectory amplifies float32 rounding (float32 vs float64: 2e-6 relative at 8 epochs, 7e-3 at 25).
FAST = {"epochs": 8, "batch_size": 8}


def official_lp(feats, labels, base_text, constraint, epochs, batch_size, seed, scale=100.0, lr=0.1, momentum=0.9):
    """`jusiro/CLAP @ dbdf4095 : trainers/adapters.py` (ZS init, l2 constraint, run_epoch, forward_lp) with Dassl's
    SGD (momentum buffer) and constant-warm-up cosine schedule written out; shuffles drawn as kshot seeds them."""
    prototypes = base_text.clone()
    if constraint:
        logits_ds = scale * F.normalize(feats, dim=-1) @ F.normalize(base_text, dim=-1).T
        labels_one_hot = F.one_hot(labels)
        alpha_constraint = (torch.diag(torch.softmax(logits_ds, -1).t() @ labels_one_hot.to(feats.dtype))
                            / labels_one_hot.sum(0))
    num_batches = max(1, len(feats) // batch_size)
    gen = torch.Generator().manual_seed(seed)
    buf = None
    for epoch in range(epochs):
        cur_lr = 1e-5 if epoch == 0 else lr * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2
        idx = torch.randperm(len(feats), generator=gen)
        f_ep, y_ep = feats[idx], labels[idx]
        for batch_idx in range(num_batches):
            f, y = f_ep[batch_idx * batch_size:(batch_idx + 1) * batch_size], y_ep[batch_idx * batch_size:
                                                                                   (batch_idx + 1) * batch_size]
            p = prototypes.clone().requires_grad_(True)
            image_features_norm = f / f.norm(dim=-1, keepdim=True)
            prototypes_norm = p / p.norm(dim=-1, keepdim=True)
            loss = F.cross_entropy(image_features_norm @ prototypes_norm.t() * scale, y)
            if constraint:
                disimilitude = (p - base_text.clone()).pow(2).sum(-1)
                loss = loss + torch.mean(alpha_constraint * disimilitude)
            (grad,) = torch.autograd.grad(loss, p)
            buf = grad.clone() if buf is None else momentum * buf + grad
            prototypes = prototypes - cur_lr * buf
    return scale * F.normalize(prototypes, dim=-1)


@pytest.mark.parametrize("name", ["zs_lp", "clap"])
def test_matches_the_official_training_loop(name):
    task, test = make_task(c=5, k=8, d=16, seed=4)
    m = create(name, **FAST).fit(task)
    w = official_lp(task.train.features.double(), task.train.labels, task.text_weights.double(), name == "clap",
                    FAST["epochs"], FAST["batch_size"], task.seed)
    ref = test.features.double() @ w.T
    got = m.logits(test.features).double()
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5


def test_schedule_is_dassl_constant_warmup_then_cosine():
    cfg = ZSLPConfig()
    assert epoch_lr(0, cfg) == 1e-5 and epoch_lr(1, cfg) == pytest.approx(0.1)
    assert epoch_lr(151, cfg) == pytest.approx(0.05) and epoch_lr(299, cfg) < 1e-3


@pytest.mark.parametrize("name", ["zs_lp", "clap"])
def test_improves_on_zero_shot_and_grows_with_shots(name):
    accs = []
    for k in (1, 4, 16):
        task, test = make_task(c=20, k=k, d=32, seed=3)
        accs.append(accuracy(create(name, epochs=60).fit(task).logits(test.features), test.labels))
    zs = zeroshot_accuracy(*make_task(c=20, k=1, d=32, seed=3))
    assert accs[0] < accs[1] < accs[2] and accs[2] > zs + 0.1, (name, zs, accs)


def test_clap_runs_without_validation_and_ignores_it():
    task, test = make_task(c=6, k=4, d=16)
    with_val = create("clap", **FAST).fit(task).logits(test.features)
    without = create("clap", **FAST).fit(replace(task, val=None)).logits(test.features)
    assert torch.equal(with_val, without)


def test_constraint_keeps_prototypes_nearer_the_text():
    task, _ = make_task(c=6, k=4, d=16)
    free = create("zs_lp", epochs=60).fit(task).weight_ / task.logit_scale
    held = create("clap", epochs=60, constraint="balanced").fit(task).weight_ / task.logit_scale
    text = task.text_weights
    assert (held - text).norm(dim=1).mean() < (free - text).norm(dim=1).mean()


def test_empty_class_gets_alpha_one_and_finite_logits():
    task, test = make_task(c=6, k=3, d=16, empty=(1,))
    m = create("clap", **FAST).fit(task)
    assert float(m.alpha_[1]) == 1.0 and torch.isfinite(m.logits(test.features)).all()


@pytest.mark.parametrize("name", ["zs_lp", "clap"])
def test_round_trip_and_logit_checks(name, tmp_path):
    task, test = make_task(c=6, k=3, d=16, views=2)
    m = create(name, **FAST).fit(task)
    assert_round_trip(m, test.features, tmp_path / name)
    assert_logits_input_checks(m, 16)


@pytest.mark.parametrize("case", [c for c in BAD_CASES if c != "val_missing_class"])
def test_rejects_bad_tasks(case):
    assert_rejects("clap", case, **FAST)
