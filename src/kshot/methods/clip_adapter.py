"""CLIP-Adapter, visual branch (Gao et al., IJCV 2024, arXiv 2110.04544), trained as a head on cached features.

A(f) = ReLU(ReLU(f W₁) W₂), bias-free, bottleneck D/4; f* = ρ·A(f) + (1−ρ)·f; logits = scale · cos(f*, t_c) with the
fixed text classifier rows t_c; cross-entropy. Facts from gaopengcuhk/CLIP-Adapter: clip_adapter.py (reduction 4,
ρ = 0.2 hard-coded, f* L2-normalised before the cosine, nn.Linear's default init). The paper tunes ρ per dataset; here
ρ is searched on `task.val` over `rho_grid` when a validation split is given (one adapter per ρ, all trained
together as a batch of independent models on the same mini-batches), otherwise `rho` is used.

Schedule (kshot's choice; the original trains through the image encoder with CoOp's trainer, i.e. SGD, batch 32,
random-crop augmentation, up to 200 epochs): on cached features the adapter is a small head, so we take 300 steps of
AdamW (lr 1e-3 as Tip-Adapter-F's cached-feature head, weight decay 1e-2, cosine decay to 0), batch 32, sampling for
each row a random view among the clean feature and its cached augmented views (the stand-in for CoOp's random
crops). AdamW is insensitive to the logit scale (×100 multiplies SGD's effective step); 300 steps are about 60 epochs
of a 16-shot, 10-class task. With a validation split the best step (checked every `eval_every` steps) is kept;
without one, the last. These values were not tuned on real CLIP features.

Difference from the original: the adapter reads kshot's L2-normalised features (the original adapts the raw
encoder output and normalises f* afterwards, as we also do).

Classes without shots keep their text row and are scored like any other class (the adapter is shared).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kshot.config import param
from kshot.errors import ConfigError
from kshot.methods._lp_common import cpu_generator
from kshot.methods import refit
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task, check_val_covers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipAdapterConfig:
    """Hyper-parameters of CLIP-Adapter on cached features.

    Attributes:
        rho: residual ratio ρ without a validation split (official hard-code 0.2).
        rho_grid: ρ values searched on `task.val` (the paper tunes ρ per dataset; () disables the search).
        reduction: bottleneck D / reduction (official 4).
        steps: optimisation steps (kshot's choice, see module docstring).
        batch_size: rows per step (CoOp / CLIP-Adapter batch 32); 0 = full batch.
        optimizer: "adamw" (default) or "sgd" (momentum 0.9, as Dassl's default SGD).
        lr: peak learning rate, cosine-decayed to 0 over `steps`.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        eval_every: validation check period in steps (with `task.val`).
        use_aug_views: sample each row's view among the clean feature and `aug_features` when present.
    """

    rho: float = param(0.2, ge=0, le=1)
    rho_grid: tuple[float, ...] = param((0.1, 0.2, 0.4, 0.6, 0.8), ge=0, le=1)
    reduction: int = param(4, ge=1)
    steps: int = param(300, ge=0)
    batch_size: int = param(32, ge=0)
    optimizer: str = "adamw"
    lr: float = param(1e-3, gt=0)
    weight_decay: float = param(1e-2, ge=0)
    eval_every: int = param(10, ge=1)
    use_aug_views: bool = True


def init_adapter(dim: int, reduction: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default init, drawn from a seeded CPU generator: down [D/r, D], up [D, D/r], U(±1/√fan_in)."""
    gen = cpu_generator(seed)
    hidden = max(1, dim // reduction)
    down = (torch.rand(hidden, dim, generator=gen) * 2 - 1) / math.sqrt(dim)
    up = (torch.rand(dim, hidden, generator=gen) * 2 - 1) / math.sqrt(hidden)
    return down, up


def adapter_logits(features: torch.Tensor, down: torch.Tensor, up: torch.Tensor, text: torch.Tensor, rho: float,
                   scale: float) -> torch.Tensor:
    """scale · normalize(ρ·ReLU(ReLU(f W₁ᵀ) W₂ᵀ) + (1−ρ)·f) Tᵀ: features [N, D] -> logits [N, C]."""
    adapted = F.relu(F.relu(features @ down.T) @ up.T)
    mixed = F.normalize(rho * adapted + (1.0 - rho) * features, dim=-1)
    return scale * mixed @ text.T


def _grid_logits(features: torch.Tensor, down: torch.Tensor, up: torch.Tensor, text: torch.Tensor, rho: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """`adapter_logits` for R stacked adapters: down [R, h, D], up [R, D, h], rho [R] -> logits [R, N, C]."""
    adapted = F.relu(F.relu(features @ down.transpose(1, 2)) @ up.transpose(1, 2))  # [R, N, D]
    rho = rho[:, None, None]
    mixed = F.normalize(rho * adapted + (1.0 - rho) * features, dim=-1)
    return scale * mixed @ text.T


@METHODS.register("clip_adapter", "CLIP-Adapter: residual bottleneck MLP on image features, cosine to text weights")
class ClipAdapter(Method):
    """CLIP-Adapter head (module docstring: formula, schedule, deviations)."""

    name = "clip_adapter"
    config_cls = ClipAdapterConfig
    cv_tunes: ClassVar[bool | None] = True

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' choices fixed (`kshot.methods.refit`)."""
        return {"rho": refit.median(metas, "rho"), "steps": refit.count(metas, "best_step"), "rho_grid": ()}
    supports_empty_classes: ClassVar[bool] = True

    def fit(self, task: Task) -> "ClipAdapter":
        cfg = self._validated_config()
        check_task(task, needs_shots=True, needs_text=True, supports_empty_classes=True, method=self.name)
        check_val_covers(task, self.name)
        device = task.train.features.device
        self.text_ = task.text_weights.to(device).float()
        self.scale_ = float(task.logit_scale)
        use_val = task.val is not None and len(task.val) > 0
        rhos = tuple(cfg.rho_grid) if (use_val and cfg.rho_grid) else (cfg.rho,)
        accs, steps, downs, ups, losses = self._train(task, rhos, use_val)
        # First best ρ in grid order wins ties.
        pick = int(torch.argmax(accs)) if use_val else 0
        self.search_history_ = [(rho, float(a)) for rho, a in zip(rhos, accs.tolist())] if use_val else []
        self.rho_, self.best_step_ = float(rhos[pick]), int(steps[pick])
        self.down_, self.up_ = downs[pick].clone(), ups[pick].clone()
        self.loss_history_ = losses[:, pick].tolist()
        self.val_acc_ = float(accs[pick]) if use_val else None
        log.info("clip_adapter: rho=%.2f, kept step %d (val acc %s)", self.rho_, self.best_step_, self.val_acc_)
        self.fitted_ = True
        return self

    def _train(self, task: Task, rhos: tuple[float, ...], use_val: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Train one adapter per residual ratio in `rhos`, all at once (independent parameters, shared batches).

        The adapters are stacked on a leading axis R; the loss is the sum of their mean cross-entropies, so each
        receives exactly its own gradient (and AdamW/SGD update element-wise), as if trained alone.

        Returns:
            val accuracy [R] of the kept step (-1 without val), kept step [R], down [R, D/r, D], up [R, D, D/r],
            per-step training losses [steps, R].
        """
        cfg = self.config
        device = task.train.features.device
        views = task.train.features.float()[None]
        if cfg.use_aug_views and task.train.aug_features is not None:
            views = torch.cat([views, task.train.aug_features.to(device).float()], dim=0)  # [V+1, N, D]
        labels = task.train.labels.to(device)
        n, r = views.shape[1], len(rhos)
        down0, up0 = init_adapter(views.shape[2], cfg.reduction, task.seed)  # same start for every ρ
        down = down0.to(device).expand(r, -1, -1).clone().requires_grad_(True)
        up = up0.to(device).expand(r, -1, -1).clone().requires_grad_(True)
        rho = torch.tensor(rhos, dtype=torch.float32, device=device)
        if cfg.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW([down, up], lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD([down, up], lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
        gen = cpu_generator(task.seed + 1)
        batch = n if cfg.batch_size <= 0 else min(cfg.batch_size, n)
        order, pos = torch.randperm(n, generator=gen), 0
        if use_val:
            val_x, val_y = task.val.features.to(device).float(), task.val.labels.to(device)
        best_acc = torch.full((r,), -1.0, device=device)
        best_step = torch.full((r,), cfg.steps - 1, dtype=torch.long, device=device)
        best_down, best_up = down.detach().clone(), up.detach().clone()
        losses: list[torch.Tensor] = []
        for step in range(cfg.steps):
            if pos + batch > n:  # new epoch: reshuffle
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos:pos + batch]
            pos += batch
            view = torch.randint(views.shape[0], (len(idx),), generator=gen)
            idx_d = idx.to(device)
            xb, yb = views[view.to(device), idx_d], labels[idx_d]
            logits = _grid_logits(xb, down, up, self.text_, rho, self.scale_)  # [R, B, C]
            loss_r = F.cross_entropy(logits.flatten(0, 1), yb.repeat(r), reduction="none").view(r, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            loss_r.sum().backward()
            opt.step()
            sched.step()
            losses.append(loss_r.detach())
            if use_val and ((step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1):
                with torch.no_grad():
                    acc = _grid_logits(val_x, down, up, self.text_, rho, self.scale_).argmax(-1).eq(val_y)
                    acc = acc.float().mean(1)
                    better = acc >= best_acc  # later steps win ties
                    best_acc = torch.where(better, acc, best_acc)
                    best_step = torch.where(better, torch.full_like(best_step, step), best_step)
                    best_down = torch.where(better[:, None, None], down.detach(), best_down)
                    best_up = torch.where(better[:, None, None], up.detach(), best_up)
        if not use_val:
            best_down, best_up = down.detach(), up.detach()
        return best_acc, best_step, best_down, best_up, torch.stack(losses)

    def _validated_config(self) -> ClipAdapterConfig:
        cfg = self.config
        if cfg.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"clip_adapter: optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")
        for rho in (cfg.rho, *cfg.rho_grid):
            if not 0.0 <= rho <= 1.0:
                raise ConfigError(f"clip_adapter: residual ratio rho must be in [0, 1], got {rho}")
        if cfg.steps < 1 or cfg.reduction < 1 or cfg.eval_every < 1:
            raise ConfigError("clip_adapter: steps, reduction and eval_every must be >= 1")
        return cfg

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.text_.shape[1])
        dev = features.device
        return adapter_logits(features.float(), self.down_.to(dev), self.up_.to(dev), self.text_.to(dev), self.rho_,
                              self.scale_)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"down": self.down_, "up": self.up_, "text": self.text_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"rho": self.rho_, "scale": self.scale_, "best_step": self.best_step_, "val_acc": self.val_acc_,
                "search_history": [list(h) for h in self.search_history_]}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.down_, self.up_, self.text_ = state["down"].float(), state["up"].float(), state["text"].float()
        self.rho_, self.scale_ = float(meta["rho"]), float(meta["scale"])
        self.best_step_, self.val_acc_ = int(meta["best_step"]), meta.get("val_acc")
        self.search_history_ = [tuple(h) for h in meta.get("search_history", [])]
