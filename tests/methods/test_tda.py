"""TDA: parity with the official per-image stream loop re-stated literally, stream order, shots, bad input."""

from __future__ import annotations

import math
import operator
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import DataError
from kshot.features.featureset import FeatureSet
from kshot.methods import create, load
from kshot.methods.tda import simulate_cache
from tests.methods.conftest_cachemethods import accuracy, assert_logits_input_checks, make_task, zeroshot_accuracy

NEG = {"neg_entropy": (0.0, 1.0)}  # admit every image to the negative cache so that both caches are exercised


def official_tda(stream, base_logits, cfg):
    """`kdiAAA/TDA @ e697fb0c : tda_runner.py: run_test_tda / update_cache / compute_cache_logits` and `utils.py:
    get_clip_logits` (one view per image), image by image; base_logits(f [1, D]) -> [1, C]."""
    def update_cache(cache, pred, features_loss, shot_capacity, include_prob_map=False):
        item = features_loss if not include_prob_map else features_loss[:2] + [features_loss[2]]
        if pred in cache:
            if len(cache[pred]) < shot_capacity:
                cache[pred].append(item)
            elif features_loss[1] < cache[pred][-1][1]:
                cache[pred][-1] = item
            cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
        else:
            cache[pred] = [item]

    def compute_cache_logits(image_features, cache, alpha, beta, n_cls, neg_mask_thresholds=None):
        cache_keys, cache_values = [], []
        for class_index in sorted(cache.keys()):
            for item in cache[class_index]:
                cache_keys.append(item[0])
                cache_values.append(item[2] if neg_mask_thresholds else class_index)
        cache_keys = torch.cat(cache_keys, dim=0).permute(1, 0)
        if neg_mask_thresholds:
            cache_values = torch.cat(cache_values, dim=0)
            cache_values = ((cache_values > neg_mask_thresholds[0]) & (cache_values < neg_mask_thresholds[1])).to(
                image_features.dtype)
        else:
            cache_values = F.one_hot(torch.tensor(cache_values, dtype=torch.int64), num_classes=n_cls).to(
                image_features.dtype)
        affinity = image_features @ cache_keys
        return alpha * ((-1) * (beta - beta * affinity)).exp() @ cache_values

    pos_cache, neg_cache, out = {}, {}, []
    for i in range(len(stream)):
        image_features = stream[i:i + 1]
        clip_logits = base_logits(image_features)
        loss = -(clip_logits.softmax(1) * clip_logits.log_softmax(1)).sum(1)
        prob_map = clip_logits.softmax(1)
        pred = int(clip_logits.topk(1, 1, True, True)[1].t()[0])
        n_cls = clip_logits.shape[1]
        prop_entropy = float(loss / math.log2(n_cls))
        update_cache(pos_cache, pred, [image_features, loss], cfg.pos_capacity)
        if cfg.neg_entropy[0] < prop_entropy < cfg.neg_entropy[1]:
            update_cache(neg_cache, pred, [image_features, loss, prob_map], cfg.neg_capacity, True)
        final_logits = clip_logits.clone()
        if pos_cache:
            final_logits += compute_cache_logits(image_features, pos_cache, cfg.pos_alpha, cfg.pos_beta, n_cls)
        if neg_cache:
            final_logits -= compute_cache_logits(image_features, neg_cache, cfg.neg_alpha, cfg.neg_beta, n_cls,
                                                 cfg.neg_mask)
        out.append(final_logits)
    return torch.cat(out)


