"""The image-side training engine: optimise encoder adapters on shot images streamed from their files.

Methods that train through the encoders (CLIP-LoRA now; MaPLe/PromptSRC later) give `train_encoders` their
trainable parameters and a per-sample loss on a batch of preprocessed images; the engine does the rest:

* **data**: the shots are decoded from their files batch by batch (memory does not grow with the number of shots),
  each with seeded augmentation — RandomResizedCrop(scale 0.08–1, bicubic) + horizontal flip, as CLIP-LoRA's
  `main.py` — followed by the backbone's own preprocessing. Sample j of step t is fully determined by
  (seed, t, j): the step's batch is the t-th slice of a per-epoch permutation seeded by (seed, epoch), and its crop
  is seeded by (seed, epoch, item). Every shot is decoded once before training, so an unreadable one is a
  `DataError` naming it up front.
* **optimisation**: AdamW (weight decay 1e-2, betas 0.9/0.999) with a per-iteration cosine schedule to 1e-6 over
  all iterations (CLIP-LoRA `lora.py`: `CosineAnnealingLR(total_iters, eta_min=1e-6)`, written here in closed
  form); bf16 autocast on CUDA (fp16 with a grad scaler when asked), fp32 on CPU; optional gradient checkpointing
  (open_clip's `set_grad_checkpointing`).
* **randomness**: torch's RNG is re-seeded from (seed, t) around each step (dropout), so a run resumed from a
  checkpoint continues exactly as the uninterrupted one.
* **progress**: a tqdm bar with the loss, and the validation accuracy when the method gives a `val_fn`.
* **checkpoints**: every `checkpoint_every` steps, trainable tensors + optimiser moments + the method's own running
  state (`extra_state`, e.g. PromptSRC's prompt aggregate) (`kshot.tuning.checkpoint`); a later call with the same
  folder resumes from the last one (`load_extra` gets that state back).
* **DDP** under torchrun (`torch.distributed` initialised): each rank takes every world-th sample of the global
  batch, gradients are all-reduced (sum of per-sample losses / global batch), rank 0 writes checkpoints. The loss
  curve equals a one-process run with the same global batch.
"""

from __future__ import annotations

