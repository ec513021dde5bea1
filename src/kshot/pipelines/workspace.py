"""The shared state of one challenge run: the data selection, and lazily loaded backbones, features and text weights.

Features are extracted once per backbone and split through `kshot.features.FeatureStore` (cached on disk, resumable):
only the shots, the pool images used for the accuracy estimate, and the test folder are encoded (the real pool has
~181k images; `Dataset.subset`). Text classifiers are built once per (backbone, prompts) over the whole class list and
sliced by the stages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from kshot.backbones.base import Backbone
from kshot.data.dataset import Dataset
from kshot.errors import ConfigError, DataError
from kshot.features.augment import AugmentPolicy
from kshot.features.cache import FeatureStore
from kshot.features.featureset import FeatureSet
from kshot.pipelines.config import PipelineConfig, PromptConfig
from kshot.pipelines.groups import ClassInfo
from kshot.text.classifier import build_text_classifier
from kshot.text.templates import CHALLENGE_DOMAIN_TEMPLATES, PromptSpec, load_prompt_file

log = logging.getLogger(__name__)

SPLITS = ("test", "estimate")


@dataclass
class ChallengeData:
    """The images of a run and how they are used.

    Attributes:
        pool: the whole training pool (train.txt), labelled.
        test: the flat test folder (items = file names, sorted), unlabelled.
        shots: int64 indices into `pool`: the K training images per class (the rule).
        estimate: int64 indices into `pool`, disjoint from `shots`: images used only to estimate accuracy.
        info: class count, domains and which classes have shots.
        test_labels: optional int64 [N_test] hidden labels (the offline replica's test_labels.txt), -1 = unknown.
    """

    pool: Dataset
    test: Dataset
    shots: np.ndarray
    estimate: np.ndarray
    info: ClassInfo
    test_labels: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def classnames(self) -> list[str]:
        return self.test.classnames

    def labels(self, split: str) -> np.ndarray | None:
        """Labels of a split's rows (global ids): the estimate rows always, the test rows when known."""
        if split == "estimate":
            return self.pool.labels[self.estimate]
        if split == "test":
            return self.test_labels
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")

    def domains(self, split: str) -> list[str] | None:
        """Domain of each row's true class (for per-domain metrics), or None."""
        labels = self.labels(split)
        doms = self.info.domains
        if labels is None or doms is None:
            return None
        return [doms[int(y)] if y >= 0 else "" for y in labels]

    def num_rows(self, split: str) -> int:
        return len(self.test) if split == "test" else len(self.estimate)


@dataclass
class Workspace:
    """Backbones, features and text weights of one run, each computed on first use.

    Attributes:
        config: the pipeline.
        data: the selection.
        store: the feature cache.
        device: where methods fit and score (features stay cached on CPU).
        loaded: alias or spec -> Backbone; pre-filled entries (tests, notebooks) are used instead of loading.
        tune_on_pool: methods search their hyper-parameters on the estimate images (outside the 4-shot rule).
    """

    config: PipelineConfig
    data: ChallengeData
    store: FeatureStore
    device: torch.device
    loaded: dict[str, Backbone] = field(default_factory=dict)
    tune_on_pool: bool = False
    _features: dict[tuple, FeatureSet] = field(default_factory=dict)
    _text: dict[tuple, torch.Tensor] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------------ backbones
    def spec_of(self, alias_or_spec: str) -> str:
        return self.config.backbones.get(alias_or_spec, alias_or_spec)

    def backbone(self, alias_or_spec: str) -> Backbone:
        """The backbone of a pipeline alias (or a spec string), loaded once."""
        if alias_or_spec in self.loaded:
            return self.loaded[alias_or_spec]
        spec = self.spec_of(alias_or_spec)
        if spec in self.loaded:
            bb = self.loaded[spec]
        else:
            from kshot.backbones import load_backbone

            log.info("loading backbone %s (%s)", alias_or_spec, spec)
            bb = load_backbone(spec, device=self.device)
        self.loaded[alias_or_spec] = bb
        self.loaded.setdefault(spec, bb)
        return bb

    def add_backbone(self, alias: str, backbone: Backbone) -> None:
        """Register a backbone made during the run (a stage's tuned encoders) under `alias`."""
        if alias in self.config.backbones:
            raise ConfigError(f"stage {alias!r} has the name of a pipeline backbone; rename the stage")
        self.loaded[alias] = backbone

    # ------------------------------------------------------------------------------------------------- features
    def shot_images(self, shots: FeatureSet) -> Dataset:
        """The shot image files of the rows of `shots` (a FeatureSet of shots, e.g. after `local_labels`), aligned
        with them: for methods that train on the images themselves."""
        ds = self.data.pool.subset(self.data.shots)
        pos = {it.path: i for i, it in enumerate(ds.items)}
        missing = [p for p in shots.paths if p not in pos]
        if missing:
            raise DataError(f"shot features name {len(missing)} images that are not shots, e.g. {missing[0]}")
        return ds.subset([pos[p] for p in shots.paths])

    def shot_features(self, alias: str, policy: AugmentPolicy | None = None) -> FeatureSet:
        """Features of the shots (global labels), with `policy.views` augmented views (None = no views)."""
        policy = policy or AugmentPolicy()
        key = (alias, "shots", policy.key()["name"], policy.views, policy.seed)
        if key not in self._features:
            ds = self.data.pool.subset(self.data.shots)
            fs = self.store.get(self.backbone(alias), ds, policy, name=f"{alias}/shots")
            self._note_skipped(fs)
            self._features[key] = fs
        return self._features[key]

    def estimate_features(self, alias: str) -> FeatureSet:
        """Features of the estimate images (global labels), aligned with `data.estimate` (zeros if unreadable)."""
        key = (alias, "estimate")
        if key not in self._features:
            ds = self.data.pool.subset(self.data.estimate)
            self._features[key] = self._aligned(self.backbone(alias), ds, f"{alias}/estimate")
        return self._features[key]

    def test_features(self, alias: str) -> FeatureSet:
        """Features of every test image, aligned with `data.test.items` (zero rows for unreadable images)."""
        key = (alias, "test")
        if key not in self._features:
            self._features[key] = self._aligned(self.backbone(alias), self.data.test, f"{alias}/test")
        return self._features[key]

    def split_features(self, alias: str, split: str) -> FeatureSet:
        return self.test_features(alias) if split == "test" else self.estimate_features(alias)

    def features_of(self, backbone: Backbone, which: str, name: str) -> FeatureSet:
        """Features of the shots ('shots', global labels; unreadable images dropped) or of every row of a split
        ('test', 'estimate'; aligned, zeros if unreadable) with an extra encoder (a probe's feature view), cached."""
        key = (backbone.fingerprint, which)
        if key not in self._features:
            if which == "shots":
                fs = self.store.get(backbone, self.data.pool.subset(self.data.shots), name=name)
                self._note_skipped(fs)
            else:
                check_split(which)
                ds = self.data.test if which == "test" else self.data.pool.subset(self.data.estimate)
                fs = self._aligned(backbone, ds, name)
            self._features[key] = fs
        return self._features[key]

    def encode_rows(self, backbone: Backbone, split: str, rows: np.ndarray, name: str) -> FeatureSet:
        """Features of some rows of a split with an extra encoder (a fine-tuned specialist), cached by its weights."""
        ds = self.data.test if split == "test" else self.data.pool.subset(self.data.estimate)
        return self._aligned(backbone, ds.subset(rows), name)

    def _aligned(self, backbone: Backbone, ds: Dataset, name: str) -> FeatureSet:
        fs = self.store.get(backbone, ds, name=name)
        if len(fs) == len(ds):
            return fs
        self._note_skipped(fs)
        pos = {p: i for i, p in enumerate(fs.paths)}
        full = torch.zeros(len(ds), fs.dim)
        idx = [pos.get(it.path) for it in ds.items]
        have = [i for i, j in enumerate(idx) if j is not None]
        full[have] = fs.features[[idx[i] for i in have]]
        log.warning("%s: %d unreadable images get zero features (their predictions are arbitrary)", name,
                    len(ds) - len(have))
        return FeatureSet(full, torch.as_tensor(ds.labels), [it.path for it in ds.items], domains=ds.domains,
                          skipped=list(fs.skipped))

    def _note_skipped(self, fs: FeatureSet) -> None:
        for s in fs.skipped:
            if s not in self.skipped:
                self.skipped.append(s)

    # ----------------------------------------------------------------------------------------------------- text
    def prompt_spec(self, prompts: PromptConfig | None) -> PromptSpec:
        """PromptSpec of a stage's prompts (None = the pipeline default)."""
        p = prompts or self.config.prompts
        per_domain = {d: list(t) for d, t in CHALLENGE_DOMAIN_TEMPLATES.items()} if p.challenge_domains else {}
        per_domain.update({d: list(t) for d, t in p.domains.items()})
        spec = PromptSpec(templates=list(p.templates), per_domain=per_domain)
        if p.file:
            loaded = load_prompt_file(self.config.resolve_path(p.file))
            spec.per_domain.update(loaded.per_domain)
            spec.per_class.update(loaded.per_class)
        return spec

    def text_weights(self, alias: str, prompts: PromptConfig | None) -> torch.Tensor | None:
        """[C, D] text classifier over every class (None for image-only backbones)."""
        bb = self.backbone(alias)
        if not bb.has_text:
            return None
        p = prompts or self.config.prompts
        key = (alias, p.key())
        if key not in self._text:
            classnames = self.data.classnames
            doms = self.data.info.domains
            self._text[key] = build_text_classifier(bb, classnames, self.prompt_spec(p), doms)
        return self._text[key]


def local_labels(fs: FeatureSet, classes: np.ndarray, num_classes: int) -> FeatureSet:
    """Rows of `fs` whose label is in `classes`, relabelled to positions in `classes` (0..len-1)."""
    pos = np.full(num_classes, -1, dtype=np.int64)
    pos[classes] = np.arange(len(classes))
    labels = fs.labels.cpu().numpy()
    keep = np.flatnonzero((labels >= 0) & (pos[np.clip(labels, 0, num_classes - 1)] >= 0))
    sub = fs.subset(keep)
    return replace(sub, labels=torch.as_tensor(pos[labels[keep]]))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {SPLITS}")


def image_encoder(backbone: Backbone) -> nn.Module:
    """The image part of a backbone: a CLIP model's `visual` tower, or the whole image model (timm)."""
    if backbone.has_text:
        visual = getattr(backbone.model, "visual", None)
        if visual is None:
            raise ConfigError(f"specialist: CLIP backbone {backbone.spec!r} exposes no .visual image tower")
        return visual
    return backbone.model
