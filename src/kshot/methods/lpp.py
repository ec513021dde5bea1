"""LP++: a linear probe that blends visual prototypes with class-wise weighted text (Huang et al., CVPR 2024).

logits_ik = f_iᵀv_k + b_k + α_k · f_iᵀt_k, with t_k the (fixed) text classifier rows. Update rules, defaults and
initialisation follow the official code (FereshteShakeri/FewShot-CLIP-Strong-Baseline: methods/linear_probe_p2.py,
configs/base.yaml):

- V = per-class **sum** of the normalised shot features (the division by the count is commented out there); b = 0
  (the official bias keeps nn.Linear's random init; zero keeps kshot deterministic without a draw).
- α_k = 250 · mean_k(mean_{i∈k} f_iᵀt_k) for every class (one shared value).
- V, b: SGD with momentum 0.9 and step η_V = 4N / λ_max(FᵀF) (a Lipschitz bound), full batch, 300 iterations.
- α: a plain gradient step η_α = N / (4 · max_k Σ_i (f_iᵀt_k)²) every 10 iterations. The official α gradient is
  never zeroed, so each step uses the sum of all gradients so far; `accumulate_alpha_grad=True` reproduces that.
- With a validation split the parameters of the best-val iteration are kept (ties go to the later iteration, as
  the official `>=`); without one, the last iteration's.

The gradients are the closed form of the cross-entropy (G = (softmax − one-hot)/B; ∂V = GᵀF, ∂b = Σ_i G_i,
∂α = Σ_i G_i ⊙ f_iᵀT) and the momentum step is torch's SGD update written out, with no autograd graph; the text
logits of the shots and of the validation images are computed once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kshot.config import param
from kshot.errors import ConfigError
from kshot.methods._lp_common import accuracy, cpu_generator, seen_classes, training_rows
from kshot.methods import refit
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task, check_val_covers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LPPConfig:
    """Hyper-parameters of LP++ (official values from methods/linear_probe_p2.py and configs/base.yaml).

    Attributes:
        iters: training iterations (epochs when batch_size > 0); official `train_epoch: 300`.
        lr_factor: η_V = lr_factor · N / λ_max(FᵀF); official 4.
        momentum: SGD momentum of V and b; official 0.9.
        alpha_init_scale: α init = scale · mean class-wise text similarity; official 250.
        alpha_every: α step every this many iterations (0 freezes α); official 10.
        alpha_lr_factor: η_α = alpha_lr_factor · N / max_k Σ_i (f_iᵀt_k)²; official 1/4.
        accumulate_alpha_grad: use the running sum of α gradients (official, never zeroed) instead of the current one.
        lr_schedule: "constant" (official) or "cosine" (seed 004) decay of η_V over `iters`.
        batch_size: 0 = full batch (official); otherwise shuffled mini-batches of this size.
        use_aug_views: also train on the augmented views of the shots as extra rows.
        select_on_val: keep the best-val iteration when `task.val` is given (official).
        empty_class_visual: prototype and bias of classes without shots: "zero" or "mean" (of the trained classes).
    """

    iters: int = param(300, ge=1)
    lr_factor: float = param(4.0, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    alpha_init_scale: float = param(250.0, gt=0)
    alpha_every: int = param(10, ge=0)
    alpha_lr_factor: float = param(0.25, ge=0)
    accumulate_alpha_grad: bool = True
    lr_schedule: str = "constant"
    batch_size: int = param(0, ge=0)
    use_aug_views: bool = False
    select_on_val: bool = True
    empty_class_visual: str = "zero"


def lpp_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor,
               text: torch.Tensor) -> torch.Tensor:
    """f Vᵀ + b + α ⊙ (f Tᵀ) for features [N, D], weight/text [C, D], bias/alpha [C] -> [N, C]."""
    return torch.addmm(bias, features, weight.T) + alpha * (features @ text.T)


def cross_entropy_grad(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean cross-entropy of logits [B, C] against labels [B] and its gradient (softmax − one-hot) / B [B, C]."""
    # both max-shifted first, as F.cross_entropy (p_true ≈ 1 stays exact); exp of a very negative log-probability
    # is slow elementwise on CPU, so the probabilities come from softmax, not from exp(log_softmax)
    loss = -float(torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).mean())
    grad = torch.softmax(logits, dim=1)
    grad[torch.arange(len(labels), device=labels.device), labels] -= 1.0
    return loss, grad.div_(len(labels))


