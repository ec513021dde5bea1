"""Reports of continual runs: accuracy-matrix heatmaps, training curves, PackNet capacity, one Markdown file.

Reads only what runs wrote (`<out>/<method>/results.json` and `log.jsonl`); never re-runs a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from kshot.errors import KshotError
from kshot.outputs import atomic_write_text, save_figure

from .config import METHOD_NAMES
from .metrics import as_matrix, summarise
from .train import read_records

REFERENCE = {  # top-1 accuracy %, VGG-16, CUBS -> Cars -> Flowers; see reference/methods.md 8, challenge-and-seeds.md D
    "paper (75 % pruning)": {"cubs": 75.05, "cars": 84.25, "flowers": 90.25},
    "official README (VGG-16)": {"cubs": 77.44, "cars": 82.91, "flowers": 88.93},
    "seed 001, Jittor": {"cubs": 68.69, "cars": 79.14, "flowers": 87.74},
    "seed 001, PyTorch": {"cubs": 75.94, "cars": 83.39, "flowers": 87.43},
}
_ALIASES = {"cubs": "cubs", "cub": "cubs", "cubs_cropped": "cubs", "cub200": "cubs", "cars": "cars",
            "stanford_cars": "cars", "stanford_cars_cropped": "cars", "flowers": "flowers", "flowers102": "flowers"}


def load_results(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """method -> results.json content for every method folder under `out_dir` (in METHOD_NAMES order)."""
    out_dir = Path(out_dir)
    found = {}
    for m in METHOD_NAMES:
        f = out_dir / m / "results.json"
        if f.is_file():
            found[m] = json.loads(f.read_text(encoding="utf-8"))
    if not found:
        raise KshotError(f"{out_dir}: no finished run (expected <method>/results.json for one of {METHOD_NAMES})")
    return found


def _fmt(v: float | None, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def bit_identical(digests: list[list[str]]) -> bool:
    """True when every task's logits digest after later tasks equals the one right after it was trained."""
    return all(row[j] == digests[j][j] for row in digests for j in range(len(row)))


def storage(res: dict[str, Any]) -> dict[str, float]:
    """Parameters (millions) and storage (MB, float32 weights + uint8 masks) of a run."""
    p = res.get("params", {})
    weights = p.get("backbone", 0) + p.get("heads", 0)
    return {"params_m": weights / 1e6, "mb": (4 * weights + p.get("mask_bytes", 0)) / 2 ** 20,
            "mask_overhead": p.get("mask_bytes", 0) / max(4 * p.get("backbone", 0), 1)}


def plot_heatmaps(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """One accuracy-matrix heatmap per method, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (method, res) in zip(axes[0], results.items()):
        names = [t["name"] for t in res["tasks"]]
        r = as_matrix(res["accuracy"])
        ax.imshow(np.ma.masked_invalid(r), vmin=0, vmax=100, cmap="viridis")
        for i in range(r.shape[0]):
            for j in range(r.shape[1]):
                if not np.isnan(r[i, j]):
                    ax.text(j, i, f"{r[i, j]:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if r[i, j] < 60 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(r.shape[0]), names[: r.shape[0]], fontsize=8)
        ax.set_xlabel("evaluated task")
        ax.set_ylabel("after training")
        ax.set_title(method)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def epoch_records(log_jsonl: Path) -> list[dict[str, Any]]:
    """Epoch records of a run, the last copy of each (task, phase, epoch) kept (a resumed phase is rerun)."""
    recs: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in read_records(log_jsonl):
        if r.get("kind") == "epoch":
            recs[(r["task_index"], r["phase"], r["epoch"])] = r
    return list(recs.values())


def plot_curves(log_jsonl: Path, path: Path, title: str) -> Path | None:
    """Loss and accuracy per epoch over the whole sequence (one colour per task, dashed = retraining)."""
    recs = epoch_records(log_jsonl)
    if not recs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x0 = 0
    segments: list[tuple[str, int, list[dict[str, Any]]]] = []
    for r in recs:
        if not segments or (segments[-1][0], segments[-1][1]) != (r["phase"], r["task_index"]):
            segments.append((r["phase"], r["task_index"], []))
        segments[-1][2].append(r)
    for phase, ti, seg in segments:
        xs = np.arange(x0 + 1, x0 + len(seg) + 1)
        c = colours[(ti + 1) % len(colours)]
        style = "--" if phase in ("retrain", "initial") else "-"
        label = f"{seg[0]['task']} {phase}"
        ax_l.plot(xs, [r["loss"] for r in seg], style, color=c, marker=".", label=label)
        ax_a.plot(xs, [r["train_acc"] for r in seg], style, color=c, alpha=0.4)
        if all(r["test_acc"] is not None for r in seg):
            ax_a.plot(xs, [r["test_acc"] for r in seg], style, color=c, marker=".", label=label)
        x0 += len(seg)
        for ax in (ax_l, ax_a):
            ax.axvline(x0 + 0.5, color="grey", lw=0.5)
    ax_l.set(xlabel="epoch (whole sequence)", ylabel="training loss", title=f"{title}: loss")
    ax_a.set(xlabel="epoch (whole sequence)", ylabel="accuracy %", title=f"{title}: test (dots) / train (faint)")
    if ax_a.get_legend_handles_labels()[0]:
        ax_a.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_capacity(capacity: dict[str, dict[str, int]], path: Path) -> Path:
    """Stacked bars: share of each layer's weights owned by the pretrained network, each task, and free."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(capacity)
    owners = [k for k in next(iter(capacity.values())) if k != "total"]
    owners = [o for o in owners if o not in ("free", "pretrained")] + ["pretrained", "free"]
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(layers) + 2), 3.6))
    bottom = np.zeros(len(layers))
    for o in owners:
        frac = np.array([capacity[n][o] / capacity[n]["total"] for n in layers])
        ax.bar(range(len(layers)), frac, bottom=bottom, label=o, color="lightgrey" if o == "free" else None)
        bottom += frac
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share of layer weights")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _capacity_table(cap_after: list[dict[str, dict[str, int]]], tasks: list[str]) -> list[str]:
    lines = ["| layer | weights | " + " | ".join(f"used / free after {t}" for t in tasks[: len(cap_after)]) + " |",
             "|---|---:|" + "---:|" * len(cap_after)]
    for layer, row in cap_after[-1].items():
        cells = []
        for cap in cap_after:
            c = cap[layer]
            cells.append(f"{100 * (c['total'] - c['free']) / c['total']:.1f} % / {100 * c['free'] / c['total']:.1f} %")
        lines.append(f"| `{layer}` | {row['total']:,} | " + " | ".join(cells) + " |")
    return lines


