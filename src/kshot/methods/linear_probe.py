"""Linear probe: multinomial L2-regularised logistic regression on image features (Radford et al., 2021, App. A.3).

Protocol of CoOp's `lpclip` (KaiyangZhou/CoOp @ ff61507c : lpclip/linear_probe.py), followed exactly by default:
validate on a per-class subsample of the validation split of `val_shot_list = {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}`
images for K shots (`val_per_class="lpclip"`; other K: min(K, 4); drawn with a generator seeded by `task.seed`),
fit scikit-learn `LogisticRegression(lbfgs, l2, max_iter=1000)` for C in {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6},
keep the best C on that subsample, then 8 rounds of bisection in log10 C between C/10 and 10·C; the model of the
last round is kept.

Objective (scikit-learn `_logistic.py`, checked in 1.9: `l2_reg_strength = 1 / (C · N)` on the mean loss; older
versions minimise C·N times it, same minimiser)::

    mean_i CE(W f_i + b, y_i) + 1 / (2 · C · N) · ||W||²        (bias not penalised)

Two solvers minimise it: `sklearn` (L-BFGS-B, float64, CPU) and `torch` (torch.optim.LBFGS with strong-Wolfe line
search, full batch, on the features' device). With two classes scikit-learn fits a single binary weight vector; the
torch path then doubles the penalty of its symmetric two-row parameterisation, which has the same optimum
(w = w₁ − w₂), so both paths agree there too.

**Convergence at any size.** The torch solver stops when max|∇| <= tol on the *summed* objective
Σ_i CE + ||W||²/(2C), i.e. max|∇ of the mean objective| <= tol / N. That is the rule of the scikit-learn versions
lpclip was run with (their lbfgs objective was the sum). scikit-learn ≥ 1.2's mean objective with the same `tol`
is N times looser: at 1000 classes × 16 shots its gradient at W = 0 is already below 1e-4, so it (and kshot's torch
solver before this rule) stopped after 0–3 iterations at chance accuracy. Along the C search the fits run in
increasing C, each warm-started from the solution of the nearest C already fitted (the problem is strictly convex,
so a warm start changes the path, not the optimum), which makes the large, slow-to-converge C values cheap.

Differences from lpclip: features are kshot's L2-normalised ones (lpclip used raw RN50 features), so the best C
differs from lpclip's. Without `task.val` no search is possible and `default_C` (1.0, scikit-learn's default) is
used; strong regularisation on normalised features tends to the class-centroid classifier, a safe few-shot choice.
Classes without shots are an error: a discriminative probe has no calibrated score for a class it never saw
(use `lpp`, `clip_adapter` or `inmap`, which fall back to the text weights).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from kshot.config import param
from kshot.errors import ConfigError
from kshot.features.featureset import FeatureSet
from kshot.methods import refit
from kshot.methods._lp_common import accuracy, cpu_generator, training_rows
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task, check_val_covers

log = logging.getLogger(__name__)

#: C grid of lpclip/linear_probe.py (`search_list`).
LPCLIP_C_GRID: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@dataclass(frozen=True)
class LinearProbeConfig:
    """Hyper-parameters of the linear probe.

    Attributes:
        solver: "torch" (L-BFGS on the features' device; default, fast everywhere) or "sklearn" (lpclip's own).
        C: fixed inverse L2 strength; None searches it on `task.val` (lpclip protocol).
        c_grid: initial grid of C values (lpclip `search_list`).
        search_steps: rounds of bisection in log10 C after the grid (lpclip `--num_step 8`).
        default_C: C used when there is no validation split (scikit-learn's default C=1.0).
        max_iter: L-BFGS iterations per fit (lpclip: 1000).
        tol: stop when max|gradient| <= tol (scikit-learn's default 1e-4, same meaning in both solvers).
        dtype: torch solver precision: "float64", "float32", "mixed" (float64 parameters and loss, float32
            matmuls: faster on CPU, not bit-identical), or "auto" (float64 on CPU, float32 on GPUs, where float64 is
            slow on consumer cards).
        use_aug_views: also train on the augmented views of the shots (lpclip: no, test transform only).
        val_per_class: "lpclip" (validate on lpclip's per-class subsample of `task.val`, see the module docstring)
            or "all" (the whole validation split).
    """

    solver: str = "torch"
    C: float | None = param(None, gt=0)
    c_grid: tuple[float, ...] = param(LPCLIP_C_GRID, gt=0)
    search_steps: int = param(8, ge=1)
    default_C: float = param(1.0, gt=0)
    max_iter: int = param(1000, ge=1)
    tol: float = param(1e-4, gt=0)
    dtype: str = "auto"
    use_aug_views: bool = False
    val_per_class: str = param("lpclip", choices=("lpclip", "all"))


#: lpclip's `val_shot_list`: validation images per class for K training shots (other K: min(K, 4)).
LPCLIP_VAL_SHOTS: dict[int, int] = {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}


def lpclip_val_subset(val: FeatureSet, shots: int, seed: int) -> FeatureSet:
    """lpclip's validation subsample: `LPCLIP_VAL_SHOTS[shots]` random images of every class (all if fewer)."""
    per_class = LPCLIP_VAL_SHOTS.get(shots, min(shots, 4))
    gen = cpu_generator(seed)
    labels = val.labels.cpu()
    picked = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return val.subset(torch.cat(picked).sort().values)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    C: float,
    *,
    solver: str = "torch",
    max_iter: int = 1000,
    tol: float = 1e-4,
    dtype: str = "auto",
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit multinomial logistic regression (objective and stopping rule in the module docstring).

    Args:
        x: features [N, D]; y: labels [N] in [0, num_classes), every class present.
        C: inverse regularisation strength (> 0).
        init: optional warm start (W [num_classes, D], b [num_classes]) for the torch solver (sklearn ignores it).

    Returns:
        W float32 [num_classes, D] and b float32 [num_classes] on x's device; logits = x Wᵀ + b.
    """
    if not C > 0:
        raise ConfigError(f"linear_probe: C must be > 0, got {C}")
    if solver == "sklearn":
        w, b = _fit_sklearn(x, y, num_classes, C, max_iter=max_iter, tol=tol)
    elif solver == "torch":
        w, b = _fit_torch(x, y, num_classes, C, max_iter=max_iter, tol=tol, dtype=_resolve_dtype(dtype, x.device),
                          init=init)
    else:
        raise ConfigError(f"linear_probe: solver must be 'torch' or 'sklearn', got {solver!r}")
    return w.float().to(x.device), b.float().to(x.device)


def _resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(parameter/L-BFGS dtype, matmul dtype) of a `dtype` setting."""
    if name == "auto":
        name = "float64" if device.type == "cpu" else "float32"
    if name == "mixed":
        return torch.float64, torch.float32
    if name not in ("float32", "float64"):
        raise ConfigError(f"linear_probe: dtype must be 'auto', 'mixed', 'float32' or 'float64', got {name!r}")
    return getattr(torch, name), getattr(torch, name)


def _fit_torch(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float, *, max_iter: int, tol: float,
               dtype: tuple[torch.dtype, torch.dtype], init: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS on the objective of the module docstring; dtype = (parameters, matmuls).

    One precision: autograd through `F.cross_entropy`. Mixed ("mixed": float64 parameters, float32 matmuls): the
    closed-form gradient, the loss summed and the gradient kept in float64, the two [N, D] x [D, C] products per
    evaluation in float32 (half their CPU cost). The stopping point of a weakly regularised fit (large C on
    separable shots) depends on the rounding, so "mixed" is opt-in.
    """
    dtype, mm = dtype
    n, d = x.shape
    xm = x.to(mm).contiguous()
    if init is None:
        w = torch.zeros(num_classes, d, dtype=dtype, device=x.device)
        b = torch.zeros(num_classes, dtype=dtype, device=x.device)
    else:
        w = init[0].to(x.device, dtype).clone()
        b = init[1].to(x.device, dtype).clone()
    mixed = mm != dtype
    w.requires_grad_(not mixed)
    b.requires_grad_(not mixed)
    # Two classes: scikit-learn's binary model penalises ||w₁ − w₂||²; the symmetric optimum has w₂ = −w₁, so the
    # same solution needs twice the penalty on the two rows.
    reg = (2.0 if num_classes == 2 else 1.0) / (C * n)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, max_eval=max(15000, 2 * max_iter),
                            tolerance_grad=tol / n, tolerance_change=64 * torch.finfo(dtype).eps, history_size=10,
                            line_search_fn="strong_wolfe")
    rows = torch.arange(n, device=x.device)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(torch.addmm(b, xm, w.T), y) + 0.5 * reg * w.square().sum()
        loss.backward()
        return loss

    def closure_mixed() -> torch.Tensor:
        # mean CE = mean(logsumexp(z) − z_y); its gradient in z is softmax(z) − onehot(y)
        z = torch.addmm(b.to(mm), xm, w.to(mm).T)  # [N, C]
        lse = torch.logsumexp(z, dim=1)
        loss = (lse.sum(dtype=dtype) - z[rows, y].sum(dtype=dtype)) / n + 0.5 * reg * w.square().sum()
        prob = z.sub_(lse[:, None]).exp_()
        prob[rows, y] -= 1.0
        w.grad = (prob.T @ xm).to(dtype).div_(n).add_(w, alpha=reg)
        b.grad = prob.sum(dim=0, dtype=dtype).div_(n)
        return loss

    opt.step(closure_mixed if mixed else closure)
    return w.detach(), b.detach()


def _sklearn_estimator(C: float, max_iter: int, tol: float) -> Any:
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    # `penalty` is deprecated from scikit-learn 1.8 (l1_ratio=0 means L2); older versions need penalty="l2".
    reg_kw: dict[str, Any] = {"l1_ratio": 0.0} if (major, minor) >= (1, 8) else {"penalty": "l2"}
    return LogisticRegression(solver="lbfgs", C=C, max_iter=max_iter, tol=tol, **reg_kw)


def _fit_sklearn(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float, *, max_iter: int,
                 tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    clf = _sklearn_estimator(C, max_iter, tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # lpclip runs large C to max_iter as well
        clf.fit(x.detach().cpu().double().numpy(), y.cpu().numpy())
    if list(clf.classes_) != list(range(num_classes)):
        raise ValueError("linear_probe: every class needs a training example")  # guarded by check_task
    coef = torch.from_numpy(np.asarray(clf.coef_))
    inter = torch.from_numpy(np.asarray(clf.intercept_))
    if num_classes == 2:  # binary model: logit of class 1 is s = w·x + b; symmetric form [-s/2, s/2]
        coef = torch.cat([-coef / 2, coef / 2])
        inter = torch.cat([-inter / 2, inter / 2])
    return coef, inter


def search_c(fit: Callable[..., tuple[torch.Tensor, torch.Tensor]],
             score: Callable[[torch.Tensor, torch.Tensor], float], grid: tuple[float, ...],
             steps: int, warm_start: bool = False
             ) -> tuple[float, tuple[torch.Tensor, torch.Tensor], list[tuple[float, float]]]:
    """lpclip's search: best C of `grid` by `score`, then `steps` bisection rounds in log10 C.

    Each round fits both ends of [c_left, c_right] (initially [C*/10, 10·C*]); the better end (ties go left, as in
    lpclip) becomes that round's model and the interval shrinks to its half in log10 space on that side. The last
    round's model is returned, as lpclip reports it. The first best grid value wins ties (lpclip's `np.argmax`).

    Args:
        fit: `fit(C)`, or with `warm_start` `fit(C, init)` where init is the (W, b) of the nearest C (in log10)
            fitted so far, or None for the first fit; the grid is then fitted in increasing C.

    Returns:
        chosen C, its (W, b), and the (C, score) history of every distinct fit.
    """
    cache: dict[float, tuple[tuple[torch.Tensor, torch.Tensor], float]] = {}

    def evaluate(c: float) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
        if c not in cache:
            if warm_start:
                near = min(cache, key=lambda f: abs(math.log10(f) - math.log10(c)), default=None)
                params = fit(c, None if near is None else cache[near][0])
            else:
                params = fit(c)
            cache[c] = (params, score(*params))
        return cache[c]

    for c in (sorted(grid) if warm_start else grid):
        evaluate(c)
    scores = [evaluate(c)[1] for c in grid]
    c_best = grid[int(np.argmax(scores))]
    chosen = c_best
    c_left, c_right = 0.1 * c_best, 10.0 * c_best
    for _ in range(steps):
        acc_left, acc_right = evaluate(c_left)[1], evaluate(c_right)[1]
        mid = 10.0 ** (0.5 * (math.log10(c_left) + math.log10(c_right)))
        if acc_left < acc_right:
            chosen, c_left = c_right, mid
        else:
            chosen, c_right = c_left, mid
    history = [(c, s) for c, (_, s) in cache.items()]
    return chosen, evaluate(chosen)[0], history


@METHODS.register("linear_probe", "Linear probe: L2 logistic regression on features, C searched on val (CoOp lpclip)")
class LinearProbe(Method):
    """Multinomial logistic regression on cached features (see the module docstring for the protocol)."""

    name = "linear_probe"
    config_cls = LinearProbeConfig
    cv_tunes: ClassVar[bool | None] = True
    jittor_head: ClassVar[str | None] = "linear"

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' choices fixed (`kshot.methods.refit`)."""
        return {"C": refit.log_median(metas, "C")}
    needs_text: ClassVar[bool] = False
    supports_empty_classes: ClassVar[bool] = False

    def fit(self, task: Task) -> "LinearProbe":
        cfg = self.config
        check_task(task, needs_shots=True, needs_text=False, supports_empty_classes=False, method=self.name)
        x, y = training_rows(task.train, cfg.use_aug_views)
        num_classes = task.num_classes

        def fit_c(c: float, init: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
            return fit_logistic(x, y, num_classes, c, solver=cfg.solver, max_iter=cfg.max_iter, tol=cfg.tol,
                                dtype=cfg.dtype, init=init)

        self.search_history_: list[tuple[float, float]] = []
        if cfg.C is not None:
            self.C_ = float(cfg.C)
            w, b = fit_c(self.C_)
        elif task.val is not None and len(task.val) > 0:
            check_val_covers(task, self.name)
            val = task.val
            if cfg.val_per_class == "lpclip":
                val = lpclip_val_subset(val, int(torch.bincount(task.train.labels.cpu()).max()), task.seed)
            val_x = val.features.to(x.device).float()

            def score(w: torch.Tensor, b: torch.Tensor) -> float:
                return accuracy(torch.addmm(b, val_x, w.T.to(val_x.dtype)), val.labels)

            self.C_, (w, b), self.search_history_ = search_c(fit_c, score, tuple(cfg.c_grid), cfg.search_steps,
                                                             warm_start=cfg.solver == "torch")
            log.info("linear_probe: C=%.4g chosen on val after %d fits", self.C_, len(self.search_history_))
        else:
            self.C_ = float(cfg.default_C)
            log.info("linear_probe: no validation split; using default C=%g", self.C_)
            w, b = fit_c(self.C_)
        self.weight_, self.bias_ = w, b
        self.fitted_ = True
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.weight_.shape[1])
        w, b = self.weight_.to(features.device), self.bias_.to(features.device)
        return torch.addmm(b, features.float(), w.T)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"C": self.C_, "search_history": [list(h) for h in self.search_history_]}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weight_, self.bias_ = state["weight"].float(), state["bias"].float()
        self.C_ = float(meta["C"])
        self.search_history_ = [tuple(h) for h in meta.get("search_history", [])]
