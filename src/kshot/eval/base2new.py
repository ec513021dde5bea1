"""The base-to-new protocol (CoCoOp, Zhou et al. CVPR'22, as CoOp's `subsample_classes` defines the split).

Base = the first ceil(n/2) labels, new = the rest. Per (shots, seed): K shots per *base* class (and a validation
split of min(K, 4) per base class) are drawn from the training pool; the method is fitted on the base classes only.
Base accuracy: base test images classified among the base classes. New accuracy: new test images classified among
the new classes, by the same fitted method moved to the new class names (`for_classes`; zero-shot simply uses the
new classes' text weights). A method that cannot move to unseen class names (cache and linear-head methods) gets
no new accuracy. Reported: base, new and their harmonic mean HM = 2·B·N / (B + N).

Tables follow the papers: per dataset, mean ± std over seeds of base and new accuracy, and HM of the two means;
the average over datasets averages the per-dataset means and takes HM of those. Records are flat JSON lines in a
`ResultStore` (resumable), tagged `"protocol": "base2new"`.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kshot import __version__
from kshot.data.fewshot import base_new_split
from kshot.errors import DataError
from kshot.experiment import ResultStore, Sweep, build_task, data_identity, jsonable, preflight, run_sweep
from kshot.experiment import draw_selection as draw_pool_selection
from kshot.experiment import method_config_hash as config_hash
from kshot.features.featureset import FeatureSet
from kshot.methods import Method, config_to_dict, create
from kshot.outputs import save_figure

log = logging.getLogger(__name__)

#: Methods of a base-to-new run when none are named.
DEFAULT_METHODS = ("zeroshot", "coop", "atprompt")


@dataclass
class Base2NewProtocol:
    """What to run.

    Attributes:
        methods: registered method names.
        shots: K values (CoCoOp: 16).
        seeds: sampling/training seeds (CoOp: 1, 2, 3).
        overrides: per-method config overrides.
        k_val: validation shots per base class; None = min(K, 4).
    """

    methods: list[str]
    shots: tuple[int, ...] = (16,)
    seeds: tuple[int, ...] = (1, 2, 3)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    k_val: int | None = None


@dataclass
class Base2NewInputs:
    """One dataset and backbone.

    Attributes:
        name: dataset name for records.
        backbone: the loaded backbone (prompt methods run its text tower); records use `backbone_spec`.
        pool_labels: int [N] labels of the whole training pool (shots are sampled from it).
        pool_features: indices into the pool -> their FeatureSet (lets a caller extract only what is used).
        test: labelled test features of all classes.
        classnames: all C class names (labels index them).
        text_weights: [C, D] zero-shot classifier of all classes.
        logit_scale: CLIP temperature.
        backbone_spec: spec string for records (default: `backbone.spec`).
        pool_images: indices into the pool -> their image `Dataset`, for methods that train through the image
            encoder (`trains_encoders` has 'image': MaPLe, PromptSRC); None = such methods cannot run.
        test_features_for: a (tuned) backbone -> the labelled test features of all classes through it (those methods
            are scored on features of their own `tuned_backbone`).
    """

    name: str
    backbone: Any
    pool_labels: np.ndarray
    pool_features: Callable[[np.ndarray], FeatureSet]
    test: FeatureSet
    classnames: list[str]
    text_weights: torch.Tensor | None
    logit_scale: float = 100.0
    backbone_spec: str = ""
    pool_images: Callable[[np.ndarray], Any] | None = None
    test_features_for: Callable[[Any], FeatureSet] | None = None

    @classmethod
    def from_features(cls, name: str, backbone: Any, pool: FeatureSet, test: FeatureSet, classnames: list[str],
                      text_weights: torch.Tensor | None, logit_scale: float = 100.0) -> "Base2NewInputs":
        """Inputs over an in-memory pool FeatureSet."""
        return cls(name, backbone, pool.labels.cpu().numpy(), pool.subset, test, list(classnames), text_weights,
                   logit_scale)

    @property
    def spec(self) -> str:
        return self.backbone_spec or str(getattr(self.backbone, "spec", "?"))


def split_classes(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(base ids, new ids): the first ceil(n/2) labels and the rest (DataError for fewer than 2 classes)."""
    try:
        return base_new_split(num_classes)
    except DataError as e:
        raise DataError(f"base-to-new needs at least 2 classes so both halves are non-empty ({e})") from None


