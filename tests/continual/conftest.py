"""Shared fixtures of the continual tests: a three-task digits sequence (8 px) on tiny timm networks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kshot.continual.config import ContinualConfig, NetworkConfig, PhaseConfig, ScheduleConfig, TaskSpec
from kshot.continual.sequence import Hooks, PhaseEvent, run_method

CLASSES = ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))


def digits_config(arch: str = "tiny_vgg", *, methods: tuple[str, ...] = ("packnet",), limit: int | None = 240,
                  **schedule: object) -> ContinualConfig:
    """Three digit tasks at 8 px; 2 + 1 epochs; seed001-like pruning (initial 50 %, every task) with weight decay
    and momentum, so the masking of gradients, decay and momentum is exercised."""
    sched = ScheduleConfig(preset="custom", initial_prune=0.5, initial_retrain=PhaseConfig(0, 1e-3),
                           train=PhaseConfig(2, 0.1, 0), prune=0.5, retrain=PhaseConfig(1, 0.03, 0), prune_last=True,
                           momentum=0.9, weight_decay=5e-3, batch_size=32)
    sched = replace(sched, **schedule)  # type: ignore[arg-type]
    tasks = tuple(TaskSpec(name=f"d{i}", source="digits", classes=c, image_size=8, train_augment="none", limit=limit)
                  for i, c in enumerate(CLASSES))
    return ContinualConfig(name="digits-test", network=NetworkConfig(arch=arch, pretrained=False), schedule=sched,
                           tasks=tasks, methods=methods, seed=0, device="cpu", eval_every_epoch=False)


class LogitRecorder:
    """Hook: after each task's eval phase, the eval-mode logits of every finished task on its test images."""

    def __init__(self) -> None:
        self.after: list[list[torch.Tensor]] = []

    def __call__(self, ev: PhaseEvent) -> None:
        if ev.phase.kind != "eval":
            return
        from kshot.continual.data import load_task_data

        cfg_tasks = ev.state.config["tasks"]
        outs = []
        for j in range(ev.phase.index + 1):
            spec = TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg_tasks[j].items()})
            x = load_task_data(spec).test.images
            outs.append(ev.learner.logits(x, j).clone())
        self.after.append(outs)


@pytest.fixture(scope="package")
def vgg_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ContinualConfig, Path, object, LogitRecorder]:
    """PackNet over the digits sequence on tiny_vgg: (config, out dir, state, recorded logits)."""
    out = tmp_path_factory.mktemp("vgg_run")
    cfg = digits_config("tiny_vgg")
    rec = LogitRecorder()
    state = run_method(cfg, out, "packnet", hooks=Hooks(on_phase_end=rec))
    return cfg, out, state, rec
