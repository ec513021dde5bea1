"""Combining the values fold fits chose into a refit's config (`Method.refit_overrides`, used by cross-validation).

Each fold's choice is read from `fitted_meta()`; values are combined by the lower median (`median_low`, always a
value some fold actually chose); epochs/iterations become "best index + 1".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

Metas = Sequence[Mapping[str, Any]]


def median(metas: Metas, key: str) -> float:
    """Lower median of a fitted value over the folds."""
    return float(statistics.median_low([float(m[key]) for m in metas]))


def count(metas: Metas, key: str) -> int:
    """Best index (0-based) over the folds -> a count of epochs/iterations/steps to run."""
    return int(statistics.median_low([int(m[key]) for m in metas])) + 1


def log_median(metas: Metas, key: str) -> float:
    """Lower median on a log10 scale (regularisation strengths)."""
    return float(10 ** statistics.median_low([math.log10(float(m[key])) for m in metas]))


def cache_values(metas: Metas, gamma: bool = False) -> dict[str, Any]:
    """The cache methods' (α, β[, γ]) as fixed initial values, search off."""
    out = {"init_alpha": median(metas, "alpha"), "init_beta": median(metas, "beta"), "search": False}
    if gamma:
        out["init_gamma"] = median(metas, "gamma")
    return out
