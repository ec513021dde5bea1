"""Reports from protocol records: Markdown tables (mean ± std over seeds) and few-shot curve / confusion plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kshot.outputs import save_figure


def aggregate(records: Sequence[dict[str, Any]], metric: Callable[[dict], float | None] = lambda r: r["top1"]
              ) -> dict[str, dict[int, tuple[float, float, int]]]:
    """{method: {shots: (mean, std, n_seeds)}} of `metric` (in [0, 1])."""
    vals: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        v = metric(r)
        if v is not None:
            vals[r["method"]][r["shots"]].append(float(v))
    return {m: {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in sorted(by_k.items())}
            for m, by_k in vals.items()}


def markdown_table(records: Sequence[dict[str, Any]], metric: Callable[[dict], float | None] = lambda r: r["top1"],
                   title: str = "top-1 accuracy (%)", baseline: float | None = None) -> str:
    """Methods as rows, shots as columns; cells 'mean ± std' in percent (± omitted for one seed)."""
    agg = aggregate(records, metric)
    shots = sorted({k for by_k in agg.values() for k in by_k})
    lines = [f"| method ({title}) | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|" + "---:|" * len(shots)]
    if baseline is not None:
        lines.append("| zero-shot (reference) | " + " | ".join(f"{100 * baseline:.2f}" for _ in shots) + " |")
    for method in agg:
        cells = []
        for k in shots:
            if k not in agg[method]:
                cells.append("–")
                continue
            mean, std, n = agg[method][k]
            cells.append(f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(records: Sequence[dict[str, Any]], path: str | Path, title: str,
                metric: Callable[[dict], float | None] = lambda r: r["top1"], zero_shot: float | None = None,
                ylabel: str = "top-1 accuracy (%)") -> Path:
    """Few-shot curves (accuracy vs shots, log2 x axis, ± std bands) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(records, metric)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, by_k in agg.items():
        ks = sorted(by_k)
        mean = np.array([by_k[k][0] for k in ks]) * 100
        std = np.array([by_k[k][1] for k in ks]) * 100
        ax.plot(ks, mean, marker="o", label=method)
        if np.any(std > 0):
            ax.fill_between(ks, mean - std, mean + std, alpha=0.15)
    if zero_shot is not None:
        ax.axhline(100 * zero_shot, color="grey", ls="--", label="zero-shot")
    ax.set_xscale("log", base=2)
    shots = sorted({k for by_k in agg.values() for k in by_k})
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, classnames: Sequence[str], path: str | Path, title: str) -> Path:
    """Row-normalised confusion matrix as a PNG (class names on the axes when there are few classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.astype(float)
    m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(classnames)
    size = min(12, 4 + n * 0.12)
    fig, ax = plt.subplots(figsize=(size, size), dpi=110)
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=6)
        ax.set_yticks(range(n), classnames, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    plt.close(fig)
    return path
