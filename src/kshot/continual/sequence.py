"""The task loop: run a method over a task sequence phase by phase, checkpointing after every phase, resuming.

Phases, in order (`plan`): PackNet first prunes the pretrained network (`initial:prune`) and optionally retrains it
(`initial:retrain`); then, per task, `<task>:train` -> `<task>:prune` -> `<task>:retrain` -> `<task>:eval` (no
prune/retrain for an unpruned last task). Baselines run `train`, `retrain` (same epochs and lr, no pruning) and
`eval`. The eval phase fills row i of the accuracy matrix (every task j <= i) and a digest of each task's logits,
so a run proves by itself that PackNet's earlier outputs stayed bit-identical.

Every phase draws its randomness (head init, data order, dropout, augmentation) from a seed derived from
(`config.seed`, phase key) inside `torch.random.fork_rng`, so a resumed run equals an uninterrupted one and the
caller's global RNG is left alone.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from kshot.data.classes import ClassMatch, match_classes
from kshot.devices import check_device
from kshot.errors import CheckpointError, ConfigError, DataError
from kshot.outputs import atomic_write_text

from .checkpoint import META, TENSORS, has_checkpoint, load_checkpoint, read_meta, save_checkpoint
from .config import ContinualConfig, TaskSpec, config_from_dict, config_hash, diff_configs, to_dict
from .data import TaskData, load_task_data, make_loader
from .learners import INITIAL, LEARNERS, Learner
from .metrics import digest, summarise
from .networks import build_network
from .packnet import PackNet
from .train import RunLog, evaluate, run_phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """One step of a run: `key` ('cubs:train'), `kind` ('train'|'prune'|'retrain'|'eval'|'initial_prune'|
    'initial_retrain') and the task index (-1 for the initial steps)."""

    key: str
    kind: str
    index: int


@dataclass
class RunState:
    """What a run has done so far (the JSON half of its checkpoint, without the learner)."""

    method: str
    config: dict[str, Any]
    config_hash: str
    completed: list[str] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    accuracy: list[list[float]] = field(default_factory=list)
    digests: list[list[str]] = field(default_factory=list)
    capacity: list[dict[str, dict[str, int]]] = field(default_factory=list)
    prune_events: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        return summarise(self.accuracy)


@dataclass
class PhaseEvent:
    """Passed to `Hooks.on_phase_end` after a phase finished and was checkpointed."""

    method: str
    phase: Phase
    learner: Learner
    state: RunState


@dataclass
class Hooks:
    """Optional callbacks of `run_method` (tests use them to capture outputs or simulate an interruption)."""

    on_phase_end: Callable[[PhaseEvent], None] | None = None


def prune_ratio(cfg: ContinualConfig, index: int) -> float | None:
    """Pruning ratio after task `index`, or None when it is not pruned (the official last task)."""
    last = index == len(cfg.tasks) - 1
    if last and not cfg.schedule.prune_last:
        return None
    return cfg.tasks[index].prune if cfg.tasks[index].prune is not None else cfg.schedule.prune


def plan(cfg: ContinualConfig, method: str) -> list[Phase]:
    """The ordered phases of `method` under `cfg` (see the module docstring)."""
    s = cfg.schedule
    out: list[Phase] = []
    if method == "packnet" and s.initial_prune is not None:
        out.append(Phase("initial:prune", "initial_prune", INITIAL))
        if s.initial_retrain.epochs > 0 and cfg.initial_task is not None:
            out.append(Phase("initial:retrain", "initial_retrain", INITIAL))
    for i, t in enumerate(cfg.tasks):
        out.append(Phase(f"{t.name}:train", "train", i))
        if prune_ratio(cfg, i) is not None:
            if method == "packnet":
                out.append(Phase(f"{t.name}:prune", "prune", i))
            if s.retrain.epochs > 0:
                out.append(Phase(f"{t.name}:retrain", "retrain", i))
        out.append(Phase(f"{t.name}:eval", "eval", i))
    return out


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available), else `name` checked (ConfigError for a typo or an absent GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name, "device")


def phase_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little") & 0x7FFFFFFF


@contextmanager
def seeded(seed: int, key: str, device: torch.device) -> Iterator[int]:
    """Seed torch's global RNG for one phase inside `fork_rng` (restored afterwards); yields the phase seed."""
    s = phase_seed(seed, key)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(s)
        yield s


