"""Fits in worker threads, each into its own run folder, and loaded runs held for prediction.

A fit writes into `<runs>/.<name>.partial` and is renamed to `<runs>/<name>` when complete, `name` being unique per
job (method, shots, seed and a random suffix), so two fits at once never share a folder and a crashed fit never looks
like a run; the feature cache they share is safe across threads (kshot.features.cache). The steps are `kshot fit`'s
(kshot.experiment: select_shots ... FittedRun.save), with the shots the user dropped in the gallery left out; then
the run is scored on the dataset's test split when it has a labelled one: top-1, per-class recall, the confusion
matrix as `confusion.png` and the misclassified test images with their top-5 (`metrics.json`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kshot.backbones.base import Backbone
from kshot.data.dataset import Dataset
from kshot.errors import DataError, KshotError
from kshot.methods.base import Method
from kshot.outputs import atomic_write_text

log = logging.getLogger(__name__)
MAX_MISTAKES = 60  # misclassified test images kept in metrics.json (the gallery); the count is always exact
_BACKBONES_LOCK = threading.Lock()
_PLOT_LOCK = threading.Lock()  # pyplot keeps global state


def shared_backbone(spec: str, backbones: dict[str, Backbone]) -> Backbone:
    """The backbone `spec`, loaded once per server and shared by fits and predictions (thread-safe)."""
    from kshot.backbones import load_backbone

    with _BACKBONES_LOCK:
        if spec not in backbones:
            backbones[spec] = load_backbone(spec)
        return backbones[spec]


def item_path(data: Path, ds: Dataset, i: int) -> str | None:
    """Item `i` of `ds` as a '/' path relative to the dataset folder `data` (None when it lies outside it)."""
    try:
        return ds.abspath(i).resolve().relative_to(data.resolve()).as_posix()
    except ValueError:
        return None


def draw_shots(data: Path, shots: int, seed: int) -> list[dict[str, Any]]:
    """The shots `kshot fit -k shots --seed seed` uses on the dataset folder `data`: [{'path', 'class'}], by class."""
    from kshot import experiment as ex
    from kshot.data.sources import load_dataset

    pool = load_dataset(data, split="train")
    sel = ex.select_shots(pool, shots, seed)
    order = sorted(sel.shots.tolist(), key=lambda i: (pool.items[i].label, i))
    return [{"path": item_path(data, pool, i), "class": pool.classnames[pool.items[i].label]} for i in order]


@dataclass
class Job:
    """A fit's progress as the page polls it."""

    id: str
    status: str = "queued"  # queued | running | done | failed
    step: str = ""
    started: float | None = None  # time.time() when a worker took it
    ended: float | None = None
    run: str | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedRun:
    """A fitted run ready to classify: its method, backbone and class names."""

    method: Method
    backbone: Backbone
    classnames: list[str]

    def top_k(self, crops: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """uint8 [N, 3, S, S] crops -> per image the k most probable (class name, probability)."""
        from kshot.features.tensor_transforms import Normalizer

        cfg = self.backbone.preprocess_cfg
        with torch.no_grad():
            x = Normalizer(cfg.mean, cfg.std)(crops.to(self.backbone.device))
            f = F.normalize(self.backbone.encode_image(x).float(), dim=-1)
            probs = self.method.logits(f).softmax(-1).cpu()
        vals, ids = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(self.classnames[int(i)], float(v)) for v, i in zip(vr, ir)] for vr, ir in zip(vals, ids)]


def load_run(path: Path, backbones: dict[str, Backbone]) -> LoadedRun:
    """A `kshot fit` folder as a LoadedRun (backbones shared through `backbones`, by spec)."""
    from kshot.experiment import FittedRun

    run = FittedRun.load(path)
    bb = shared_backbone(run.info["backbone"], backbones)
    run.check_backbone(bb, path.name)
    if run.method.needs_backbone:
        run.method.attach_backbone(bb)
    return LoadedRun(run.method, bb, run.info["classnames"])


class FitRunner:
    """Runs fits in `workers` threads (the server stays responsive; fits beyond that queue) and keeps their Jobs."""

    def __init__(self, runs_dir: Path, cache: Path, backbones: dict[str, Backbone], workers: int = 2):
        self.runs_dir, self.cache, self.backbones = runs_dir, cache, backbones
        self.jobs: dict[str, Job] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kshot-fit")

    def submit(self, data: Path, method: str, shots: int, seed: int, backbone: str, drop: list[str] | None = None,
               dataset: str = "") -> Job:
        """Queue a fit; an unknown method is a ConfigError now (the registry's message), not a failed job."""
        from kshot.methods import METHODS

        METHODS.check(method)
        job = Job(uuid.uuid4().hex[:12])
        self.jobs[job.id] = job
        self._pool.submit(self._run, job, data, method, shots, seed, backbone, list(drop or []), dataset)
        return job

    def _run(self, job: Job, data: Path, method: str, shots: int, seed: int, backbone: str, drop: list[str],
             dataset: str) -> None:
        name = f"{method}-{shots}shot-s{seed}-{job.id}"
        tmp = self.runs_dir / f".{name}.partial"
        job.started = time.time()
        job.status = "running"
        try:
            job.metrics = fit_run(data, method, shots, seed, backbone, tmp, self.cache, self.backbones, job,
                                  drop=drop, dataset=dataset)
            tmp.rename(self.runs_dir / name)
            job.run, job.step, job.ended = name, "done", time.time()
            job.status = "done"  # last: a poller that sees it sees the rest
        except Exception as e:  # reported to the page; the server keeps running
            shutil.rmtree(tmp, ignore_errors=True)
            job.ended = time.time()
            job.error = str(e) if isinstance(e, KshotError) else f"{type(e).__name__}: {e}"
            job.status = "failed"
            if not isinstance(e, KshotError):
                log.exception("fit %s failed", job.id)


