"""The few-shot workflow as plain functions the CLI, the demo and the protocol runner share.

dataset -> shots/val selection -> cached features -> text classifier -> Task -> method -> predictions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.backbones.base import Backbone
from kshot.data.dataset import Dataset
from kshot.errors import ConfigError
from kshot.features.augment import AugmentPolicy
from kshot.features.cache import FeatureStore
from kshot.features.featureset import FeatureSet
from kshot.methods.base import Method, Task
from kshot.text.classifier import build_text_classifier
from kshot.text.templates import PromptSpec, dataset_template

log = logging.getLogger(__name__)


@dataclass
class ShotSelection:
    """Indices into the training pool: the K shots per class and a disjoint validation split of min(K, 4) per class."""

    shots: np.ndarray
    val: np.ndarray


def select_shots(pool: Dataset, k: int, seed: int, *, k_val: int | None = None, allow_fewer: bool = False,
                 shots_file: str | Path | None = None) -> ShotSelection:
    """K shots per class (seeded, or read from a shots file) and a validation split from the rest of the pool."""
    from kshot.data.fewshot import read_shots_file, sample_k_shot, sample_val

    labels = pool.labels
    if shots_file is not None and Path(shots_file).is_file():
        shots = np.asarray(read_shots_file(shots_file, pool), dtype=np.int64)
    else:
        shots = np.asarray(sample_k_shot(labels, k, seed, allow_fewer=allow_fewer), dtype=np.int64)
    kv = min(max(k, 1), 4) if k_val is None else k_val
    val = np.asarray(sample_val(labels, shots, kv, seed), dtype=np.int64) if kv > 0 else np.zeros(0, np.int64)
    return ShotSelection(shots, val)


def prompt_spec_for(dataset: Dataset, templates: list[str] | None = None, prompt_file: str | Path | None = None
                    ) -> PromptSpec:
    """Prompts: a JSON file if given, else explicit templates, else the dataset's CoOp default template."""
    from kshot.text.templates import load_prompt_file

    if prompt_file is not None:
        return load_prompt_file(prompt_file)
    if templates:
        return PromptSpec(templates=list(templates))
    return PromptSpec(templates=[dataset_template(dataset.name)])


def text_weights_for(backbone: Backbone, dataset: Dataset, spec: PromptSpec) -> torch.Tensor | None:
    """[C, D] zero-shot classifier, or None for image-only backbones."""
    if not backbone.has_text:
        return None
    return build_text_classifier(backbone, dataset.classnames, spec, dataset.class_domains)


def make_task(pool_features: FeatureSet, selection: ShotSelection, classnames: list[str],
              text_weights: torch.Tensor | None, logit_scale: float, seed: int,
              unlabeled: FeatureSet | None = None, backbone: Backbone | None = None,
              images: dict[str, Any] | None = None) -> Task:
    """Assemble a Task from pool features and a selection (indices are into the pool)."""
    return Task(
        train=pool_features.subset(selection.shots),
        val=pool_features.subset(selection.val) if len(selection.val) else None,
        classnames=list(classnames),
        text_weights=text_weights,
        unlabeled=unlabeled,
        logit_scale=logit_scale,
        backbone=backbone,
        images=images,
        seed=seed,
    )


def pool_features(store: FeatureStore, backbone: Backbone, pool: Dataset, indices: np.ndarray,
                  policy: AugmentPolicy = AugmentPolicy(), name: str = "train") -> FeatureSet:
    """Features of `pool[indices]` only (the whole pool may be 180k images: extract just what is used).

    The returned FeatureSet is indexed like `indices`; use `remap_selection` to re-index selections into it.
    """
    return store.get(backbone, pool.subset(indices), policy, name=name)


def remap_selection(selection: ShotSelection) -> tuple[np.ndarray, ShotSelection]:
    """Indices used by a selection, and the selection re-indexed into that compact list."""
    used = np.unique(np.concatenate([selection.shots, selection.val]))
    pos = {int(i): p for p, i in enumerate(used)}
    return used, ShotSelection(np.array([pos[int(i)] for i in selection.shots], dtype=np.int64),
                               np.array([pos[int(i)] for i in selection.val], dtype=np.int64))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['alpha=1.0', 'epochs=20', 'solver=sklearn'] -> typed dict (JSON values where they parse, else strings)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        key = key.strip().removeprefix("method.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def predict_logits(method: Method, features: FeatureSet, batch_size: int = 65536) -> torch.Tensor:
    """logits [N, C] computed in batches (bounded memory on large test sets)."""
    chunks = [method.logits(features.features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)
