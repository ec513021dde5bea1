"""The method contract (DESIGN.md): `create(name, **overrides)`, `fit(task)`, `logits(features)`, `save`/`load`.

In the scikit-learn spirit: the constructor only stores a frozen config dataclass, `fit` does the work, fitted
state lives in tensors returned by `state_dict()` (saved as safetensors) and extra JSON-able values in
`fitted_meta()` (saved beside them). No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from kshot.config import replace as config_replace
from kshot.errors import CheckpointError, ConfigError, ExportError
from kshot.features.featureset import FeatureSet
from kshot.outputs import atomic_write_text, save_safetensors
from kshot.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")
ARTIFACT_VERSION = 1


@dataclass
class Task:
    """Everything a method may use to fit.

    Attributes:
        train: the K-shot labelled features (labels in [0, C)).
        classnames: the C class names.
        text_weights: float32 [C, D] L2-normalised zero-shot classifier (one row per class), or None for
            image-only backbones.
        val: optional labelled validation features, for hyper-parameter search (never the test split).
        unlabeled: optional unlabelled features of the images to classify (transductive methods, e.g. InMaP).
        logit_scale: temperature for cosine logits (100 for CLIP).
        backbone: the loaded backbone, only for methods that run an encoder (prompt learning).
        images: image datasets for such methods: {'train': Dataset, 'val': Dataset}.
        seed: seed for any randomness in `fit`.
    """

    train: FeatureSet
    classnames: list[str]
    text_weights: torch.Tensor | None = None
    val: FeatureSet | None = None
    unlabeled: FeatureSet | None = None
    logit_scale: float = 100.0
    backbone: Any = None
    images: dict[str, Any] | None = None
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


class Method(ABC):
    """Base class of every registered method.

    Subclasses set `name` and `config_cls` (a frozen dataclass with documented defaults), implement `fit` and
    `logits`, and expose fitted tensors through `state_dict`/`load_state_dict`.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    #: True when the method needs the backbone and images (prompt learning) instead of cached features only.
    needs_backbone: ClassVar[bool] = False
    #: True when the method needs text weights (CLIP-only methods).
    needs_text: ClassVar[bool] = True
    #: True when `fit` uses `task.unlabeled` (transductive).
    transductive: ClassVar[bool] = False
    #: True when classes without shots get a (text-only) logit instead of an error.
    supports_empty_classes: ClassVar[bool] = False
    #: Cross-validated refits (`refit_overrides`): None = no rule (documented defaults are used), False = the
    #: method tunes nothing on validation data, True = `refit_overrides` turns the folds' choices into a config.
    cv_tunes: ClassVar[bool | None] = None
    #: The formula of the method's Jittor head (`kshot.jittor_backend.heads`), or None when it has none.
    jittor_head: ClassVar[str | None] = None
    #: Encoders `fit` trains through ('image', 'text'); such methods get the shot files in `task.images`, and with
    #: 'image' their `logits` take features of `tuned_backbone(base)` (CLIP-LoRA).
    trains_encoders: ClassVar[tuple[str, ...]] = ()
    #: True when `fit` chooses among other registered methods (`auto`): left out of default sweeps and candidates.
    selects_method: ClassVar[bool] = False

    def __init__(self, config: Any | None = None, **overrides: Any):
        if config is None:
            config = self.config_cls()
        self.config = replace_config(config, overrides)
        self.fitted_ = False

    @abstractmethod
    def fit(self, task: Task) -> "Method":
        """Fit on `task`; returns self."""

    @abstractmethod
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, D] (L2-normalised) -> logits [N, C] on the features' device."""

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Config overrides of a refit on all shots from the `fitted_meta()` of the fold fits (`cv_tunes`)."""
        return {}

    def for_classes(self, classnames: list[str], text_weights: torch.Tensor | None) -> "Method | None":
        """This fitted method moved to other class names (base-to-new), or None when it cannot classify classes
        it was not fitted on.

        Args:
            classnames: the new class names.
            text_weights: [C', D] their zero-shot classifier (None for image-only backbones).
        """
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fitted tensors (saved with safetensors)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore fitted state from `state_dict()` tensors and `fitted_meta()` values."""

    def fitted_meta(self) -> dict[str, Any]:
        """Fitted non-tensor values (chosen hyper-parameters, ...), JSON-serialisable."""
        return {}

    def exportable_head(self) -> nn.Module:
        """The fitted head as a module: L2-normalised features [N, D] -> logits [N, C] (`kshot export` hook).

        The default wraps `logits`, which suits a method whose inference is a fixed function of one image's
        features (tensors fixed at fit time, no Python branching on values): `kshot.deploy` traces it behind the
        encoder and checks the traced graph against `logits` at another batch size. A method that does not fit that
        description overrides this to raise `ExportError` saying why (transductive methods and methods that run a
        tower at inference already do, here).
        """
        self._check_fitted()
        if self.transductive:
            raise ExportError(f"{self.name} is transductive: its head is fitted on the images it classifies, so "
                              "there is no fixed graph for new images; refit it on them instead")
        if self.needs_backbone:
            raise ExportError(f"{self.name} runs the backbone's towers at inference; exporting it as a fixed graph is "
                              "not supported")
        return LogitsHead(self)

    def _check_fitted(self) -> None:
        if not self.fitted_:
            raise RuntimeError(f"{self.name}: call fit(task) before logits()")

    def save(self, path: str | Path) -> Path:
        """Write `<path>/method.json` (name, config, fitted meta) and `<path>/state.safetensors`."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_safetensors(state, path / "state.safetensors")
        doc = {
            "kshot_artifact": ARTIFACT_VERSION,
            "method": self.name,
            "config": config_to_dict(self.config),
            "meta": self.fitted_meta(),
        }
        atomic_write_text(path / "method.json", json.dumps(doc, indent=2))
        return path


class LogitsHead(nn.Module):
    """`method.logits` as a module (the default `Method.exportable_head`): features [N, D] -> logits [N, C]."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.method.logits(features)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


def replace_config(config: Any, overrides: dict[str, Any]) -> Any:
    """A validated copy of a config dataclass with `overrides` (`kshot.config.replace`): unknown keys, wrong
    types, non-finite floats and values outside a field's declared range are ConfigErrors naming the field."""
    if not dataclasses.is_dataclass(config):
        if overrides:
            raise ConfigError(f"{type(config).__name__} takes no settings, got {', '.join(overrides)}")
        return config
    return config_replace(config, overrides)


def create(name: str, **overrides: Any) -> Method:
    """Instantiate a registered method with its default config updated by `overrides` (import `kshot.methods`,
    which registers every method, rather than this module)."""
    return METHODS.get(name)(**overrides)


def load(path: str | Path) -> Method:
    """Load a method saved with `Method.save`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    doc_path = path / "method.json"
    if not doc_path.is_file():
        raise CheckpointError(f"{path}: not a kshot method artifact (no method.json)")
    try:
        doc = json.loads(doc_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{doc_path}: invalid JSON ({e})") from None
    if doc.get("kshot_artifact") != ARTIFACT_VERSION:
        raise CheckpointError(f"{doc_path}: unsupported artifact version {doc.get('kshot_artifact')!r}")
    cls = METHODS.get(doc["method"])
    method = cls(**doc.get("config", {}))
    try:
        state = load_file(str(path / "state.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'state.safetensors'}: cannot read ({e})") from None
    method.load_state_dict(state, doc.get("meta", {}))
    method.fitted_ = True
    return method
