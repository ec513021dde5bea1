"""Cross-validation within the shots: fold layout, and refit overrides taken from what each fold chose."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.features.featureset import FeatureSet
from kshot.methods import METHODS, Task, create
from kshot.pipelines.crossval import choose_by_crossval, effective_folds, shot_folds


def _task(c: int = 6, k: int = 4, d: int = 16, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    labels = torch.arange(c).repeat_interleave(k)
    feats = F.normalize(means[labels] + 0.6 * torch.randn(len(labels), d, generator=g), dim=-1)
    text = F.normalize(means + 0.5 * torch.randn(c, d, generator=g), dim=-1)
    fs = FeatureSet(feats, labels, [f"{i}.png" for i in range(len(labels))])
    return Task(train=fs, classnames=[f"c{i}" for i in range(c)], text_weights=text, logit_scale=20.0, seed=1)


def test_folds_are_disjoint_cover_every_row_and_hold_every_class() -> None:
    labels = np.repeat(np.arange(5), 4)
    folds = shot_folds(labels, 4, seed=3)
    rows = np.concatenate(folds)
    assert sorted(rows.tolist()) == list(range(20))
    for f in folds:
        assert sorted(labels[f].tolist()) == list(range(5))
    assert [f.tolist() for f in folds] == [f.tolist() for f in shot_folds(labels, 4, seed=3)]
    assert [f.tolist() for f in folds] != [f.tolist() for f in shot_folds(labels, 4, seed=4)]


def test_effective_folds_is_bounded_by_the_smallest_class() -> None:
    assert effective_folds(np.array([0, 0, 0, 1, 1, 1, 1]), 4) == 3
    assert effective_folds(np.array([0, 1, 1]), 4) == 1
    assert effective_folds(np.array([0, 0, 1, 1]), 0) == 0


def test_tip_adapter_refit_uses_the_median_fold_choice_and_no_search() -> None:
    task = _task()
    out = choose_by_crossval("tip_adapter", {"search_steps": [20, 10]}, task, folds=4, seed=1)
    assert out.folds == 4 and len(out.fold_meta) == 4
    assert out.overrides["search"] is False
    alphas = sorted(m["alpha"] for m in out.fold_meta)
    assert out.overrides["init_alpha"] == pytest.approx(alphas[1])  # lower median of 4
    # Each fold searched on its own held-out shot: re-fitting fold 0 by hand gives the same choice.
    labels = task.train.labels.numpy()
    val = shot_folds(labels, 4, 1)[0]
    train = np.setdiff1d(np.arange(len(labels)), val)
    from dataclasses import replace
    m = create("tip_adapter", search_steps=[20, 10]).fit(replace(task, train=task.train.subset(train),
                                                                  val=task.train.subset(val)))
    assert m.fitted_meta()["alpha"] == pytest.approx(out.fold_meta[0]["alpha"])
    final = create("tip_adapter", search_steps=[20, 10], **out.overrides).fit(task)
    assert final.fitted_meta()["alpha"] == pytest.approx(out.overrides["init_alpha"])


def test_epoch_and_iteration_rules_count_from_the_best_index() -> None:
    assert METHODS.get("lpp").refit_overrides([{"best_iter": 9}, {"best_iter": 3}, {"best_iter": 5}]) == {
        "iters": 6, "select_on_val": False}
    lp = METHODS.get("linear_probe")
    assert lp.refit_overrides([{"C": 1e-2}, {"C": 1e2}, {"C": 1.0}]) == {"C": pytest.approx(1.0)}
    track1 = METHODS.get("track1")
    assert track1.refit_overrides([{"alpha": 1, "beta": 2, "gamma": 0.5, "best_epoch": 4}])["epochs"] == 5


def test_methods_without_a_rule_or_without_tuning_keep_their_defaults() -> None:
    task = _task()
    assert choose_by_crossval("zeroshot", {}, task, 4, 1).overrides == {}
    out = choose_by_crossval("made_up", {}, task, 4, 1)
    assert out.overrides == {} and "no cross-validation rule" in out.note
    single = Task(train=task.train.subset(np.arange(0, 24, 4)), classnames=task.classnames,
                  text_weights=task.text_weights)
    assert "needs >= 2 shots" in choose_by_crossval("tip_adapter", {}, single, 4, 1).note
