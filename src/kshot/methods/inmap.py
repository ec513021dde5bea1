"""InMaP: intra-modal proxy learning for transductive zero-shot classification (Qian & Hu, NeurIPS 2023).

Facts from idstcv/InMaP: main.py (functions `sinkhorn`, `image_opt`; argparse defaults):

1. Pseudo-labels P = softmax(X Wᵀ / τ_t) over the unlabelled features X [n, D] and text proxies W [C, D]
   (raw cosines; τ_t = 0.01), refined by 20 Sinkhorn iterations towards uniform class mass 1/C (or q ∝ colsum^γ
   when γ > 0; γ = 0 by default) with rows renormalised to sum to 1.
2. Rows whose largest entry exceeds α = 0.6 become one-hot.
3. Vision proxies V (init W) by full-batch gradient descent on CE(softmax(X Vᵀ / τ_i), P), τ_i = 0.04: gradient
   (softmax − P)ᵀX, step lr / (n · τ_i) with lr = 10 halved whenever the gradient norm grows, every proxy
   renormalised after each step, 2000 iterations.
4. Predict with X Vᵀ; kshot returns logit_scale · f Vᵀ for any features.

kshot additions:
- Labelled shots, when present (`use_shots=True`), join X with their true one-hot rows fixed in P (they skip
  Sinkhorn and sharpening); with `use_shots=False` they are ignored. Without `task.unlabeled` the shots alone are used
  (proxy learning on the labelled set, logged as a warning); with neither, fitting is an error.
- `label_source="proxy"` reproduces seed 004's variant (jittor-few-shot-clip-B, test.py `Inmap`): a first proxy fit on
  the plain softmax labels, then Sinkhorn on the logits of those proxies and a second fit from the text proxies.
  Seed 004 also used τ_i = 1, 20 proxy iterations, 100 Sinkhorn iterations and α = 1 (no sharpening); these are
  config values. Its first scores multiply by the text classifier softmaxed over the class axis, a quirk not copied.
- Sinkhorn runs in float64 so that softmax(·/0.01) does not underflow to an all-zero class column.
- The proxy steps stop once the halved step provably cannot move a proxy by more than `tol` (1e-7 in cosine);
  the official arithmetic is kept operation for operation, since 2000 steps amplify any rounding change.
The validation split is not used (InMaP has no tuned parameter in its code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kshot.config import param
from kshot.errors import ConfigError, DataError
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InMaPConfig:
    """Hyper-parameters of InMaP (defaults: idstcv/InMaP main.py argparse).

    Attributes:
        tau_t: temperature of the text pseudo-labels (`--tau_t 0.01`).
        tau_i: temperature of the vision-proxy softmax (`--tau_i 0.04`).
        alpha: rows with max probability above this become one-hot (`--alpha 0.6`).
        gamma: class-mass exponent in Sinkhorn, 0 = uniform (`--gamma 0`).
        lr: initial proxy step (`--lr 10`), scaled by 1 / (n · τ_i) and halved when the gradient norm grows.
        iters: proxy gradient steps (`--iters_proxy 2000`).
        tol: stop the gradient steps once the iterations left provably could not move any cosine logit by more
            than this (`fit_proxies`); 0 stops only when the step has underflowed to 0 (bit-exact).
        sinkhorn_iters: Sinkhorn iterations (`--iters_sinkhorn 20`); 0 skips Sinkhorn (plain softmax labels).
        label_source: "text" (official: Sinkhorn on X Wᵀ) or "proxy" (seed 004: Sinkhorn on a first proxy fit).
        use_shots: add labelled shots to X with their one-hot labels fixed in P.
    """

    tau_t: float = param(0.01, gt=0)
    tau_i: float = param(0.04, gt=0)
    alpha: float = param(0.6, ge=0, le=1)
    gamma: float = param(0.0, ge=0)
    lr: float = param(10.0, gt=0)
    iters: int = param(2000, ge=0)
    tol: float = param(1e-7, ge=0)
    sinkhorn_iters: int = param(20, ge=0)
    label_source: str = "text"
    use_shots: bool = True


def sinkhorn_labels(scores: torch.Tensor, tau_t: float, gamma: float, iters: int) -> torch.Tensor:
    """Balanced soft labels [n, C] (rows sum to 1) from raw scores [n, C] (float64 internally)."""
    p = torch.softmax(scores.double() / tau_t, dim=1)
    n, c = p.shape
    p = p / n
    q = None
    if gamma > 0:
        q = p.sum(dim=0, keepdim=True).pow(gamma)
        q = q / q.sum()
    tiny = torch.finfo(p.dtype).tiny
    for _ in range(iters):
        p = p / p.sum(dim=0, keepdim=True).clamp_min(tiny)
        p = p * q if q is not None else p / c
        p = p / p.sum(dim=1, keepdim=True).clamp_min(tiny)
        p = p / n
    return (p * n).to(scores.dtype)


def sharpen(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """Rows of p whose max exceeds alpha become one-hot (a copy)."""
    val, idx = p.max(dim=1)
    out = p.clone()
    mask = val > alpha
    out[mask] = F.one_hot(idx[mask], p.shape[1]).to(p.dtype)
    return out


def fit_proxies(x: torch.Tensor, init: torch.Tensor, targets: torch.Tensor, *, lr: float, iters: int,
                tau_i: float, tol: float = 0.0) -> torch.Tensor:
    """Gradient descent of CE(softmax(x Vᵀ / τ_i), targets) from V = init.

    The step only ever halves, and one step moves a proxy by at most 4 · step · max||x|| / τ_i (‖Pᵀx − base‖ per
    class is at most 2n · max||x||). Once the iterations left, at that bound, could not change any cosine x·V_c
    (|x| = 1) by more than `tol`, the gradient steps stop and the iterations left only renormalise V, as the
    official loop does when its step is 0. With tol = 0 that happens only once the step has underflowed to 0, when
    the official loop's remaining iterations are exactly that renormalisation.

    Args:
        x: features [n, D]; init: proxies [C, D]; targets: soft labels [n, C]; tol: see above (cosine units).

    Returns:
        V [C, D] with unit rows.
    """
    n = x.shape[0]
    base = targets.T @ x  # [C, D]
    proxies = init.clone()
    x_max = float(torch.linalg.vector_norm(x, dim=1).max()) if n else 0.0
    # the step is a float32 tensor as in the official loop (it underflows to 0 after ~150 halvings)
    step = torch.tensor(lr, dtype=x.dtype, device=x.device)
    prev_norm = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    scores = x.new_empty(n, init.shape[0])  # one [n, C] buffer for x Vᵀ / τ_i, reused by every iteration
    for it in range(iters):
        # checked every 10 iterations: reading the step is a host sync on a GPU
        if it % 10 == 0 and (iters - it) * 4.0 * float(step) * x_max / tau_i <= tol:
            log.debug("inmap: step %.3g leaves the proxies where they are; gradient steps stop after %d of %d",
                      float(step), it, iters)
            for _ in range(iters - it):  # step ≈ 0: V − step·grad = V; what is left is the renormalisation
                renormed = F.normalize(proxies, dim=1)
                if torch.equal(renormed, proxies):  # a fixed point of the renormalisation
                    break
                proxies = renormed
            break
        # The official arithmetic, operation for operation: 2000 steps amplify any rounding change (even
        # `* (1 / τ_i)` for `/ τ_i`) to ~1e-3 relative in the logits.
        prob = torch.softmax(torch.mm(x, proxies.T, out=scores).div_(tau_i), dim=1)
        grad = prob.T @ x - base
        norm = torch.linalg.vector_norm(grad)
        step = torch.where(norm > prev_norm, step / 2.0, step)
        prev_norm = norm
        proxies = F.normalize(proxies - (step / (n * tau_i)) * grad, dim=1)
    return proxies


@METHODS.register("inmap", "InMaP (transductive): Sinkhorn pseudo-labels on the test features -> vision proxies")
class InMaP(Method):
    """InMaP on cached features (module docstring: algorithm, defaults, kshot additions)."""

    name = "inmap"
    config_cls = InMaPConfig
    cv_tunes: ClassVar[bool | None] = False
    transductive: ClassVar[bool] = True
    supports_empty_classes: ClassVar[bool] = True

    def fit(self, task: Task) -> "InMaP":
        cfg = self.config
        if cfg.label_source not in ("text", "proxy"):
            raise ConfigError(f"inmap: label_source must be 'text' or 'proxy', got {cfg.label_source!r}")
        check_task(task, needs_shots=False, needs_text=True, supports_empty_classes=True, method=self.name)
        has_unlabeled = task.unlabeled is not None and len(task.unlabeled) > 0
        use_shots = cfg.use_shots and len(task.train) > 0
        if not has_unlabeled and not use_shots:
            raise DataError("inmap is transductive: it needs task.unlabeled (the features to classify) or labelled "
                            "shots with use_shots=True; this task has neither")
        if not has_unlabeled:
            log.warning("inmap: no unlabelled features; learning proxies from the %d labelled shots only",
                        len(task.train))
        device = (task.unlabeled if has_unlabeled else task.train).features.device
        text = task.text_weights.to(device).float()
        x_u = task.unlabeled.features.to(device).float() if has_unlabeled else text.new_zeros(0, text.shape[1])
        x_s = task.train.features.to(device).float() if use_shots else text.new_zeros(0, text.shape[1])
        y_s = F.one_hot(task.train.labels.to(device), task.num_classes).float() if use_shots else \
            text.new_zeros(0, task.num_classes)
        x = torch.cat([x_u, x_s])

        def proxies_from(scores: torch.Tensor, sinkhorn: bool) -> torch.Tensor:
            soft = (sinkhorn_labels(scores, cfg.tau_t, cfg.gamma, cfg.sinkhorn_iters) if sinkhorn
                    else torch.softmax(scores / cfg.tau_t, dim=1))
            targets = torch.cat([sharpen(soft, cfg.alpha), y_s])
            return fit_proxies(x, text, targets, lr=cfg.lr, iters=cfg.iters, tau_i=cfg.tau_i,
                               tol=cfg.tol)

        use_sinkhorn = cfg.sinkhorn_iters > 0 and len(x_u) > 0
        if cfg.label_source == "proxy":
            first = proxies_from(x_u @ text.T, sinkhorn=False)
            self.proxies_ = proxies_from(x_u @ first.T, sinkhorn=use_sinkhorn)
        else:
            self.proxies_ = proxies_from(x_u @ text.T, sinkhorn=use_sinkhorn)
        self.scale_ = float(task.logit_scale)
        self.num_fit_rows_ = int(x.shape[0])
        self.fitted_ = True
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.proxies_.shape[1])
        return self.scale_ * features.float() @ self.proxies_.to(features.device).T

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"proxies": self.proxies_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"scale": self.scale_, "num_fit_rows": self.num_fit_rows_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.proxies_ = state["proxies"].float()
        self.scale_ = float(meta["scale"])
        self.num_fit_rows_ = int(meta.get("num_fit_rows", 0))
