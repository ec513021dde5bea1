import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import eigh

from kshot.errors import ConfigError, DataError, KshotError
from kshot.methods import create, load
from kshot.methods.lpp import cross_entropy_grad, lr_values, sgd_momentum_step
from tests.methods.conftest_lpheads import (accuracy, bad_tasks, make_task, tiny_task,
                                            zeroshot_accuracy)


def _official_lpp(x, y, text, iters):
    """Literal transcription of LP++'s update rules (linear_probe_p2.py), full batch, bias starting at zero."""
    n, d = x.shape
    c = text.shape[0]
    onehot = F.one_hot(y, c).float()
    classifier = torch.nn.Linear(d, c)
    classifier.weight.data = onehot.T @ x  # per-class sums (centroids without the division)
    classifier.bias.data.zero_()
    text_logits_all = x @ text.T
    alpha_tilde = (onehot * text_logits_all / onehot.sum(0, keepdim=True)).sum(0)
    alpha_init = (250 * alpha_tilde.double()).mean()
    alpha_vec = (alpha_init * torch.ones(1, c)).float().requires_grad_(True)
    lr_alpha = n / (text_logits_all.pow(2).sum(0).max() * 4)
    lr_temp = 4 * n / max(eigh((x.T @ x).numpy())[0])
    optimizer = torch.optim.SGD(classifier.parameters(), lr_temp, momentum=0.9)
    losses = []
    for epoch in range(iters):
        logits = classifier(x) + torch.ones(n, 1) @ alpha_vec * text_logits_all
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data  # the grad is never zeroed: it accumulates
        losses.append(loss.item())
    return losses, classifier.weight.data, classifier.bias.data, alpha_vec.data[0]


def test_parity_with_official_update_rules():
    task, test = make_task(c=6, k=4, d=16, with_val=False)
    m = create("lpp", iters=60).fit(task)
    losses, w, b, a = _official_lpp(task.train.features, task.train.labels, task.text_weights, 60)
    assert m.loss_history_ == pytest.approx(losses, rel=1e-4, abs=1e-5)
    assert torch.allclose(m.weight_, w, rtol=1e-4, atol=1e-4)
    assert torch.allclose(m.bias_, b, atol=1e-4)
    assert torch.allclose(m.alpha_, a, rtol=1e-4)
    ref = test.features @ w.T + b + a * (test.features @ task.text_weights.T)
    assert torch.allclose(m.logits(test.features), ref, rtol=1e-4, atol=1e-3)


def test_fresh_alpha_gradient_differs_from_accumulated():
    task, test = make_task(c=6, k=4, d=16, with_val=False)
    a = create("lpp", iters=40).fit(task)
    b = create("lpp", iters=40, accumulate_alpha_grad=False).fit(task)
    assert not torch.allclose(a.alpha_, b.alpha_)


def test_alpha_frozen_and_cosine_schedule():
    task, _ = make_task(c=6, k=4, d=16, with_val=False)
    m = create("lpp", iters=30, alpha_every=0, lr_schedule="cosine").fit(task)
    own = (task.train.features * task.text_weights[task.train.labels]).sum(1)
    expected = 250 * torch.stack([own[task.train.labels == k].mean() for k in range(6)]).mean()
    assert torch.allclose(m.alpha_, expected.expand(6), rtol=1e-6)


def test_val_selection_keeps_best_iteration():
    task, _ = make_task(c=6, k=2, d=16, val_per_class=6, feat_noise=1.2)
    m = create("lpp", iters=80).fit(task)
    last = create("lpp", iters=80, select_on_val=False).fit(task)
    val_acc = accuracy(m.logits(task.val.features), task.val.labels)
    assert val_acc == pytest.approx(m.val_acc_)
    assert val_acc >= accuracy(last.logits(task.val.features), task.val.labels)
    assert 0 <= m.best_iter_ < 80
    assert last.best_iter_ == 79


def test_minibatch_mode_is_seeded():
    task, test = make_task(c=6, k=8, d=16, with_val=False)
    a = create("lpp", iters=20, batch_size=8).fit(task)
    b = create("lpp", iters=20, batch_size=8).fit(task)
    c = create("lpp", iters=20, batch_size=8).fit(replace(task, seed=1))
    full = create("lpp", iters=20).fit(task)
    assert torch.equal(a.logits(test.features), b.logits(test.features))
    assert not torch.allclose(a.logits(test.features), c.logits(test.features))
    assert not torch.allclose(a.logits(test.features), full.logits(test.features))
    assert accuracy(a.logits(test.features), test.labels) > zeroshot_accuracy(task, test)