def create_learner(cfg: ContinualConfig, method: str, device: torch.device, fresh: bool = True) -> Learner:
    """A new learner for `method`; `fresh=False` skips pretrained weights (they come from a checkpoint)."""
    net = cfg.network if fresh else replace(cfg.network, pretrained=False, weights=None)
    return LEARNERS.get(method)(build_network(net, seed=cfg.seed), device)


class _Data:
    """Lazily loaded task data, shared by the phases of one run."""

    def __init__(self, cfg: ContinualConfig):
        self.cfg = cfg
        self._cache: dict[str, TaskData] = {}

    def get(self, spec: TaskSpec) -> TaskData:
        if spec.name not in self._cache:
            self._cache[spec.name] = load_task_data(spec)
        return self._cache[spec.name]

    def test_loader(self, spec: TaskSpec) -> Any:
        return make_loader(self.get(spec).test, self.cfg.eval_batch_size, False, 0, self.cfg.num_workers)


def _start(cfg: ContinualConfig, method: str, directory: Path, device: torch.device, resume: bool,
           force: bool) -> tuple[Learner, RunState]:
    state = RunState(method, to_dict(cfg), config_hash(cfg))
    if has_checkpoint(directory) and resume:
        meta = read_meta(directory)
        changes = diff_configs(meta["state"]["config"], state.config)
        if changes and not force:
            raise ConfigError(f"{directory}: the checkpoint was made with another config; changed: "
                              f"{'; '.join(changes)}. Use --force to continue with the new config, or --restart")
        if changes:
            log.warning("%s: resuming with a changed config (forced): %s", directory, "; ".join(changes))
        tensors, meta = load_checkpoint(directory, device="cpu")
        learner = create_learner(cfg, method, device, fresh=False)
        learner.load_state(tensors, meta["learner"], str(directory / TENSORS))
        old = RunState(**meta["state"])
        state = replace(old, config=state.config, config_hash=state.config_hash)
        log.info("%s: resuming after %s", directory, state.completed[-1] if state.completed else "nothing")
        return learner, state
    if not resume:
        for name in (TENSORS, META, "log.txt", "log.jsonl", "results.json"):
            (directory / name).unlink(missing_ok=True)
    return create_learner(cfg, method, device), state


def run_method(cfg: ContinualConfig, out_dir: str | Path, method: str, *, resume: bool = True, force: bool = False,
               hooks: Hooks | None = None) -> RunState:
    """Train `method` over `cfg.tasks` into `out_dir/<method>/` and return its state.

    Args:
        resume: continue from `out_dir/<method>`'s checkpoint when there is one (False: start over).
        force: resume even when the config changed since the checkpoint (the changes are logged).
        hooks: optional callbacks (see `Hooks`).

    Raises:
        ConfigError: the checkpoint's config differs and `force` is False.
        DataError: a task's data does not fit its config or its head.
    """
    if method not in LEARNERS:
        raise ConfigError(f"unknown method {method!r} (known: {LEARNERS.names()})")
    directory = Path(out_dir) / method
    directory.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    learner, state = _start(cfg, method, directory, device, resume, force)
    runlog, data, hooks = RunLog(directory), _Data(cfg), hooks or Hooks()
    s = cfg.schedule
    for ph in plan(cfg, method):
        if ph.key in state.completed:
            continue
        start = time.perf_counter()
        spec = cfg.initial_task if ph.index == INITIAL else cfg.tasks[ph.index]
        with seeded(cfg.seed, ph.key, device) as seed:
            if ph.kind == "initial_prune":
                assert isinstance(learner, PackNet)
                freed = learner.prune_pretrained(s.initial_prune)  # type: ignore[arg-type]
                _log_prune(runlog, state, ph, freed, learner, None, None)
            elif ph.kind == "prune":
                assert isinstance(learner, PackNet) and spec is not None
                ratio = prune_ratio(cfg, ph.index)
                before = evaluate(learner, ph.index, data.test_loader(spec))[0]
                freed = learner.prune(ph.index, ratio)  # type: ignore[arg-type]
                after = evaluate(learner, ph.index, data.test_loader(spec))[0]
                _log_prune(runlog, state, ph, freed, learner, before, after)
            elif ph.kind == "eval":
                _eval_phase(cfg, learner, state, data, ph.index, runlog)
            else:
                assert spec is not None
                _train_phase(cfg, learner, state, data, ph, spec, seed, runlog)
        state.completed.append(ph.key)
        state.seconds += time.perf_counter() - start
        state.params = learner.parameter_count()
        save_checkpoint(directory, learner.state_tensors(), {"learner": learner.state_meta(),
                                                             "state": _state_dict(state)})
        if hooks.on_phase_end is not None:
            hooks.on_phase_end(PhaseEvent(method, ph, learner, state))
    _write_results(directory, state, runlog)
    return state


