"""Typed configuration of a continual run: network, PackNet schedule (two presets), task sequence; YAML in, dict out.

Schedule presets (PackNet, Mallya & Lazebnik, CVPR 2018):

- `official`: `arunmallya/packnet` scripts. The pretrained network is pruned 50 % per layer and retrained 10 epochs
  (lr 1e-4, x0.1 every 5, biases and BN trainable; `run_imagenet_pruning.sh`), then per task 20 epochs at lr 1e-3
  (x0.1 every 10), prune 75 %, retrain 10 epochs at 1e-4; the last task is not pruned (`run_all_sequence.sh`:
  `0.75,0.75,-1`). SGD momentum 0.9, weight decay 0, batch 32.
- `seed001`: the PackNet-Jittor README (seed 001): 75 % pruning of the pretrained network without retraining, then
  per task 50 epochs (lr 1e-3, x0.1 every 10), prune 75 %, retrain 10 epochs (lr 1e-4), the last task pruned too.
  Its code (and its log.txt) ran 20 + 10 epochs and weight decay 5e-4: override `schedule.train.epochs=20` to match
  the log. Here weight decay never touches weights of earlier tasks (the seed's Jittor code let it).

YAML loading rejects unknown keys and names the offending field (`tasks[1].trian`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kshot.config import apply_overrides, check_value, load_yaml
from kshot.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOURCES = ("imagefolder", "digits", "toyworld")
RESIZE_MODES = ("square", "short_side")
AUGMENTS = ("none", "flip", "random_crop", "random_resized_crop")
METHOD_NAMES = ("packnet", "finetune", "frozen", "individual")


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase: SGD for `epochs` epochs with step decay.

    Attributes:
        epochs: number of epochs (0 skips the phase).
        lr: learning rate of the first epoch.
        lr_decay_every: multiply the lr by `lr_decay_factor` every this many epochs (0 = constant); the official
            `utils.step_lr` rule, lr * factor ** floor(epoch_index / every).
        lr_decay_factor: the decay factor.
    """

    epochs: int
    lr: float
    lr_decay_every: int = 10
    lr_decay_factor: float = 0.1

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based `epoch`."""
        if self.lr_decay_every <= 0:
            return self.lr
        return self.lr * self.lr_decay_factor ** (epoch // self.lr_decay_every)


@dataclass(frozen=True)
class ScheduleConfig:
    """Per task: train `train` -> prune `prune` -> retrain `retrain`; before the first task, the pretrained network
    is pruned by `initial_prune` and optionally retrained (`initial_retrain`, needs `initial_task` data).

    Attributes:
        preset: the preset the values started from ('official', 'seed001' or 'custom'), for the record.
        initial_prune: fraction of each layer's pretrained weights freed before the first task; None = no initial
            pruning, the first task takes over the pretrained weights (useful for random-init networks).
        initial_retrain: retraining of the pruned pretrained network (biases and BN trainable only here).
        train: training of the freed weights on each new task.
        prune: fraction of the current task's weights freed per layer after `train`, in (0, 1).
        retrain: retraining of the kept weights after pruning.
        prune_last: prune (and retrain) after the last task too.
        momentum, weight_decay: SGD settings (weight decay only on weights the current task owns, and the head).
        batch_size: images per training step.
    """

    preset: str = "official"
    initial_prune: float | None = 0.5
    initial_retrain: PhaseConfig = PhaseConfig(10, 1e-4, 5)
    train: PhaseConfig = PhaseConfig(20, 1e-3, 10)
    prune: float = 0.75
    retrain: PhaseConfig = PhaseConfig(10, 1e-4, 10)
    prune_last: bool = False
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32


PRESETS: dict[str, ScheduleConfig] = {
    "official": ScheduleConfig(),
    "seed001": ScheduleConfig(
        preset="seed001", initial_prune=0.75, initial_retrain=PhaseConfig(0, 1e-4, 10), train=PhaseConfig(50, 1e-3, 10),
        prune=0.75, retrain=PhaseConfig(10, 1e-4, 10), prune_last=True, weight_decay=5e-4,
    ),
}


@dataclass(frozen=True)
class NetworkConfig:
    """The shared network.

    Attributes:
        arch: a timm model name (`vgg16`, `vgg16_bn`, `resnet50`, any timm CNN) or a tiny test network
            (`tiny_vgg`, `tiny_vgg_bn`, `tiny_resnet`; see `networks.py`).
        pretrained: load timm's pretrained weights (needs network access or the HF cache).
        weights: a local weights file (.safetensors/.pth) for the timm model, loaded with timm's own loader
            (`pretrained_cfg_overlay=dict(file=...)`); implies pretrained.
        drop_rate: timm's `drop_rate` (dropout in VGG's fc6/fc7); None = timm's default (0). The official code used
            torchvision's VGG, which has dropout 0.5 there.
    """

    arch: str = "vgg16"
    pretrained: bool = True
    weights: str | None = None
    drop_rate: float | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One task of the sequence. Fields by source:

    - `imagefolder`: `train`, `test` folders (`root/<class>/<img>`; class = sorted folder name).
    - `digits`: scikit-learn's 8x8 digits, classes `classes`, a stratified `test_fraction` split by `split_seed`.
    - `toyworld`: kshot's toy world, world class ids `classes` (or all classes of `domains`), `n_train`/`n_test`
      images per class.

    Attributes:
        name: unique task name (heads, logs, reports).
        source: 'imagefolder' | 'digits' | 'toyworld'.
        num_classes: expected class count; a mismatch with the data is an error (None = take the data's).
        image_size: side of the square network input in pixels.
        resize: 'square' (resize to image_size x image_size, CUBS/Cars in the paper) or 'short_side' (short side to
            `resize_size`, then a centre crop; Flowers). Ignored by in-memory sources (always square).
        resize_size: short side for 'short_side' (default round(image_size * 256 / 224), 256 for 224).
        train_augment: 'none' | 'flip' | 'random_crop' (short side, random crop, flip: the seed's Flowers) |
            'random_resized_crop' (short side, RandomResizedCrop, flip: the official Flowers loader).
        mean, std: input normalisation (ImageNet's by default).
        prune: per-task pruning ratio overriding `schedule.prune`.
        limit: keep at most this many images per split (quick smoke runs); None = all.
    """

    name: str
    source: str = "imagefolder"
    train: str | None = None
    test: str | None = None
    num_classes: int | None = None
    image_size: int = 224
    resize: str = "square"
    resize_size: int | None = None
    train_augment: str = "flip"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    prune: float | None = None
    limit: int | None = None
    classes: tuple[int, ...] = ()
    domains: tuple[str, ...] = ()
    test_fraction: float = 0.25
    split_seed: int = 0
    n_train: int = 32
    n_test: int = 16


