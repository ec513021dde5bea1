import logging
import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError, DataError, KshotError
from kshot.methods import create, load
from kshot.methods.inmap import fit_proxies, sharpen, sinkhorn_labels
from tests.methods.conftest_lpheads import accuracy, bad_tasks, make_task, tiny_task


# --- literal transcription of idstcv/InMaP main.py (classifier as [D, C] columns) ---------------------------------
def _official_sinkhorn(M, tau_t=0.01, gamma=0, iters=20):
    row, col = M.shape
    P = F.softmax(M / tau_t, dim=1)
    P /= row
    if gamma > 0:
        q = torch.sum(P, dim=0, keepdim=True)
        q = q**gamma
        q /= torch.sum(q)
    for _ in range(iters):
        P /= torch.sum(P, dim=0, keepdim=True)
        if gamma > 0:
            P *= q
        else:
            P /= col
        P /= torch.sum(P, dim=1, keepdim=True)
        P /= row
    P *= row
    return P


def _official_image_opt(feat, init_classifier, plabel, lr=10, iters=2000, tau_i=0.04, alpha=0.6):
    ins, dim = feat.shape
    val, idx = torch.max(plabel, dim=1)
    mask = val > alpha
    plabel[mask, :] = 0
    plabel[mask, idx[mask]] = 1
    base = feat.T @ plabel
    classifier = init_classifier.clone()
    pre_norm = float("inf")
    for _ in range(iters):
        prob = F.softmax(feat @ classifier / tau_i, dim=1)
        grad = feat.T @ prob - base
        temp = torch.norm(grad)
        if temp > pre_norm:
            lr /= 2.0
        pre_norm = temp
        classifier -= (lr / (ins * tau_i)) * grad
        classifier = F.normalize(classifier, dim=0)
    return classifier


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_sinkhorn_matches_official(gamma):
    task, test = make_task(c=6, d=16, unlabeled=True)
    scores = test.features @ task.text_weights.T
    ours = sinkhorn_labels(scores, 0.01, gamma, 20)
    ref = _official_sinkhorn(scores.clone(), 0.01, gamma, 20)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(ours.sum(1), torch.ones(len(test)), atol=1e-5)
    if gamma == 0:  # the class masses move towards uniform
        plain = F.softmax(scores / 0.01, dim=1).sum(0)
        assert ours.sum(0).std() < 0.5 * plain.std()


def test_sharpen_only_confident_rows():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.05, 0.05, 0.9]])
    out = sharpen(p, 0.6)
    assert torch.equal(out[0], torch.tensor([1.0, 0, 0])) and torch.equal(out[2], torch.tensor([0, 0, 1.0]))
    assert torch.equal(out[1], p[1])
    assert torch.equal(p[0], torch.tensor([0.7, 0.2, 0.1]))  # input untouched


def test_parity_with_official_algorithm():
    task, test = make_task(c=6, k=0, d=16, unlabeled=True)
    m = create("inmap", iters=300).fit(task)
    x, w = test.features, task.text_weights.T.contiguous()
    plabel = _official_sinkhorn(x @ w, 0.01, 0, 20)
    ref = _official_image_opt(x, w, plabel, lr=10, iters=300, tau_i=0.04, alpha=0.6)
    assert torch.allclose(m.proxies_, ref.T, atol=1e-4)
    assert torch.allclose(m.logits(x), task.logit_scale * x @ ref, atol=1e-2)  # scale 100 × 1e-4


def _literal_row_loop(x, init, targets, lr=10.0, iters=2000, tau_i=0.04):
    """The official proxy loop in kshot's [C, D] layout, every iteration run (kshot's loop before early stopping)."""
    n, base, proxies = x.shape[0], targets.T @ x, init.clone()
    step, prev_norm = torch.tensor(lr), torch.tensor(float("inf"))
    for _ in range(iters):
        prob = torch.softmax(x @ proxies.T / tau_i, dim=1)
        grad = prob.T @ x - base
        norm = torch.linalg.vector_norm(grad)
        step = torch.where(norm > prev_norm, step / 2.0, step)
        prev_norm = norm
        proxies = F.normalize(proxies - (step / (n * tau_i)) * grad, dim=1)
    return proxies


def _shared_subspace_features(classes=50, dim=64, shots=4, n=1000, rank=32, seed=0):
    """benchmarks/scale.py's recipe, small: class means in a shared rank-32 subspace, confusable noise in it, and
    labelled shots (one-hot targets). Here the official step keeps halving until it can no longer move a proxy."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, rank, generator=g))[0].T
    low = F.normalize(torch.randn(classes, rank, generator=g) @ basis, dim=-1)
    means = F.normalize(0.95**0.5 * low + 0.05**0.5 * F.normalize(torch.randn(classes, dim, generator=g), dim=-1),
                        dim=-1)

    def draw(y):
        iso = F.normalize(torch.randn(len(y), dim, generator=g), dim=-1)
        confusable = F.normalize(torch.randn(len(y), rank, generator=g) @ basis, dim=-1)
        return F.normalize(means[y] + iso + 1.25 * confusable, dim=-1)

    text = F.normalize(means + 0.5 * F.normalize(torch.randn(classes, rank, generator=g) @ basis, dim=-1), dim=-1)
    y_s = torch.arange(classes).repeat_interleave(shots)
    x_s = draw(y_s)
    draw(torch.arange(classes).repeat_interleave(4))  # the recipe's validation draw, kept for its random stream
    x_u = draw(torch.randint(0, classes, (n,), generator=g))
    targets = torch.cat([sharpen(sinkhorn_labels(x_u @ text.T, 0.01, 0.0, 20), 0.6), F.one_hot(y_s, classes).float()])
    return torch.cat([x_u, x_s]), text, targets


@pytest.mark.parametrize("tol", [0.0, 1e-7])
def test_early_stop_changes_no_bit(tol, caplog):
    """Once the halved step cannot move a proxy the gradient steps stop; the proxies are the full loop's, exactly."""
    x, text, targets = _shared_subspace_features()
    with caplog.at_level(logging.DEBUG, logger="kshot.methods.inmap"):
        ours = fit_proxies(x, text, targets, lr=10.0, iters=2000, tau_i=0.04, tol=tol)
    assert "gradient steps stop after" in caplog.text  # the shortcut was taken
    assert torch.equal(ours, _literal_row_loop(x, text, targets))


