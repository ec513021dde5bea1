"""ProKeR: proximal kernel ridge regression around zero-shot CLIP (Bendou et al., "ProKeR: A Kernel Perspective on
Few-Shot Adaptation of Large Vision-Language Models", CVPR 2025).

The residual between the one-hot labels and the zero-shot scores of the shots is regressed with an RBF kernel on
the sphere, and added to the zero-shot scores::

    k(x, x') = exp(−β (1 − x x'ᵀ))
    A        = (K_SS / λ + I)⁻¹ (Y − F Tᵀ)          K_SS [n, n] over the n training rows F, Y [n, C] one-hot
    logits   = s · (f Tᵀ + k(f, F) A)

Facts from `omarnust/BReg-Adapter @ f2ecb3d2 : trainers/proker.py` (`RBF_Kernel`, `ProKeR`; the authors' code, the
`ybendou/ProKeR` repository is a project page): raw cosines f Tᵀ (no logit scale), `torch.linalg.solve` of the
system above, a β × λ grid of `linspace` values searched on validation (first best, strict `>`), shots from 10
augmented passes (`utils.py: --augment-epoch 10`). The released grids are for RN50 only
(`configs/RN50/configs_proker/<dataset>.yaml`); kshot's default is the ImageNet one (β ∈ linspace(1.5, 3, 10),
λ ∈ linspace(0.05, 0.25, 10)), also used for ViT backbones — set `beta_grid`/`lmbda_grid` for another.

kshot departures:
- The search uses `task.val` only (the official ImageNet run sets val = test); without it the ImageNet
  hyper-parameters transferred by the official `--hp-selection imagenet` are used (`hyperparameters.json`, by shots,
  the nearest listed K).
- The logits are multiplied by the logit scale s (the official ones are raw, so only the scale differs: same
  ranking), so that they sit on the scale of the other kshot methods.
- For each β the kernel is eigen-decomposed once (float64), K = U Λ Uᵀ, and every λ reuses it:
  A_λ = U diag(λ / (Λ + λ)) Uᵀ R. This is the official solve, computed once per β instead of once per (β, λ).
- The training rows are the plain shots plus their cached augmented views (`use_aug_views`).
- Above `search_max_rows` training rows (ImageNet: 16,000), the search runs on a seeded subset of the classes
  (their shots and val items; the kernel, the residual and the scoring keep every class column), so that each β
  costs one small eigendecomposition; the final system K/λ + I over every row is solved once by Cholesky (in
  float32 there: it is positive definite with eigenvalues >= 1), factorised in the system's own memory on CPU
  (`cholesky_in_place`: peak RSS one n × n matrix, not two).
Classes without shots are fine: their regression target is −f Tᵀ, so they keep a text-driven score
(`supports_empty_classes`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from kshot.errors import CheckpointError, ConfigError, DataError
from kshot.methods import refit
from kshot.methods._lp_common import training_rows
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task, check_val_covers
from kshot.methods.tip_adapter import in_row_chunks

log = logging.getLogger(__name__)

#: `configs/RN50/configs_proker/hyperparameters.json` (ImageNet, averaged over seeds), by shots.
IMAGENET_HPS = {1: (3.0, 0.05), 2: (2.6, 0.05), 4: (1.5, 0.05), 8: (1.66, 0.07), 16: (1.7, 0.1)}


@dataclass(frozen=True)
class ProKeRConfig:
    """ProKeR hyper-parameters.

    Defaults: `omarnust/BReg-Adapter @ f2ecb3d2 : configs/RN50/configs_proker/imagenet.yaml`.

    Attributes:
        beta_grid: (start, end, steps) of `linspace` for β. Official ImageNet [1.5, 3, 10].
        lmbda_grid: (start, end, steps) for λ. Official ImageNet [0.05, 0.25, 10].
        search: search on `task.val` when given; otherwise (or without val) the transferred ImageNet values.
        use_aug_views: also regress the cached augmented views of the shots (official: 10 augmented passes).
        search_max_rows: above this many training rows the search runs on a seeded subset of the classes holding
            about this many rows (their val items only); the final solve always uses every row.
        init_beta, init_lmbda: (β, λ) without a search, instead of the transferred ImageNet values (both or neither).
    """

    beta_grid: tuple[float, float, int] = (1.5, 3.0, 10)
    lmbda_grid: tuple[float, float, int] = (0.05, 0.25, 10)
    search: bool = True
    use_aug_views: bool = True
    search_max_rows: int = 2048
    init_beta: float | None = None
    init_lmbda: float | None = None

    def __post_init__(self) -> None:
        for name in ("beta_grid", "lmbda_grid"):
            grid = getattr(self, name)
            if len(grid) != 3 or int(grid[2]) < 1 or float(grid[0]) <= 0:
                raise ConfigError(f"proker: {name} must be (start > 0, end, steps >= 1), got {grid!r}")


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """exp(−β (1 − x yᵀ)) for x [n, D], y [m, D] -> [n, m] (in place on the product: one n × m buffer)."""
    return (x @ y.T).sub_(1.0).mul_(beta).exp_()


def cholesky_in_place(a: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U (a = UᵀU) of a symmetric positive definite CPU matrix a [n, n], written over a.

    LAPACK `potrf` on a's own memory (its transpose is the same matrix in Fortran order), so no second n × n matrix
    is held: `torch.linalg.cholesky` would need one (1 GB in float32 at ImageNet's 16k rows). Returns a itself.
    """
    arr = a.numpy().T  # Fortran-ordered view of a's memory; equal to a since a is symmetric
    potrf = scipy.linalg.lapack.get_lapack_funcs("potrf", (arr,))
    factor, info = potrf(arr, lower=True, overwrite_a=True, clean=True)
    if info != 0:
        raise DataError(f"proker: the kernel system is not positive definite (LAPACK potrf info {info})")
    if not np.shares_memory(factor, arr):  # LAPACK wrapper copied after all: write the factor back
        a.copy_(torch.from_numpy(np.ascontiguousarray(factor.T)))
    return a  # a's C-order memory holds Lᵀ = U


