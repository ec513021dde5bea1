"""The few-shot protocol runner: methods × shots × seeds on cached features, resumable.

Per (shots, seed): K shots per class and a disjoint validation split of min(K, 4) per class are drawn from the
training pool (CoOp/Dassl's protocol); hyper-parameters are searched on that validation split only, and the test
split is touched only to score. Every finished cell is appended as one JSON line to the result store, so a re-run skips
what is done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from kshot import __version__
from kshot.eval.metrics import summarize, topk_ids
from kshot.experiment import (ResultStore, Sweep, build_task, data_identity, draw_selection, jsonable, preflight,
                              run_sweep)
from kshot.experiment import method_config_hash as config_hash
from kshot.features.featureset import FeatureSet
from kshot.methods import METHODS, config_to_dict, create

__all__ = ["DEFAULT_SHOTS", "FewShotInputs", "FewShotProtocol", "ResultStore", "cached_feature_methods",
           "config_hash", "jsonable", "run_cell", "run_fewshot"]

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
        drawn: when `pool` holds only the images the sweep draws (`kshot.experiment.drawn_indices`): their sorted
            indices into the whole pool (row i of `pool` = pool item drawn[i]); None: `pool` is the whole pool.
        pool_labels: with `drawn`, int [N] labels of the whole pool (the draws are made on them).
    """

    name: str
    backbone: str
    pool: FeatureSet
    test: FeatureSet
    classnames: list[str]
    text_weights: torch.Tensor | None
    logit_scale: float = 100.0
    encoder: Any = None
    drawn: np.ndarray | None = None
    pool_labels: np.ndarray | None = None

    def draw(self, shots: int, seed: int, k_val: int | None = None) -> Any:
        """The (K, seed) `kshot.experiment.ShotSelection` as rows of `pool` (drawn on the whole pool's labels)."""
        if self.drawn is None:
            return draw_selection(self.pool.labels.numpy(), shots, seed, k_val=k_val)
        sel = draw_selection(self.pool_labels, shots, seed, k_val=k_val)
        return replace(sel, shots=np.searchsorted(self.drawn, sel.shots), val=np.searchsorted(self.drawn, sel.val))


def run_cell(inputs: FewShotInputs, method: str, shots: int, seed: int, overrides: dict[str, Any],
             k_val: int | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """Fit one method on one draw and score it on the test features. Returns (metrics record, test logits)."""
    m = create(method, **overrides)
    sel = inputs.draw(shots, seed, k_val)
    task = build_task(m, inputs.pool.subset(sel.shots), inputs.classnames, inputs.text_weights,
                      val=inputs.pool.subset(sel.val), test=inputs.test, logit_scale=inputs.logit_scale,
                      backbone=inputs.encoder, seed=seed)
    t0 = time.perf_counter()
    m.fit(task)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = m.logits(inputs.test.features)
    pred_s = time.perf_counter() - t0
    ids = topk_ids(logits, 5).numpy()
    metrics = summarize(ids, inputs.test.labels.numpy(), len(inputs.classnames), domains=inputs.test.domains)
    rec = {
        "protocol": "fewshot", "dataset": inputs.name, "backbone": inputs.backbone, "test": data_identity(inputs.test),
        "method": method, "shots": shots, "seed": seed, "config_hash": config_hash(method, overrides),
        "config": config_to_dict(m.config),
        "top1": metrics["top1"], "top5": metrics["top5"], "mean_per_class": metrics["mean_per_class"],
        "per_domain": {d: v["top1"] for d, v in metrics.get("per_domain", {}).items()},
        "fit_seconds": round(fit_s, 4), "predict_seconds": round(pred_s, 4),
        "meta": jsonable(m.fitted_meta()), "kshot": __version__, "torch": torch.__version__,
    }
    return rec, logits


def run_fewshot(inputs: FewShotInputs, protocol: FewShotProtocol, store: ResultStore,
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every missing cell of the protocol (`kshot.experiment.run_sweep`); returns this sweep's records.

    Every method is checked first (`Method.preflight`: cached features only, `inputs.encoder` as its backbone)."""
    preflight(protocol.methods, protocol.overrides, inputs.classnames, inputs.encoder, images=False)
    sweep = Sweep("fewshot", inputs.name, inputs.backbone, data_identity(inputs.test))

    def cell(method: str, k: int, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
        return run_cell(inputs, method, k, seed, overrides, protocol.k_val)[0]

    def report(rec: dict[str, Any]) -> None:
        if progress:
            progress(f"{rec['method']:>14} K={rec['shots']:<2} seed={rec['seed']}  top1={100 * rec['top1']:.2f}")

    return run_sweep(sweep, protocol.methods, protocol.shots, protocol.seeds, protocol.overrides, store, cell, report)


def cached_feature_methods(include_backbone: bool = False) -> list[str]:
    """Registered methods that run from cached features alone (no encoder in the loop); with `include_backbone`,
    also those that run the text tower (prompt learning)."""
    return [e.name for e in METHODS if (include_backbone or not e.obj.needs_backbone) and not e.obj.selects_method
            and "image" not in e.obj.trains_encoders]  # those train on the shot images, not on cached features
