import math
import time
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError, DataError, KshotError
from kshot.methods import create, load
from kshot.methods.linear_probe import LPCLIP_C_GRID, fit_logistic, search_c
from tests.methods.conftest_lpheads import (accuracy, bad_tasks, make_task, tiny_task,
                                            zeroshot_accuracy)


def _separable_ish(num_classes: int, n: int = 60, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = F.normalize(torch.randn(n, d, generator=g) + 0.8 * F.one_hot(y, d).float(), dim=1)
    return x, y


def _sklearn_reference(x, y, C, tol=1e-10):
    """Literal lpclip call (penalty l2 expressed as l1_ratio=0 on scikit-learn >= 1.8)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    kw = {"l1_ratio": 0.0} if (major, minor) >= (1, 8) else {"penalty": "l2"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(solver="lbfgs", max_iter=1000, C=C, tol=tol, **kw).fit(x.double().numpy(), y.numpy())


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("C", [1e-2, 1.0, 100.0])
def test_torch_solver_matches_sklearn(num_classes, C):
    x, y = _separable_ish(num_classes)
    ref = _sklearn_reference(x, y, C)
    w, b = fit_logistic(x, y, num_classes, C, solver="torch", tol=1e-9, dtype="float64")
    p_ref = torch.from_numpy(ref.predict_proba(x.double().numpy())).float()
    p = torch.softmax(x @ w.T + b, dim=1)
    assert torch.allclose(p, p_ref, atol=1e-5)
    if num_classes > 2:  # same symmetric parameterisation: the coefficients themselves agree
        assert torch.allclose(w, torch.from_numpy(ref.coef_).float(), atol=1e-3 * max(1.0, float(w.abs().max())))


@pytest.mark.parametrize("num_classes", [2, 5])
def test_mixed_precision_solver_reaches_the_float64_optimum(num_classes):
    """dtype="mixed" (float32 matmuls, closed-form gradient) converges to the float64 solution."""
    x, y = _separable_ish(num_classes)
    w64, b64 = fit_logistic(x, y, num_classes, 1.0, solver="torch", tol=1e-8, dtype="float64")
    w, b = fit_logistic(x, y, num_classes, 1.0, solver="torch", tol=1e-8, dtype="mixed")
    # float32 products limit it to ~1e-5 in the probabilities (the float64 path reaches 1e-9)
    assert torch.allclose(torch.softmax(x @ w.T + b, 1), torch.softmax(x @ w64.T + b64, 1), atol=1e-4)
    with pytest.raises(ConfigError, match="dtype"):
        fit_logistic(x, y, num_classes, 1.0, solver="torch", dtype="half")


def test_torch_objective_is_sklearns():
    """At the torch optimum, the gradient of the literal sklearn objective (mean CE + ||W||²/(2CN)) vanishes."""
    x, y = _separable_ish(4)
    C = 3.0
    w, b = fit_logistic(x, y, 4, C, solver="torch", tol=1e-10, dtype="float64")
    w = w.double().requires_grad_(True)
    b = b.double().requires_grad_(True)
    loss = F.cross_entropy(x.double() @ w.T + b, y) + (w**2).sum() / (2 * C * len(x))
    loss.backward()
    assert w.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5


def test_sklearn_solver_path_matches_reference():
    x, y = _separable_ish(3)
    ref = _sklearn_reference(x, y, 1.0, tol=1e-4)
    w, b = fit_logistic(x, y, 3, 1.0, solver="sklearn")
    assert torch.allclose(w, torch.from_numpy(ref.coef_).float(), atol=1e-6)
    assert torch.allclose(b, torch.from_numpy(ref.intercept_).float(), atol=1e-6)


def _literal_lpclip_search(score_of, steps):
    """lpclip/linear_probe.py's loop, transcribed: grid argmax, then `binary_search` rounds."""
    acc_list = [score_of(c) for c in [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]]
    c_peak = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6][int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = None
    for _ in range(steps):
        acc_left, acc_right = score_of(c_left), score_of(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final


@pytest.mark.parametrize("peak_log10", [-3.3, 0.0, 1.7, 4.6])
def test_search_follows_lpclip_protocol(peak_log10):
    def score_of(c):  # a unimodal val-accuracy curve in log10 C, quantised like an accuracy
        return round(1.0 - 0.1 * abs(math.log10(c) - peak_log10), 3)

    fits = []

    def fit(c):
        fits.append(c)
        return torch.tensor([c]), torch.tensor([0.0])

    chosen, (w, _), history = search_c(fit, lambda w, b: score_of(float(w)), LPCLIP_C_GRID, 8)
    expected = _literal_lpclip_search(score_of, 8)
    assert chosen == pytest.approx(expected, rel=1e-9)
    assert float(w) == pytest.approx(chosen)
    assert len(fits) == len(set(fits)) == len(history)  # each C fitted once


def test_search_on_val_picks_c_and_records_history():
    task, test = make_task(c=6, k=4, d=16)
    m = create("linear_probe", search_steps=2).fit(task)
    assert m.C_ in {c for c, _ in m.search_history_}
    best_grid_acc = max(a for c, a in m.search_history_ if c in LPCLIP_C_GRID)
    assert dict(m.search_history_)[m.C_] >= best_grid_acc - 1e-9 or len(m.search_history_) > 7


def test_fixed_c_and_default_c_without_val():
    task, _ = make_task(c=5, k=4, d=16, with_val=False)
    assert create("linear_probe").fit(task).C_ == 1.0
    assert create("linear_probe", C=7.0).fit(task).C_ == 7.0


def test_logits_equal_affine_map_and_round_trip(tmp_path):
    task, test = make_task(c=5, k=4, d=16)
    m = create("linear_probe", search_steps=1).fit(task)
    out = m.logits(test.features)
    assert out.shape == (len(test), 5)
    assert torch.allclose(out, test.features @ m.weight_.T + m.bias_, atol=1e-6)
    m2 = load(m.save(tmp_path / "lp"))
    assert torch.equal(m2.logits(test.features), out)
    assert m2.C_ == m.C_


def test_deterministic():
    task, test = make_task(c=5, k=3, d=16)
    a = create("linear_probe", search_steps=1).fit(task).logits(test.features)
    b = create("linear_probe", search_steps=1).fit(task).logits(test.features)
    assert torch.equal(a, b)


def test_beats_zero_shot_on_noisy_text():
    task, test = make_task(c=8, k=8, d=32, text_noise=2.0)
    m = create("linear_probe", search_steps=2).fit(task)
    assert accuracy(m.logits(test.features), test.labels) > zeroshot_accuracy(task, test) + 0.1


def test_works_without_text_weights():
    task, test = make_task(c=5, k=4, d=16)
    m = create("linear_probe", C=10.0).fit(replace(task, text_weights=None))
    assert m.logits(test.features).shape == (len(test), 5)


def test_uses_augmented_views_when_asked():
    task, test = make_task(c=5, k=2, d=16, views=3, with_val=False)
    a = create("linear_probe", use_aug_views=False).fit(task).logits(test.features)
    b = create("linear_probe", use_aug_views=True).fit(task).logits(test.features)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("case", sorted(bad_tasks(needs_text=False)))
def test_bad_inputs(case):
    task, msg = bad_tasks(needs_text=False)[case]
    with pytest.raises(KshotError, match=msg):
        create("linear_probe").fit(task)


def test_class_count_mismatch_and_empty_classes_named():
    task = tiny_task()
    with pytest.raises(DataError, match="outside the 4 classes"):
        create("linear_probe").fit(replace(task, classnames=task.classnames[:4], text_weights=None))
    task, _ = make_task(c=5, k=2, d=16, empty=(1, 3), with_val=False)
    with pytest.raises(DataError, match="class1, class3"):
        create("linear_probe").fit(task)


def test_logits_reject_wrong_dim_and_nan():
    m = create("linear_probe", C=1.0).fit(tiny_task(with_val=False))
    with pytest.raises(DataError, match="dimension 8"):
        m.logits(torch.zeros(3, 8))
    bad = torch.zeros(2, 16)
    bad[1, 0] = float("inf")
    with pytest.raises(DataError, match="NaN"):
        m.logits(bad)


def test_bad_config():
    task = tiny_task(with_val=False)
    with pytest.raises(ConfigError, match="solver"):
        create("linear_probe", solver="liblinear").fit(task)
    with pytest.raises(ConfigError, match="C must be"):
        create("linear_probe", C=0.0).fit(task)


def test_contract_task_is_fast():
    task = tiny_task()
    t0 = time.process_time()
    m = create("linear_probe").fit(task)
    assert time.process_time() - t0 < 3.0  # CPU time, so a busy CI box does not fail it; ~0.4 s alone
    assert m.logits(task.val.features).shape == (len(task.val), 5)


def test_torch_solver_converges_at_500_classes_like_sklearn():
    """At ≥ 500 classes the torch probe's test accuracy is within 0.5 pt of scikit-learn lbfgs at the same C.

    The reference runs to lpclip's convergence (tol on the summed objective = tol / N on scikit-learn's mean one).
    """
    classes, dim, shots = 500, 64, 2
    g = torch.Generator().manual_seed(0)
    common = F.normalize(torch.randn(dim, generator=g), dim=0)
    means = F.normalize(common + 0.5 * F.normalize(torch.randn(classes, dim, generator=g), dim=1), dim=1)

    def draw(y):
        return F.normalize(means[y] + 0.6 * F.normalize(torch.randn(len(y), dim, generator=g), dim=1), dim=1)

    y = torch.arange(classes).repeat_interleave(shots)
    x = draw(y)
    y_test = torch.arange(classes).repeat_interleave(3)
    x_test = draw(y_test)
    w, b = fit_logistic(x, y, classes, 1.0, solver="torch")
    ours = accuracy(x_test @ w.T + b, y_test)
    ref = _sklearn_reference(x, y, 1.0, tol=1e-4 / len(x))
    theirs = float((torch.from_numpy(ref.predict(x_test.double().numpy())) == y_test).float().mean())
    assert 0.2 < theirs < 0.95  # neither chance nor trivially separable
    assert abs(ours - theirs) <= 0.005


def test_default_validation_is_lpclips_subsample():
    from kshot.methods.linear_probe import lpclip_val_subset

    task, _ = make_task(c=4, k=8, d=16)
    big = task.val.subset(torch.arange(len(task.val)).repeat(3))  # ≥ 4 images of every class
    sub = lpclip_val_subset(big, shots=8, seed=0)
    assert torch.equal(torch.bincount(sub.labels), torch.full((4,), 4))
    assert torch.equal(torch.bincount(lpclip_val_subset(big, shots=2, seed=0).labels), torch.full((4,), 2))
    assert torch.equal(lpclip_val_subset(big, 8, 0).features, sub.features)  # seeded