@dataclass(frozen=True)
class ContinualConfig:
    """A whole run.

    Attributes:
        name: run name (reports).
        network: the shared network.
        schedule: the PackNet schedule (baselines train `train` then `retrain` epochs per task, without pruning).
        tasks: the sequence, in training order.
        initial_task: data for `schedule.initial_retrain` (e.g. ImageNet); None = no initial retraining.
        methods: what `run` trains: 'packnet', and the baselines 'finetune', 'frozen', 'individual'.
        seed: seeds initialisation, data order and dropout of every phase.
        device: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...
        num_workers: DataLoader workers for image folders.
        eval_batch_size: images per evaluation step.
        eval_every_epoch: evaluate the current task's test split after every epoch (the official code and the seed
            log this; it is never used to select epochs: the last epoch is kept).
    """

    name: str = "sequence"
    network: NetworkConfig = NetworkConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    tasks: tuple[TaskSpec, ...] = ()
    initial_task: TaskSpec | None = None
    methods: tuple[str, ...] = METHOD_NAMES
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    eval_batch_size: int = 128
    eval_every_epoch: bool = True

    def __post_init__(self) -> None:
        validate(self)


RUNTIME_FIELDS = ("name", "methods", "device", "num_workers", "eval_batch_size", "eval_every_epoch")
"""Fields a resumed run may change freely (left out of `config_hash` and `diff_configs`): they do not change what a
method learns, except that another device or worker count changes floating-point sums and augmentation draws."""


