"""Contrastive pretraining of the tiny CLIP on toy-world images and captions generated on the fly.

Loss: the symmetric InfoNCE of CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
Supervision") with a learned temperature. Optimiser and schedule follow open_clip's training defaults as used by the
feasibility prototype (reference/toyworld-feasibility.md, run B): AdamW lr 1e-3, weight decay 0.1 on matrices only,
betas (0.9, 0.98), eps 1e-6, linear warmup then cosine decay, gradient clipping at norm 1.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kshot.config import param, validate
from kshot.errors import ConfigError
from kshot.safe_load import load_torch_file
from kshot.toyworld.captions import caption_words
from kshot.toyworld.generator import World, WorldSpec
from kshot.toyworld.model import ToyClipCfg, build_toy_clip, encode_text_trimmed, images_to_tensor, toy_preprocess_cfg
from kshot.toyworld.tokenizer import ToyTokenizer, build_vocab
from kshot.progress import bar as progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Recipe of a pretraining run (defaults: the shipped checkpoint's recipe; prototype run B).

    Attributes:
        steps: optimiser steps (prototype: 1750 at batch 256 reaches 86% 64-way zero-shot).
        batch_size: images (and captions) per step, freshly generated. The shipped checkpoint used 128, half the
            prototype's 256, to fit the CPU time of a shared 2-core machine.
        lr, weight_decay, betas, eps: AdamW (open_clip defaults for ViT training).
        warmup: linear warm-up steps before the cosine decay to 0.
        grad_clip: max global gradient norm.
        seed: seeds the model initialisation and the data stream.
        threads: torch intra-op threads (1 avoids OpenMP spin-waits on a shared CPU; prototype pitfall 1).
        checkpoint_every: save a resumable checkpoint every N steps into `checkpoint_dir` (0 = never).
        model: tower sizes.
    """

    steps: int = param(1750, ge=1)
    batch_size: int = param(128, ge=2)
    lr: float = param(1e-3, gt=0)
    weight_decay: float = param(0.1, ge=0)
    betas: tuple[float, float] = param((0.9, 0.98), ge=0, lt=1)
    eps: float = param(1e-6, gt=0)
    warmup: int = param(100, ge=0)
    grad_clip: float = param(1.0, gt=0)
    seed: int = 0
    threads: int = param(1, ge=1)
    checkpoint_every: int = param(0, ge=0)
    checkpoint_dir: str | None = None
    model: ToyClipCfg = field(default_factory=ToyClipCfg)

    def __post_init__(self) -> None:
        validate(self)  # ConfigError naming the field, the value and its range
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ConfigError("checkpoint_every > 0 needs checkpoint_dir")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


@dataclass
class PretrainResult:
    """What `pretrain` returns: the model (eval mode, fp32), its tokenizer, and the loss per step."""

    model: torch.nn.Module
    tokenizer: ToyTokenizer
    losses: list[float]
    wall_s: float
    config: PretrainConfig
    world_spec: WorldSpec


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Learning rate of a step (0-based): linear warm-up over `warmup` steps, then cosine to 0 at `steps`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched pairs. Features [B, D] (L2-normalised), logit_scale exp'ed scalar."""
    logits = logit_scale * image_features @ text_features.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def make_tokenizer(context_length: int) -> ToyTokenizer:
    """The toy tokenizer over the caption vocabulary."""
    return ToyTokenizer(build_vocab(caption_words()), context_length=context_length)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name or "positional_embedding" in name
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _save_resume(path: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator,
                 losses: list[float]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
         "losses": losses},
        tmp,
    )
    tmp.replace(path)


def pretrain(
    config: PretrainConfig = PretrainConfig(),
    world_spec: WorldSpec | None = None,
    progress: bool = True,
    resume: bool = True,
) -> PretrainResult:
    """Pretrain a tiny CLIP from scratch on the world's pretraining distribution.

    Args:
        config: the recipe.
        world_spec: the world generating the data (default: the shipped world).
        progress: show a tqdm bar.
        resume: continue from `config.checkpoint_dir/resume.pt` when it exists.

    Returns:
        The trained model in eval mode with its tokenizer and per-step losses.
    """
    world = World(world_spec)
    tokenizer = make_tokenizer(config.model.context_length)
    model_cfg = ToyClipCfg(**{**config.model.to_dict(), "vocab_size": tokenizer.vocab_size})
    pre = toy_preprocess_cfg(model_cfg.image_size)
    if world.image_size != model_cfg.image_size:
        raise ConfigError(f"world renders {world.image_size}px images but the model takes {model_cfg.image_size}px")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_toy_clip(model_cfg)
        opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
                                eps=config.eps)
        rng = np.random.default_rng([config.seed, 7])
        losses: list[float] = []
        start = 0
        ckpt = Path(config.checkpoint_dir) / "resume.pt" if config.checkpoint_dir else None
        if resume and ckpt is not None and ckpt.exists():
            state = load_torch_file(ckpt)  # weights_only: a pickled object in the file is refused, never run
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            rng.bit_generator.state = state["rng"]
            losses, start = list(state["losses"]), int(state["step"])
            log.info("resumed pretraining from %s at step %d", ckpt, start)
        model.train()
        t0 = time.time()
        bar = progress_bar(range(start, config.steps), disable=not progress, desc="toy CLIP", initial=start,
                           total=config.steps)
        for step in bar:
            images, captions = world.sample_pretraining_batch(config.batch_size, rng)
            x = images_to_tensor(images, pre)
            tokens = tokenizer(captions)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, config)
            img_f = F.normalize(model.encode_image(x), dim=-1)
            txt_f = F.normalize(encode_text_trimmed(model, tokens), dim=-1)
            scale = model.logit_scale.exp()
            loss = clip_loss(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, math.log(100.0))
            losses.append(float(loss.detach()))
            scale = float(scale.detach())
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{scale:.1f}")
            if step % 50 == 0 or step == config.steps - 1:
                log.info("step %d/%d loss %.4f scale %.2f (%.1fs)", step + 1, config.steps, losses[-1], scale,
                         time.time() - t0)
            if ckpt is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                _save_resume(ckpt, step + 1, model, opt, rng, losses)
        model.eval()
        wall = time.time() - t0
    finally:
        torch.set_num_threads(old_threads)
    return PretrainResult(model=model, tokenizer=tokenizer, losses=losses, wall_s=wall,
                          config=PretrainConfig(**{**config.__dict__, "model": model_cfg}), world_spec=world.spec)