def transferred_hps(shots: int) -> tuple[float, float]:
    """The official ImageNet (β, λ) for the listed K nearest to `shots`."""
    k = min(IMAGENET_HPS, key=lambda s: (abs(s - shots), s))
    return IMAGENET_HPS[k]


def search_proker(x: torch.Tensor, residual: torch.Tensor, val_x: torch.Tensor, val_zs: torch.Tensor,
                  val_y: torch.Tensor, betas: torch.Tensor, lmbdas: torch.Tensor) -> tuple[float, float, float]:
    """First best (β, λ) by validation accuracy, β outer, λ inner (float64, one eigendecomposition per β).

    Args:
        x: training rows [n, D]; residual: Y − F Tᵀ [n, C]; val_x [m, D]; val_zs: val cosines [m, C]; val_y [m].

    Returns:
        (β, λ, validation accuracy in [0, 1]).
    """
    best = (-1, float(betas[0]), float(lmbdas[0]))
    for beta in betas.tolist():
        evals, evecs = torch.linalg.eigh(rbf_kernel(x, x, beta))
        proj = rbf_kernel(val_x, x, beta) @ evecs  # [m, n]
        coef = evecs.T @ residual  # [n, C]
        for lmbda in lmbdas.tolist():
            shrink = lmbda / (evals.clamp_min(0.0) + lmbda)
            hits = int((val_zs + (proj * shrink) @ coef).argmax(dim=1).eq(val_y).sum())
            if hits > best[0]:
                best = (hits, beta, lmbda)
    return best[1], best[2], best[0] / len(val_y)


@METHODS.register("proker", "ProKeR: RBF kernel ridge regression of the shots' residual around zero-shot, "
                            "beta x lambda searched on val (CVPR'25)")
