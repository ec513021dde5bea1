"""Continual-learning metrics over the accuracy matrix R, where R[i][j] is the accuracy (%) on task j right after
training task i (defined for j <= i; NaN above the diagonal).

- average accuracy: mean over tasks of the final row, mean_j R[T-1][j];
- backward transfer (Lopez-Paz & Ranzato, GEM, NeurIPS 2017): BWT = mean over j < T-1 of R[T-1][j] - R[j][j]
  (negative = forgetting);
- forgetting (Chaudhry et al., RWalk, ECCV 2018): mean over j < T-1 of max_{l in j..T-2} R[l][j] - R[T-1][j].

BWT and forgetting need two tasks or more; with one they are NaN.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import torch

Row = Sequence[float | None]


def as_matrix(rows: Sequence[Row]) -> np.ndarray:
    """float64 [T, T] from ragged rows (row i lists tasks 0..i); missing entries become NaN."""
    t = max(len(rows), max((len(r) for r in rows), default=0))
    out = np.full((t, t), np.nan)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if v is not None:
                out[i, j] = float(v)
    return out


def average_accuracy(rows: Sequence[Row]) -> float:
    """Mean of the last row (every task, after the last task was trained)."""
    r = as_matrix(rows)
    return float(np.nanmean(r[len(rows) - 1, : len(rows)])) if len(rows) else math.nan


def backward_transfer(rows: Sequence[Row]) -> float:
    """mean_{j < T-1} R[T-1][j] - R[j][j]; NaN for fewer than two tasks."""
    r = as_matrix(rows)
    t = len(rows)
    if t < 2:
        return math.nan
    return float(np.mean([r[t - 1, j] - r[j, j] for j in range(t - 1)]))


def forgetting(rows: Sequence[Row]) -> float:
    """mean_{j < T-1} max_{j <= l < T-1} R[l][j] - R[T-1][j]; NaN for fewer than two tasks."""
    r = as_matrix(rows)
    t = len(rows)
    if t < 2:
        return math.nan
    return float(np.mean([np.max(r[j: t - 1, j]) - r[t - 1, j] for j in range(t - 1)]))


def summarise(rows: Sequence[Row]) -> dict[str, float]:
    """{'average_accuracy', 'bwt', 'forgetting'} of the matrix."""
    return {"average_accuracy": average_accuracy(rows), "bwt": backward_transfer(rows), "forgetting": forgetting(rows)}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of logits [N, C] against labels [N]."""
    if len(labels) == 0:
        return math.nan
    return float((logits.argmax(1) == labels).float().mean()) * 100.0


def digest(logits: torch.Tensor) -> str:
    """16 hex chars of SHA-256 over the raw float bytes of `logits` (bit-identical outputs <=> equal digests)."""
    t = logits.detach().cpu().contiguous()
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]
