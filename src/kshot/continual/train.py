"""One training phase (SGD, step-decayed lr, per-epoch records) and evaluation of one task, for any learner.

The log is written twice: `log.txt`, human-readable lines in the spirit of the seed's log (epoch, lr, loss, train and
test accuracy per task and phase), and `log.jsonl`, one JSON record per epoch or event, which the curves are drawn
from.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .config import PhaseConfig
from .learners import Learner
from .metrics import accuracy

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    """One epoch of one phase. Accuracies in %, loss = mean cross-entropy over the epoch's training images."""

    method: str
    task: str
    task_index: int
    phase: str
    epoch: int
    epochs: int
    lr: float
    loss: float
    train_acc: float
    test_acc: float | None
    seconds: float
    images: int


class RunLog:
    """Appends to `<dir>/log.txt` and `<dir>/log.jsonl` (kept across resumptions)."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.txt = directory / "log.txt"
        self.jsonl = directory / "log.jsonl"

    def line(self, text: str) -> None:
        log.info(text)
        with self.txt.open("a", encoding="utf-8") as f:
            f.write(text + "\n")

    def record(self, kind: str, **fields: Any) -> None:
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, **fields}) + "\n")

    def epoch(self, r: EpochRecord) -> None:
        test = "n/a" if r.test_acc is None else f"{r.test_acc:.2f}%"
        self.line(f"[{r.method}] task {r.task_index + 1} {r.task} | {r.phase} | epoch {r.epoch}/{r.epochs} | "
                  f"lr {r.lr:g} | loss {r.loss:.4f} | train acc {r.train_acc:.2f}% | test acc {test} | "
                  f"{r.seconds:.1f}s ({r.images / max(r.seconds, 1e-9):.0f} img/s)")
        self.record("epoch", **asdict(r))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a `log.jsonl` (an unfinished last line from a killed run is skipped)."""
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


@torch.no_grad()
def evaluate(learner: Learner, index: int, loader: DataLoader) -> tuple[float, torch.Tensor]:
    """(top-1 accuracy %, logits float32 [N, C] on CPU) of task `index` over `loader`, in eval mode."""
    outs, labels = [], []
    for x, y in loader:
        outs.append(learner.logits(x, index).float().cpu())
        labels.append(torch.as_tensor(y))
    logits = torch.cat(outs) if outs else torch.zeros(0, 0)
    return accuracy(logits, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)), logits


def run_phase(
    learner: Learner,
    index: int,
    task: str,
    phase_name: str,
    phase: PhaseConfig,
    *,
    momentum: float,
    weight_decay: float,
    train_loader: DataLoader,
    test_loader: DataLoader | None,
    runlog: RunLog,
) -> list[EpochRecord]:
    """Train task `index` for `phase.epochs` epochs; one record per epoch (test accuracy when `test_loader`)."""
    groups = learner.param_groups(index, weight_decay)
    records: list[EpochRecord] = []
    if not groups or phase.epochs == 0:
        learner.freeze()
        return records
    opt = torch.optim.SGD(groups, lr=phase.lr, momentum=momentum)  # weight decay per group (PackNet: masked)
    device = learner.device
    for epoch in range(phase.epochs):
        lr = phase.lr_at(epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        learner.train_mode(index)
        start = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            out = learner.forward(x, index)
            loss = F.cross_entropy(out, y)
            loss.backward()
            learner.before_step(index, weight_decay)
            opt.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((out.detach().argmax(1) == y).sum())
            seen += len(y)
        seconds = time.perf_counter() - start
        test_acc = evaluate(learner, index, test_loader)[0] if test_loader is not None else None
        rec = EpochRecord(learner.method, task, index, phase_name, epoch + 1, phase.epochs, lr,
                          total_loss / max(seen, 1), 100.0 * correct / max(seen, 1) if seen else math.nan, test_acc,
                          seconds, seen)
        runlog.epoch(rec)
        records.append(rec)
    learner.freeze()
    return records
