"""Pipeline stages: the `Stage` interface, and the `method` and `ensemble` stages.

A stage scores a fixed set of global class ids (`classes`, ascending) for rows of a split ('test' or 'estimate'):
`scores(split, rows)` -> float32 [len(rows), len(classes)] on CPU, higher = better. Full-split results are memoised,
so a stage shared by several others runs once. Each stage keeps a `record` for the run report: fit and predict time
(exclusive of the stages it calls), chosen hyper-parameters, and its parameter counts.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from kshot.errors import ConfigError
from kshot.features.augment import AugmentPolicy
from kshot.experiment import build_task
from kshot.methods import METHODS, Method, create
from kshot.pipelines.config import EnsembleStageConfig, MethodStageConfig
from kshot.pipelines.crossval import choose_by_crossval
from kshot.pipelines.groups import resolve_group
from kshot.pipelines.workspace import Workspace, check_split, local_labels

log = logging.getLogger(__name__)

_CLOCK: list[float] = []  # child-time accumulators of the scores() calls in progress (innermost last)


class Stage(ABC):
    """One node of a pipeline.

    Attributes:
        name: the stage's name in the config.
        classes: int64 global class ids it scores, ascending.
        record: report fields (kind, timings, chosen values, parameter counts, routes).
    """

    kind: str = ""

    def __init__(self, name: str):
        self.name = name
        self.classes = np.zeros(0, dtype=np.int64)
        self.record: dict[str, Any] = {"name": name, "kind": self.kind, "predict_s": 0.0}
        self._memo: dict[str, torch.Tensor] = {}

    @abstractmethod
    def fit(self, ws: Workspace, stages: Mapping[str, Stage]) -> None:
        """Prepare the stage (earlier stages in `stages` are already fitted)."""

    @abstractmethod
    def _scores(self, split: str, rows: np.ndarray | None) -> torch.Tensor:
        """[n, len(classes)] scores of some rows of a split (None = all rows)."""

    def scores(self, split: str, rows: np.ndarray | None = None) -> torch.Tensor:
        """Scores of `rows` (default all rows) of `split`; float32 CPU [n, len(classes)], higher = better."""
        check_split(split)
        if rows is None and split in self._memo:
            return self._memo[split]
        _CLOCK.append(0.0)
        start = time.perf_counter()
        try:
            out = self._scores(split, None if rows is None else np.asarray(rows, dtype=np.int64))
        finally:
            elapsed = time.perf_counter() - start
            children = _CLOCK.pop()
            self.record["predict_s"] += elapsed - children
            if _CLOCK:
                _CLOCK[-1] += elapsed
        out = out.float().cpu()
        if rows is None:
            self._memo[split] = out
        return out

    def bind(self, ws: Workspace) -> None:
        self._ws = ws

    def param_counts(self) -> dict[str, int]:
        """{'fitted': tensor elements the stage stores after fitting, 'trainable': those trained by gradient}."""
        return {"fitted": 0, "trainable": 0}


class MethodStage(Stage):
    """A registered method on one backbone's features, over a class group (see `MethodStageConfig`).

    A method that trains through the encoders (`trains_encoders`, CLIP-LoRA) also gets the backbone and the shot
    images; when it trains the image encoder, its tuned backbone is registered in the workspace under the stage's
    name (later stages may use it as their `backbone`) and this stage scores that backbone's features.
    """

    kind = "method"

    def __init__(self, name: str, cfg: MethodStageConfig):
        super().__init__(name)
        self.cfg = cfg
        if cfg.method not in METHODS:
            raise ConfigError(f"stage {name!r}: unknown method {cfg.method!r}; registered: {METHODS.names()}")
        self.method_cls = METHODS.get(cfg.method)
        self.method: Method | None = None
        self.features_alias = cfg.backbone  # whose features `scores` reads (the tuned backbone's, after tuning)

    def fit(self, ws: Workspace, stages: Mapping[str, Stage]) -> None:
        cfg, info = self.cfg, ws.data.info
        self.bind(ws)
        self.classes = resolve_group(cfg.classes, info, f"stage {self.name!r}")
        policy = AugmentPolicy(cfg.augment, cfg.views, seed=ws.config.seed) if cfg.views else AugmentPolicy()
        bb = ws.backbone(cfg.backbone)
        shots = local_labels(ws.shot_features(cfg.backbone, policy), self.classes, info.num_classes)
        text = ws.text_weights(cfg.backbone, cfg.prompts) if self.method_cls.needs_text else None
        if self.method_cls.needs_text and text is None:
            raise ConfigError(f"stage {self.name!r}: method {cfg.method!r} needs a CLIP backbone with a text tower; "
                              f"{bb.spec!r} has none")
        dev = ws.device
        trains = self.method_cls.trains_encoders
        task = build_task(
            self.method_cls, shots.to(dev), [ws.data.classnames[c] for c in self.classes],
            None if text is None else text[torch.as_tensor(self.classes)].to(dev),
            test=ws.test_features(cfg.backbone).to(dev) if self.method_cls.transductive else None,  # extract lazily
            logit_scale=float(bb.logit_scale), seed=ws.config.seed if cfg.seed is None else cfg.seed,
            backbone=bb, images={"train": ws.shot_images(shots)} if trains else None)
        params = dict(cfg.params)
        tuning = "defaults"
        if ws.tune_on_pool:
            val = local_labels(ws.estimate_features(cfg.backbone), self.classes, info.num_classes)
            task = replace(task, val=val.to(dev))
            tuning = "tuned on pool images (outside the 4-shot rule)"
        elif cfg.crossval:
            outcome = choose_by_crossval(cfg.method, params, task, ws.config.cv_folds, task.seed)
            params.update(outcome.overrides)
            tuning = outcome.note
            self.record["cv_folds"] = outcome.fold_meta
        start = time.perf_counter()
        self.method = create(cfg.method, **params).fit(task)
        if "image" in trains:
            tuned = self.method.tuned_backbone(bb)
            ws.add_backbone(self.name, tuned)
            self.features_alias = self.name
            self.record["tuned_backbone"] = tuned.spec
        self.record.update(method=cfg.method, backbone=cfg.backbone, n_classes=len(self.classes),
                           n_shots=len(shots), tuning=tuning, overrides=_jsonable(params),
                           chosen=_jsonable(_chosen(self.method.fitted_meta())),
                           final_fit_s=round(time.perf_counter() - start, 3))

    def _scores(self, split: str, rows: np.ndarray | None) -> torch.Tensor:
        feats = self._ws.split_features(self.features_alias, split).features
        if rows is not None:
            feats = feats[torch.as_tensor(rows)]
        dev = self._ws.device
        out = [self.method.logits(feats[i:i + 65536].to(dev)).cpu() for i in range(0, len(feats), 65536)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def param_counts(self) -> dict[str, int]:
        if self.method is None:
            return super().param_counts()
        fitted = sum(int(t.numel()) for t in self.method.state_dict().values())
        trainable = int(self.method.fitted_meta().get("trainable_params", 0) or 0)
        return {"fitted": fitted, "trainable": trainable}


class EnsembleStage(Stage):
    """Σ w_i · g(logits_i) of member stages over a class group (see `EnsembleStageConfig`)."""

    kind = "ensemble"

    def __init__(self, name: str, cfg: EnsembleStageConfig):
        super().__init__(name)
        self.cfg = cfg

    def fit(self, ws: Workspace, stages: Mapping[str, Stage]) -> None:
        self.bind(ws)
        self.members = [(stages[m.stage], float(m.weight)) for m in self.cfg.members]
        first = self.members[0][0]
        self.classes = (first.classes if self.cfg.classes is None
                        else resolve_group(self.cfg.classes, ws.data.info, f"stage {self.name!r}"))
        self.columns = []
        for st, _ in self.members:
            pos = {int(c): i for i, c in enumerate(st.classes)}
            missing = [int(c) for c in self.classes if int(c) not in pos]
            if missing:
                raise ConfigError(f"stage {self.name!r}: member {st.name!r} does not score classes "
                                  f"{missing[:10]} of the ensemble's class group")
            self.columns.append(torch.as_tensor([pos[int(c)] for c in self.classes]))
        self.record.update(members=[{"stage": st.name, "weight": w} for st, w in self.members],
                           normalize=self.cfg.normalize, n_classes=len(self.classes))

    def _scores(self, split: str, rows: np.ndarray | None) -> torch.Tensor:
        n = self._ws.data.num_rows(split) if rows is None else len(rows)
        total = torch.zeros(n, len(self.classes))
        for (st, w), cols in zip(self.members, self.columns):
            s = st.scores(split, rows)[:, cols]
            if self.cfg.normalize == "softmax":
                s = s.softmax(dim=1)
            elif self.cfg.normalize == "log_softmax":
                s = s.log_softmax(dim=1)
            total += w * s
        return total


_CHOSEN_KEYS = ("alpha", "beta", "gamma", "C", "rho", "best_epoch", "best_iter", "best_step", "val_accuracy",
                "val_acc", "num_channels", "cache_size", "trainable_params")


def _chosen(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in _CHOSEN_KEYS if k in meta}


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[k] = v
    return out
