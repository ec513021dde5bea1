"""ProKeR: parity with the official search + solve re-stated literally, fallbacks, bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kshot.methods import create
from kshot.errors import DataError
from kshot.methods.proker import IMAGENET_HPS, cholesky_in_place, rbf_kernel, transferred_hps
from tests.methods.conftest_cachemethods import (BAD_CASES, accuracy, assert_logits_input_checks, assert_rejects,
                                                 assert_round_trip, make_task, zeroshot_accuracy)


def official_proker(vecs, labels, val_x, val_y, test_x, clip_weights, beta_grid, lmbda_grid):
    """`omarnust/BReg-Adapter @ f2ecb3d2 : trainers/proker.py: ProKeR` with a grid search (clip_weights [D, C])."""
    def rbf(x, y, beta):
        return (-beta * (1 - x @ y.T)).exp()

    n_classes = clip_weights.shape[1]
    cache = F.one_hot(labels, num_classes=n_classes).to(vecs.dtype)
    logits_text_shots = torch.einsum("sd, cd -> sc", vecs, clip_weights.T)
    logits_text_val = torch.einsum("bd, cd -> bc", val_x, clip_weights.T)
    best_val_acc = 0
    for beta in torch.linspace(*beta_grid[:2], beta_grid[2]):
        K_SS = rbf(vecs, vecs, float(beta))
        K_XS = rbf(val_x, vecs, float(beta))
        for lmbda in torch.linspace(*lmbda_grid[:2], lmbda_grid[2]):
            alpha_i = torch.linalg.solve(1 / float(lmbda) * K_SS + torch.eye(vecs.size(0), dtype=vecs.dtype),
                                         cache - logits_text_shots)
            acc = 100 * float((logits_text_val + K_XS @ alpha_i).argmax(1).eq(val_y).float().mean())
            if acc > best_val_acc:
                best_val_acc, best_lmbda, best_beta = acc, float(lmbda), float(beta)
    K_SS = rbf(vecs, vecs, best_beta)
    alpha_i = torch.linalg.solve(1 / best_lmbda * K_SS + torch.eye(vecs.size(0), dtype=vecs.dtype),
                                 cache - logits_text_shots)
    return test_x @ clip_weights + rbf(test_x, vecs, best_beta) @ alpha_i, best_beta, best_lmbda


@pytest.mark.parametrize("k", [1, 4])
def test_matches_the_official_algorithm(k):
    task, test = make_task(c=10, k=k, d=24, seed=k)
    grids = {"beta_grid": (0.5, 8.0, 6), "lmbda_grid": (0.01, 2.0, 5)}
    m = create("proker", **grids).fit(task)
    ref, beta, lmbda = official_proker(task.train.features.double(), task.train.labels, task.val.features.double(),
                                       task.val.labels, test.features.double(), task.text_weights.double().T,
                                       grids["beta_grid"], grids["lmbda_grid"])
    assert (m.beta_, m.lmbda_) == pytest.approx((beta, lmbda), rel=1e-6)
    got = m.logits(test.features).double() / task.logit_scale  # kshot scales the official raw logits by s
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5


def test_improves_on_zero_shot_and_grows_with_shots():
    accs = []
    for k in (1, 4, 16):
        task, test = make_task(c=20, k=k, d=32, seed=2)
        accs.append(accuracy(create("proker").fit(task).logits(test.features), test.labels))
    zs = zeroshot_accuracy(*make_task(c=20, k=1, d=32, seed=2))
    assert accs[0] < accs[1] < accs[2] and accs[0] >= zs and accs[2] > zs + 0.1, (zs, accs)


def test_without_val_uses_the_transferred_imagenet_values():
    task, _ = make_task(c=6, k=4, d=16)
    m = create("proker").fit(replace(task, val=None))
    assert (m.beta_, m.lmbda_) == IMAGENET_HPS[4] and m.fitted_meta()["val_accuracy"] is None
    assert transferred_hps(3) == IMAGENET_HPS[2] and transferred_hps(32) == IMAGENET_HPS[16]


def test_duplicate_features_and_empty_classes_stay_finite():
    task, test = make_task(c=6, k=2, d=16, empty=(2,))
    dup = replace(task.train, features=task.train.features.repeat(2, 1), labels=task.train.labels.repeat(2),
                  paths=task.train.paths * 2)
    m = create("proker").fit(replace(task, train=dup))
    logits = m.logits(test.features)
    assert torch.isfinite(logits).all()
    assert (logits.argmax(1) == 2).any()  # the shot-less class can still win on its text score


def test_round_trip_and_logit_checks(tmp_path):
    task, test = make_task(c=6, k=3, d=16, views=2)
    m = create("proker").fit(task)
    assert m.keys_.shape[0] == 6 * 3 * 3  # plain shots + 2 views
    assert_round_trip(m, test.features, tmp_path / "proker")
    assert_logits_input_checks(m, 16)


@pytest.mark.parametrize("case", BAD_CASES)
def test_rejects_bad_tasks(case):
    assert_rejects("proker", case)


def test_refit_overrides_fix_the_folds_beta_and_lambda():
    from kshot.methods.proker import ProKeR

    task, test = make_task(c=6, k=4, d=16)
    m = create("proker").fit(task)
    refit = create("proker", **ProKeR.refit_overrides([m.fitted_meta()])).fit(task)
    assert (refit.beta_, refit.lmbda_) == (m.beta_, m.lmbda_) and refit.fitted_meta()["val_accuracy"] is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_in_place_is_the_upper_factor_in_the_matrix_own_memory(dtype):
    x = torch.nn.functional.normalize(torch.randn(60, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    a = rbf_kernel(x.to(dtype), x.to(dtype), 2.0).div_(0.1)
    a.diagonal().add_(1.0)
    expected = torch.linalg.cholesky(a).mT
    ptr = a.data_ptr()
    u = cholesky_in_place(a)
    assert u.data_ptr() == ptr
    torch.testing.assert_close(u, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(u, u.triu())


def test_cholesky_in_place_refuses_a_matrix_that_is_not_positive_definite():
    with pytest.raises(DataError, match="not positive definite"):
        cholesky_in_place(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