def stream_task(k: int, seed: int = 0, c: int = 8, n: int = 40, **kw):
    task, test = make_task(c=c, k=k, d=16, test_per_class=n // c, seed=seed, **kw)
    return replace(task, unlabeled=replace(test, labels=torch.full_like(test.labels, -1)), seed=seed + 5), test


@pytest.mark.parametrize("overrides", [{}, NEG, {**NEG, "pos_capacity": 1, "block": 7}])
def test_zero_shot_stream_matches_the_official_loop(overrides):
    task, test = stream_task(k=0)
    m = create("tda", **overrides).fit(task)
    # float32 like the official run: cache admission compares entropies, which near 0 order differently in float64
    stream = test.features[m.order_]
    text = task.text_weights
    ref = official_tda(stream, lambda f: task.logit_scale * f @ text.T, m.config).double()
    got = m.logits(test.features)[m.order_].double()
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    assert m.fitted_meta()["neg_entries"] > 0 or not overrides


def test_with_shots_the_base_is_the_tip_cache_and_matches():
    task, test = stream_task(k=4, seed=1)
    m = create("tda", **NEG).fit(task)
    keys, values = task.train.features, F.one_hot(task.train.labels, 8).float()
    text = task.text_weights

    def base(f):
        aff = f @ keys.T
        return task.logit_scale * f @ text.T + m.shot_alpha_ * torch.exp(-m.shot_beta_ * (1 - aff)) @ values

    ref = official_tda(test.features[m.order_], base, m.config).double()
    got = m.logits(test.features)[m.order_].double()
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5


def test_stream_order_is_a_seeded_shuffle_recorded_in_meta(tmp_path):
    task, test = stream_task(k=0)
    a, b = create("tda").fit(task), create("tda").fit(replace(task, seed=99))
    assert not torch.equal(a.order_, b.order_) and a.fitted_meta()["stream_seed"] == task.seed
    assert torch.equal(create("tda", shuffle=False).fit(task).order_, torch.arange(len(test)))
    loaded = load(a.save(tmp_path / "tda"))
    assert torch.equal(loaded.logits(test.features), a.logits(test.features))
    assert loaded.fitted_meta() == a.fitted_meta()


def test_other_features_are_scored_with_the_final_caches():
    task, test = stream_task(k=0)
    m = create("tda").fit(task)
    one = test.features[:3]
    keys, values, _, t_out = m.caches_["pos"]
    final = t_out == len(test)
    text = task.text_weights
    pos = torch.exp(-5.0 * (1 - one @ keys[final].T)) @ values[final]
    nk, nv, _, nt = m.caches_["neg"]
    neg = torch.exp(-1.0 * (1 - one @ nk[nt == len(test)].T)) @ nv[nt == len(test)]
    expected = 100 * one @ text.T + 2.0 * pos - 0.117 * neg
    torch.testing.assert_close(m.logits(one), expected, rtol=1e-5, atol=1e-4)


def test_simulate_cache_keeps_the_lowest_losses_per_class():
    pred = [0, 0, 0, 1, 0, 0]
    loss = [0.5, 0.4, 0.9, 0.1, 0.3, 0.95]
    src, t_in, t_out = simulate_cache(pred, loss, [True] * 6, capacity=2)
    assert src == [0, 1, 3, 4] and t_in == src
    assert t_out == [4, 6, 6, 6]  # 0.5 (the worst of {0.5, 0.4}) is replaced by 0.3 at t=4; 0.9 and 0.95 never enter


def test_shots_help_on_a_task_where_zero_shot_is_weak():
    accs = []
    for k in (0, 4, 16):
        task, test = stream_task(k=k, seed=2, c=10, n=200, feat_noise=1.0, text_noise=2.5)
        accs.append(accuracy(create("tda").fit(task).logits(test.features), test.labels))
    zs = zeroshot_accuracy(task, test)
    assert accs[0] < accs[1] < accs[2] and accs[2] > zs + 0.1, (zs, accs)


def test_needs_the_stream_and_checks_features():
    task, test = stream_task(k=2)
    no_stream = create("tda").fit(replace(task, unlabeled=None))  # `kshot fit`: no stream, empty caches
    assert no_stream.fitted_meta()["pos_entries"] == 0
    torch.testing.assert_close(no_stream.logits(test.features), create("tip_adapter").fit(task).logits(test.features))
    bad = replace(task.unlabeled, features=task.unlabeled.features.clone())
    bad.features[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        create("tda").fit(replace(task, unlabeled=bad))
    dup = FeatureSet(test.features[:1].repeat(10, 1), torch.full((10,), -1), [""] * 10)
    assert torch.isfinite(create("tda").fit(replace(task, unlabeled=dup)).logits(dup.features)).all()
    assert_logits_input_checks(create("tda").fit(task), 16)


def test_refit_overrides_fix_the_shot_cache():
    from kshot.methods.tda import TDA

    task, _ = stream_task(k=4, seed=1)
    m = create("tda").fit(task)
    refit = create("tda", **TDA.refit_overrides([m.fitted_meta()])).fit(replace(task, val=None))
    assert (refit.shot_alpha_, refit.shot_beta_) == (m.shot_alpha_, m.shot_beta_)
