"""Track1 (seed 003): the blended channel criterion against explicit loops, the README's logits, the residual's loss
trajectory against a literal module, the config choices, the trainable-parameter count, save/load, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kshot.errors import ConfigError
from kshot.methods import create
from kshot.methods.ape import resolve_num_channels
from kshot.methods.cache_ops import ClassBlocks
from kshot.methods.track1 import track1_criterion, track1_logits, track1_train_logits, track1_train_rows
from tests.methods.conftest_cachemethods import (BAD_CASES, FAST_GRID_3, accuracy, assert_logits_input_checks,
                                                 assert_rejects, assert_round_trip, make_task, zeroshot_accuracy)
from tests.methods.test_ape import literal_ape_logits, literal_kl, literal_v


def literal_s(text, keys, labels, rho):
    """The README's S, literally:
    ρ (1/C²) Σ_{i≠j} δ(t_i, t_j) + (1−ρ) Σ_i P_i Σ_{j≠i} P_j (1/M_i M_j) Σ_m Σ_n δ(x^{i,m}, x^{j,n})."""
    c, d = text.shape
    s_text = torch.zeros(d, dtype=torch.float64)
    for i in range(c):
        for j in range(c):
            if i != j:
                s_text += text[i].double() * text[j].double()
    s_text /= c**2
    members = {i: [keys[m].double() for m in range(len(keys)) if int(labels[m]) == i] for i in range(c)}
    members = {i: v for i, v in members.items() if v}
    prior = 1.0 / len(members)
    s_img = torch.zeros(d, dtype=torch.float64)
    for i, xi in members.items():
        for j, xj in members.items():
            if i == j:
                continue
            pair = torch.zeros(d, dtype=torch.float64)
            for a in xi:
                for b in xj:
                    pair += a * b
            s_img += prior * prior * pair / (len(xi) * len(xj))
    return rho * s_text + (1 - rho) * s_img


def literal_within_variance(keys, labels, c):
    rows = []
    for i in range(c):
        xs = [keys[m].double() for m in range(len(keys)) if int(labels[m]) == i]
        if xs:
            mean = sum(xs) / len(xs)
            rows.append(sum((x - mean) ** 2 for x in xs) / len(xs))
    return sum(rows) / len(rows)


@pytest.mark.parametrize("variance", ["text_between_class", "image_within_class"])
def test_criterion_matches_literal_loops(variance):
    task, _ = make_task(c=5, k=3, d=9, empty=(1,))
    keys, labels, text = task.train.features, task.train.labels, task.text_weights
    lam, rho = 0.3, 0.4
    s = literal_s(text, keys, labels, rho)
    if variance == "text_between_class":
        j_ref = lam * s - (1 - lam) * literal_v(text)
    else:
        j_ref = lam * s + (1 - lam) * literal_within_variance(keys, labels, 5)
    j = track1_criterion(text, keys, labels, lam, rho, variance)
    torch.testing.assert_close(j.double(), j_ref, atol=1e-6, rtol=1e-5)


def test_variance_choice_is_explicit_and_matters():
    task, _ = make_task(c=8, k=4, d=32)
    a = create("track1", epochs=0, search=False, channels=10).fit(task)
    b = create("track1", epochs=0, search=False, channels=10, variance="image_within_class").fit(task)
    assert a.channels_.tolist() != b.channels_.tolist()
    with pytest.raises(ConfigError, match="variance"):
        create("track1", variance="within")
    with pytest.raises(ConfigError, match="text_share"):
        create("track1", text_share=2.0)


def _literal_channels(task, lam, rho, q):
    j = lam * literal_s(task.text_weights, task.train.features, task.train.labels, rho) - (1 - lam) * literal_v(
        task.text_weights)
    return sorted(sorted(range(task.text_weights.shape[1]), key=lambda k: float(j[k]))[:q])


def test_untrained_logits_match_readme_formula():
    task, test = make_task(c=4, k=3, d=8, test_per_class=2)
    m = create("track1", epochs=0, search=False, channels=5, init_alpha=1.5, init_beta=2.0, init_gamma=0.3).fit(task)
    channels = _literal_channels(task, 0.3, 0.5, 5)
    assert m.channels_.tolist() == channels
    ref = literal_ape_logits(test.features, task.text_weights, task.train.features, task.train.labels,
                             torch.tensor(channels), 1.5, 2.0, 0.3, 100.0)
    torch.testing.assert_close(m.logits(test.features).double(), ref, atol=1e-5, rtol=1e-5)


class ReferenceTrack1(nn.Module):
    """R_fW = s·f(W + Pad(Res))ᵀ, R_f'F' = exp(−β(1 − f'(F' + Expand(Res))ᵀ)),
    logits = R_fW + α R_f'F' diag(R_F'W') L."""

    def __init__(self, text, keys, labels, channels, gamma):
        super().__init__()
        self.text, self.labels, self.channels = text, labels, channels
        self.keys_sel = F.normalize(keys[:, channels], dim=-1)
        kl = literal_kl(self.keys_sel, F.normalize(text[:, channels], dim=-1), labels).float()
        self.values = F.one_hot(labels, text.shape[0]).float() * torch.exp(gamma * kl)[:, None]
        self.res = nn.Parameter(torch.zeros(text.shape[0], len(channels)))

    def forward(self, f, alpha, beta, scale=100.0):
        w = self.text.clone()
        w[:, self.channels] = w[:, self.channels] + self.res
        keys = torch.stack([self.keys_sel[m] + self.res[self.labels[m]] for m in range(len(self.labels))])
        fp = F.normalize(f[:, self.channels], dim=-1)
        return scale * f @ w.T + alpha * torch.exp(-beta * (1 - fp @ keys.T)) @ self.values


def test_residual_loss_trajectory_matches_reference():
    task, _ = make_task(c=6, k=4, d=12, with_val=False)
    m = create("track1", epochs=10, lr=1e-2, channels=6).fit(task)
    channels = torch.tensor(_literal_channels(task, 0.3, 0.5, 6))
    ref = ReferenceTrack1(task.text_weights, task.train.features, task.train.labels, channels, gamma=0.1)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, eps=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(ref(task.train.features, 0.8, 1.0), task.train.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert [row["loss"] for row in m.fitted_meta()["history"]] == pytest.approx(losses, rel=1e-4, abs=1e-6)
    assert losses[-1] < losses[0]
    torch.testing.assert_close(m.residual_, ref.res.detach(), atol=1e-5, rtol=1e-4)


def test_trainable_parameter_count_at_challenge_size():
    task, _ = make_task(c=374, k=1, d=512, val_per_class=0, test_per_class=0, with_val=False)
    m = create("track1", epochs=0, search=False).fit(task)
    q = resolve_num_channels(700, 512)
    assert q == 350 and m.fitted_meta()["trainable_params"] == 374 * 350 == 130_900


def test_beats_zero_shot_at_16_shots():
    task, test = make_task(k=16)
    m = create("track1", search_steps=(50, 10, 5)).fit(task)
    acc, zs = accuracy(m.logits(test.features), test.labels), zeroshot_accuracy(task, test)
    assert acc > zs + 0.05, (acc, zs)


def test_empty_classes_round_trip_and_determinism(tmp_path):
    task, test = make_task(c=8, k=4, d=16, empty=(6, 7), views=2)
    a = create("track1", epochs=3, **FAST_GRID_3).fit(task)
    b = create("track1", epochs=3, **FAST_GRID_3).fit(task)
    out = a.logits(test.features)
    assert torch.equal(out, b.logits(test.features)) and torch.isfinite(out).all()
    assert set(out.argmax(1).tolist()) & {6, 7}  # shot-less classes can still be predicted
    assert_round_trip(a, test.features, tmp_path / "track1")
    assert_logits_input_checks(a, 16)
    assert not math.isnan(a.fitted_meta()["alpha"])


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs(case):
    assert_rejects("track1", case, epochs=2, **FAST_GRID_3)


def test_hoisted_training_logits_equal_the_readme_formula():
    """The training path (S over the fixed keys once, residual applied as exp(β f'·R_c)) equals `track1_logits`."""
    task, test = make_task(c=6, k=3, d=16)
    keys, labels = task.train.features, task.train.labels
    g = torch.Generator().manual_seed(0)
    channels = torch.tensor([1, 2, 6, 10, 15])
    keys_sel = F.normalize(keys[:, channels], dim=-1)
    residual = 0.1 * torch.randn(6, 5, generator=g)
    weights = torch.exp(0.3 * torch.rand(len(labels), generator=g))
    blocks = ClassBlocks.of(labels, 6)
    rows = track1_train_rows(test.features, task.text_weights, keys_sel, channels, blocks, weights, 1.3, 100.0)
    got = track1_train_logits(*rows, residual, 0.8, 1.3, 100.0)
    ref = track1_logits(test.features, task.text_weights, keys_sel, labels, channels, residual, blocks, weights, 0.8,
                        1.3, 100.0)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
