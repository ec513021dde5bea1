"""The task loop: zero forgetting bit for bit, fine-tuning forgets, resume after an interruption, refusal of a
changed config, class-count checks, single-task evaluation of a checkpoint, phase plans of the presets."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace

import pytest
import torch

from kshot.continual import sequence
from kshot.continual.config import PRESETS, ContinualConfig, TaskSpec
from kshot.continual.sequence import Hooks, evaluate_checkpoint, load_learner, plan, run_method
from kshot.errors import ConfigError, DataError

from .conftest import LogitRecorder, digits_config


def _assert_bit_identical(rec: LogitRecorder) -> None:
    assert len(rec.after) == 3
    for i, outs in enumerate(rec.after):
        for j, logits in enumerate(outs):
            assert torch.equal(logits, rec.after[j][j]), f"task {j} outputs changed after task {i}"


def test_packnet_earlier_outputs_bit_identical_tiny_vgg(vgg_run) -> None:
    _, _, state, rec = vgg_run
    _assert_bit_identical(rec)
    assert all(row[j] == state.digests[j][j] for row in state.digests for j in range(len(row)))
    assert state.summary()["forgetting"] == 0.0 and state.summary()["bwt"] == 0.0
    assert state.accuracy[-1][0] > 40.0  # it did learn (4 classes: chance is 25 %)


def test_packnet_earlier_outputs_bit_identical_tiny_resnet_with_batchnorm(tmp_path) -> None:
    rec = LogitRecorder()
    cfg = digits_config("tiny_resnet", limit=120, train=replace(digits_config().schedule.train, epochs=1))
    state = run_method(cfg, tmp_path, "packnet", hooks=Hooks(on_phase_end=rec))
    _assert_bit_identical(rec)
    assert state.summary()["forgetting"] == 0.0


def test_finetuning_forgets_on_the_same_sequence(tmp_path) -> None:
    state = run_method(digits_config(methods=("finetune",)), tmp_path, "finetune")
    assert state.summary()["forgetting"] > 0.0
    assert state.digests[-1][0] != state.digests[0][0]


def test_interrupted_run_resumes_from_last_finished_phase_identically(vgg_run, tmp_path) -> None:
    cfg, _, full, _ = vgg_run

    class Stop(Exception):
        pass

    def stop_after_d1_train(ev) -> None:
        if ev.phase.key == "d1:train":
            raise Stop

    with pytest.raises(Stop):
        run_method(cfg, tmp_path, "packnet", hooks=Hooks(on_phase_end=stop_after_d1_train))
    seen = []
    resumed = run_method(cfg, tmp_path, "packnet", hooks=Hooks(on_phase_end=lambda ev: seen.append(ev.phase.key)))
    assert seen[0] == "d1:prune"  # nothing before it was redone
    assert resumed.digests == full.digests and resumed.accuracy == full.accuracy


def test_resume_with_changed_config_is_refused_unless_forced(vgg_run, tmp_path) -> None:
    cfg, out, _, _ = vgg_run
    shutil.copytree(out / "packnet", tmp_path / "packnet")
    changed = replace(cfg, schedule=replace(cfg.schedule, prune=0.6))
    with pytest.raises(ConfigError, match=r"schedule\.prune: 0\.5 -> 0\.6.*--force"):
        run_method(changed, tmp_path, "packnet")
    state = run_method(changed, tmp_path, "packnet", force=True)
    assert state.config["schedule"]["prune"] == 0.6
    runtime_only = replace(cfg, eval_batch_size=7)  # runtime fields may change freely
    run_method(runtime_only, tmp_path, "packnet", force=True)


def test_task_class_count_must_match_its_head(vgg_run, tmp_path) -> None:
    cfg, out, _, _ = vgg_run
    with pytest.raises(DataError, match="num_classes=5 but"):
        bad = replace(cfg, tasks=(replace(cfg.tasks[0], num_classes=5), *cfg.tasks[1:]))
        run_method(bad, tmp_path, "packnet")
    learner, _, _ = load_learner(out / "packnet")
    with pytest.raises(DataError, match="has 3 classes but its head has 4 outputs"):
        learner.check_head(0, 3, "somewhere")
    # a resumed run whose task data now has another class count than the head trained for it

    class Stop(Exception):
        pass

    def stop(ev) -> None:
        if ev.phase.key == "d0:train":
            raise Stop

    with pytest.raises(Stop):
        run_method(cfg, tmp_path / "resume", "packnet", hooks=Hooks(on_phase_end=stop))
    moved = replace(cfg, tasks=(replace(cfg.tasks[0], classes=(0, 1, 2)), *cfg.tasks[1:]))
    with pytest.raises(DataError, match="has 3 classes but its head has 4 outputs"):
        run_method(moved, tmp_path / "resume", "packnet", force=True)


def test_checkpoint_evaluates_one_task_reading_only_its_data(vgg_run, monkeypatch) -> None:
    _, out, state, _ = vgg_run
    loaded = []
    real = sequence.load_task_data

    def spy(spec: TaskSpec, with_train: bool = True):
        loaded.append((spec.name, with_train))
        return real(spec, with_train)

    monkeypatch.setattr(sequence, "load_task_data", spy)
    res = evaluate_checkpoint(out / "packnet", "d0")
    assert loaded == [("d0", False)]
    assert res["accuracy"] == state.accuracy[-1][0] and res["digest"] == state.digests[0][0]
    with pytest.raises(DataError, match="not in this checkpoint"):
        evaluate_checkpoint(out / "packnet", "nope")


def test_checkpoint_evaluation_matches_test_classes_by_name(vgg_run, monkeypatch) -> None:
    """A test folder whose classes sort differently (same names) scores exactly as the original; an unknown class
    is an error naming it."""
    _, out, state, _ = vgg_run
    real = sequence.load_task_data

    def reordered(spec: TaskSpec, with_train: bool = True):
        data = real(spec, with_train)
        test = copy.copy(data.test)
        n = data.num_classes
        test.labels = (n - 1) - data.test.labels  # class i is now listed at n-1-i
        return replace(data, classnames=data.classnames[::-1], test=test)

    monkeypatch.setattr(sequence, "load_task_data", reordered)
    res = evaluate_checkpoint(out / "packnet", "d0")
    assert res["accuracy"] == state.accuracy[-1][0]

    def renamed(spec: TaskSpec, with_train: bool = True):
        data = real(spec, with_train)
        return replace(data, classnames=[*data.classnames[:-1], "no_such_digit"])

    monkeypatch.setattr(sequence, "load_task_data", renamed)
    with pytest.raises(DataError, match="no_such_digit"):
        evaluate_checkpoint(out / "packnet", "d0")


def test_plans_of_the_two_presets() -> None:
    tasks = tuple(TaskSpec(name=n, train="x", test="y") for n in ("cubs", "cars", "flowers"))
    official = ContinualConfig(schedule=PRESETS["official"], tasks=tasks,
                               initial_task=TaskSpec(name="imagenet", train="i", test="v"))
    keys = [p.key for p in plan(official, "packnet")]
    assert keys[:3] == ["initial:prune", "initial:retrain", "cubs:train"]
    assert "flowers:prune" not in keys and "cars:prune" in keys and keys[-1] == "flowers:eval"
    seed = ContinualConfig(schedule=PRESETS["seed001"], tasks=tasks)
    keys = [p.key for p in plan(seed, "packnet")]
    assert keys[0] == "initial:prune" and "initial:retrain" not in keys and "flowers:prune" in keys
    assert [p.key for p in plan(seed, "finetune")][:3] == ["cubs:train", "cubs:retrain", "cubs:eval"]
    assert PRESETS["seed001"].initial_prune == 0.75 and PRESETS["official"].initial_prune == 0.5
