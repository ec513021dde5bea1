"""`auto`: pick the best registered method for a task by validation (or cross-validation) accuracy, never test.

Candidates are the registered methods that run from cached features alone (not `needs_backbone`, not
`transductive`, no encoder training), minus those that need text weights when the task has none; `candidates`
narrows the list. Selection:

- with a validation split (`task.val`, CoOp's min(max(K, 1), 4) per class): each candidate is fitted on the shots
  with that split as its own validation data and scored on it; the best top-1 wins (ties: the earlier candidate).
  Methods that search hyper-parameters on the split are scored on the split they searched (slightly optimistic
  for them; the record says so);
- without one (every class has only its K shots): stratified `folds`-fold cross-validation over the shots, each
  fold's held-out part serving as the candidate's validation data and its score; the winner is refitted on every
  shot with the folds' choices (`refit_overrides`, `cv_tunes=True`) or its defaults (`cv_tunes=False`); a method
  without a refit rule (`cv_tunes=None`) keeps its best fold fit (trained on (folds-1)/folds of the shots);
- with fewer than 2 shots per class and no validation split nothing can be measured: `fallback` is used, and the
  record says so.

The choice, every candidate's accuracy (percent) and the reason are in `fitted_meta()` (so in `method.json` and in
eval records); the chosen method's state is saved under its own keys, so `load` restores it exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from kshot.errors import ConfigError, DataError
from kshot.methods.base import METHODS, Method, Task, config_to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoConfig:
    """What `auto` chooses among and how.

    Attributes:
        candidates: method names to choose among (empty: every eligible registered method).
        folds: cross-validation folds when the task has no validation split (capped by the smallest class).
        fallback: the method used when nothing can be measured (no validation split and < 2 shots per class);
            `linear_probe` when the task has no text weights.
    """

    candidates: tuple[str, ...] = ()
    folds: int = 4
    fallback: str = "lpp"


def eligible(task: Task, names: tuple[str, ...] = ()) -> list[str]:
    """The candidate method names for `task` (registration order), checked against the registry."""
    usable = [e.name for e in METHODS if not e.obj.selects_method and not e.obj.needs_backbone
              and not e.obj.transductive and not e.obj.trains_encoders
              and (task.text_weights is not None or not e.obj.needs_text)]
    if not names:
        return usable
    for n in names:
        METHODS.get(n)  # unknown names: the registry's error with the closest match
        if n not in usable:
            raise ConfigError(f"auto: {n!r} cannot be a candidate here (it needs the backbone, the test images or "
                              "text weights this task lacks)")
    return list(names)


def _accuracy(method: Method, fs) -> float:
    return float((method.logits(fs.features).argmax(1) == fs.labels).float().mean()) * 100.0


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """`folds` disjoint index tensors, each holding ≈1/folds of every class (seeded permutation per class)."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        for j, i in enumerate(idx):
            parts[j % folds].append(i)
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]


@METHODS.register("auto", "Picks the best registered cached-feature method by validation / cross-validation accuracy")
class AutoSelect(Method):
    name = "auto"
    config_cls = AutoConfig
    needs_text = False
    selects_method = True

    def fit(self, task: Task) -> "AutoSelect":
        if len(task.train) == 0:
            raise DataError("auto needs labelled shots to choose a method (K=0 given); use -m zeroshot")
        names = eligible(task, tuple(self.config.candidates))
        if not names:
            raise ConfigError("auto: no eligible candidate method")
        scores: dict[str, float] = {}
        if task.val is not None and len(task.val):
            fitted: dict[str, Method] = {}
            for n in names:
                fitted[n] = METHODS.get(n)().fit(task)
                scores[n] = _accuracy(fitted[n], task.val)
            chosen = max(names, key=lambda n: scores[n])
            how = f"validation top-1 on {len(task.val)} held-out pool images (never the test split)"
            inner = fitted[chosen]
        else:
            counts = torch.bincount(task.train.labels)
            k = int(counts[counts > 0].min())
            folds = min(self.config.folds, k)
            if folds < 2:
                chosen = self.config.fallback if task.text_weights is not None else "linear_probe"
                how = (f"no validation split and {k} shot(s) per class: nothing to measure, so the fallback "
                       f"{chosen!r} (--set auto.fallback=NAME)")
                inner = None
            else:
                fold_fits: dict[str, list[tuple[float, Method]]] = {}
                for n in names:
                    fold_fits[n] = []
                    for held in stratified_folds(task.train.labels, folds, task.seed):
                        keep = torch.ones(len(task.train), dtype=torch.bool)
                        keep[held] = False
                        sub = Task(train=task.train.subset(keep.nonzero().flatten()), classnames=task.classnames,
                                   text_weights=task.text_weights, val=task.train.subset(held),
                                   logit_scale=task.logit_scale, seed=task.seed)
                        m = METHODS.get(n)().fit(sub)
                        fold_fits[n].append((_accuracy(m, sub.val), m))
                    scores[n] = sum(a for a, _ in fold_fits[n]) / folds
                chosen = max(names, key=lambda n: scores[n])
                how = f"{folds}-fold cross-validation top-1 over the {len(task.train)} shots (no validation split)"
                inner = self._refit(chosen, fold_fits[chosen], task)
        if inner is None:
            inner = METHODS.get(chosen)().fit(Task(train=task.train, classnames=task.classnames,
                                                   text_weights=task.text_weights, logit_scale=task.logit_scale,
                                                   seed=task.seed))
        self.inner_ = inner
        self.scores_ = {n: round(v, 2) for n, v in scores.items()}
        best = f" ({self.scores_[chosen]:.2f} %)" if chosen in self.scores_ else ""
        self.reason_ = f"picked {chosen}{best} by {how}"
        log.info("auto: %s", self.reason_)
        self.fitted_ = True
        return self

    @staticmethod
    def _refit(name: str, folds: list[tuple[float, Method]], task: Task) -> Method:
        """The cross-validated winner on every shot: with the folds' choices (`refit_overrides`) when the method
        has that rule, with its defaults when it tunes nothing, else (no rule) its best fold fit as it is."""
        cls = METHODS.get(name)
        if cls.cv_tunes is None:
            return max(folds, key=lambda f: f[0])[1]
        overrides = cls.refit_overrides([m.fitted_meta() for _, m in folds]) if cls.cv_tunes else {}
        return cls(**overrides).fit(Task(train=task.train, classnames=task.classnames, text_weights=task.text_weights,
                                         logit_scale=task.logit_scale, seed=task.seed))

    @property
    def chosen(self) -> str:
        """The name of the method `fit` picked."""
        self._check_fitted()
        return self.inner_.name

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self.inner_.logits(features)

    def for_classes(self, classnames: list[str], text_weights: torch.Tensor | None) -> Method | None:
        return self.inner_.for_classes(classnames, text_weights)

    def exportable_head(self) -> torch.nn.Module:
        return self.inner_.exportable_head()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.inner_.state_dict()

    def fitted_meta(self) -> dict[str, Any]:
        """The choice, each candidate's selection accuracy (percent), the reason, and the chosen method's record."""
        return {"chosen": self.inner_.name, "selection_top1_percent": self.scores_, "reason": self.reason_,
                "chosen_config": config_to_dict(self.inner_.config), "chosen_meta": self.inner_.fitted_meta()}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        inner = METHODS.get(meta["chosen"])(**meta.get("chosen_config", {}))
        inner.load_state_dict(state, meta.get("chosen_meta", {}))
        inner.fitted_ = True
        self.inner_, self.scores_, self.reason_ = inner, dict(meta.get("selection_top1_percent", {})), meta["reason"]