class ProKeR(Method):
    """ProKeR on cached features (module docstring: formula, official facts, departures)."""

    name = "proker"
    config_cls = ProKeRConfig
    supports_empty_classes: ClassVar[bool] = True
    cv_tunes: ClassVar[bool | None] = True

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' median (β, λ), search off."""
        return {"init_beta": refit.median(metas, "beta"), "init_lmbda": refit.median(metas, "lmbda"),
                "search": False}

    def fit(self, task: Task) -> "ProKeR":
        cfg = self.config
        check_task(task, needs_shots=True, needs_text=True, supports_empty_classes=True, method=self.name)
        check_val_covers(task, self.name)
        x, y = training_rows(task.train, cfg.use_aug_views)
        xd = x.double()
        dev = x.device
        text = task.text_weights.double().to(dev)
        residual = F.one_hot(y, task.num_classes).double() - xd @ text.T
        shots = int(torch.bincount(task.train.labels).max())
        self.beta_, self.lmbda_ = transferred_hps(shots)
        if cfg.init_beta is not None and cfg.init_lmbda is not None:
            self.beta_, self.lmbda_ = float(cfg.init_beta), float(cfg.init_lmbda)
        self.val_accuracy_ = None
        self.search_classes_ = None
        if cfg.search and task.val is not None and len(task.val) > 0:
            sx, sres, vx, vy = self._search_split(task, xd, y, residual)
            b0, b1, bn = cfg.beta_grid
            l0, l1, ln = cfg.lmbda_grid
            self.beta_, self.lmbda_, self.val_accuracy_ = search_proker(
                sx, sres, vx, vx @ text.T, vy,
                torch.linspace(float(b0), float(b1), int(bn)), torch.linspace(float(l0), float(l1), int(ln)))
            log.info("proker: beta=%.4g lambda=%.4g (val acc %.4f)", self.beta_, self.lmbda_, self.val_accuracy_)
        # K/λ + I is symmetric positive definite (eigenvalues >= 1): one Cholesky factorisation, float64 up to
        # `search_max_rows` rows, float32 above (ImageNet: 16k rows; float64 doubles time and memory)
        xs = xd if len(xd) <= cfg.search_max_rows else x.float()
        system = rbf_kernel(xs, xs, self.beta_).div_(self.lmbda_)
        system.diagonal().add_(1.0)
        upper = cholesky_in_place(system) if system.device.type == "cpu" else torch.linalg.cholesky(system).mT
        self.coef_ = torch.cholesky_solve(residual.to(xs.dtype), upper, upper=True).float().contiguous()
        del system, upper
        self.keys_, self.text_ = x.float().clone(), text.float()
        self.scale_ = float(task.logit_scale)
        self.fitted_ = True
        return self

    def _search_split(self, task: Task, x: torch.Tensor, y: torch.Tensor, residual: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows, residuals and val (features, labels) of the search: all, or a seeded class subset when large."""
        dev = x.device
        vx, vy = task.val.features.double().to(dev), task.val.labels.to(dev)
        if len(x) <= self.config.search_max_rows:
            return x, residual, vx, vy
        c = task.num_classes
        keep_n = max(2, c * self.config.search_max_rows // len(x))
        keep = torch.zeros(c, dtype=torch.bool)
        keep[torch.randperm(c, generator=torch.Generator().manual_seed(int(task.seed)))[:keep_n]] = True
        keep = keep.to(dev)
        self.search_classes_ = keep_n
        log.info("proker: %d rows > search_max_rows; searching on %d of %d classes", len(x), keep_n, c)
        rows, vrows = keep[y], keep[vy]
        return x[rows], residual[rows], vx[vrows], vy[vrows]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.keys_.shape[1])
        dev = features.device
        keys, coef, text = self.keys_.to(dev), self.coef_.to(dev), self.text_.to(dev)
        return in_row_chunks(lambda f: self.scale_ * (f @ text.T + rbf_kernel(f, keys, self.beta_) @ coef),
                             features.float())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys_, "coef": self.coef_, "text_weights": self.text_}

    def fitted_meta(self) -> dict[str, Any]:
        return {"beta": self.beta_, "lmbda": self.lmbda_, "scale": self.scale_, "val_accuracy": self.val_accuracy_,
                "search_classes": self.search_classes_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self.keys_, self.coef_, self.text_ = (state[k].float() for k in ("keys", "coef", "text_weights"))
            self.beta_, self.lmbda_, self.scale_ = float(meta["beta"]), float(meta["lmbda"]), float(meta["scale"])
        except KeyError as e:
            raise CheckpointError(f"{self.name} artifact is missing {e}") from None
        self.val_accuracy_ = meta.get("val_accuracy")
        self.search_classes_ = meta.get("search_classes")