def _train_phase(cfg: ContinualConfig, learner: Learner, state: RunState, data: _Data, ph: Phase, spec: TaskSpec,
                 seed: int, runlog: RunLog) -> None:
    s = cfg.schedule
    task = data.get(spec)
    if task.train is None or len(task.train) == 0:
        raise DataError(f"task {spec.name!r}: no training images ({task.source})")
    gen = torch.Generator().manual_seed(seed)
    if ph.kind == "initial_retrain":
        assert isinstance(learner, PackNet)
        learner.add_initial_head(task.num_classes, gen)
        phase_cfg, name = s.initial_retrain, "initial"
    elif ph.kind == "train":
        if ph.index < len(learner.task_names):  # resumed after begin_task was checkpointed: cannot happen, guard
            raise CheckpointError(f"task {spec.name!r} is already in the checkpoint but its training is not done")
        learner.begin_task(ph.index, spec.name, task.num_classes, gen)
        state.tasks.append({"name": spec.name, "num_classes": task.num_classes, "classnames": task.classnames})
        phase_cfg, name = s.train, "train"
    else:
        learner.check_head(ph.index, task.num_classes, task.source)
        phase_cfg, name = s.retrain, "retrain"
    loader = make_loader(task.train, s.batch_size, True, seed, cfg.num_workers,
                         pin_memory=learner.device.type == "cuda")
    test = data.test_loader(spec) if cfg.eval_every_epoch else None
    run_phase(learner, ph.index, spec.name, name, phase_cfg, momentum=s.momentum, weight_decay=s.weight_decay,
              train_loader=loader, test_loader=test, runlog=runlog)


def _eval_phase(cfg: ContinualConfig, learner: Learner, state: RunState, data: _Data, index: int,
                runlog: RunLog) -> None:
    row, digs = [], []
    for j in range(index + 1):
        spec = cfg.tasks[j]
        learner.check_head(j, data.get(spec).num_classes, data.get(spec).source)
        acc, logits = evaluate(learner, j, data.test_loader(spec))
        row.append(acc)
        digs.append(digest(logits))
    learner.end_task(index)
    state.accuracy.append(row)
    state.digests.append(digs)
    if isinstance(learner, PackNet):
        state.capacity.append(learner.capacity())
    accs = ", ".join(f"{cfg.tasks[j].name} {a:.2f}%" for j, a in enumerate(row))
    runlog.line(f"[{learner.method}] after task {index + 1} {cfg.tasks[index].name}: test acc {accs}")
    runlog.record("eval", method=learner.method, task_index=index, accuracy=row, digests=digs)


def _log_prune(runlog: RunLog, state: RunState, ph: Phase, freed: dict[str, int], learner: PackNet,
               before: float | None, after: float | None) -> None:
    total = sum(m.numel() for m in learner.masks.values())
    what = "pretrained network" if ph.index == INITIAL else f"task {ph.index + 1} {ph.key.split(':')[0]}"
    msg = f"[packnet] pruned {what}: freed {sum(freed.values())} of {total} weights"
    if before is not None:
        msg += f" | test acc {before:.2f}% -> {after:.2f}%"
    runlog.line(msg)
    event = {"phase": ph.key, "freed": freed, "acc_before": before, "acc_after": after}
    state.prune_events.append(event)
    runlog.record("prune", method="packnet", **event)