def _matrix_table(res: dict[str, Any]) -> list[str]:
    names = [t["name"] for t in res["tasks"]]
    lines = ["| after \\ on | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, row in enumerate(res["accuracy"]):
        cells = [_fmt(row[j]) if j < len(row) else "" for j in range(len(names))]
        lines.append(f"| {names[i]} | " + " | ".join(cells) + " |")
    return lines


def _reference_table(task_names: list[str]) -> list[str]:
    keys = [_ALIASES.get(n.lower()) for n in task_names]
    if not any(keys):
        return []
    lines = ["## Reference numbers (VGG-16, CUBS → Cars → Flowers, top-1 %)", "",
             "| source | " + " | ".join(task_names) + " |", "|---|" + "---:|" * len(task_names)]
    for src, vals in REFERENCE.items():
        lines.append(f"| {src} | " + " | ".join(_fmt(vals.get(k)) if k else "–" for k in keys) + " |")
    return lines + [""]


def write_report(out_dir: str | Path) -> Path:
    """Write `report.md`, `heatmap.png`, `curves_<method>.png` and `capacity.png` under `out_dir`."""
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    first = next(iter(results.values()))
    cfg = first["config"]
    task_names = [t["name"] for t in cfg["tasks"]]
    s = cfg["schedule"]
    lines = [f"# Continual run `{cfg['name']}`", "",
             f"Network `{cfg['network']['arch']}` (pretrained: {cfg['network']['pretrained']}), tasks "
             f"{' → '.join(task_names)}, schedule preset `{s['preset']}`: initial pruning {s['initial_prune']}, "
             f"per task "
             f"{s['train']['epochs']} epochs (lr {s['train']['lr']:g}) → prune {s['prune']} → {s['retrain']['epochs']} "
             f"epochs (lr {s['retrain']['lr']:g}), last task pruned: {s['prune_last']}, batch {s['batch_size']}, "
             f"seed {cfg['seed']}.", "",
             "## Summary", "",
             "| method | average acc % | BWT | forgetting | " + " | ".join(f"final {n} %" for n in task_names)
             + " | parameters (M) | storage (MB) |",
             "|---|---:|---:|---:|" + "---:|" * len(task_names) + "---:|---:|"]
    for m, res in results.items():
        summ = summarise(res["accuracy"])
        final = res["accuracy"][-1] if res["accuracy"] else []
        st = storage(res)
        cells = [_fmt(final[j]) if j < len(final) else "–" for j in range(len(task_names))]
        lines.append(f"| {m} | {_fmt(summ['average_accuracy'])} | {_fmt(summ['bwt'])} | {_fmt(summ['forgetting'])} | "
                     + " | ".join(cells) + f" | {st['params_m']:.3f} | {st['mb']:.2f} |")
    lines += ["", "BWT = mean over earlier tasks j of R[T][j] − R[j][j]; forgetting = mean of the best earlier "
              "accuracy minus the final one. Storage counts float32 weights plus PackNet's uint8 masks.", "",
              "![accuracy matrices](heatmap.png)", ""]
    plot_heatmaps(results, out_dir / "heatmap.png")
    for m, res in results.items():
        lines += [f"## {m}", "", *_matrix_table(res), ""]
        if m == "packnet":
            ok = bit_identical(res["digests"])
            st = storage(res)
            lines += [f"Outputs of every earlier task bit-identical after later tasks: **{'yes' if ok else 'NO'}**. "
                      f"Mask overhead: {res['params'].get('mask_bytes', 0):,} bytes "
                      f"({100 * st['mask_overhead']:.1f} % of the float32 backbone).", ""]
            if res.get("capacity"):
                lines += ["Capacity per layer (share of weights owned by the pretrained network or a task / free):", "",
                          *_capacity_table(res["capacity"], task_names), "", "![capacity](capacity.png)", ""]
                plot_capacity(res["capacity"][-1], out_dir / "capacity.png")
        if plot_curves(out_dir / m / "log.jsonl", out_dir / f"curves_{m}.png", m) is not None:
            lines += [f"![training curves of {m}](curves_{m}.png)", ""]
    lines += _reference_table(task_names)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
