import math
import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import ConfigError, DataError, KshotError
from kshot.methods import create, load
from kshot.methods.clip_adapter import adapter_logits, init_adapter
from tests.methods.conftest_lpheads import (accuracy, bad_tasks, make_task, tiny_task,
                                            zeroshot_accuracy)


class _Adapter(nn.Module):
    """The official module: Linear(D, D/4, no bias) - ReLU - Linear(D/4, D, no bias) - ReLU."""

    def __init__(self, d: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d, d // reduction, bias=False), nn.ReLU(),
                                nn.Linear(d // reduction, d, bias=False), nn.ReLU())

    def forward(self, x):
        return self.fc(x)


def _literal_logits(adapter, x, text, ratio, scale):
    feats = ratio * adapter(x) + (1 - ratio) * x
    feats = feats / feats.norm(dim=-1, keepdim=True)
    return scale * feats @ text.t()


def test_logits_formula_matches_official_module():
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(7, 32, generator=g), dim=1)
    text = F.normalize(torch.randn(5, 32, generator=g), dim=1)
    down, up = init_adapter(32, 4, seed=11)
    ref = _Adapter(32)
    ref.fc[0].weight.data, ref.fc[2].weight.data = down.clone(), up.clone()
    for rho in (0.0, 0.2, 0.7):
        assert torch.allclose(adapter_logits(x, down, up, text, rho, 100.0), _literal_logits(ref, x, text, rho, 100.0),
                              atol=1e-5)


def test_init_is_seeded_linear_default():
    down, up = init_adapter(64, 4, seed=0)
    assert down.shape == (16, 64) and up.shape == (64, 16)
    assert down.abs().max() <= 1 / math.sqrt(64) and up.abs().max() <= 1 / math.sqrt(16)
    assert torch.equal(init_adapter(64, 4, seed=0)[0], down)
    assert not torch.equal(init_adapter(64, 4, seed=1)[0], down)


def test_training_trajectory_matches_literal_loop():
    task, _ = make_task(c=5, k=4, d=32, with_val=False)
    steps, rho, scale = 25, 0.3, task.logit_scale
    m = create("clip_adapter", steps=steps, rho=rho, batch_size=0).fit(task)
    ref = _Adapter(32)
    down, up = init_adapter(32, 4, task.seed)
    ref.fc[0].weight.data, ref.fc[2].weight.data = down.clone(), up.clone()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(_literal_logits(ref, task.train.features, task.text_weights, rho, scale),
                               task.train.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert m.loss_history_ == pytest.approx(losses, rel=1e-4, abs=1e-5)
    assert torch.allclose(m.down_, ref.fc[0].weight.data, atol=1e-5)
    assert torch.allclose(m.up_, ref.fc[2].weight.data, atol=1e-5)


def test_rho_searched_on_val_only():
    task, _ = make_task(c=5, k=4, d=16)
    m = create("clip_adapter", steps=40, rho_grid=(0.2, 0.6)).fit(task)
    assert [r for r, _ in m.search_history_] == [0.2, 0.6]
    assert m.rho_ in (0.2, 0.6)
    assert m.val_acc_ == max(a for _, a in m.search_history_)
    assert m.val_acc_ == pytest.approx(accuracy(m.logits(task.val.features), task.val.labels))
    no_val = create("clip_adapter", steps=40, rho=0.35).fit(replace(task, val=None))
    assert no_val.rho_ == 0.35 and no_val.best_step_ == 39 and no_val.val_acc_ is None


def test_beats_zero_shot_on_noisy_text():
    task, test = make_task(c=8, k=8, d=32, text_noise=2.0)
    m = create("clip_adapter").fit(task)
    assert accuracy(m.logits(test.features), test.labels) > zeroshot_accuracy(task, test) + 0.05


def test_augmented_views_are_sampled():
    task, test = make_task(c=5, k=4, d=16, views=4, with_val=False)
    a = create("clip_adapter", steps=30).fit(task).logits(test.features)
    b = create("clip_adapter", steps=30, use_aug_views=False).fit(task).logits(test.features)
    assert not torch.allclose(a, b)


def test_classes_without_shots_keep_text_rows():
    task, test = make_task(c=6, k=4, d=16, empty=(1, 4), text_noise=0.3, with_val=False)
    m = create("clip_adapter", steps=50).fit(task)
    out = m.logits(test.features)
    assert out.shape == (len(test), 6)
    assert torch.equal(m.text_, task.text_weights)
    empty_items = (test.labels == 1) | (test.labels == 4)
    assert (out.argmax(1)[empty_items] == test.labels[empty_items]).float().mean() > 0.3


def test_round_trip_and_determinism(tmp_path):
    task, test = make_task(c=5, k=4, d=16)
    m = create("clip_adapter", steps=30, rho_grid=(0.2, 0.4)).fit(task)
    out = m.logits(test.features)
    assert torch.equal(create("clip_adapter", steps=30, rho_grid=(0.2, 0.4)).fit(task).logits(test.features), out)
    m2 = load(m.save(tmp_path / "ca"))
    assert torch.equal(m2.logits(test.features), out)
    assert (m2.rho_, m2.best_step_) == (m.rho_, m.best_step_)


def test_seed_changes_init():
    task, test = make_task(c=5, k=4, d=16, with_val=False)
    a = create("clip_adapter", steps=5).fit(task).logits(test.features)
    b = create("clip_adapter", steps=5).fit(replace(task, seed=3)).logits(test.features)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("case", sorted(bad_tasks()))
def test_bad_inputs(case):
    task, msg = bad_tasks()[case]
    with pytest.raises(KshotError, match=msg):
        create("clip_adapter", steps=5).fit(task)


def test_logits_reject_wrong_dim():
    m = create("clip_adapter", steps=5).fit(tiny_task(with_val=False))
    with pytest.raises(DataError, match="dimension 8"):
        m.logits(torch.zeros(3, 8))


@pytest.mark.parametrize("bad", [{"optimizer": "lamb"}, {"rho": 1.5}, {"rho_grid": (0.2, -0.1)}, {"steps": 0}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        create("clip_adapter", **bad).fit(tiny_task())


def test_sgd_option_trains():
    task, test = make_task(c=5, k=4, d=16, with_val=False)
    m = create("clip_adapter", optimizer="sgd", lr=0.01, steps=50).fit(task)
    assert m.loss_history_[-1] < m.loss_history_[0]


def test_contract_task_is_fast():
    t0 = time.process_time()
    m = create("clip_adapter").fit(tiny_task())
    assert time.process_time() - t0 < 5.0
    assert m.logits(torch.zeros(2, 16)).shape == (2, 5)
