"""Predictions on disk: a CSV with one row per image (path, top-k ids best first, their scores)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kshot.errors import DataError
from kshot.eval.metrics import topk_ids


@dataclass
class Predictions:
    """paths [N], ids int64 [N, k] best first, scores float32 [N, k] (softmax probabilities)."""

    paths: list[str]
    ids: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_logits(cls, paths: Sequence[str], logits: torch.Tensor, k: int = 5) -> "Predictions":
        ids = topk_ids(logits, k)
        probs = logits.float().softmax(dim=1).gather(1, ids)
        return cls(list(paths), ids.cpu().numpy(), probs.cpu().numpy())

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        k = self.ids.shape[1]
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", *[f"id{i + 1}" for i in range(k)], *[f"score{i + 1}" for i in range(k)]])
            for p, ids, sc in zip(self.paths, self.ids, self.scores):
                w.writerow([p, *ids.tolist(), *[f"{s:.6f}" for s in sc.tolist()]])
        tmp.replace(path)
        return path

    @classmethod
    def read_csv(cls, path: str | Path) -> "Predictions":
        path = Path(path)
        try:
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
        except FileNotFoundError:
            raise DataError(f"predictions file not found: {path}") from None
        if not rows or rows[0][0] != "path":
            raise DataError(f"{path}: not a kshot predictions CSV (header must start with 'path')")
        k = sum(1 for h in rows[0] if h.startswith("id"))
        paths, ids, scores = [], [], []
        for n, row in enumerate(rows[1:], 2):
            if len(row) != 1 + 2 * k:
                raise DataError(f"{path}:{n}: expected {1 + 2 * k} columns, got {len(row)}")
            try:
                ids.append([int(x) for x in row[1 : 1 + k]])
                scores.append([float(x) for x in row[1 + k :]])
            except ValueError:
                raise DataError(f"{path}:{n}: non-numeric id or score") from None
            paths.append(row[0])
        return cls(paths, np.asarray(ids, dtype=np.int64).reshape(-1, k), np.asarray(scores, np.float32).reshape(-1, k))