import hashlib
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from kshot.data.dataset import Dataset
from kshot.data.images import check_images, load_image
from kshot.errors import ConfigError, DataError
from kshot.progress import bar as progress_bar
from kshot.tuning.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How to train (defaults: CLIP-LoRA `lora.py`/`main.py`, `MaxZanella/CLIP-LoRA @ 358f0d73`).

    Attributes:
        iters: optimiser steps (CLIP-LoRA: 500 × shots).
        batch_size: global images per step (32).
        lr: peak learning rate (2e-4); weight_decay, betas: AdamW (1e-2, (0.9, 0.999)); eta_min: cosine floor (1e-6).
        crop_scale: RandomResizedCrop area range ((0.08, 1.0)).
        amp: 'bf16' | 'fp16' | 'off' autocast on CUDA (CPU always fp32); CLIP-LoRA trains in fp16.
        grad_checkpointing: recompute activations in backward (less memory, ~30 % slower).
        checkpoint_every: write a resumable checkpoint every N steps (0 = never); checkpoint_dir: where.
        num_workers: DataLoader decoding processes (0 = in the main process).
        seed: seed of shuffling, crops and dropout.
        progress: show a progress bar with the loss (rank 0).
        optimizer: 'adamw' (CLIP-LoRA) or 'sgd' (momentum `momentum`; the Dassl trainers of MaPLe/PromptSRC).
        schedule: 'cosine' (per iteration, above) or 'dassl' (per epoch: `warmup_epochs` at `warmup_lr`, then
            0.5·lr·(1 + cos(π·(e − warmup)/E)) over the E = iters / steps-per-epoch epochs, Dassl's scheduler).
    """

    iters: int
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eta_min: float = 1e-6
    crop_scale: tuple[float, float] = (0.08, 1.0)
    amp: str = "bf16"
    grad_checkpointing: bool = False
    checkpoint_every: int = 0
    checkpoint_dir: str = ""
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def step_samples(n: int, batch_size: int, seed: int, step: int) -> list[tuple[int, int]]:
    """(item index, epoch) of each sample of global step `step`: epochs are seeded permutations of the n shots cut
    into batches (the short last batch dropped when n >= batch_size, as Dassl's train loader)."""
    per_epoch = steps_per_epoch(n, batch_size)
    epoch, b = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, epoch)))
    return [(int(i), epoch) for i in perm[b * batch_size:(b + 1) * batch_size]]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one pass over n shots (the short last batch dropped, see `step_samples`)."""
    return n // batch_size if n >= batch_size else 1


def cosine_lr(cfg: EngineConfig, step: int, n: int = 0) -> float:
    """Learning rate of step `step` (0-based). 'cosine': eta_min + (lr - eta_min)(1 + cos(pi t / T)) / 2 over the
    T iterations; 'dassl': constant warm-up, then a cosine over epochs (n = number of shots)."""
    if cfg.schedule == "dassl":
        per = steps_per_epoch(n, cfg.batch_size)
        epoch, epochs = step // per, max(cfg.iters // per, 1)
        if epoch < cfg.warmup_epochs:
            return cfg.warmup_lr
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / epochs))
    return cfg.eta_min + (cfg.lr - cfg.eta_min) * (1 + math.cos(math.pi * step / max(cfg.iters, 1))) / 2


def _optimizer(params: list[nn.Parameter], cfg: EngineConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "adamw":
        raise ConfigError(f"engine optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


class ShotImages(torch.utils.data.Dataset):
    """Augmented, preprocessed shot images for a list of (item, epoch) samples; item i of epoch e is cropped with a
    generator seeded by (seed, e, i)."""

    def __init__(self, images: Dataset, preprocess: Callable[[Any], torch.Tensor], image_size: int,
                 samples: Sequence[tuple[int, int]], seed: int, crop_scale: tuple[float, float]):
        from torchvision.transforms import v2 as T

        self.images, self.preprocess, self.samples, self.seed = images, preprocess, list(samples), seed
        self.augment = T.Compose([T.RandomResizedCrop(image_size, scale=crop_scale,
                                                      interpolation=T.InterpolationMode.BICUBIC),
                                  T.RandomHorizontalFlip(p=0.5)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, j: int) -> torch.Tensor:
        from kshot.features.augment import apply_view

        item, epoch = self.samples[j]
        img = load_image(self.images.abspath(item))
        return self.preprocess(apply_view(self.augment, img, _seed(self.seed, epoch, item)))


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def check_shot_files(images: Dataset, what: str) -> None:
    """Decode every shot once; a `DataError` naming the unreadable files (the method cannot train without them)."""
    bad = check_images(images)
    if bad:
        listed = "; ".join(f"{p}: {r}" for p, r in bad[:5])
        raise DataError(f"{what} trains on the shot images and {len(bad)} cannot be read: {listed}"
                        + (" ..." if len(bad) > 5 else ""))


def train_encoders(params: Sequence[nn.Parameter], loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   images: Dataset, labels: torch.Tensor, preprocess: Callable[[Any], torch.Tensor], image_size: int,
                   cfg: EngineConfig, device: torch.device, *, model: nn.Module | None = None,
                   val_fn: Callable[[], float] | None = None, val_every: int = 0, name: str = "train",
                   after_step: Callable[[int, bool], None] | None = None,
                   extra_state: Callable[[], dict[str, torch.Tensor]] | None = None,
                   load_extra: Callable[[dict[str, torch.Tensor]], None] | None = None) -> list[float]:
    """Optimise `params` on the shot images; resumes from `cfg.checkpoint_dir` when it holds a checkpoint.

    Args:
        params: the trainable tensors (everything else must have requires_grad False).
        loss_fn: (images [B, 3, S, S] on `device`, labels [B]) -> per-sample losses [B].
        images: the shots as files, aligned with `labels` [N] (int64 class ids).
        preprocess: the backbone's PIL -> [3, S, S] transform, applied after the augmentation.
        image_size: crop side S.
        model: module set to train mode during training (dropout) and for gradient checkpointing.
        val_fn: validation accuracy of the current parameters (shown on the progress bar, logged), run every
            `val_every` steps (0: at the end only) with the model in eval mode and no gradients.
        after_step: called after each optimiser step with (step, True when it ended an epoch) — PromptSRC's
            prompt aggregation over epochs.
        extra_state: the caller's running state after a step (tensors by name; what `after_step` accumulates),
            saved with each checkpoint; load_extra: receives it back (possibly empty) when a run resumes, so a
            resumed run equals the uninterrupted one.

    Returns:
        The global mean training loss of every step, from step 0 (restored ones included).
    """
    params = list(params)
    rank, world = _dist()
    opt = _optimizer(params, cfg)
    losses: list[float] = []
    start = 0
    folder = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if folder is not None and (ck := load_checkpoint(folder)) is not None:
        start, tensors, meta = ck
        _restore(params, opt, tensors)
        if load_extra is not None:
            load_extra({k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")})
        losses = [float(x) for x in meta.get("losses", [])][:start]
        log.info("%s: resumed from step %d of %d (%s)", name, start, cfg.iters, folder)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp == "fp16" else None
    if model is not None and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(bool(cfg.grad_checkpointing))
    bar = _progress(cfg, rank, start, name)
    was_training = model.training if model is not None else False
    if model is not None:
        model.train()
    try:
        for step in range(start, cfg.iters):
            samples = step_samples(len(images), cfg.batch_size, cfg.seed, step)
            mine = samples[rank::world]
            batch = _load_batch(images, preprocess, image_size, mine, cfg).to(device)
            y = labels[[i for i, _ in mine]].to(device)
            for g in opt.param_groups:
                g["lr"] = cosine_lr(cfg, step, len(images))
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(_seed(cfg.seed, step, rank, 1))
                with _autocast(device, cfg.amp):
                    per_sample = loss_fn(batch, y)
                loss = per_sample.float().sum() / len(samples)
                opt.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            total = _all_reduce(params, loss.detach(), world)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            losses.append(total)
            if after_step is not None:
                after_step(step, (step + 1) % steps_per_epoch(len(images), cfg.batch_size) == 0)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}")
            done = step + 1
            if val_fn is not None and (done == cfg.iters or (val_every > 0 and done % val_every == 0)):
                acc = _validate(val_fn, model)
                log.info("%s step %d/%d: loss %.4f, val acc %.2f %%", name, done, cfg.iters, total, 100 * acc)
                if bar is not None:
                    bar.set_postfix(loss=f"{total:.4f}", val=f"{100 * acc:.1f}%")
            if folder is not None and cfg.checkpoint_every > 0 and (done % cfg.checkpoint_every == 0
                                                                    or done == cfg.iters):
                if rank == 0:
                    extra = {f"extra.{k}": v for k, v in (extra_state() if extra_state else {}).items()}
                    save_checkpoint(folder, done, _snapshot(params, opt) | extra,
                                    {"losses": losses, "iters": cfg.iters})
                _barrier(world)
    finally:
        if bar is not None:
            bar.close()
        if model is not None:
            model.train(was_training)
            if hasattr(model, "set_grad_checkpointing"):
                model.set_grad_checkpointing(False)
    return losses


def _validate(val_fn: Callable[[], float], model: nn.Module | None) -> float:
    if model is not None:
        model.eval()
    try:
        with torch.no_grad():
            return float(val_fn())
    finally:
        if model is not None:
            model.train()


def _load_batch(images: Dataset, preprocess: Callable[[Any], torch.Tensor], image_size: int,
                samples: list[tuple[int, int]], cfg: EngineConfig) -> torch.Tensor:
    ds = ShotImages(images, preprocess, image_size, samples, cfg.seed, cfg.crop_scale)
    if cfg.num_workers <= 0:
        return torch.stack([ds[j] for j in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), num_workers=cfg.num_workers)
    return next(iter(loader))


def _all_reduce(params: list[nn.Parameter], loss: torch.Tensor, world: int) -> float:
    """Sum gradients and the loss over ranks (each rank's loss is its share of the global mean)."""
    if world == 1:
        return float(loss)
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    dist.all_reduce(loss)
    return float(loss)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _snapshot(params: list[nn.Parameter], opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(params):
        out[f"param.{i}"] = p.detach()
        for k, v in opt.state.get(p, {}).items():
            out[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _restore(params: list[nn.Parameter], opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for i, p in enumerate(params):
            t = tensors.get(f"param.{i}")
            if t is None or t.shape != p.shape:
                raise DataError(f"training checkpoint does not match the model (parameter {i})")
            p.copy_(t)
            state = {k.split(".", 2)[2]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
            if state:
                if "step" in state:
                    state["step"] = state["step"].cpu()
                opt.state[p] = state


def _progress(cfg: EngineConfig, rank: int, start: int, name: str):
    if not cfg.progress or rank != 0:
        return None
    return progress_bar(auto=False, total=cfg.iters, initial=start, desc=name, unit="it", leave=False)