def drop_shots(data: Path, pool: Dataset, shots: np.ndarray, drop: list[str]) -> np.ndarray:
    """`shots` (pool indices) without the items whose dataset-relative paths are in `drop`.

    Raises:
        DataError: a path that is not among the shots, or a class left without any shot.
    """
    if not drop:
        return shots
    paths = [item_path(data, pool, int(i)) for i in shots]
    unknown = sorted(set(drop) - set(paths))
    if unknown:
        raise DataError(f"cannot drop {unknown[0]!r}: it is not one of the drawn shots (re-draw the gallery)")
    keep = np.array([p not in set(drop) for p in paths])
    labels = pool.labels[shots]
    emptied = sorted(set(labels.tolist()) - set(labels[keep].tolist()))
    if emptied:
        raise DataError(f"dropping those shots leaves class {pool.classnames[emptied[0]]!r} without any")
    return shots[keep]


def check_drop(data: Path, shots: int, seed: int, drop: list[str]) -> None:
    """Raise the DataError `drop_shots` would raise in the worker, before the fit is queued."""
    from kshot import experiment as ex
    from kshot.data.sources import load_dataset

    if drop:
        pool = load_dataset(data, split="train")
        drop_shots(data, pool, ex.select_shots(pool, shots, seed).shots, drop)


def fit_run(data: Path, method: str, shots: int, seed: int, backbone: str, out: Path, cache: Path,
            backbones: dict[str, Backbone], job: Job, drop: list[str] | None = None, dataset: str = "",
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`kshot fit` into `out` (minus the `drop`ped shots; `overrides`: method config fields) and its scores. A method
    that trains through the image encoder gets the shot images and is scored on its tuned encoder's features.

    Returns:
        {'val_top1', 'test_top1' (fractions), 'recall' {class: fraction}, 'confusion' (file name in `out`),
        'mistakes' [{'path', 'true', 'top' [{'class', 'prob'}] x5}] (at most MAX_MISTAKES), 'n_mistakes',
        'dataset', 'dropped'}; the test entries only when the dataset has a labelled test split.
    """
    from kshot import experiment as ex
    from kshot.data.sources import load_dataset
    from kshot.eval.metrics import confusion_matrix
    from kshot.eval.report import plot_confusion
    from kshot.features import ExtractConfig, FeatureStore
    from kshot.methods import create

    job.step = "loading data"
    pool = load_dataset(data, split="train")
    sel = ex.select_shots(pool, shots, seed)
    sel = ex.ShotSelection(drop_shots(data, pool, sel.shots, list(drop or [])), sel.val)
    bb = shared_backbone(backbone, backbones)
    store = FeatureStore(cache, extract=ExtractConfig(num_workers=0, progress=False))
    job.step = "extracting features"
    used, local = ex.remap_selection(sel)
    feats = ex.pool_features(store, bb, pool, used)
    spec = ex.prompt_spec_for(pool)
    m = create(method, **(overrides or {}))
    images = {"train": pool.subset(sel.shots), "val": pool.subset(sel.val)} if m.trains_encoders else None
    task = ex.build_task(m, feats.subset(local.shots), pool.classnames, ex.text_weights_for(bb, pool, spec),
                         val=feats.subset(local.val), logit_scale=bb.logit_scale, backbone=bb, images=images,
                         seed=seed)
    job.step = f"fitting {method}"
    m.fit(task)
    encoder = m.tuned_backbone(bb) if "image" in m.trains_encoders else bb  # what m.logits expects features of
    val, _ = ex.method_features(m, store, bb, pool.subset(sel.val), feats.subset(local.val))
    report = ex.fit_report(m, val, encoder.spec)
    out.mkdir(parents=True)
    info = ex.FittedRun.describe(bb, pool, spec, method=method, shots=shots, seed=seed, data=data)
    info.update(report)
    ex.FittedRun(m, info).save(out, pool, sel.shots, report=report)
    metrics: dict[str, Any] = {"dataset": dataset, "dropped": sorted(drop or [])}
    if report["val_top1_percent"] is not None:
        metrics["val_top1"] = report["val_top1_percent"] / 100.0
    job.step = "scoring the test split"
    try:
        test = load_dataset(data, split="test")
    except KshotError:
        test = None
    if test is not None and test.has_labels and len(test):
        fs = ex.test_features(store, encoder, test, pool.classnames, model=f"the training pool {data}")
        probs = ex.predict_logits(m, fs).float().softmax(-1)
        top_p, top_i = probs.topk(min(5, probs.shape[1]), dim=1)
        pred, y = top_i[:, 0].numpy(), fs.labels.numpy()
        names = pool.classnames
        metrics["test_top1"] = float((pred == y).mean())
        metrics["recall"] = {names[c]: float((pred[y == c] == c).mean()) for c in np.unique(y)}
        with _PLOT_LOCK:
            plot_confusion(confusion_matrix(pred, y, len(names)), names, out / "confusion.png",
                           f"{method}, {shots} shots: test confusion (rows: true class)")
        metrics["confusion"] = "confusion.png"
        wrong = np.flatnonzero(pred != y)
        index = {p: i for i, p in enumerate(test.items[j].path for j in range(len(test)))}
        metrics["n_mistakes"] = int(len(wrong))
        metrics["mistakes"] = [
            {"path": item_path(data, test, index[fs.paths[r]]), "true": names[int(y[r])],
             "top": [{"class": names[int(c)], "prob": float(p)} for p, c in zip(top_p[r], top_i[r])]}
            for r in wrong[:MAX_MISTAKES]]
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    return metrics
