"""APE-T: loss trajectory against a literal port of the official `APE_Training` module, the full-width in-place
affinity, epoch choice on val, save/load, bad inputs, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kshot.methods import create
from kshot.methods.ape_t import ape_t_logits, ape_t_train_logits, ape_t_train_rows
from kshot.methods.cache_ops import ClassBlocks
from kshot.methods.tip_adapter import tip_logits
from tests.methods.conftest_cachemethods import (BAD_CASES, FAST_GRID_2, accuracy, assert_logits_input_checks,
                                                 assert_rejects, assert_round_trip, make_task, zeroshot_accuracy)
from tests.methods.test_ape import literal_s, literal_v


class ReferenceAPET(nn.Module):
    """`APE_Training.forward` semantics: clone, add the residual to the selected channels in place."""

    def __init__(self, num_classes, shots, indices):
        super().__init__()
        self.shots, self.indices = shots, indices
        self.value_weights = nn.Parameter(torch.ones(num_classes * shots, 1))
        self.res = nn.Parameter(torch.zeros(num_classes, len(indices)))

    def forward(self, cache_keys, clip_weights, cache_values):
        res_keys = self.res.unsqueeze(1).repeat(1, self.shots, 1).reshape(-1, len(self.indices))
        new_keys = cache_keys.clone()
        new_keys[:, self.indices] = new_keys[:, self.indices] + res_keys
        new_weights = clip_weights.clone()
        new_weights[self.indices, :] = clip_weights[self.indices, :] + self.res.t()
        return new_keys, new_weights, cache_values * self.value_weights


def reference_training(task, indices, epochs, lr, alpha, beta, scale=100.0):
    x, y = task.train.features, task.train.labels
    shots = len(y) // task.num_classes
    adapter = ReferenceAPET(task.num_classes, shots, indices)
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr, eps=1e-3, weight_decay=1e-1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    values, clip_weights = F.one_hot(y, task.num_classes).float(), task.text_weights.T
    losses = []
    for _ in range(epochs):
        keys, weights, vals = adapter(x, clip_weights, values)
        logits = scale * x @ weights + alpha * ((-1) * (beta - beta * (x @ keys.t()))).exp() @ vals
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses, adapter


def test_loss_trajectory_matches_official_module():
    task, _ = make_task(c=6, k=4, d=12, with_val=False)
    m = create("ape_t", epochs=12, lr=1e-2, channels=7).fit(task)
    j = 0.2 * literal_s(task.text_weights, task.train.features, task.train.labels) - 0.8 * literal_v(
        task.text_weights)
    indices = sorted(sorted(range(12), key=lambda k: float(j[k]))[:7])
    assert m.channels_.tolist() == indices
    ref_losses, ref = reference_training(task, torch.tensor(indices), 12, 1e-2, alpha=3.0, beta=1.0)
    got = [row["loss"] for row in m.fitted_meta()["history"]]
    assert got == pytest.approx(ref_losses, rel=1e-4, abs=1e-6)
    assert ref_losses[-1] < ref_losses[0]
    torch.testing.assert_close(m.residual_, ref.res.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m.value_weights_, ref.value_weights.detach().squeeze(1), atol=1e-5, rtol=1e-4)


def test_untrained_model_is_tip_adapter_on_full_width_keys():
    task, test = make_task(c=5, k=4, d=16)
    m = create("ape_t", epochs=0, search=False).fit(task)
    values = F.one_hot(task.train.labels, 5).float()
    ref = tip_logits(test.features, task.text_weights, task.train.features, values, 3.0, 1.0, 100.0)
    torch.testing.assert_close(m.logits(test.features), ref, atol=1e-5, rtol=1e-5)


def test_best_epoch_is_chosen_on_val_and_trainable_params():
    task, _ = make_task(c=10, k=8, d=16, feat_noise=2.0)
    m = create("ape_t", epochs=10, lr=1e-2, channels=8, **FAST_GRID_2).fit(task)
    meta = m.fitted_meta()
    val_accs = [row["val_acc"] for row in meta["history"]]
    assert meta["best_epoch"] == val_accs.index(max(val_accs))
    assert meta["trainable_params"] == 10 * 8 + 80


def test_beats_zero_shot_at_16_shots():
    task, test = make_task(k=16)
    m = create("ape_t").fit(task)
    acc, zs = accuracy(m.logits(test.features), test.labels), zeroshot_accuracy(task, test)
    assert acc > zs + 0.05, (acc, zs)


def test_empty_classes_round_trip_and_determinism(tmp_path):
    task, test = make_task(c=6, k=4, d=16, empty=(3,), views=2)
    a = create("ape_t", epochs=3, **FAST_GRID_2).fit(task)
    b = create("ape_t", epochs=3, **FAST_GRID_2).fit(task)
    assert torch.equal(a.logits(test.features), b.logits(test.features))
    assert a.residual_.shape[0] == 6
    assert_round_trip(a, test.features, tmp_path / "apet")
    assert_logits_input_checks(a, 16)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs(case):
    assert_rejects("ape_t", case, epochs=2, **FAST_GRID_2)


@pytest.mark.parametrize("drop", [False, True])
def test_hoisted_training_logits_equal_the_full_formula(drop):
    """The training path (fixed kernel grouped once, residual applied as exp(β f_Q·R_c)) equals `ape_t_logits`."""
    task, test = make_task(c=6, k=3, d=16)
    keys, labels = task.train.features, task.train.labels
    if drop:  # unbalanced cache with an empty class: padded class blocks
        keep = (labels != 2) & ~((labels == 4) & (torch.arange(len(labels)) % 3 == 0))
        keys, labels = keys[keep], labels[keep]
    g = torch.Generator().manual_seed(0)
    channels = torch.tensor([0, 3, 5, 9, 12])
    residual = 0.1 * torch.randn(6, 5, generator=g)
    weights = 1 + 0.3 * torch.randn(len(labels), generator=g)
    blocks = ClassBlocks.of(labels, 6)
    rows = ape_t_train_rows(test.features, task.text_weights, keys, blocks, channels, 1.7, 100.0, rows=7)
    got = ape_t_train_logits(*rows, residual, weights, blocks, 2.5, 1.7, 100.0)
    ref = ape_t_logits(test.features, task.text_weights, keys, labels, channels, residual, weights, 6, 2.5, 1.7, 100.0)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
