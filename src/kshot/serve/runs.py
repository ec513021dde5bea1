"""Fits in a worker thread, each into its own run folder, and loaded runs held for prediction.

A fit writes into `<runs>/.<name>.partial` and is renamed to `<runs>/<name>` when complete, `name` being unique per
job (method, shots, seed and a random suffix), so two fits at once never share a folder and a crashed fit never looks
like a run. The steps are `kshot fit`'s (kshot.experiment: select_shots ... FittedRun.save), then the run is scored on
the dataset's test split when it has a labelled one.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kshot.backbones.base import Backbone
from kshot.errors import ConfigError, KshotError
from kshot.methods.base import Method

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A fit's progress as the page polls it."""

    id: str
    status: str = "queued"  # queued | running | done | failed
    step: str = ""
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
    from kshot.backbones import load_backbone
    from kshot.experiment import FittedRun

    run = FittedRun.load(path)
    spec = run.info["backbone"]
    bb = backbones.get(spec) or backbones.setdefault(spec, load_backbone(spec))
    run.check_backbone(bb, path.name)
    if run.method.needs_backbone:
        run.method.attach_backbone(bb)
    return LoadedRun(run.method, bb, run.info["classnames"])


class FitRunner:
    """Runs fits one after another in a worker thread (the server stays responsive) and keeps their Job records."""

    def __init__(self, runs_dir: Path, cache: Path, backbones: dict[str, Backbone]):
        self.runs_dir, self.cache, self.backbones = runs_dir, cache, backbones
        self.jobs: dict[str, Job] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kshot-fit")
        self._lock = threading.Lock()

    def submit(self, data: Path, method: str, shots: int, seed: int, backbone: str) -> Job:
        from kshot.methods import create

        try:
            create(method)  # an unknown method name fails now, with the registry's message
        except KeyError as e:
            raise ConfigError(str(e).strip('"')) from None
        job = Job(uuid.uuid4().hex[:12])
        self.jobs[job.id] = job
        self._pool.submit(self._run, job, data, method, shots, seed, backbone)
        return job

    def _run(self, job: Job, data: Path, method: str, shots: int, seed: int, backbone: str) -> None:
        name = f"{method}-{shots}shot-s{seed}-{job.id}"
        tmp = self.runs_dir / f".{name}.partial"
        job.status = "running"
        try:
            job.metrics = fit_run(data, method, shots, seed, backbone, tmp, self.cache, self.backbones, job)
            tmp.rename(self.runs_dir / name)
            job.run, job.status, job.step = name, "done", "done"
        except Exception as e:  # reported to the page; the server keeps running
            shutil.rmtree(tmp, ignore_errors=True)
            job.status, job.error = "failed", str(e) if isinstance(e, KshotError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, KshotError):
                log.exception("fit %s failed", job.id)


def fit_run(data: Path, method: str, shots: int, seed: int, backbone: str, out: Path, cache: Path,
            backbones: dict[str, Backbone], job: Job) -> dict[str, Any]:
    """`kshot fit` into `out` and the validation/test top-1 (fractions) and per-class test recall."""
    import numpy as np

    from kshot import experiment as ex
    from kshot.backbones import load_backbone
    from kshot.data.sources import load_dataset
    from kshot.features import ExtractConfig, FeatureStore
    from kshot.methods import create

    job.step = "loading data"
    pool = load_dataset(data, split="train")
    sel = ex.select_shots(pool, shots, seed)
    bb = backbones.get(backbone) or backbones.setdefault(backbone, load_backbone(backbone))
    store = FeatureStore(cache, extract=ExtractConfig(num_workers=0, progress=False))
    job.step = "extracting features"
    used, local = ex.remap_selection(sel)
    feats = ex.pool_features(store, bb, pool, used)
    spec = ex.prompt_spec_for(pool)
    m = create(method)
    task = ex.build_task(m, feats.subset(local.shots), pool.classnames, ex.text_weights_for(bb, pool, spec),
                         val=feats.subset(local.val), logit_scale=bb.logit_scale, backbone=bb, seed=seed)
    job.step = f"fitting {method}"
    m.fit(task)
    out.mkdir(parents=True)
    info = ex.FittedRun.describe(bb, pool, spec, method=method, shots=shots, seed=seed, data=data)
    ex.FittedRun(m, info).save(out, pool, sel.shots)
    metrics: dict[str, Any] = {}
    if task.val is not None:
        metrics["val_top1"] = float((m.logits(task.val.features).argmax(1) == task.val.labels).float().mean())
    job.step = "scoring the test split"
    try:
        test = load_dataset(data, split="test")
    except KshotError:
        return metrics
    if test.has_labels and len(test):
        fs = ex.test_features(store, bb, test, pool.classnames, model=f"the training pool {data}")
        pred = ex.predict_logits(m, fs).argmax(1).numpy()
        y = fs.labels.numpy()
        metrics["test_top1"] = float((pred == y).mean())
        metrics["recall"] = {pool.classnames[c]: float((pred[y == c] == c).mean()) for c in np.unique(y)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