def test_beats_zero_shot_on_unlabelled_data():
    """Tight image clusters, noisy text: proxies learnt on the unlabelled features beat the text proxies."""
    gains = []
    for seed in range(3):
        task, test = make_task(c=8, k=0, d=32, feat_noise=0.4, text_noise=2.0, test_per_class=40, unlabeled=True,
                               seed=seed)
        zs = accuracy(test.features @ task.text_weights.T, test.labels)
        gains.append(accuracy(create("inmap").fit(task).logits(test.features), test.labels) - zs)
    assert min(gains) >= 0.0 and sum(gains) / 3 > 0.03


def test_shots_are_used_with_true_labels():
    task, test = make_task(c=6, k=4, d=16, unlabeled=True, with_val=False)
    with_shots = create("inmap", iters=200).fit(task)
    without = create("inmap", iters=200, use_shots=False).fit(task)
    assert with_shots.num_fit_rows_ == len(test) + len(task.train)
    assert without.num_fit_rows_ == len(test)
    assert not torch.allclose(with_shots.proxies_, without.proxies_)


def test_shots_only_fallback_and_nothing_is_an_error(caplog):
    task, test = make_task(c=6, k=4, d=16, with_val=False)
    with caplog.at_level(logging.WARNING, logger="kshot.methods.inmap"):
        m = create("inmap", iters=100).fit(task)
    assert "no unlabelled features" in caplog.text
    assert m.num_fit_rows_ == len(task.train)
    with pytest.raises(DataError, match="transductive"):
        create("inmap").fit(replace(task, train=task.train.subset([])))
    with pytest.raises(DataError, match="transductive"):
        create("inmap", use_shots=False).fit(task)


def test_proxy_label_source_runs_and_differs():
    task, test = make_task(c=6, k=0, d=16, unlabeled=True)
    a = create("inmap", iters=100).fit(task)
    b = create("inmap", iters=100, label_source="proxy").fit(task)
    assert not torch.allclose(a.proxies_, b.proxies_)
    assert torch.allclose(b.proxies_.norm(dim=1), torch.ones(6), atol=1e-5)


def test_sinkhorn_can_be_switched_off():
    task, test = make_task(c=6, k=0, d=16, unlabeled=True)
    a = create("inmap", iters=50, sinkhorn_iters=0).fit(task)
    x, w = test.features, task.text_weights.T.contiguous()
    ref = _official_image_opt(x, w, F.softmax(x @ w / 0.01, dim=1), iters=50)
    assert torch.allclose(a.proxies_, ref.T, atol=1e-4)


def test_classes_without_shots_and_empty_unlabelled_class_are_fine():
    task, test = make_task(c=6, k=2, d=16, empty=(0, 3), unlabeled=True, with_val=False)
    m = create("inmap", iters=100).fit(task)
    assert m.logits(test.features).shape == (len(test), 6)
    assert torch.isfinite(m.proxies_).all()


def test_round_trip_and_determinism(tmp_path):
    task, test = make_task(c=5, k=0, d=16, unlabeled=True)
    m = create("inmap", iters=100).fit(task)
    out = m.logits(test.features)
    assert torch.equal(create("inmap", iters=100).fit(task).logits(test.features), out)
    m2 = load(m.save(tmp_path / "inmap"))
    assert torch.equal(m2.logits(test.features), out)
    assert torch.allclose(out, task.logit_scale * test.features @ m.proxies_.T)


@pytest.mark.parametrize("case", ["nan", "val_dim", "label_range", "class_count", "text_dim", "no_text"])
def test_bad_inputs(case):
    task, msg = bad_tasks()[case]
    with pytest.raises(KshotError, match=msg):
        create("inmap", iters=5).fit(task)


def test_bad_unlabelled_features():
    task, test = make_task(c=5, k=0, d=16, unlabeled=True)
    nan = replace(task.unlabeled, features=task.unlabeled.features.clone())
    nan.features[0, 0] = float("nan")
    with pytest.raises(DataError, match="unlabeled features contain NaN"):
        create("inmap").fit(replace(task, unlabeled=nan))
    wide = replace(task.unlabeled, features=torch.zeros(len(test), 8))
    with pytest.raises(DataError, match="dimension"):
        create("inmap").fit(replace(task, unlabeled=wide))
    with pytest.raises(ConfigError, match="label_source"):
        create("inmap", label_source="cache").fit(task)


def test_logits_reject_wrong_dim():
    task, _ = make_task(c=5, k=0, d=16, unlabeled=True)
    m = create("inmap", iters=5).fit(task)
    with pytest.raises(DataError, match="dimension 8"):
        m.logits(torch.zeros(3, 8))


def test_contract_task_is_fast():
    task = replace(tiny_task(), unlabeled=tiny_task().val)
    t0 = time.process_time()
    m = create("inmap").fit(task)
    assert time.process_time() - t0 < 3.0
    assert m.logits(torch.zeros(2, 16)).shape == (2, 5)