def _state_dict(state: RunState) -> dict[str, Any]:
    return {k: getattr(state, k) for k in RunState.__dataclass_fields__}


def _write_results(directory: Path, state: RunState, runlog: RunLog) -> None:
    import json

    out = {**_state_dict(state), "summary": state.summary()}
    atomic_write_text(directory / "results.json", json.dumps(out, indent=1))
    s = state.summary()
    runlog.line(f"[{state.method}] done: average accuracy {s['average_accuracy']:.2f}%, BWT {s['bwt']:.2f}, "
                f"forgetting {s['forgetting']:.2f}")


def run(cfg: ContinualConfig, out_dir: str | Path, *, methods: list[str] | tuple[str, ...] | None = None,
        resume: bool = True, force: bool = False, hooks: Hooks | None = None) -> dict[str, RunState]:
    """Run every method of `cfg.methods` (or `methods`) into `out_dir/<method>/` (see `run_method`); the report
    is a separate step (`report.write_report(out_dir)`)."""
    return {m: run_method(cfg, out_dir, m, resume=resume, force=force, hooks=hooks)
            for m in (methods or cfg.methods)}


def load_learner(path: str | Path, device: str = "cpu") -> tuple[Learner, dict[str, Any], ContinualConfig]:
    """(learner, checkpoint JSON, config) from a checkpoint directory or file; no pretrained weights are fetched."""
    tensors, meta = load_checkpoint(path, device="cpu")
    cfg = config_from_dict(meta["state"]["config"])
    learner = create_learner(cfg, meta["learner"]["method"], resolve_device(device), fresh=False)
    learner.load_state(tensors, meta["learner"], str(path))
    return learner, meta, cfg


def _relabel_test(data: TaskData, match: ClassMatch) -> TaskData:
    """`data` with its test labels mapped (by class name) onto the checkpoint's class list."""
    test = copy.copy(data.test)
    if isinstance(test.labels, torch.Tensor):
        test.labels = torch.as_tensor(match.labels(test.labels.numpy()))
    else:
        test.labels = match.labels(np.asarray(test.labels)).tolist()
    return replace(data, classnames=list(match.classnames), test=test)


def evaluate_checkpoint(path: str | Path, task: str, *, test_dir: str | None = None, device: str = "cpu",
                        batch_size: int = 128) -> dict[str, Any]:
    """Accuracy of a checkpoint on one finished task, reading only that task's test split.

    Args:
        path: checkpoint directory or file.
        task: task name.
        test_dir: another test folder for an imagefolder task (e.g. the data moved).

    Raises:
        DataError: the task is unknown to the checkpoint, or its data does not match its head.
    """
    learner, meta, cfg = load_learner(path, device)
    names = [t.name for t in cfg.tasks]
    if task not in learner.task_names:
        raise DataError(f"{path}: task {task!r} is not in this checkpoint (trained: {learner.task_names}; "
                        f"sequence: {names})")
    index = names.index(task)
    spec = cfg.tasks[index]
    if test_dir is not None:
        spec = replace(spec, test=str(test_dir))
    data = load_task_data(spec, with_train=False)
    known = next((t.get("classnames") for t in meta["state"].get("tasks", []) if t.get("name") == task), None)
    if known and list(known) != data.classnames:
        data = _relabel_test(data, match_classes(data.classnames, known, what=f"task {task!r} test data "
                                                 f"{data.source}", model=f"checkpoint {path}"))
    learner.check_head(index, data.num_classes, data.source)
    acc, logits = evaluate(learner, index, make_loader(data.test, batch_size, False, 0))
    return {"task": task, "accuracy": acc, "images": int(logits.shape[0]), "digest": digest(logits),
            "method": learner.method, "completed": meta["state"]["completed"]}
