"""The domain router of a cascade step: a linear probe that predicts each image's *domain*, fitted on the shots.

A cascade step normally catches the rows whose current top-1 class is in its group (`route_by: top1`). When the
classes of a domain look like those of another one in the classifier's eyes, the top-1 almost never lands in that
domain and its specialist is never asked: on the toy world the opaque-named `Creatures` (same shapes as `Shapes`,
told apart mainly by a checkered background) are predicted as `Shapes` classes. `route_by: domain_probe` routes by
the image's predicted domain instead:

1. Labels: every shot of a seen class gets its class's domain (`ClassInfo.domains`); only shots are used, never the
   estimate or test labels. The probe's domains are those with shots; it needs at least two.
2. Features ("views" of a backbone, `probe_features`): `embedding` = the backbone's cached image features (as every
   method stage reads them), or `tokens:k` = the mean and standard deviation over positions of the image tower's
   token/feature map after block k (`forward_intermediates` of open_clip ViTs and timm models), L2-normalised.
   The second is kshot's addition: channel means and spreads are texture statistics (as in Gatys et al.'s style
   features), and the toy CLIP's embedding barely encodes the background that tells `Creatures` apart.
3. Model: kshot's `linear_probe` (multinomial logistic regression). Its C and the view are chosen by
   cross-validation within the shots: folds are cut per *class* (`shot_folds` on the class labels: shot j of every
   class goes to fold j mod F), in each fold the probe runs its own C search on the held-out fold (lpclip protocol),
   the view with the highest mean held-out accuracy wins (first on ties), C = the folds' log-median
   (`LinearProbe.refit_overrides`), and the probe is refitted on all shots. Without cross-validation (< 2 shots per
   class or `cv_folds` < 2) the first view and the probe's default C are used.

A row's route depends only on its own features, so the order or the set of the other test rows does not change it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from kshot.backbones.base import Backbone, make_fingerprint
from kshot.errors import ConfigError
from kshot.features.featureset import FeatureSet
from kshot.methods import METHODS, Method, Task, create
from kshot.pipelines.crossval import effective_folds, shot_folds
from kshot.pipelines.config import parse_view
from kshot.pipelines.workspace import Workspace, image_encoder

log = logging.getLogger(__name__)



class TokenStats(nn.Module):
    """Image -> [mean ‖ std] over positions of an encoder's feature map after block `layer`: float [n, 2·width]."""

    def __init__(self, encoder: nn.Module, layer: int):
        super().__init__()
        self.encoder, self.layer = encoder, int(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder.forward_intermediates(x, indices=[self.layer], intermediates_only=True)
        fmap = out["image_intermediates"][0] if isinstance(out, dict) else out[0]  # open_clip dict, timm list
        flat = fmap.flatten(2).float()  # [n, width, positions] (NCHW)
        return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


def token_view(backbone: Backbone, layer: int) -> Backbone:
    """A Backbone whose "image features" are `TokenStats` of `backbone`'s image tower (own feature-cache key)."""
    encoder = image_encoder(backbone)
    if not hasattr(encoder, "forward_intermediates"):
        raise ConfigError(f"probe feature view tokens:{layer}: the image encoder of {backbone.spec!r} "
                          f"({type(encoder).__name__}) has no forward_intermediates; use 'embedding'")
    module = TokenStats(encoder, layer).eval()
    size = backbone.preprocess_cfg.image_size
    try:
        with torch.no_grad():
            dim = int(module(torch.zeros(1, 3, size, size, device=backbone.device)).shape[1])
    except (AssertionError, IndexError, ValueError) as e:
        raise ConfigError(f"probe feature view tokens:{layer} of {backbone.spec!r}: {e}") from None
    return Backbone(spec=f"{backbone.spec}#tokens:{layer}", arch=f"{backbone.arch}#tokens:{layer}", model=module,
                    preprocess=backbone.preprocess, preprocess_cfg=backbone.preprocess_cfg, tokenizer=None,
                    embed_dim=dim, logit_scale=1.0,
                    fingerprint=make_fingerprint(f"{backbone.arch}#tokens-meanstd:{layer}", backbone.fingerprint,
                                                 backbone.preprocess_cfg))


class DomainProbe:
    """Predicts the domain of each row of a split from one backbone's features (see the module docstring).

    Attributes:
        alias: backbone alias of the pipeline.
        views: candidate feature views, in order of preference on ties.
        domains: the domain names it predicts (those with shots, sorted).
        view: the chosen view; record: report fields (choice, C, cross-validation scores, shots per domain).
    """

    def __init__(self, alias: str, views: tuple[str, ...], where: str):
        if not views:
            raise ConfigError(f"{where}: probe_features needs at least one view")
        self.alias, self.views, self.where = alias, tuple(views), where
        self._layers = {v: parse_view(v, where) for v in self.views}
        self._view_bb: dict[str, Backbone] = {}
        self._pred: dict[str, np.ndarray] = {}
        self.domains: list[str] = []
        self.view = self.views[0]
        self.method: Method | None = None
        self.record: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ features
    def _features(self, ws: Workspace, view: str, which: str) -> FeatureSet:
        layer = self._layers[view]
        if layer is None:
            return ws.shot_features(self.alias) if which == "shots" else ws.split_features(self.alias, which)
        if view not in self._view_bb:
            self._view_bb[view] = token_view(ws.backbone(self.alias), layer)
        return ws.features_of(self._view_bb[view], which, f"{self.alias}#{view}/{which}")

    # ---------------------------------------------------------------------------------------------------- fit
    def fit(self, ws: Workspace) -> "DomainProbe":
        """Fit on the shots' domains; C and the view by cross-validation within the shots."""
        self._ws = ws
        info = ws.data.info
        if info.domains is None:
            raise ConfigError(f"{self.where}: route_by 'domain_probe' needs class domains, but the class file has no "
                              "<Domain>_ prefixes")
        class_dom = np.asarray(info.domains, dtype=object)
        shots = ws.data.pool.labels[ws.data.shots]
        self.domains = sorted({str(class_dom[c]) for c in np.unique(shots[shots >= 0]) if class_dom[c]})
        if len(self.domains) < 2:
            raise ConfigError(f"{self.where}: a domain probe needs shots in at least 2 domains; have {self.domains}")
        seed = ws.config.seed
        scores: dict[str, float] = {}
        fold_cs: dict[str, list[float]] = {}
        tasks = {v: self._task(ws, v) for v in self.views}
        classes = next(iter(tasks.values()))[1]
        folds = effective_folds(classes, ws.config.cv_folds)
        folds = folds if folds >= 2 else 0
        if folds >= 2:
            for v in self.views:
                task = tasks[v][0]
                accs, metas = [], []
                for val_rows in shot_folds(tasks[v][1], folds, seed):
                    train_rows = np.setdiff1d(np.arange(len(task.train)), val_rows)
                    val = task.train.subset(val_rows)
                    m = create("linear_probe").fit(replace(task, train=task.train.subset(train_rows), val=val))
                    metas.append(dict(m.fitted_meta()))
                    accs.append(float((m.logits(val.features).argmax(1) == val.labels).float().mean()))
                scores[v] = float(np.mean(accs))
                fold_cs[v] = [float(x["C"]) for x in metas]
            self.view = max(self.views, key=lambda v: (scores[v], -self.views.index(v)))
            overrides = METHODS.get("linear_probe").refit_overrides([{"C": c} for c in fold_cs[self.view]])
            tuning = f"view and C chosen by {folds}-fold cross-validation within the shots"
        else:
            self.view, overrides = self.views[0], {}
            tuning = "no cross-validation (needs >= 2 shots per class and cv_folds >= 2): first view, default C"
        task = tasks[self.view][0]
        self.method = create("linear_probe", **overrides).fit(task)
        counts = np.bincount(task.train.labels.numpy(), minlength=len(self.domains))
        self.record = {"backbone": self.alias, "domains": self.domains, "view": self.view,
                       "C": float(self.method.fitted_meta()["C"]), "cv_folds": folds, "tuning": tuning,
                       "cv_accuracy": {v: round(s, 4) for v, s in scores.items()},
                       "shots_per_domain": dict(zip(self.domains, counts.tolist()))}
        log.info("domain probe on %s: %s, C=%.3g (%s); cv accuracy %s", self.alias, self.view, self.record["C"],
                 tuning, self.record["cv_accuracy"])
        return self

    def _task(self, ws: Workspace, view: str) -> tuple[Task, np.ndarray]:
        """The probe's task on one view (labels = domain positions) and the shots' class labels (for the folds)."""
        fs = self._features(ws, view, "shots")
        class_dom = np.asarray(ws.data.info.domains, dtype=object)
        pos = {d: i for i, d in enumerate(self.domains)}
        labels = fs.labels.cpu().numpy()
        keep = np.flatnonzero([y >= 0 and str(class_dom[y]) in pos for y in labels])
        sub = fs.subset(keep)
        dom = torch.as_tensor([pos[str(class_dom[y])] for y in labels[keep]], dtype=torch.long)
        sub = replace(sub, labels=dom, aug_features=None)
        return Task(train=sub, classnames=list(self.domains), seed=ws.config.seed), labels[keep]

    # ---------------------------------------------------------------------------------------------- predict
    def predict(self, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Predicted domain position (into `domains`) of rows of a split (None = all). int64 [n]."""
        if split not in self._pred:
            feats = self._features(self._ws, self.view, split).features
            out = [self.method.logits(feats[i:i + 65536]).argmax(1).cpu() for i in range(0, len(feats), 65536)]
            self._pred[split] = torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)
        pred = self._pred[split]
        return pred if rows is None else pred[np.asarray(rows, dtype=np.int64)]

    def member(self, split: str, rows: np.ndarray | None, domains: set[str]) -> np.ndarray:
        """bool [n]: is the predicted domain of each row one of `domains` (case-insensitive)?"""
        wanted = np.asarray([d.lower() in domains for d in self.domains])
        return wanted[self.predict(split, rows)]

    def param_count(self) -> int:
        return 0 if self.method is None else sum(int(t.numel()) for t in self.method.state_dict().values())