def draw_selection(pool_labels: np.ndarray, base: np.ndarray, shots: int, seed: int, k_val: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(shot indices, validation indices) into the pool, base classes only (`kshot.experiment.draw_selection`)."""
    labels = np.asarray(pool_labels, dtype=np.int64)
    present = set(labels[labels >= 0].tolist())
    missing = [int(c) for c in base if int(c) not in present]
    if missing:
        raise DataError(f"the training pool has no images of {len(missing)} base classes (e.g. label {missing[0]})")
    sel = draw_pool_selection(labels, shots, seed, classes=base.tolist(), k_val=k_val)
    return sel.shots, sel.val


def restrict(fs: FeatureSet, classes: np.ndarray) -> FeatureSet:
    """Items of `classes` (a contiguous id range), relabelled to 0..len(classes)-1."""
    lo = int(classes[0])
    keep = torch.nonzero((fs.labels >= lo) & (fs.labels < lo + len(classes))).flatten()
    out = fs.subset(keep.cpu())
    out.labels = out.labels - lo
    return out


def harmonic_mean(base: float | None, new: float | None) -> float | None:
    """2BN / (B + N); None when either is missing, 0 when both are 0."""
    if base is None or new is None:
        return None
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def transfer(method: Method, classnames: list[str], text_weights: torch.Tensor | None) -> Method | None:
    """The fitted `method` moved to other class names (its `for_classes` hook), or None when it cannot."""
    return method.for_classes(list(classnames), text_weights)


def _accuracy(method: Method, fs: FeatureSet) -> float:
    logits = method.logits(fs.features)
    return float((logits.argmax(dim=1).cpu() == fs.labels.cpu()).float().mean())


def run_cell(inputs: Base2NewInputs, method: str, shots: int, seed: int, overrides: dict[str, Any],
             k_val: int | None = None) -> dict[str, Any]:
    """Fit one method on the base shots of one draw; score base and new. Returns the record."""
    base, new = split_classes(len(inputs.classnames))
    test_b, test_n = restrict(inputs.test, base), restrict(inputs.test, new)
    if len(test_b) == 0 or len(test_n) == 0:
        raise DataError(f"{inputs.name}: the test split has no images of the {'base' if len(test_b) == 0 else 'new'} "
                        f"classes ({len(base)} base, {len(new)} new classes)")
    shot_idx, val_idx = draw_selection(inputs.pool_labels, base, shots, seed, k_val)
    m = create(method, **overrides)
    names = list(inputs.classnames)
    tw = inputs.text_weights
    on_images = "image" in m.trains_encoders
    if on_images and (inputs.pool_images is None or inputs.test_features_for is None):
        raise DataError(f"{method} trains through the image encoder: the base-to-new inputs need the pool images "
                        "(run it from a dataset on disk, `kshot eval --protocol base2new`)")
    images = {"train": inputs.pool_images(shot_idx), "val": inputs.pool_images(val_idx)} if on_images else None
    task = build_task(m, inputs.pool_features(shot_idx), names[: len(base)], None if tw is None else tw[: len(base)],
                      val=inputs.pool_features(val_idx) if len(val_idx) else None, test=test_b,
                      logit_scale=inputs.logit_scale, backbone=inputs.backbone, images=images, seed=seed)
    t0 = time.perf_counter()
    m.fit(task)
    fit_s = time.perf_counter() - t0
    if on_images:  # scored on the features of its own prompted/tuned image encoder
        tuned = inputs.test_features_for(m.tuned_backbone(inputs.backbone))
        test_b, test_n = restrict(tuned, base), restrict(tuned, new)
    base_acc = _accuracy(m, test_b)
    moved = transfer(m, names[len(base):], None if tw is None else tw[len(base):])
    new_acc = None if moved is None else _accuracy(moved, test_n)
    return {
        "protocol": "base2new", "dataset": inputs.name, "backbone": inputs.spec, "test": data_identity(inputs.test),
        "method": method, "shots": shots, "seed": seed, "config_hash": config_hash(method, overrides),
        "config": config_to_dict(m.config),
        "base_acc": base_acc, "new_acc": new_acc, "hm": harmonic_mean(base_acc, new_acc),
        "num_base": len(base), "num_new": len(new), "n_test_base": len(test_b), "n_test_new": len(test_n),
        "fit_seconds": round(fit_s, 4), "meta": jsonable(m.fitted_meta()), "kshot": __version__,
        "torch": torch.__version__,
    }


def run_protocol(inputs: Base2NewInputs, protocol: Base2NewProtocol, store: ResultStore,
                 progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every missing cell (`kshot.experiment.run_sweep`); returns this sweep's records (old and new).

    Every method is checked first on all class names, base and new (`Method.preflight`)."""
    preflight(protocol.methods, protocol.overrides, inputs.classnames, inputs.backbone,
              images=inputs.pool_images is not None and inputs.test_features_for is not None)
    sweep = Sweep("base2new", inputs.name, inputs.spec, data_identity(inputs.test))

    def cell(method: str, k: int, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
        return run_cell(inputs, method, k, seed, overrides, protocol.k_val)

    def report(rec: dict[str, Any]) -> None:
        if progress:
            new = "–" if rec["new_acc"] is None else f"{100 * rec['new_acc']:.2f}"
            progress(f"{rec['method']:>10} K={rec['shots']:<2} seed={rec['seed']}  base={100 * rec['base_acc']:.2f}  "
                     f"new={new}")

    return run_sweep(sweep, protocol.methods, protocol.shots, protocol.seeds, protocol.overrides, store, cell, report)


# ---- reports -----------------------------------------------------------------------------------------------------
def _stat(values: list[float]) -> tuple[float, float, int] | None:
    return (float(np.mean(values)), float(np.std(values)), len(values)) if values else None


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{dataset: {method: {'base': (mean, std, n), 'new': (mean, std, n) | None, 'hm': HM of the means}}}, plus
    dataset 'Average' (means of per-dataset means) when there are several datasets."""
    vals: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        if r.get("protocol", "base2new") != "base2new":
            continue
        vals[r["dataset"]][r["method"]]["base"].append(r["base_acc"])
        if r.get("new_acc") is not None:
            vals[r["dataset"]][r["method"]]["new"].append(r["new_acc"])
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ds, by_m in vals.items():
        out[ds] = {}
        for m, v in by_m.items():
            b, n = _stat(v["base"]), _stat(v["new"])
            out[ds][m] = {"base": b, "new": n, "hm": harmonic_mean(b and b[0], n and n[0])}
    if len(out) > 1:
        methods = {m for by_m in out.values() for m in by_m}
        avg = {}
        for m in sorted(methods):
            bs = [out[d][m]["base"][0] for d in out if m in out[d]]
            ns = [out[d][m]["new"][0] for d in out if m in out[d] and out[d][m]["new"] is not None]
            b = _stat(bs)
            n = _stat(ns) if len(ns) == len(bs) else None
            avg[m] = {"base": b, "new": n, "hm": harmonic_mean(b and b[0], n and n[0])}
        out["Average"] = avg
    return out


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """Rows (dataset, method), columns base / new / HM in percent ('mean ± std' over seeds)."""

    def cell(s: tuple[float, float, int] | None) -> str:
        if s is None:
            return "–"
        return f"{100 * s[0]:.2f}" + (f" ± {100 * s[1]:.2f}" if s[2] > 1 else "")

    lines = ["| dataset | method | base | new | HM |", "|---|---|---:|---:|---:|"]
    for ds, by_m in aggregate(records).items():
        for m, a in by_m.items():
            hm = "–" if a["hm"] is None else f"{100 * a['hm']:.2f}"
            lines.append(f"| {ds} | {m} | {cell(a['base'])} | {cell(a['new'])} | {hm} |")
    return "\n".join(lines) + "\n"


def plot_bars(records: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Grouped bars (base / new / HM per method, ± std over seeds), one panel per dataset (+ average), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(records)
    panels = list(agg)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 1.2 + 2.2 * max(len(v) for v in agg.values()))
                                                      * len(panels), 4.2), dpi=110, squeeze=False)
    for ax, ds in zip(axes[0], panels):
        methods = list(agg[ds])
        x = np.arange(len(methods))
        for j, (key, colour) in enumerate((("base", "#4c72b0"), ("new", "#dd8452"), ("hm", "#55a868"))):
            means, errs = [], []
            for m in methods:
                s = agg[ds][m][key]
                mean = s if key == "hm" else (None if s is None else s[0])
                means.append(np.nan if mean is None else 100 * mean)
                errs.append(0.0 if key == "hm" or s is None else 100 * s[1])
            ax.bar(x + (j - 1) * 0.27, means, 0.27, yerr=errs, capsize=2, label=key if key != "hm" else "HM",
                   color=colour)
        ax.set_xticks(x, methods, rotation=20, fontsize=8)
        ax.set_title(ds, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
    return path
