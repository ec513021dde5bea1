"""APE: the vectorised channel criterion against explicit loops over class pairs, KL confidence, logits and the
(β, α, γ) search against literal implementations; speed at challenge size; save/load; bad inputs; learning."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError
from kshot.methods import create
from kshot.methods.ape import (ape_criterion, kl_confidence, pooled_cross_class_similarity, resolve_num_channels,
                               select_channels)
from kshot.methods.search import linear_grid
from tests.methods.conftest_cachemethods import (BAD_CASES, FAST_GRID_3, accuracy, assert_logits_input_checks,
                                                 assert_rejects, assert_round_trip, make_task,
                                                 zeroshot_accuracy)


def literal_s(text, keys, key_labels):
    """S_k: mean of x_{i,k}·x_{j,k} over every ordered pair of pool members of different classes (explicit loops)."""
    c, d = text.shape
    pools = [[text[i]] + [keys[m] for m in range(len(keys)) if int(key_labels[m]) == i] for i in range(c)]
    total, count = torch.zeros(d, dtype=torch.float64), 0
    for i in range(c):
        for j in range(c):
            if i == j:
                continue
            for a in pools[i]:
                for b in pools[j]:
                    total += a.double() * b.double()
                    count += 1
    return total / count


def literal_v(text):
    c, d = text.shape
    out = torch.zeros(d, dtype=torch.float64)
    for k in range(d):
        mean = sum(float(text[i, k]) for i in range(c)) / c
        out[k] = sum((float(text[i, k]) - mean) ** 2 for i in range(c)) / (c - 1)
    return out


def literal_kl(keys_sel, text_sel, key_labels):
    out = []
    for m in range(len(keys_sel)):
        cos = [float(keys_sel[m] @ text_sel[c]) for c in range(len(text_sel))]
        z = sum(math.exp(v) for v in cos)
        p = [math.exp(v) / z for v in cos]
        out.append(sum((1.0 if c == int(key_labels[m]) else 0.0)
                       * math.log2(((1.0 if c == int(key_labels[m]) else 0.0) + 1e-6) / (p[c] + 1e-6))
                       for c in range(len(p))))
    return torch.tensor(out, dtype=torch.float64)


def literal_ape_logits(f, text, keys, key_labels, channels, alpha, beta, gamma, scale):
    norm = lambda v: v / v.norm()  # noqa: E731
    keys_sel = torch.stack([norm(k[channels]) for k in keys.double()])
    text_sel = torch.stack([norm(t[channels]) for t in text.double()])
    kl = literal_kl(keys_sel, text_sel, key_labels)
    out = torch.zeros(len(f), len(text), dtype=torch.float64)
    for n in range(len(f)):
        fp = norm(f[n].double()[channels])
        for c in range(len(text)):
            cache = sum(math.exp(-beta * (1 - float(fp @ keys_sel[m]))) * math.exp(gamma * float(kl[m]))
                        for m in range(len(keys)) if int(key_labels[m]) == c)
            out[n, c] = scale * float(f[n].double() @ text[c].double()) + alpha * cache
    return out


def test_pooled_similarity_matches_pair_loops():
    task, _ = make_task(c=5, k=3, d=7, empty=(2,))  # uneven pools: class 2 has its text feature only
    keys, labels = task.train.features, task.train.labels
    pool = torch.cat([task.text_weights, keys])
    pool_labels = torch.cat([torch.arange(5), labels])
    got = pooled_cross_class_similarity(pool, pool_labels, 5)
    torch.testing.assert_close(got.double(), literal_s(task.text_weights, keys, labels), atol=1e-5, rtol=1e-5)


def test_criterion_and_selection_match_literal():
    task, _ = make_task(c=6, k=2, d=10)
    keys, labels = task.train.features, task.train.labels
    lam = 0.3
    j_ref = lam * literal_s(task.text_weights, keys, labels) - (1 - lam) * literal_v(task.text_weights)
    j = ape_criterion(task.text_weights, keys, labels, lam)
    torch.testing.assert_close(j.double(), j_ref, atol=1e-6, rtol=1e-5)
    expected = sorted(sorted(range(10), key=lambda k: float(j_ref[k]))[:4])
    assert select_channels(j, 4).tolist() == expected


def test_kl_is_minus_log2_p_true():
    task, _ = make_task(c=5, k=3, d=8)
    keys, text, labels = task.train.features, task.text_weights, task.train.labels
    kl = kl_confidence(keys, text, labels)
    torch.testing.assert_close(kl.double(), literal_kl(keys, text, labels), atol=1e-5, rtol=1e-5)
    p_true = (keys @ text.T).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(kl, -torch.log2(p_true), atol=1e-4, rtol=1e-4)


def test_logits_match_literal_formula():
    task, test = make_task(c=4, k=3, d=8, test_per_class=2)
    m = create("ape", search=False, channels=5, lam=0.5, init_alpha=2.0, init_beta=3.0, init_gamma=0.4).fit(task)
    j_ref = 0.5 * literal_s(task.text_weights, task.train.features, task.train.labels) - 0.5 * literal_v(
        task.text_weights)
    channels = sorted(sorted(range(8), key=lambda k: float(j_ref[k]))[:5])
    assert m.channels_.tolist() == channels
    ref = literal_ape_logits(test.features, task.text_weights, task.train.features, task.train.labels,
                             torch.tensor(channels), 2.0, 3.0, 0.4, 100.0)
    torch.testing.assert_close(m.logits(test.features).double(), ref, atol=1e-5, rtol=1e-5)


def test_search_matches_literal_triple_loop():
    task, _ = make_task(c=6, k=4, d=16)
    steps = (8, 5, 4)
    m = create("ape", search_steps=steps, channels=10).fit(task)
    val, ch = task.val.features, m.channels_
    clip = 100 * val @ task.text_weights.T
    aff = F.normalize(val[:, ch], dim=-1) @ m.keys_sel_.T
    values = F.one_hot(task.train.labels, 6).float()
    best, cell = -1, None
    for b in linear_grid(7.0, steps[0]).tolist():
        for a in linear_grid(7.0, steps[1]).tolist():
            for g in linear_grid(1.0, steps[2], start=0.0).tolist():
                logits = clip + a * torch.exp(-b * (1 - aff)) @ (values * torch.exp(g * m.kl_)[:, None])
                acc = int((logits.argmax(1) == task.val.labels).sum())
                if acc > best:
                    best, cell = acc, (b, a, g)
    assert (m.beta_, m.alpha_, m.gamma_) == pytest.approx(cell)


def test_criterion_is_vectorised_at_challenge_size():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(374, 512, generator=g), dim=-1)
    keys = F.normalize(torch.randn(374 * 4, 512, generator=g), dim=-1)
    labels = torch.arange(374).repeat_interleave(4)
    t0 = time.perf_counter()
    channels = select_channels(ape_criterion(text, keys, labels, 0.5), resolve_num_channels(700, 512))
    elapsed = time.perf_counter() - t0
    assert channels.numel() == 350 and elapsed < 0.5, elapsed


def test_resolve_num_channels():
    assert resolve_num_channels(400, 1024) == 400
    assert resolve_num_channels(400, 512) == 400
    assert resolve_num_channels(700, 512) == 350  # absolute count above D: fraction of the 1024-d reference
    assert resolve_num_channels(0.25, 512) == 128
    assert resolve_num_channels(700, 16) == 11
    for bad in (0, -3, 5000):
        with pytest.raises(ConfigError):
            resolve_num_channels(bad, 512)
    with pytest.raises(ConfigError, match="lam"):
        create("ape", lam=1.5)


def test_empty_classes_are_text_only():
    task, test = make_task(c=6, k=4, d=16, empty=(0, 5))
    m = create("ape", **FAST_GRID_3).fit(task)
    zs = 100 * test.features @ task.text_weights.T
    torch.testing.assert_close(m.logits(test.features)[:, [0, 5]], zs[:, [0, 5]], atol=1e-4, rtol=1e-5)


def test_beats_zero_shot_with_noisy_text():
    task, test = make_task(k=16)
    m = create("ape", search_steps=(100, 20, 10)).fit(task)
    acc, zs = accuracy(m.logits(test.features), test.labels), zeroshot_accuracy(task, test)
    assert acc > zs + 0.05, (acc, zs)


def test_round_trip_determinism_and_logits_checks(tmp_path):
    task, test = make_task(c=5, k=4, d=16, views=3)
    a = create("ape", **FAST_GRID_3).fit(task)
    b = create("ape", **FAST_GRID_3).fit(task)
    assert torch.equal(a.logits(test.features), b.logits(test.features))
    assert_round_trip(a, test.features, tmp_path / "ape")
    assert_logits_input_checks(a, 16)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs(case):
    assert_rejects("ape", case, **FAST_GRID_3)