def test_beats_zero_shot_on_noisy_text():
    task, test = make_task(c=8, k=8, d=32, text_noise=2.0)
    m = create("lpp").fit(task)
    assert accuracy(m.logits(test.features), test.labels) > zeroshot_accuracy(task, test) + 0.1


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_classes_without_shots_are_text_only(mode):
    task, test = make_task(c=6, k=4, d=16, empty=(2, 5), with_val=False)
    m = create("lpp", iters=50, empty_class_visual=mode).fit(task)
    seen = torch.tensor([0, 1, 3, 4])
    assert torch.allclose(m.alpha_[[2, 5]], m.alpha_[seen].mean().expand(2))
    if mode == "zero":
        assert torch.all(m.weight_[[2, 5]] == 0) and torch.all(m.bias_[[2, 5]] == 0)
    else:
        assert torch.allclose(m.weight_[[2, 5]], m.weight_[seen].mean(0).expand(2, -1))
        assert torch.allclose(m.bias_[[2, 5]], m.bias_[seen].mean().expand(2))
    out = m.logits(test.features)
    f = test.features
    ref = f @ m.weight_[2] + m.bias_[2] + m.alpha_[2] * (f @ task.text_weights[2])
    assert torch.allclose(out[:, 2], ref, atol=1e-4)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_empty_classes_are_predicted_from_text(mode):
    task, test = make_task(c=6, k=4, d=16, empty=(2, 5), text_noise=0.5, with_val=False)
    m = create("lpp", iters=50, empty_class_visual=mode).fit(task)
    empty_items = (test.labels == 2) | (test.labels == 5)
    pred = m.logits(test.features).argmax(1)
    assert (pred[empty_items] == test.labels[empty_items]).float().mean() > 0.3


def test_round_trip_and_determinism(tmp_path):
    task, test = make_task(c=5, k=4, d=16)
    m = create("lpp", iters=50).fit(task)
    out = m.logits(test.features)
    assert torch.equal(create("lpp", iters=50).fit(task).logits(test.features), out)
    m2 = load(m.save(tmp_path / "lpp"))
    assert torch.equal(m2.logits(test.features), out)
    assert m2.best_iter_ == m.best_iter_


@pytest.mark.parametrize("case", sorted(bad_tasks()))
def test_bad_inputs(case):
    task, msg = bad_tasks()[case]
    with pytest.raises(KshotError, match=msg):
        create("lpp", iters=5).fit(task)


def test_logits_reject_wrong_dim():
    m = create("lpp", iters=5).fit(tiny_task())
    with pytest.raises(DataError, match="dimension 8"):
        m.logits(torch.zeros(3, 8))


@pytest.mark.parametrize("bad", [{"lr_schedule": "step"}, {"empty_class_visual": "text"}, {"iters": 0}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        create("lpp", **bad).fit(tiny_task())


def test_contract_task_is_fast():
    t0 = time.process_time()
    m = create("lpp").fit(tiny_task())
    assert time.process_time() - t0 < 3.0
    assert m.logits(torch.zeros(2, 16)).shape == (2, 5)


def test_closed_form_gradient_equals_autograd():
    """`cross_entropy_grad` (what training feeds SGD) is F.cross_entropy's value and gradient, also when p ≈ 1."""
    g = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.randn(5, 7, generator=g), 60 * torch.eye(7)[:3]])  # confident rows: p_true ≈ 1
    labels = torch.tensor([0, 3, 6, 2, 1, 0, 1, 2])
    ref_in = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(ref_in, labels)
    ref.backward()
    loss, grad = cross_entropy_grad(logits.clone(), labels)
    assert loss == pytest.approx(float(ref.detach()), rel=1e-6)
    torch.testing.assert_close(grad, ref_in.grad, rtol=1e-5, atol=1e-9)


def test_written_out_sgd_and_cosine_steps_equal_torch():
    """`sgd_momentum_step` over `lr_values` is torch's SGD(momentum) under CosineAnnealingLR, bit for bit."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, generator=g) for _ in range(7)]
    ref = torch.zeros(5, 3, requires_grad=True)
    opt = torch.optim.SGD([ref], lr=0.3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 7)
    mine, buffers = torch.zeros(5, 3), []
    for it, (grad, lr) in enumerate(zip(grads, lr_values(0.3, 7, cosine=True), strict=True)):
        ref.grad = grad.clone()
        opt.step()
        sched.step()
        sgd_momentum_step([mine], [grad], buffers, lr, 0.9)
        assert torch.equal(mine, ref.detach()), it
    assert lr_values(0.3, 4, cosine=False) == [0.3] * 4