def lr_values(lr: float, iters: int, cosine: bool) -> list[float]:
    """The step size of every iteration: constant, or torch's `CosineAnnealingLR(T_max=iters)` values exactly."""
    if not cosine:
        return [lr] * iters
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    values = []
    for _ in range(iters):
        values.append(opt.param_groups[0]["lr"])
        opt.step()  # an update without gradients: only keeps the scheduler's order check quiet
        sched.step()
    return values


def sgd_momentum_step(params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor], lr: float,
                      momentum: float) -> None:
    """One `torch.optim.SGD(momentum=m)` step in place (no dampening/Nesterov/decay; `buffers` starts empty)."""
    if momentum == 0:
        buffers = grads
    elif not buffers:
        buffers.extend(g.clone() for g in grads)
    else:
        for buf, g in zip(buffers, grads, strict=True):
            buf.mul_(momentum).add_(g)
    for p, buf in zip(params, buffers, strict=True):
        p.add_(buf, alpha=-lr)


def lpp_init(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, num_classes: int,
             alpha_init_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Official initialisation: V = per-class sums [C, D]; α = scale · mean_k mean_{i∈k} f_iᵀt_k (a scalar tensor)."""
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x)
    own = (x * text[y]).sum(dim=1)  # f_iᵀ t_{y_i}
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)
    class_mean = torch.zeros(num_classes, dtype=x.dtype, device=x.device).index_add_(0, y, own) / counts
    return weight, alpha_init_scale * class_mean.mean()


def lpp_step_sizes(x: torch.Tensor, text: torch.Tensor, lr_factor: float,
                   alpha_lr_factor: float) -> tuple[float, float]:
    """η_V = lr_factor · N / λ_max(FᵀF) and η_α = alpha_lr_factor · N / max_k Σ_i (f_iᵀt_k)² (float64 maths)."""
    xd = x.double()
    lam_max = float(torch.linalg.matrix_norm(xd, ord=2)) ** 2  # λ_max(FᵀF) = σ_max(F)²
    n = x.shape[0]
    lr_v = lr_factor * n / lam_max
    lr_a = alpha_lr_factor * n / float((xd @ text.double().T).square().sum(dim=0).max())
    return lr_v, lr_a


@METHODS.register("lpp", "LP++: visual prototypes + class-wise weighted text, Lipschitz-step full-batch training")
class LPP(Method):
    """LP++ on cached features (module docstring: rules, defaults, deviations)."""

    name = "lpp"
    config_cls = LPPConfig
    cv_tunes: ClassVar[bool | None] = True
    jittor_head: ClassVar[str | None] = "lpp"

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' choices fixed (`kshot.methods.refit`)."""
        return {"iters": refit.count(metas, "best_iter"), "select_on_val": False}
    supports_empty_classes: ClassVar[bool] = True

    def fit(self, task: Task) -> "LPP":
        cfg = self._validated_config()
        check_task(task, needs_shots=True, needs_text=True, supports_empty_classes=True, method=self.name)
        check_val_covers(task, self.name)
        x, y = training_rows(task.train, cfg.use_aug_views)
        device = x.device
        text_all = task.text_weights.to(device).float()
        num_classes = task.num_classes
        seen = seen_classes(y, num_classes)
        seen_idx = seen.nonzero().flatten()
        remap = torch.full((num_classes,), -1, dtype=torch.long, device=device)
        remap[seen_idx] = torch.arange(len(seen_idx), device=device)
        ys, text = remap[y], text_all[seen_idx]
        n_seen = len(seen_idx)

        weight0, alpha0 = lpp_init(x, ys, text, n_seen, cfg.alpha_init_scale)
        lr_v, lr_a = lpp_step_sizes(x, text, cfg.lr_factor, cfg.alpha_lr_factor)
        weight, bias = weight0.clone(), torch.zeros(n_seen, device=device)
        alpha = torch.full((n_seen,), float(alpha0), device=device)
        lrs = lr_values(lr_v, cfg.iters, cfg.lr_schedule == "cosine")
        momentum: list[torch.Tensor] = []
        text_logits = x @ text.T  # [N, Cs], fixed
        gen = cpu_generator(task.seed)
        use_val = cfg.select_on_val and task.val is not None and len(task.val) > 0
        val_x = task.val.features.to(device).float() if use_val else None
        val_text = val_x @ text_all.T if use_val else None  # [Nv, C], fixed
        self.text_ = text_all
        acc_grad = torch.zeros(n_seen, device=device)
        best_acc, self.best_iter_ = -1.0, cfg.iters - 1
        best: tuple[torch.Tensor, ...] | None = None
        self.loss_history_: list[float] = []
        for it in range(cfg.iters):
            if cfg.batch_size and cfg.batch_size < len(x):
                batches = torch.randperm(len(x), generator=gen).to(device).split(cfg.batch_size)
            else:
                batches = (None,)
            g_alpha = torch.zeros(n_seen, device=device)
            losses = []
            for idx in batches:
                xb, tb, yb = (x, text_logits, ys) if idx is None else (x[idx], text_logits[idx], ys[idx])
                loss, grad = cross_entropy_grad(torch.addmm(bias, xb, weight.T).add_(alpha * tb), yb)
                sgd_momentum_step([weight, bias], [grad.T @ xb, grad.sum(dim=0)], momentum, lrs[it], cfg.momentum)
                g_alpha += (grad * tb).sum(dim=0)
                losses.append(loss)
            self.loss_history_.append(sum(losses) / len(losses))
            g_alpha /= len(batches)
            acc_grad = acc_grad + g_alpha if cfg.accumulate_alpha_grad else g_alpha
            if cfg.alpha_every > 0 and (it + 1) % cfg.alpha_every == 0:
                alpha -= lr_a * acc_grad
            if use_val:
                params = self._assemble(weight, bias, alpha, seen_idx, num_classes)
                val_logits = torch.addmm(params[1], val_x, params[0].T).add_(params[2] * val_text)
                acc = accuracy(val_logits, task.val.labels)
                if acc >= best_acc:
                    best_acc, self.best_iter_, best = acc, it, tuple(p.clone() for p in params)
        if best is None:
            best = self._assemble(weight, bias, alpha, seen_idx, num_classes)
        self.weight_, self.bias_, self.alpha_ = best
        self.val_acc_ = best_acc if use_val else None
        self.step_sizes_ = (lr_v, lr_a)
        log.info("lpp: lr_v=%.4g lr_alpha=%.4g alpha0=%.4g, kept iteration %d", lr_v, lr_a, float(alpha0),
                 self.best_iter_)
        self.fitted_ = True
        return self

    def _validated_config(self) -> LPPConfig:
        cfg = self.config
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lpp: lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
        if cfg.empty_class_visual not in ("mean", "zero"):
            raise ConfigError(f"lpp: empty_class_visual must be 'mean' or 'zero', got {cfg.empty_class_visual!r}")
        if cfg.iters < 1 or cfg.batch_size < 0 or cfg.alpha_every < 0:
            raise ConfigError("lpp: iters must be >= 1, batch_size and alpha_every >= 0")
        return cfg

    def _assemble(self, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, seen_idx: torch.Tensor,
                  num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trained-class parameters [Cs, ...] -> all-class parameters [C, ...] (classes without shots filled)."""
        if len(seen_idx) == num_classes:
            return weight, bias, alpha
        mean = self.config.empty_class_visual == "mean"
        full_w = (weight.mean(0) if mean else torch.zeros_like(weight[0])).expand(num_classes, -1).clone()
        full_b = torch.full((num_classes,), float(bias.mean()) if mean else 0.0, device=bias.device)
        full_a = torch.full((num_classes,), float(alpha.mean()), device=alpha.device)
        full_w[seen_idx], full_b[seen_idx], full_a[seen_idx] = weight, bias, alpha
        return full_w, full_b, full_a

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.weight_.shape[1])
        dev = features.device
        return lpp_logits(features.float(), self.weight_.to(dev), self.bias_.to(dev), self.alpha_.to(dev),
                          self.text_.to(dev))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_, "alpha": self.alpha_, "text": self.text_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"best_iter": self.best_iter_, "val_acc": self.val_acc_, "step_sizes": list(self.step_sizes_)}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.bias_, self.alpha_, self.text_ = (state[k].float() for k in ("weight", "bias", "alpha",
                                                                                           "text"))
        self.best_iter_, self.val_acc_ = int(meta["best_iter"]), meta.get("val_acc")
        self.step_sizes_ = tuple(meta.get("step_sizes", (0.0, 0.0)))
