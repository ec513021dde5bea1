"""The few-shot protocol runner: methods × shots × seeds on cached features, resumable.

Per (shots, seed): K shots per class and a disjoint validation split of min(K, 4) per class are drawn from the
training pool (CoOp/Dassl's protocol); hyper-parameters are searched on that validation split only, and the test
split is touched only to score. Every finished cell is appended as one JSON line to the result store, so a re-run skips
what is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kshot import __version__
from kshot.eval.metrics import summarize, topk_ids
from kshot.features.featureset import FeatureSet
from kshot.methods.base import METHODS, config_to_dict, create

log = logging.getLogger(__name__)

DEFAULT_SHOTS = (1, 2, 4, 8, 16)


@dataclass
class FewShotProtocol:
    """What to run.

    Attributes:
        methods: registered method names.
        shots: K values.
        seeds: sampling seeds (each seed also seeds the method's training).
        overrides: per-method config overrides, {method: {field: value}}.
        k_val: validation shots per class; None = min(K, 4) as in CoOp; 0 = no validation split (`--no-val`).
    """

    methods: list[str]
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seeds: tuple[int, ...] = (1,)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    k_val: int | None = None


@dataclass
class FewShotInputs:
    """Cached features for one dataset and backbone.

    Attributes:
        name: dataset name for records.
        backbone: backbone spec and fingerprint for records.
        pool: features of the labelled training pool (shots and validation are drawn from it).
        test: labelled test features.
        classnames: class names.
        text_weights: [C, D] zero-shot classifier (None for image-only backbones).
        logit_scale: CLIP temperature.
        encoder: the loaded Backbone, handed only to methods that run an encoder (prompt learning).
    """

    name: str
    backbone: str
    pool: FeatureSet
    test: FeatureSet
    classnames: list[str]
    text_weights: torch.Tensor | None
    logit_scale: float = 100.0
    encoder: Any = None


def config_hash(method: str, overrides: dict[str, Any]) -> str:
    cfg = config_to_dict(create(method, **overrides).config)
    return hashlib.sha256(json.dumps({"method": method, "config": cfg}, sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]


class ResultStore:
    """Append-only JSONL of finished cells, keyed by (dataset, backbone, method, config, shots, seed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        if self.path.is_file():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s:%d: skipping a torn line (interrupted write)", self.path, n)

    @staticmethod
    def key(rec: dict[str, Any]) -> tuple:
        return (rec["dataset"], rec["backbone"], rec["method"], rec["config_hash"], rec["shots"], rec["seed"])

    def done(self) -> set[tuple]:
        return {self.key(r) for r in self.records}

    def append(self, rec: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        self.records.append(rec)


def run_cell(inputs: FewShotInputs, method: str, shots: int, seed: int, overrides: dict[str, Any],
             k_val: int | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """Fit one method on one draw and score it on the test features. Returns (metrics record, test logits)."""
    from kshot.data.fewshot import sample_k_shot, sample_val
    from kshot.methods.base import Task

    labels = inputs.pool.labels.numpy()
    m = create(method, **overrides)
    if shots > 0:
        shot_idx = np.asarray(sample_k_shot(labels, shots, seed, allow_fewer=True), dtype=np.int64)
    else:
        shot_idx = np.zeros(0, dtype=np.int64)
    kv = min(max(shots, 1), 4) if k_val is None else k_val
    val_idx = np.asarray(sample_val(labels, shot_idx, kv, seed) if kv > 0 else [], dtype=np.int64)
    task = Task(train=inputs.pool.subset(shot_idx), val=inputs.pool.subset(val_idx) if len(val_idx) else None,
                classnames=inputs.classnames, text_weights=inputs.text_weights,
                unlabeled=inputs.test if m.transductive else None, logit_scale=inputs.logit_scale, seed=seed,
                backbone=inputs.encoder if m.needs_backbone else None)
    t0 = time.perf_counter()
    m.fit(task)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = m.logits(inputs.test.features)
    pred_s = time.perf_counter() - t0
    ids = topk_ids(logits, 5).numpy()
    metrics = summarize(ids, inputs.test.labels.numpy(), len(inputs.classnames), domains=inputs.test.domains)
    rec = {
        "dataset": inputs.name, "backbone": inputs.backbone, "method": method, "shots": shots, "seed": seed,
        "config_hash": config_hash(method, overrides), "config": config_to_dict(m.config),
        "top1": metrics["top1"], "top5": metrics["top5"], "mean_per_class": metrics["mean_per_class"],
        "per_domain": {d: v["top1"] for d, v in metrics.get("per_domain", {}).items()},
        "fit_seconds": round(fit_s, 4), "predict_seconds": round(pred_s, 4),
        "meta": jsonable(m.fitted_meta()), "kshot": __version__, "torch": torch.__version__,
    }
    return rec, logits


def run_fewshot(inputs: FewShotInputs, protocol: FewShotProtocol, store: ResultStore,
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every missing cell of the protocol; returns this dataset/backbone's records (old and new)."""
    from tqdm.auto import tqdm

    done = store.done()
    cells = [(m, k, s) for m in protocol.methods for k in protocol.shots for s in protocol.seeds]
    hashes = {m: config_hash(m, protocol.overrides.get(m, {})) for m in protocol.methods}
    bar = tqdm(cells, desc=f"{inputs.name}", unit="cell", leave=False)
    for method, k, seed in bar:
        key = (inputs.name, inputs.backbone, method, hashes[method], k, seed)
        if key in done:
            continue
        bar.set_postfix_str(f"{method} K={k} seed={seed}")
        rec, _ = run_cell(inputs, method, k, seed, protocol.overrides.get(method, {}), protocol.k_val)
        store.append(rec)
        if progress:
            progress(f"{method:>14} K={k:<2} seed={seed}  top1={100 * rec['top1']:.2f}")
    keys = {(inputs.name, inputs.backbone, m, hashes[m], k, s) for m, k, s in cells}
    return [r for r in store.records if ResultStore.key(r) in keys]


def cached_feature_methods(include_backbone: bool = False) -> list[str]:
    """Registered methods that run from cached features alone (no encoder in the loop); with `include_backbone`,
    also those that run the text tower (prompt learning)."""
    import kshot.methods  # noqa: F401

    return [e.name for e in METHODS if include_backbone or not getattr(e.obj, "needs_backbone", False)]


def jsonable(value: Any) -> Any:
    """`value` if JSON can encode it, else its string form (fitted metadata in result records)."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
