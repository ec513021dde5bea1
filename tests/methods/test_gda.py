"""GDA: parity with the official algorithm re-stated literally, selection on val only, degenerate covariances."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kshot.methods import create
from kshot.methods.gda import OFFICIAL_ALPHAS
from tests.methods.conftest_cachemethods import (BAD_CASES, accuracy, assert_logits_input_checks, assert_rejects,
                                                 assert_round_trip, make_task, zeroshot_accuracy)


def official_gda(vecs, labels, val_x, val_y, test_x, clip_weights, scale=100.0):
    """`mrflogs/ICLR24 @ 560fe211 : main_few_shots.py: run`, line by line (clip_weights is [D, C] there)."""
    n_cls = clip_weights.shape[1]
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(n_cls)])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(n_cls)])
    d = center_vecs.shape[1]
    cov_inv = d * torch.linalg.pinv((center_vecs.shape[0] - 1) * center_vecs.T.cov()
                                    + center_vecs.T.cov().trace() * torch.eye(d, dtype=vecs.dtype))
    ps = torch.ones(n_cls, dtype=vecs.dtype) * 1.0 / n_cls
    W = torch.einsum("nd, dc -> cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    best_val_acc, best_alpha = 0, 0.1
    for alpha in [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]:
        val_logits = scale * val_x @ clip_weights + alpha * (val_x @ W + b)
        acc = float(val_logits.argmax(1).eq(val_y).float().mean())
        if acc > best_val_acc:
            best_val_acc, best_alpha = acc, alpha
    return scale * test_x @ clip_weights + best_alpha * (test_x @ W + b), best_alpha


@pytest.mark.parametrize("k", [2, 8])
def test_matches_the_official_algorithm(k):
    task, test = make_task(c=12, k=k, d=24, seed=k)
    m = create("gda").fit(task)
    ref, alpha = official_gda(task.train.features.double(), task.train.labels, task.val.features.double(),
                              task.val.labels, test.features.double(), task.text_weights.double().T)
    assert m.alpha_ == alpha and alpha in OFFICIAL_ALPHAS
    got = m.logits(test.features).double()
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5


def test_uses_aug_views_as_extra_rows():
    task, test = make_task(c=6, k=2, d=16, views=3)
    m = create("gda").fit(task)
    f = task.train
    rows = torch.cat([f.features, f.aug_features.reshape(-1, 16)]).double()
    ref, _ = official_gda(rows, f.labels.repeat(4), task.val.features.double(), task.val.labels,
                          test.features.double(), task.text_weights.double().T)
    assert torch.allclose(m.logits(test.features).double(), ref, rtol=1e-5, atol=1e-4)


def test_improves_on_zero_shot_and_grows_with_shots():
    accs = []
    for k in (1, 4, 16):
        task, test = make_task(c=20, k=k, d=32, seed=1)
        accs.append(accuracy(create("gda").fit(task).logits(test.features), test.labels))
    zs = zeroshot_accuracy(*make_task(c=20, k=1, d=32, seed=1))
    assert accs[0] < accs[1] < accs[2] and accs[2] > zs + 0.1, (zs, accs)


def test_alpha_is_chosen_on_validation_only_and_default_without_val():
    task, test = make_task(c=8, k=4, d=16)
    m = create("gda").fit(replace(task, val=None))
    assert m.alpha_ == 0.1 and m.fitted_meta()["val_accuracy"] is None
    assert create("gda", init_alpha=10.0).fit(replace(task, val=None)).alpha_ == 10.0


def test_one_shot_per_class_and_duplicates_fall_back_to_isotropic_without_nan(caplog):
    task, test = make_task(c=8, k=1, d=16)
    m = create("gda").fit(task)
    assert m.fitted_meta()["isotropic_fallback"] and "isotropic" in caplog.text
    logits = m.logits(test.features)
    assert torch.isfinite(logits).all()
    # the fallback is a nearest-class-mean head: without text it ranks by distance to the class mean
    image_only = create("gda").fit(replace(task, text_weights=None))
    means = task.train.features  # one shot per class = the class mean
    dist = torch.cdist(test.features, means)
    assert torch.equal(image_only.logits(test.features).argmax(1), dist.argmin(1))
    dup = replace(task.train, features=task.train.features.repeat(3, 1), labels=task.train.labels.repeat(3),
                  paths=task.train.paths * 3)
    assert torch.isfinite(create("gda").fit(replace(task, train=dup)).logits(test.features)).all()


def test_singular_covariance_is_regularised():
    """D > n: the scatter matrix is rank-deficient; the shrinkage keeps the head finite and useful."""
    task, test = make_task(c=4, k=2, d=64)
    m = create("gda").fit(task)
    assert not m.fitted_meta()["isotropic_fallback"] and torch.isfinite(m.logits(test.features)).all()


def test_image_only_without_text():
    task, test = make_task(c=10, k=8, d=24)
    m = create("gda").fit(replace(task, text_weights=None))
    assert accuracy(m.logits(test.features), test.labels) > 0.5


def test_round_trip_and_logit_checks(tmp_path):
    task, test = make_task(c=6, k=3, d=16)
    m = create("gda").fit(task)
    assert_round_trip(m, test.features, tmp_path / "gda")
    assert_logits_input_checks(m, 16)


@pytest.mark.parametrize("case", [c for c in BAD_CASES if c != "no_text"])
def test_rejects_bad_tasks(case):
    assert_rejects("gda", case)


def test_class_without_shots_is_named():
    task, _ = make_task(c=6, k=2, d=16, empty=(3,))
    with pytest.raises(Exception, match="class3"):
        create("gda").fit(replace(task, val=None))


def test_refit_overrides_fix_the_folds_alpha():
    from kshot.methods.gda import GDA

    task, test = make_task(c=6, k=4, d=16)
    m = create("gda").fit(task)
    refit = create("gda", **GDA.refit_overrides([m.fitted_meta()])).fit(replace(task, val=None))
    assert refit.alpha_ == m.alpha_ and torch.equal(refit.logits(test.features), m.logits(test.features))
