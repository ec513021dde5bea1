"""Classification metrics as pure functions of (logits or top-k ids, labels).

Per-class accuracy is the mean of per-class recalls (balanced accuracy), reported beside overall top-1/top-5.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch


def topk_ids(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """logits [N, C] -> int64 [N, min(k, C)], best first; ties broken by lower class id (stable)."""
    k = min(k, logits.shape[1])
    order = torch.sort(logits.float(), dim=1, descending=True, stable=True).indices
    return order[:, :k]


def topk_accuracy(ids: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the first k ids. ids [N, >=k], labels [N]."""
    ids, labels = np.asarray(ids), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float((ids[:, :k] == labels[:, None]).any(axis=1).mean())


def per_class_recall(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall per class [C]; NaN for classes absent from `labels`."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    total = np.bincount(labels, minlength=num_classes).astype(float)
    hit = np.bincount(labels[pred == labels], minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hit / total, np.nan)


def confusion_pairs(pred: np.ndarray, labels: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """Most frequent (true, predicted, count) confusions, off-diagonal only."""
    mask = pred != labels
    counts = Counter(zip(labels[mask].tolist(), pred[mask].tolist()))
    return [(t, p, c) for (t, p), c in counts.most_common(top)]


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows = true class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(pred)), 1)
    return m


def summarize(ids: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int,
              domains: Sequence[str] | None = None, classnames: Sequence[str] | None = None) -> dict:
    """Top-1, top-5, mean per-class recall, per-domain top-1/top-5 and the top confusions.

    Args:
        ids: [N, k] predicted class ids, best first (k >= 1).
        labels: [N] true labels; rows with label < 0 are ignored.
        domains: optional domain per row.
    """
    ids, labels = np.asarray(ids), np.asarray(labels)
    keep = labels >= 0
    ids, labels = ids[keep], labels[keep]
    doms = None if domains is None else np.asarray(domains, dtype=object)[keep]
    pred = ids[:, 0]
    recall = per_class_recall(pred, labels, num_classes)
    out = {
        "n": int(len(labels)),
        "top1": topk_accuracy(ids, labels, 1),
        "top5": topk_accuracy(ids, labels, 5) if ids.shape[1] >= 5 else None,
        "mean_per_class": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
    }
    if doms is not None:
        out["per_domain"] = {
            d: {"n": int((doms == d).sum()), "top1": topk_accuracy(ids[doms == d], labels[doms == d], 1),
                "top5": topk_accuracy(ids[doms == d], labels[doms == d], 5) if ids.shape[1] >= 5 else None}
            for d in sorted(set(doms.tolist()))
        }
    name = (lambda c: classnames[c]) if classnames is not None else str
    out["confusions"] = [{"true": name(t), "pred": name(p), "count": c} for t, p, c in confusion_pairs(pred, labels)]
    return out
