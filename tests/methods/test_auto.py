"""`auto`: picks by validation accuracy when the task has a val split, by stratified cross-validation over the shots
without one, falls back when nothing can be measured; the record says which and why; save/load keeps the choice."""

from __future__ import annotations

import pytest
import torch

from kshot.errors import ConfigError
from kshot.methods import create
from kshot.methods.auto import stratified_folds
from kshot.methods.base import Task
from tests.methods.conftest_cachemethods import accuracy, assert_round_trip, make_task

CANDS = ("zeroshot", "linear_probe", "lpp")


def _top1(method, fs) -> float:
    return accuracy(method.logits(fs.features), fs.labels) * 100.0


def test_picks_the_best_on_validation_and_says_so():
    task, test = make_task(c=6, k=4, d=16, val_per_class=4, text_noise=3.0)
    m = create("auto", candidates=CANDS).fit(task)
    expected = {n: _top1(create(n).fit(task), task.val) for n in CANDS}  # each candidate fitted and scored on val
    meta = m.fitted_meta()
    assert meta["selection_top1_percent"] == pytest.approx({n: round(v, 2) for n, v in expected.items()}, abs=0.01)
    assert meta["chosen"] == m.chosen == max(CANDS, key=lambda n: expected[n])
    assert "validation" in meta["reason"] and "cross-validation" not in meta["reason"] and m.chosen in meta["reason"]
    assert torch.equal(m.logits(test.features), create(m.chosen).fit(task).logits(test.features))


def test_cross_validates_over_the_shots_without_val_split():
    task, test = make_task(c=5, k=4, d=16, with_val=False, text_noise=3.0)
    m = create("auto", candidates=("zeroshot", "linear_probe"), folds=2).fit(task)
    meta = m.fitted_meta()
    assert "2-fold cross-validation" in meta["reason"] and m.chosen in meta["reason"]
    folds = stratified_folds(task.train.labels, 2, task.seed)
    assert sorted(torch.cat(folds).tolist()) == list(range(len(task.train)))  # disjoint, covering every shot
    for held in folds:  # every fold holds the same number of shots of each class
        assert torch.bincount(task.train.labels[held], minlength=5).tolist() == [2] * 5
    manual = []
    for held in folds:
        keep = torch.ones(len(task.train), dtype=torch.bool)
        keep[held] = False
        sub = Task(train=task.train.subset(keep.nonzero().flatten()), classnames=task.classnames,
                   text_weights=task.text_weights, val=task.train.subset(held), seed=task.seed)
        manual.append(_top1(create("linear_probe").fit(sub), sub.val))
    assert meta["selection_top1_percent"]["linear_probe"] == pytest.approx(sum(manual) / 2, abs=0.01)
    assert m.chosen == max(meta["selection_top1_percent"], key=meta["selection_top1_percent"].get)
    assert m.logits(test.features).shape == (len(test), 5)


def test_one_shot_without_val_uses_the_fallback_and_says_so():
    task, _ = make_task(c=4, k=1, d=16, with_val=False)
    m = create("auto", candidates=CANDS, fallback="lpp").fit(task)
    assert m.chosen == "lpp" and m.fitted_meta()["selection_top1_percent"] == {}
    assert "fallback" in m.fitted_meta()["reason"]


def test_round_trip_keeps_the_choice(tmp_path):
    task, test = make_task(c=4, k=4, d=16, val_per_class=2)
    m = create("auto", candidates=("zeroshot", "linear_probe")).fit(task)
    assert_round_trip(m, test.features, tmp_path / "auto")


def test_bad_candidates_are_one_line_errors():
    task, _ = make_task(c=4, k=2, d=16, val_per_class=2)
    with pytest.raises(ConfigError):
        create("auto", candidates=("coop",)).fit(task)  # needs the backbone
    with pytest.raises(ConfigError, match="auto"):
        create("auto", candidates=("clip_lora",)).fit(task)
