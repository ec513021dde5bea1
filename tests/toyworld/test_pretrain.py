"""Smoke tests of the pretraining loop: the loss falls, runs are reproducible and resumable."""

from __future__ import annotations

import math

import pytest
import torch

from kshot.errors import ConfigError
from kshot.toyworld.model import ToyClipCfg
from kshot.toyworld.pretrain import PretrainConfig, clip_loss, lr_at, pretrain

# A small model keeps each step at a few milliseconds.
_SMALL = ToyClipCfg(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1,
                    text_heads=2, embed_dim=32)


def _cfg(**kw) -> PretrainConfig:
    base = dict(steps=25, batch_size=32, warmup=3, lr=3e-3, model=_SMALL, seed=0)
    return PretrainConfig(**{**base, **kw})


def test_loss_decreases() -> None:
    res = pretrain(_cfg(), progress=False)
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert len(res.losses) == 25
    assert first > math.log(32) * 0.9  # starts near chance: ln(batch)
    assert last < first - 0.15, (first, last)  # measured (seed 0): 3.73 -> 3.47
    assert not res.model.training


def test_runs_are_reproducible_and_resumable(tmp_path) -> None:
    a = pretrain(_cfg(steps=6), progress=False)
    b = pretrain(_cfg(steps=6), progress=False)
    assert a.losses == b.losses
    ck = tmp_path / "ck"
    part = pretrain(_cfg(steps=6, checkpoint_every=3, checkpoint_dir=str(ck)), progress=False)
    assert part.losses == a.losses
    # a resumed run continues from the checkpoint written at step 6 -> nothing left to do, same weights
    resumed = pretrain(_cfg(steps=6, checkpoint_every=3, checkpoint_dir=str(ck)), progress=False)
    assert resumed.losses == a.losses
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)


def test_schedule_and_loss() -> None:
    cfg = PretrainConfig(steps=100, warmup=10, lr=1.0)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5) and lr_at(99, cfg) < 0.01
    f = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    assert float(clip_loss(f, f, torch.tensor(100.0))) < 0.1  # matched pairs, sharp scale
    assert float(clip_loss(f, f.roll(1, 0), torch.tensor(100.0))) > 1.0


def test_bad_configs() -> None:
    with pytest.raises(ConfigError):
        PretrainConfig(steps=0)
    with pytest.raises(ConfigError):
        PretrainConfig(checkpoint_every=5)