def _check_ratio(value: float | None, where: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{where}: pruning ratio must be in (0, 1), got {value!r}")


def validate(cfg: ContinualConfig) -> None:
    """Raise ConfigError on the first invalid value, naming the field."""
    s = cfg.schedule
    _check_ratio(s.prune, "schedule.prune")
    _check_ratio(s.initial_prune, "schedule.initial_prune", allow_none=True)
    for name in ("initial_retrain", "train", "retrain"):
        ph: PhaseConfig = getattr(s, name)
        if ph.epochs < 0 or ph.lr <= 0 or ph.lr_decay_every < 0 or ph.lr_decay_factor <= 0:
            raise ConfigError(f"schedule.{name}: epochs >= 0, lr > 0, lr_decay_every >= 0 and factor > 0 needed, "
                              f"got {ph}")
    if s.train.epochs == 0:
        raise ConfigError("schedule.train.epochs must be >= 1")
    if s.batch_size < 1 or s.momentum < 0 or s.weight_decay < 0:
        raise ConfigError(f"schedule: batch_size >= 1, momentum >= 0, weight_decay >= 0 needed, got {s}")
    if not cfg.tasks:
        raise ConfigError("the config lists no tasks")
    if len(cfg.tasks) > 253:
        raise ConfigError(f"at most 253 tasks fit a uint8 mask, got {len(cfg.tasks)}")
    names = [t.name for t in cfg.tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"task names must be unique, repeated: {dup}")
    for i, t in enumerate([*cfg.tasks, *([cfg.initial_task] if cfg.initial_task else [])]):
        where = f"tasks[{i}] ({t.name!r})" if i < len(cfg.tasks) else "initial_task"
        _check_task(t, where)
    unknown = [m for m in cfg.methods if m not in METHOD_NAMES]
    if unknown or not cfg.methods:
        raise ConfigError(f"methods: unknown {unknown} (known: {list(METHOD_NAMES)})")
    if s.initial_retrain.epochs > 0 and s.initial_prune is not None and cfg.initial_task is None \
            and "packnet" in cfg.methods:
        raise ConfigError(
            f"schedule.initial_retrain.epochs={s.initial_retrain.epochs} retrains the pruned pretrained network, which "
            "needs its data: set `initial_task` (e.g. an ImageNet image folder) or `schedule.initial_retrain.epochs: 0`"
        )


def _check_task(t: TaskSpec, where: str) -> None:
    if not t.name or "." in t.name or "/" in t.name or t.name.startswith("_"):
        raise ConfigError(f"{where}: task name must be non-empty, without '.' or '/', not starting with '_', "
                          f"got {t.name!r}")
    if t.source not in SOURCES:
        raise ConfigError(f"{where}: source must be one of {SOURCES}, got {t.source!r}")
    if t.resize not in RESIZE_MODES:
        raise ConfigError(f"{where}: resize must be one of {RESIZE_MODES}, got {t.resize!r}")
    if t.train_augment not in AUGMENTS:
        raise ConfigError(f"{where}: train_augment must be one of {AUGMENTS}, got {t.train_augment!r}")
    if t.image_size < 1 or (t.resize_size is not None and t.resize_size < t.image_size):
        raise ConfigError(f"{where}: image_size >= 1 and resize_size >= image_size needed")
    if t.prune is not None:
        _check_ratio(t.prune, f"{where}.prune")
    if t.num_classes is not None and t.num_classes < 1:
        raise ConfigError(f"{where}: num_classes must be >= 1, got {t.num_classes}")
    if t.source == "imagefolder" and (not t.train or not t.test):
        raise ConfigError(f"{where}: an imagefolder task needs `train` and `test` folders")
    if t.source == "digits" and (not t.classes or any(not 0 <= c <= 9 for c in t.classes)):
        raise ConfigError(f"{where}: a digits task needs `classes`, a list of digits 0-9, got {list(t.classes)}")
    if t.source == "toyworld" and not (t.classes or t.domains):
        raise ConfigError(f"{where}: a toyworld task needs `classes` (world class ids) or `domains`")
    if not 0.0 < t.test_fraction < 1.0:
        raise ConfigError(f"{where}: test_fraction must be in (0, 1), got {t.test_fraction}")


# ---------------------------------------------------------------- dict <-> dataclass


def _convert(tp: Any, value: Any, where: str) -> Any:
    """`kshot.config.check_value` (types, finiteness; nested dataclasses through this module's `from_dict`)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        tp = [a for a in args if a is not type(None)][0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    return check_value(tp, value, where, {"nonempty": False})


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys (named with their path)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = dict(data)
    if cls is ScheduleConfig:
        preset = data.pop("preset", "official")
        if preset not in PRESETS and preset != "custom":
            raise ConfigError(f"{where}.preset: unknown preset {preset!r} (known: {sorted(PRESETS)} or 'custom')")
        base = PRESETS.get(preset, ScheduleConfig(preset="custom"))
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                raise ConfigError(f"{where}.{key}: unknown key (known: {sorted(names)})")
            cur = getattr(base, key)
            if isinstance(cur, PhaseConfig) and isinstance(value, dict):
                value = {**dataclasses.asdict(cur), **value}
            kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
        return replace(base, **kwargs)
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {sorted(names)})")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(cfg: Any) -> Any:
    """JSON-able nested dict of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ContinualConfig:
    """Read a YAML run config and apply `key.path=value` overrides (`kshot.config`'s grammar; tasks by name or
    index).

    Example override: `schedule.train.epochs=2`, `tasks.cubs.train=/data/cubs/train`, `methods=[packnet]`.
    """
    path = Path(path)
    data = apply_overrides(load_yaml(path, "continual config"), overrides)
    try:
        return from_dict(ContinualConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def config_hash(cfg: ContinualConfig) -> str:
    """16 hex chars over everything that changes results (runtime-only fields excluded)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences `path: old -> new` between two config dicts (runtime-only fields skipped)."""
    out: list[str] = []
    keys = list(dict.fromkeys([*old, *new]))
    for k in keys:
        if not prefix and k in RUNTIME_FIELDS:
            continue
        path = f"{prefix}{k}"
        a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_configs(a, b, path + ".")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
                isinstance(x, dict) for x in a + b):
            for i, (x, y) in enumerate(zip(a, b)):
                out += diff_configs(x, y, f"{path}[{i}].")
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def config_from_dict(data: dict[str, Any]) -> ContinualConfig:
    """Inverse of `to_dict` for a whole run config (used when reading checkpoints)."""
    return from_dict(ContinualConfig, data)


def with_methods(cfg: ContinualConfig, methods: list[str] | tuple[str, ...]) -> ContinualConfig:
    """The same config restricted to `methods`."""
    return replace(cfg, methods=tuple(methods))


__all__ = [
    "ContinualConfig", "NetworkConfig", "PRESETS", "PhaseConfig", "ScheduleConfig", "TaskSpec", "apply_overrides",
    "config_from_dict", "config_hash", "diff_configs", "from_dict", "load_config", "to_dict", "with_methods",
]
