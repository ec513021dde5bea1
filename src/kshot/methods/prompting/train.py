"""The training loop shared by the prompt learners: Dassl's SGD + warm-up + cosine schedule over cached features.

Schedule (Dassl `build_optimizer` / `build_lr_scheduler` as CoOp's configs set them, reference/methods.md §1): SGD,
momentum 0.9, weight decay 5e-4, lr 0.002; epoch 0 is a constant warm-up at 1e-5, then the lr follows a cosine over
`epochs` starting from the base lr at epoch 1 (the scheduler steps once per epoch). Batches are shuffled per epoch;
the last incomplete batch is dropped when there are at least `batch_size` items (Dassl's train loader).

Speed by design: the image encoder is frozen, so each step reads image features from the cache; when the cache holds
augmented views (`FeatureSet.aug_features` [V, N, D]) every epoch shows each shot as one of its V views drawn at
random (CoOp re-crops each epoch instead). Only the text tower runs forward/backward, in bf16 autocast on CUDA.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch

from kshot.features.featureset import FeatureSet
from kshot.progress import bar as progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings (defaults: CoOp's `configs/trainers/CoOp/*.yaml` on Dassl's defaults).

    Attributes:
        epochs: passes over the shots.
        batch_size: images per step (CoOp 32, CoCoOp 1).
        lr: base learning rate.
        momentum, weight_decay: SGD settings (Dassl defaults).
        warmup_epochs, warmup_lr: constant warm-up (CoOp: 1 epoch at 1e-5).
    """

    epochs: int
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5


def dassl_lr(s: Schedule, epoch: int) -> float:
    """Learning rate of `epoch` (0-based): warm-up constant, then cosine annealing over `s.epochs` epochs."""
    if epoch < s.warmup_epochs:
        return s.warmup_lr
    t = epoch - s.warmup_epochs
    return 0.5 * s.lr * (1.0 + math.cos(math.pi * t / max(s.epochs, 1)))


def coop_epochs(shots: int) -> int:
    """CoOp's epochs by shots per class: 50 (1-shot), 100 (2, 4), 200 (8, 16+) (`configs/trainers/CoOp/rn50_ep*.yaml`,
    `scripts/coop/main.sh`)."""
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


def amp_context(device: torch.device, enabled: bool) -> ContextManager:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_features(train: FeatureSet, generator: torch.Generator) -> torch.Tensor:
    """Features [N, D] to show this epoch: a random cached view per item, or the plain features when none."""
    if train.aug_features is None or train.aug_features.shape[0] == 0:
        return train.features
    aug = train.aug_features
    v = torch.randint(0, aug.shape[0], (len(train),), generator=generator).to(aug.device)
    return aug[v, torch.arange(len(train), device=aug.device)]


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; the last short batch is dropped when n >= batch_size (Dassl)."""
    perm = torch.randperm(n, generator=generator)
    batches = list(perm.split(batch_size))
    if n >= batch_size and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def train_loop(params: Sequence[torch.nn.Parameter], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               train: FeatureSet, schedule: Schedule, generator: torch.Generator, device: torch.device, *,
               amp: bool = True, after_step: Callable[[int], None] | None = None, name: str = "prompts"
               ) -> list[float]:
    """Optimise `params` with SGD on `loss_fn(features [B, D], labels [B])` over the shots.

    Args:
        params: the learned tensors (prompt vectors, meta-net weights).
        loss_fn: mean loss of one batch.
        train: the shots (features L2-normalised; optional augmented views).
        schedule: optimisation settings.
        generator: CPU generator for view choice and shuffling.
        device: where features go (the text tower's device).
        amp: bf16 autocast on CUDA.
        after_step: called after each optimiser step with the global step index (ATPrompt's alpha update).

    Returns:
        Mean training loss of each step, in order.

    A progress bar (`kshot.progress`: off under `kshot -q`) counts the epochs and shows the last loss.
    """
    opt = torch.optim.SGD(list(params), lr=schedule.lr, momentum=schedule.momentum,
                          weight_decay=schedule.weight_decay)
    labels = train.labels.to(device)
    losses: list[float] = []
    step = 0
    with progress_bar(total=schedule.epochs, desc=f"{name} training", unit="epoch", leave=False) as pb:
        for epoch in range(schedule.epochs):
            for group in opt.param_groups:
                group["lr"] = dassl_lr(schedule, epoch)
            feats = epoch_features(train, generator).to(device)
            for idx in epoch_batches(len(train), schedule.batch_size, generator):
                idx = idx.to(device)
                with amp_context(device, amp):
                    loss = loss_fn(feats[idx], labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if after_step is not None:
                    after_step(step)
                step += 1
            log.debug("%s epoch %d/%d lr %.2e loss %.4f", name, epoch + 1, schedule.epochs,
                      opt.param_groups[0]["lr"], losses[-1] if losses else float("nan"))
            pb.update(1)
            if losses:
                pb.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses
