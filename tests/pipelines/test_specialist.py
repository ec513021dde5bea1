"""The specialist stage: schedule, seeded training, prototype heads, epoch choice by cross-validation in the shots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.errors import DataError
from kshot.features.cache import FeatureStore
from kshot.features.extract import ExtractConfig
from kshot.pipelines.configfile import config_from_dict
from kshot.pipelines.runner import RunOptions, load_data
from kshot.pipelines.specialist import SpecialistStage, cosine_lr
from kshot.pipelines.workspace import Workspace


def _setup(toy_root, clip, tmp_path, **spec):
    body = {"type": "specialist", "model": "clip", "classes": "domain:Creatures", "epochs": 2, "t_max": 2,
            "cv_folds": 2, "batch_size": 16, **spec}
    cfg = config_from_dict({"name": "s", "backbones": {"clip": "toy:clip"}, "estimate_per_class": 1,
                            "stages": {"spec": body}, "output": "spec"})
    data, _ = load_data(cfg, toy_root, RunOptions(out=tmp_path))
    store = FeatureStore(tmp_path / "cache", extract=ExtractConfig(progress=False, device="cpu"))
    ws = Workspace(cfg, data, store, torch.device("cpu"), loaded={"clip": clip})
    stage = SpecialistStage("spec", cfg.stages["spec"])
    return ws, stage


def test_cosine_schedule_matches_the_closed_form() -> None:
    assert cosine_lr(1e-3, 1e-5, 0, 15) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 1e-5, 15, 15) == pytest.approx(1e-5)
    assert cosine_lr(1e-3, 1e-5, 5, 15) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 3)) / 2)
    assert cosine_lr(1e-3, 1e-5, 30, 15) == pytest.approx(1e-3)  # periodic past the period, as PyTorch's formula


def test_prototype_head_without_training_is_the_nearest_class_mean(toy_root, small_clip, tmp_path) -> None:
    ws, stage = _setup(toy_root, small_clip, tmp_path, head="cosine", head_init="prototype", epochs=0, cv_folds=0)
    stage.fit(ws, {})
    assert stage.encoder_bb is small_clip  # head-only training shares the backbone and its cached features
    shots = ws.shot_features("clip")
    labels = shots.labels.numpy()
    creatures = stage.classes
    means = torch.stack([shots.features[torch.as_tensor(labels == c)].mean(0) for c in creatures])
    est = ws.estimate_features("clip")
    rows = np.flatnonzero(np.isin(ws.data.labels("estimate"), creatures))
    expect = (est.features[rows] @ F.normalize(means, dim=-1).T).argmax(1)
    assert torch.equal(stage.scores("estimate", rows).argmax(1), expect)


def test_training_is_seeded_and_leaves_the_shared_backbone_untouched(toy_root, small_clip, tmp_path) -> None:
    before = {k: v.clone() for k, v in small_clip.model.state_dict().items()}
    kw = {"train": "all", "head": "cosine", "head_init": "prototype", "cv_folds": 0}
    ws, a = _setup(toy_root, small_clip, tmp_path, **kw)
    a.fit(ws, {})
    ws2, b = _setup(toy_root, small_clip, tmp_path / "again", **kw)
    b.fit(ws2, {})
    assert torch.equal(a.head.weight, b.head.weight)
    assert a.encoder_bb.fingerprint == b.encoder_bb.fingerprint != small_clip.fingerprint
    assert all(torch.equal(v, small_clip.model.state_dict()[k]) for k, v in before.items())
    assert a.record["epochs_kept"] == 2 and a.record["cv_curve"] is None
    counts = a.param_counts()
    assert counts["finetuned_encoder"] == sum(p.numel() for p in small_clip.model.visual.parameters())
    assert counts["trainable"] == counts["finetuned_encoder"] + counts["fitted"]


def test_random_head_never_keeps_epoch_zero(toy_root, small_clip, tmp_path) -> None:
    ws, stage = _setup(toy_root, small_clip, tmp_path, head_init="random")
    stage.fit(ws, {})
    rec = stage.record
    assert len(rec["cv_curve"]) == 3 and rec["cv_curve"][0] < 0  # 2 epochs + "before training", ruled out
    assert rec["epochs_kept"] == int(np.argmax(rec["cv_curve"])) >= 1


def test_an_encoder_kept_as_loaded_is_shared_and_not_counted_twice(toy_root, small_clip, tmp_path) -> None:
    ws, stage = _setup(toy_root, small_clip, tmp_path, train="all", head="cosine", head_init="prototype", epochs=0)
    stage.fit(ws, {})
    assert stage.encoder_bb is small_clip and stage.param_counts()["finetuned_encoder"] == 0


def test_a_group_without_shots_is_refused(toy_root, small_clip, tmp_path) -> None:
    ws, stage = _setup(toy_root, small_clip, tmp_path, classes="domain:Unseen")
    with pytest.raises(DataError, match="needs shots for every class"):
        stage.fit(ws, {})
