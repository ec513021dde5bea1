"""Domain generalisation (CoOp/CoCoOp's protocol): fit on K shots of a source (ImageNet), score unchanged on targets
whose classes are some of the source's (ImageNet-V2, -Sketch, -A, -R).

Per (shots, seed) the shots and a disjoint validation split of min(K, 4) per class are drawn from the source's
training pool exactly as in `kshot.eval.fewshot`; only the drawn images are encoded (all draws of the sweep at once),
never the whole pool. A target with C' of the source's classes is scored on the logits of those C' columns (CoOp
builds the -A/-R classifier from their 200 names). One record per (method, shots, seed) holds the source's test top-1
and every target's, in the one resumable `results.jsonl`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kshot import __version__
from kshot import experiment as wf
from kshot.backbones.base import Backbone
from kshot.data.benchmarks import imagenet_wnids
from kshot.data.coop_source import load_any
from kshot.data.imagenet_variants import is_variant_folder, load_variant
from kshot.eval.fewshot import FewShotProtocol
from kshot.eval.metrics import summarize, topk_ids
from kshot.experiment import ResultStore, Sweep, build_task, data_identity, draw_selection, jsonable, predict_logits
from kshot.experiment import run_sweep
from kshot.errors import DataError
from kshot.features.cache import FeatureStore
from kshot.features.featureset import FeatureSet
from kshot.methods import config_to_dict, create


@dataclass
class Target:
    """One test set: its labelled features (labels index its own classes) and `columns[c]`, the source class of its
    class c."""

    name: str
    test: FeatureSet
    columns: np.ndarray


@dataclass
class DGInputs:
    """The source's drawn shots (encoded) and the targets.

    Attributes:
        source: source dataset name (records' `dataset`).
        backbone: backbone spec.
        pool_labels: int [N] labels of the whole source pool (the draws are made on these).
        used: sorted indices into the pool whose features `features` holds (row i = pool item used[i]).
        features: [len(used), D] features of those items.
        classnames: the source's C class names; text_weights: [C, D] or None; logit_scale: CLIP temperature.
        targets: the source's own test set first, then the shifted ones.
        encoder: the Backbone, for methods that run an encoder.
    """

    source: str
    backbone: str
    pool_labels: np.ndarray
    used: np.ndarray
    features: FeatureSet
    classnames: list[str]
    text_weights: torch.Tensor | None
    targets: list[Target]
    logit_scale: float = 100.0
    encoder: Any = None


def columns_for(target_keys: Sequence[str], source_keys: Sequence[str], target: str) -> np.ndarray:
    """Source class index of each target class, matching keys (wnids, or class names); a DataError names the
    target classes the source lacks."""
    index = {k: i for i, k in enumerate(source_keys)}
    missing = [k for k in target_keys if k not in index]
    if missing:
        raise DataError(f"{target}: {len(missing)} class(es) are not source classes, e.g. {', '.join(missing[:5])}")
    return np.array([index[k] for k in target_keys], dtype=np.int64)


def dg_inputs(source: Path, targets: Sequence[Path], backbone: Backbone, store: FeatureStore,
              protocol: FewShotProtocol) -> DGInputs:
    """Read the source pool, encode only the images the sweep draws, and encode the source's test split and every
    target (an ImageNet variant folder, matched by wnid; any other dataset's test split, matched by class name)."""
    pool = load_any(source, split="train")
    wnids = imagenet_wnids(source) if pool.name == "ImageNet" else None
    used = wf.drawn_indices(pool.labels, protocol.shots, protocol.seeds, protocol.k_val)
    feats = wf.pool_features(store, backbone, pool, used, name=f"{pool.name} (drawn shots)")
    if feats.skipped:
        raise DataError(f"{source}: drawn shot images do not decode: {', '.join(p for p, _ in feats.skipped[:5])}")
    tests = [(load_any(source, split="test"), imagenet_wnids(source, "test") if wnids else None)]
    for t in targets:
        v = load_variant(t) if is_variant_folder(t) else None
        tests.append((v.dataset, v.wnids) if v else (load_any(t, split="test"), None))
    seen = [ds.name for ds, _ in tests]
    if len(set(seen)) < len(seen):
        raise DataError(f"--protocol dg: two test sets are both called {max(seen, key=seen.count)!r} (the source's "
                        "test split is always scored; give each target its own folder name)")
    out = []
    for ds, keys in tests:
        if keys is not None and wnids is None:
            raise DataError(f"{ds.name} is an ImageNet variant: its source must be ImageNet, not {pool.name}")
        cols = columns_for(keys, wnids, ds.name) if keys is not None else columns_for(ds.classnames, pool.classnames,
                                                                                        ds.name)
        out.append(Target(ds.name, store.get(backbone, ds, name=f"{ds.name}/test"), cols))
    return DGInputs(pool.name, backbone.spec, pool.labels, used, feats, pool.classnames,
                    wf.text_weights_for(backbone, pool, wf.prompt_spec_for(pool)), out, backbone.logit_scale,
                    backbone)


def _score(logits: torch.Tensor, t: Target) -> dict[str, float]:
    sub = logits[:, torch.as_tensor(t.columns, device=logits.device)]
    m = summarize(topk_ids(sub, min(5, sub.shape[1])).cpu().numpy(), t.test.labels.numpy(), len(t.columns))
    return {"top1": m["top1"], "top5": m["top5"]}


def run_dg_cell(inputs: DGInputs, method: str, shots: int, seed: int, overrides: dict[str, Any],
                k_val: int | None = None) -> dict[str, Any]:
    """Fit one method on one draw of the source; the record holds the source's and every target's accuracy."""
    m = create(method, **overrides)
    sel = draw_selection(inputs.pool_labels, shots, seed, k_val=k_val)
    pos = np.searchsorted(inputs.used, np.concatenate([sel.shots, sel.val]))  # `used` holds every draw
    train, val = inputs.features.subset(pos[:len(sel.shots)]), inputs.features.subset(pos[len(sel.shots):])
    task = build_task(m, train, inputs.classnames, inputs.text_weights, val=val, logit_scale=inputs.logit_scale,
                      backbone=inputs.encoder, seed=seed)
    t0 = time.perf_counter()
    m.fit(task)
    fit_s = time.perf_counter() - t0
    scores = {t.name: _score(predict_logits(m, t.test), t) for t in inputs.targets}
    source = scores[inputs.targets[0].name]
    return {"config": config_to_dict(m.config), "top1": source["top1"], "top5": source["top5"],
            "targets": {n: s["top1"] for n, s in scores.items()}, "fit_seconds": round(fit_s, 4),
            "meta": jsonable(m.fitted_meta()), "kshot": __version__, "torch": torch.__version__}


def targets_identity(targets: Sequence[Target]) -> str:
    """12 hex chars over every target's name and data identity (the cell key's test field)."""
    h = hashlib.sha256("\0".join(f"{t.name}:{data_identity(t.test)}" for t in targets).encode())
    return h.hexdigest()[:12]


def run_dg(inputs: DGInputs, protocol: FewShotProtocol, store: ResultStore,
           progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every missing (method, K, seed) cell (`kshot.experiment.run_sweep`); returns this sweep's records."""
    sweep = Sweep("dg", inputs.source, inputs.backbone, targets_identity(inputs.targets))

    def cell(method: str, k: int, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
        return run_dg_cell(inputs, method, k, seed, overrides, protocol.k_val)

    def report(rec: dict[str, Any]) -> None:
        if progress:
            accs = "  ".join(f"{n}={100 * v:.2f}" for n, v in rec["targets"].items())
            progress(f"{rec['method']:>14} K={rec['shots']:<2} seed={rec['seed']}  {accs}")

    return run_sweep(sweep, protocol.methods, protocol.shots, protocol.seeds, protocol.overrides, store, cell, report)


def per_target_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """DG records -> one {dataset: target, method, shots, seed, top1} per target (what `kshot.eval.paper` reads)."""
    return [{"dataset": n, "method": r["method"], "shots": r["shots"], "seed": r["seed"], "top1": v}
            for r in records for n, v in r["targets"].items()]
