"""ZS-LP and CLAP (Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large Vision-Language
Models", CVPR 2024): a linear probe initialised from the text classifier, and its class-adaptive constraint.

With prototypes P [C, D] (init: the text classifier T) and s the logit scale::

    logits = s · f̂ P̂ᵀ                                  (f̂, P̂: L2-normalised rows)
    loss   = CE(logits, y) + (1/C) Σ_c α_c ‖P_c − T_c‖²   (CLAP; ZS-LP: the CE term alone)
    α_c    = mean over the support rows of class c of softmax(s · f̂ Tᵀ)_c   (zero-shot confidence on class c)

Facts from `jusiro/CLAP @ dbdf4095`: `trainers/adapters.py` (`AdapterMethod`: ZS init, `zero_shot_constraint` "l2",
`init_lagrangian_multipliers`; `CustomCLIP.forward_lp`; `TrainerXCostume.run_epoch`: each epoch shuffles all support
rows and runs `len(train_loader_x)` batches of 256 — the image loader's length, N // 256 with drop-last, at least 1 —
so each epoch sees N rows of the 20× augmented set), `configs/trainers/SGD_lr1e-1_B256_ep300.yaml` (SGD lr 0.1,
momentum 0.9 (Dassl default), no weight decay, 300 epochs, cosine schedule, one constant warm-up epoch at 1e-5: the
learning rate of epoch e is 1e-5 for e = 0 and 0.1 · (1 + cos(π (e − 1) / 300)) / 2 after), `scripts/adapt.sh`
(`INIT=ZS`, `CONSTRAINT` none | l2). The released "l2" keeps α fixed; the augmented-Lagrangian `outer_step` only
runs for the "adaptative" variant (jusiro/CLAP issue #2), which is not reproduced. No validation set is used: the
last epoch is kept, and `task.val` is ignored (this is CLAP's point; `kshot eval --no-val` runs the protocol so).

kshot departures:
- T is the L2-normalised text classifier kshot caches; the official prototypes start from the un-normalised mean
  text embedding, so the penalty and the step size act at unit scale here.
- The support rows are the plain shots plus their cached augmented views (`use_aug_views`; official: 20
  augmented passes without the plain view); α_c is measured on the same rows.
- Shuffling uses a CPU generator seeded with `task.seed`. A class without shots gets α_c = 1 (the official ratio is
  0/0); its prototype still moves (the CE pushes it away from the other classes' rows), held near T by α_c.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kshot.errors import CheckpointError, ConfigError
from kshot.methods._lp_common import cpu_generator, training_rows
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZSLPConfig:
    """ZS-LP / CLAP schedule (defaults: `jusiro/CLAP @ dbdf4095 : configs/trainers/SGD_lr1e-1_B256_ep300.yaml`).

    Attributes:
        epochs: training epochs (`MAX_EPOCH: 300`).
        lr: SGD learning rate after warm-up (`LR: 0.1`), cosine-decayed over `epochs`.
        momentum: SGD momentum (Dassl's `OPTIM.MOMENTUM` default 0.9).
        batch_size: rows per step (`BATCH_SIZE: 256`).
        warmup_epochs: epochs at `warmup_lr` before the cosine schedule (`WARMUP_EPOCH: 1`).
        warmup_lr: constant warm-up learning rate (`WARMUP_CONS_LR: 1e-5`).
        use_aug_views: train on the cached augmented views as extra rows (official: 20 augmented passes).
    """

    epochs: int = 300
    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 256
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    use_aug_views: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.warmup_epochs < 0 or self.lr <= 0:
            raise ConfigError("zs_lp/clap: epochs and batch_size must be >= 1, warmup_epochs >= 0 and lr > 0")


@dataclass(frozen=True)
class CLAPConfig(ZSLPConfig):
    """CLAP: the ZS-LP schedule plus the class-adaptive l2 constraint (`CONSTRAINT=l2`).

    Attributes:
        constraint: "l2" (released, α fixed at the zero-shot class confidence) or "balanced" (α_c = 1, the official
            "balanced" option).
    """

    constraint: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.constraint not in ("l2", "balanced"):
            raise ConfigError(f"clap: constraint must be 'l2' or 'balanced', got {self.constraint!r}")


def epoch_lr(epoch: int, cfg: ZSLPConfig) -> float:
    """Dassl's constant warm-up followed by cosine annealing over `cfg.epochs` (see the module docstring)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return cfg.lr * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs)) / 2.0


def batches_per_epoch(num_images: int, batch_size: int) -> int:
    """`len(train_loader_x)`: drop-last batches over the shot images, at least one."""
    return max(1, num_images // batch_size)


def class_confidence(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """α_c = mean over rows of class c of softmax(s · x̂ Tᵀ)_c  [C]; 1 for classes without rows."""
    prob = torch.softmax(scale * F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).T, dim=-1)
    c = text.shape[0]
    own = torch.zeros(c, dtype=prob.dtype, device=x.device).index_add_(0, y, prob.gather(1, y[:, None]).squeeze(1))
    counts = torch.bincount(y, minlength=c).to(prob.dtype)
    return torch.where(counts > 0, own / counts.clamp_min(1.0), torch.ones_like(own))


def train_prototypes(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, alpha: torch.Tensor | None,
                     num_images: int, scale: float, cfg: ZSLPConfig, seed: int) -> torch.Tensor:
    """SGD on CE(s · x̂ P̂ᵀ, y) (+ mean_c α_c ‖P_c − T_c‖² when α is given) from P = T; returns P [C, D]."""
    protos = text.clone().requires_grad_(True)
    opt = torch.optim.SGD([protos], lr=epoch_lr(0, cfg), momentum=cfg.momentum)
    xn = F.normalize(x, dim=-1)
    gen = cpu_generator(seed)
    steps = batches_per_epoch(num_images, cfg.batch_size)
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = epoch_lr(epoch, cfg)
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for b in range(steps):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if len(idx) == 0:
                break
            loss = F.cross_entropy(scale * xn[idx] @ F.normalize(protos, dim=-1).T, y[idx])
            if alpha is not None:
                loss = loss + (alpha * (protos - text).square().sum(dim=-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return protos.detach()


@METHODS.register("zs_lp", "ZS-LP: linear probe initialised from the text classifier, CLAP's schedule, no "
                           "validation (CVPR'24)")
class ZSLP(Method):
    """ZS-LP on cached features (module docstring: loss, schedule, departures)."""

    name = "zs_lp"
    config_cls: ClassVar[type] = ZSLPConfig
    supports_empty_classes: ClassVar[bool] = True
    jittor_head: ClassVar[str | None] = "linear"  # f Wᵀ + b from the saved weight, bias
    cv_tunes: ClassVar[bool | None] = False  # nothing is chosen on validation data

    def _alpha(self, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor | None:
        return None

    def fit(self, task: Task) -> "ZSLP":
        cfg = self.config
        check_task(task, needs_shots=True, needs_text=True, supports_empty_classes=True, method=self.name)
        x, y = training_rows(task.train, cfg.use_aug_views)
        text = task.text_weights.float().to(x.device)
        self.scale_ = float(task.logit_scale)
        alpha = self._alpha(x, y, text, self.scale_)
        self.alpha_ = alpha
        protos = train_prototypes(x, y, text, alpha, len(task.train), self.scale_, cfg, task.seed)
        # a linear head on the (unit-norm) features: weight s·P̂, bias 0 (what the Jittor export carries)
        self.weight_ = (self.scale_ * F.normalize(protos, dim=-1)).contiguous()
        self.bias_ = torch.zeros(len(protos), device=protos.device)
        self.fitted_ = True
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.weight_.shape[1])
        dev = features.device
        return torch.addmm(self.bias_.to(dev), F.normalize(features.float(), dim=-1), self.weight_.to(dev).T)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"weight": self.weight_, "bias": self.bias_}
        if self.alpha_ is not None:
            state["alpha"] = self.alpha_
        return state

    def fitted_meta(self) -> dict[str, Any]:
        return {"scale": self.scale_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self.weight_, self.bias_, self.scale_ = state["weight"].float(), state["bias"].float(), float(meta["scale"])
        except KeyError as e:
            raise CheckpointError(f"{self.name} artifact is missing {e}") from None
        self.alpha_ = state.get("alpha")


@METHODS.register("clap", "CLAP: ZS-LP with a class-adaptive l2 constraint towards the text classifier, no "
                          "validation set needed (CVPR'24)")
class CLAP(ZSLP):
    """CLAP on cached features (module docstring)."""

    name = "clap"
    config_cls: ClassVar[type] = CLAPConfig

    def _alpha(self, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor | None:
        if self.config.constraint == "balanced":
            return torch.ones(text.shape[0], device=x.device)
        return class_confidence(x, y, text, scale)
