"""Tip-Adapter: literal-formula parity, the val search, cache policies, empty classes, save/load, bad inputs."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError
from kshot.methods import create
from kshot.methods.search import linear_grid
from kshot.methods.tip_adapter import build_cache, in_row_chunks
from tests.methods.conftest_cachemethods import (BAD_CASES, FAST_GRID_2, accuracy, assert_logits_input_checks,
                                                 assert_rejects, assert_round_trip, make_task,
                                                 zeroshot_accuracy)


def literal_tip(f, text, keys, key_labels, alpha, beta, scale):
    """Eq. 6 of the paper, one image and one class at a time (keys/labels given explicitly)."""
    out = torch.zeros(f.shape[0], text.shape[0], dtype=torch.float64)
    for n in range(f.shape[0]):
        for c in range(text.shape[0]):
            zs = scale * sum(float(f[n, d]) * float(text[c, d]) for d in range(f.shape[1]))
            cache = 0.0
            for m in range(keys.shape[0]):
                if int(key_labels[m]) == c:
                    aff = sum(float(f[n, d]) * float(keys[m, d]) for d in range(f.shape[1]))
                    cache += math.exp(-beta * (1 - aff))
            out[n, c] = zs + alpha * cache
    return out


def test_logits_match_literal_formula():
    task, test = make_task(c=4, k=3, d=6, test_per_class=2)
    m = create("tip_adapter", search=False, init_alpha=1.7, init_beta=3.2).fit(task)
    ref = literal_tip(test.features, task.text_weights, task.train.features, task.train.labels, 1.7, 3.2, 100.0)
    torch.testing.assert_close(m.logits(test.features).double(), ref, atol=1e-5, rtol=1e-5)


def test_search_matches_literal_loop_on_val():
    task, _ = make_task(c=6, k=4, d=16)
    m = create("tip_adapter", search_scale=(7.0, 3.0), search_steps=(12, 5)).fit(task)
    val, keys, labels = task.val.features, task.train.features, task.train.labels
    best, cell = -1, None
    for b in linear_grid(7.0, 12).tolist():
        for a in linear_grid(3.0, 5).tolist():
            cache = torch.exp(-b * (1 - val @ keys.T)) @ F.one_hot(labels).float()
            logits = 100 * val @ task.text_weights.T + a * cache
            acc = int((logits.argmax(1) == task.val.labels).sum())
            if acc > best:
                best, cell = acc, (b, a)
    assert (m.beta_, m.alpha_) == pytest.approx(cell)
    assert m.fitted_meta()["val_accuracy"] == pytest.approx(best / len(task.val))


def test_without_val_keeps_initial_values():
    task, _ = make_task(c=5, k=2, d=16, with_val=False)
    m = create("tip_adapter").fit(task)
    assert (m.alpha_, m.beta_) == (1.17, 1.0) and m.fitted_meta()["val_accuracy"] is None


def test_cache_policies_with_augmented_views():
    task, _ = make_task(c=4, k=3, d=8, views=5)
    keys, labels = build_cache(task.train, "mean")
    expected = F.normalize(task.train.aug_features.mean(0), dim=-1)
    assert torch.allclose(keys, expected) and torch.equal(labels, task.train.labels)
    keys, labels = build_cache(task.train, "concat")
    assert keys.shape == (12 * 6, 8)
    assert torch.equal(keys[:12], task.train.features) and torch.equal(keys[12:24], task.train.aug_features[0])
    assert torch.equal(labels, task.train.labels.repeat(6))
    plain = replace(task.train, aug_features=None)
    for policy in ("mean", "concat"):
        assert torch.equal(build_cache(plain, policy)[0], plain.features)
    m = create("tip_adapter", cache_policy="concat", **FAST_GRID_2).fit(task)
    assert m.fitted_meta()["cache_size"] == 72
    with pytest.raises(ConfigError, match="cache_policy"):
        create("tip_adapter", cache_policy="sum")


def test_logits_in_row_chunks_equal_one_pass():
    x = torch.randn(10, 4)
    w = torch.randn(3, 4)
    torch.testing.assert_close(in_row_chunks(lambda f: f @ w.T, x, rows=3), x @ w.T)


def test_empty_classes_fall_back_to_text():
    task, test = make_task(c=6, k=4, d=16, empty=(1, 4))
    m = create("tip_adapter", **FAST_GRID_2).fit(task)
    out = m.logits(test.features)
    zs = 100 * test.features @ task.text_weights.T
    assert torch.allclose(out[:, [1, 4]], zs[:, [1, 4]], atol=1e-4)
    assert not torch.allclose(out[:, 0], zs[:, 0])


def test_beats_zero_shot_with_noisy_text():
    task, test = make_task(k=16)
    m = create("tip_adapter").fit(task)
    acc, zs = accuracy(m.logits(test.features), test.labels), zeroshot_accuracy(task, test)
    assert acc >= zs and acc > zs + 0.05, (acc, zs)


def test_round_trip_determinism_and_logits_checks(tmp_path):
    task, test = make_task(c=5, k=4, d=16)
    a = create("tip_adapter", **FAST_GRID_2).fit(task)
    b = create("tip_adapter", **FAST_GRID_2).fit(task)
    assert torch.equal(a.logits(test.features), b.logits(test.features))
    assert_round_trip(a, test.features, tmp_path / "tip")
    assert_logits_input_checks(a, 16)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs(case):
    assert_rejects("tip_adapter", case, **FAST_GRID_2)


def test_defaults_on_tiny_task_are_fast():
    task, test = make_task(c=5, k=2, d=16, val_per_class=2)
    t0 = time.perf_counter()
    out = create("tip_adapter").fit(task).logits(test.features)
    assert out.shape == (len(test), 5) and time.perf_counter() - t0 < 1.0
