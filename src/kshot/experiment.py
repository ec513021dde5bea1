"""The experiment glue every protocol, the CLI, the demo and the pipelines share (one copy of each step).

dataset -> shots/val selection (`select_shots`, the CoOp rule once) -> cached features -> text classifier ->
`build_task` (capabilities read from the method) -> method -> predictions; `zeroshot_on` classifies a class list
without shots; a `FittedRun` is a saved method with its task description and shots file; `ResultStore` +
`run_sweep` are the one resumable loop over `results.jsonl` cells.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.backbones.base import Backbone
from kshot.config import config_hash, parse_sets
from kshot.data.classes import match_dataset
from kshot.data.dataset import Dataset
from kshot.data.fewshot import default_val_shots, read_shots_file, sample_k_shot, sample_val, write_shots_file
from kshot.errors import CheckpointError, ConfigError, DataError
from kshot.features.augment import AugmentPolicy
from kshot.features.cache import FeatureStore
from kshot.features.featureset import FeatureSet
from kshot.methods import METHODS, Method, Task, create, load
from kshot.methods.base import config_to_dict
from kshot.text.classifier import build_text_classifier
from kshot.text.templates import PromptSpec, dataset_template, load_prompt_file
from kshot.outputs import atomic_write_bytes, atomic_write_text
from kshot.progress import bar as progress_bar

log = logging.getLogger(__name__)


@dataclass
class ShotSelection:
    """Indices into the training pool: the K shots per class and a disjoint validation split (`default_val_shots`)."""

    shots: np.ndarray
    val: np.ndarray


def draw_selection(labels: np.ndarray, k: int, seed: int, *, classes: Sequence[int] | None = None,
                   k_val: int | None = None, allow_fewer: bool = True, shots: np.ndarray | None = None
                   ) -> ShotSelection:
    """K shots per class (seeded, or the given `shots`) and a disjoint validation split of `k_val` per class.

    Args:
        labels: int [N] pool labels.
        k: shots per class (0: no shots, zero-shot methods).
        seed: sampling seed.
        classes: the classes to draw from (default: all present).
        k_val: validation shots per class; None = the CoOp rule `default_val_shots(k)` = min(max(K, 1), 4).
        allow_fewer: a class with fewer than K items gives what it has.
        shots: fixed shot indices (a shots file) instead of a seeded draw.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if shots is None:
        shots = (np.asarray(sample_k_shot(labels, k, seed, classes=classes, allow_fewer=allow_fewer), np.int64)
                 if k > 0 else np.zeros(0, np.int64))
    kv = default_val_shots(k) if k_val is None else k_val
    val = (np.asarray(sample_val(labels, shots, kv, seed, classes=classes), np.int64) if kv > 0
           else np.zeros(0, np.int64))
    return ShotSelection(np.asarray(shots, np.int64), val)


def drawn_indices(labels: np.ndarray, shots: Sequence[int], seeds: Sequence[int], k_val: int | None = None
                  ) -> np.ndarray:
    """Sorted pool indices of every shot and validation image any (K, seed) of a sweep draws."""
    parts = [np.zeros(0, np.int64)]
    for k in shots:
        for s in seeds:
            sel = draw_selection(labels, k, s, k_val=k_val)
            parts += [sel.shots, sel.val]
    return np.unique(np.concatenate(parts))


def require_labels(dataset: Dataset, what: str = "the training pool") -> Dataset:
    """`dataset` if every item has a label and it has classes, else a DataError naming `what` (a flat folder of
    images read as a training pool)."""
    if not dataset.classnames or not dataset.has_labels:
        raise DataError(f"{what} ({dataset.root}) has unlabelled images: a training pool needs labels, e.g. "
                        "root/<class>/<image> folders, a split file or a '<path> <label>' list")
    return dataset


def select_shots(pool: Dataset, k: int, seed: int, *, k_val: int | None = None, allow_fewer: bool = False,
                 shots_file: str | Path | None = None) -> ShotSelection:
    """K shots per class of a dataset (seeded, or read from an existing shots file) and a validation split.

    Raises:
        DataError: an unlabelled pool, or a shots file whose per-class count disagrees with `k` (it would be
            recorded as K shots).
    """
    require_labels(pool)
    shots = None
    if shots_file is not None and Path(shots_file).is_file():
        shots = np.asarray(read_shots_file(shots_file, pool), dtype=np.int64)
        counts = np.bincount(pool.labels[shots], minlength=1) if len(shots) else np.zeros(1, np.int64)
        per_class = sorted(set(counts[counts > 0].tolist()))
        if per_class != [k]:
            raise DataError(f"{shots_file} holds {', '.join(map(str, per_class)) or 'no'} shot(s) per class but "
                            f"-k/--shots is {k}: pass -k {per_class[-1] if per_class else 0} or another shots file")
    return draw_selection(pool.labels, k, seed, k_val=k_val, allow_fewer=allow_fewer, shots=shots)


def prompt_spec_for(dataset: Dataset, templates: list[str] | None = None, prompt_file: str | Path | None = None
                    ) -> PromptSpec:
    """Prompts: a JSON file if given, else explicit templates, else the dataset's CoOp default template."""
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


def build_task(method: Method | type[Method], train: FeatureSet, classnames: Sequence[str],
               text_weights: torch.Tensor | None, *, val: FeatureSet | None = None, test: FeatureSet | None = None,
               logit_scale: float = 100.0, backbone: Backbone | None = None, images: dict[str, Any] | None = None,
               seed: int = 0) -> Task:
    """The Task `method` may see: the test features as `unlabeled` only if it is `transductive`, the backbone only
    if it `needs_backbone` (capabilities read from the method class, never from its name); an empty `val` is None.

    Args:
        method: the method (or its class) the Task is for.
        train: the labelled shots [N, D]; classnames: the C names; text_weights: [C, D] or None.
        val, test: validation features and the test features (given to transductive methods only).
    """
    return Task(train=train, val=val if val is not None and len(val) else None, classnames=list(classnames),
                text_weights=text_weights, unlabeled=test if method.transductive else None, logit_scale=logit_scale,
                backbone=backbone if method.needs_backbone else None, images=images, seed=seed)


def preflight(methods: Sequence[str], overrides: dict[str, dict[str, Any]], classnames: Sequence[str],
              backbone: Backbone | None, *, images: bool = False) -> None:
    """Create every method of a run with its overrides and run its `Method.preflight` (no training), before the
    first fit; every failure is reported in one error (one '; '-separated line), not after hours of others.

    Args:
        methods: registered names; overrides: {method: {field: value}}.
        classnames: all class names the run fits and scores (base-to-new: base and new).
        backbone: what the run hands to methods that need one (None: nothing); images: whether it hands shot images.
    """
    problems: list[ConfigError | DataError] = []
    for name in dict.fromkeys(methods):
        try:
            create(name, **overrides.get(name, {})).preflight(list(classnames), backbone, images=images)
        except (ConfigError, DataError) as e:
            problems.append(e)
    if problems:
        kind = type(problems[0]) if len(problems) == 1 else ConfigError
        raise kind("; ".join(map(str, problems)) + " (checked before any training)")


def empty_features(dim: int) -> FeatureSet:
    """A FeatureSet without items (the train split of a zero-shot Task)."""
    return FeatureSet(torch.zeros(0, dim), torch.zeros(0, dtype=torch.long), [])


def zeroshot_on(classnames: Sequence[str], text_weights: torch.Tensor, logit_scale: float = 100.0) -> Method:
    """The fitted zero-shot classifier of a class list (no shots)."""
    if text_weights is None:
        raise ConfigError("zero-shot needs a text tower: this backbone has none (fit a method on shots instead)")
    task = Task(train=empty_features(text_weights.shape[1]), classnames=list(classnames), text_weights=text_weights,
                logit_scale=logit_scale)
    return create("zeroshot").fit(task)


def pool_features(store: FeatureStore, backbone: Backbone, pool: Dataset, indices: np.ndarray,
                  policy: AugmentPolicy = AugmentPolicy(), name: str = "train") -> FeatureSet:
    """Features of `pool[indices]` only (the whole pool may be 180k images: extract just what is used).

    The returned FeatureSet is indexed like `indices`; use `remap_selection` to re-index selections into it.
    """
    return store.get(backbone, pool.subset(indices), policy, name=name)


def test_features(store: FeatureStore, backbone: Backbone, test: Dataset, classnames: Sequence[str], *,
                  name: str = "test", what: str | None = None, model: str = "the training pool") -> FeatureSet:
    """Features of a labelled test dataset, labels matched by name to `classnames` (the model's class list).

    A model class without test images is fine; a test class the model does not know (e.g. a renamed folder) is a
    DataError naming it. The cache entry is the test dataset's own (matching relabels after loading).
    """
    match = match_dataset(test, classnames, what=what or f"test data {test.root}", model=model)
    fs = store.get(backbone, test, name=name)
    if match.identity:
        return fs
    return replace(fs, labels=torch.as_tensor(match.labels(fs.labels.cpu().numpy()), device=fs.labels.device))


def remap_selection(selection: ShotSelection) -> tuple[np.ndarray, ShotSelection]:
    """Indices used by a selection, and the selection re-indexed into that compact list."""
    used = np.unique(np.concatenate([selection.shots, selection.val]))
    pos = {int(i): p for p, i in enumerate(used)}
    return used, ShotSelection(np.array([pos[int(i)] for i in selection.shots], dtype=np.int64),
                               np.array([pos[int(i)] for i in selection.val], dtype=np.int64))


def parse_overrides(pairs: Iterable[str], method: str) -> dict[str, Any]:
    """`--set` pairs of a command with one method: `key=value` or `<method>.key=value` (kshot.config's grammar)."""
    return parse_sets(pairs, [method], default=method).get(method, {})


def method_overrides(pairs: Iterable[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`--set method.key=value` pairs of a multi-method run, every name and value checked before any work starts
    (a bare key is allowed when the run has one method)."""
    for m in methods:
        METHODS.check(m)
    sets = parse_sets(pairs, methods, default=methods[0] if len(methods) == 1 else None)
    for m in methods:
        create(m, **sets.get(m, {}))  # validates the values (ConfigError naming the field)
    return sets


def method_config_hash(method: str, overrides: dict[str, Any]) -> str:
    """12 hex chars over a method's name and its full (defaults + overrides) config."""
    return config_hash({"method": method, "config": config_to_dict(create(method, **overrides).config)})


def predict_logits(method: Method, features: FeatureSet, batch_size: int = 65536) -> torch.Tensor:
    """logits [N, C] computed in batches (bounded memory on large test sets)."""
    chunks = [method.logits(features.features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def method_features(method: Method, store: FeatureStore, backbone: Backbone, dataset: Dataset,
                    frozen: FeatureSet | None = None, name: str = "val") -> tuple[FeatureSet, str]:
    """(features `method.logits` takes for `dataset`, the spec of the encoder that made them).

    A fitted method that trains through the image encoder (`trains_encoders` holds 'image') classifies features of
    its own `tuned_backbone(backbone)` (cached under that encoder's fingerprint); any other method those of
    `backbone` (`frozen` when already computed).
    """
    if "image" in method.trains_encoders and len(dataset):
        tuned = method.tuned_backbone(backbone)
        return store.get(tuned, dataset, name=name), tuned.spec
    return (frozen if frozen is not None else store.get(backbone, dataset, name=name)), backbone.spec


def fit_report(method: Method, val: FeatureSet | None, encoder: str | None = None) -> dict[str, Any]:
    """What `kshot fit` records and prints about a fit: validation top-1 (percent, None without a validation split),
    the number of validation images, the encoder whose features were scored (`method_features`; an encoder-tuning
    method is scored on its tuned encoder) and, for a method that `selects_method` (`auto`), its choice and why."""
    n = len(val) if val is not None else 0
    rep: dict[str, Any] = {"val_images": n, "val_top1_percent": None}
    if encoder is not None:
        rep["val_encoder"] = encoder
    if n:
        pred = predict_logits(method, val).argmax(1).cpu()
        rep["val_top1_percent"] = round(100.0 * float((pred == val.labels.cpu()).float().mean()), 2)
    if method.selects_method:
        meta = method.fitted_meta()
        rep["auto"] = {"chosen": meta["chosen"], "reason": meta["reason"]}
    return rep


# ---------------------------------------------------------------- fitted runs


@dataclass
class FittedRun:
    """A `kshot fit` folder: the method artifact (`method.json` + `state.safetensors`), `task.json` (backbone,
    fingerprint, classes, shots, seed, data, prompts) and `shots.txt` (the shots, as a list file).

    Attributes:
        method: the fitted method.
        info: the task description (the `task.json` document).
    """

    method: Method
    info: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def describe(backbone: Backbone, pool: Dataset, spec: PromptSpec, *, method: str, shots: int, seed: int,
                 data: str | Path) -> dict[str, Any]:
        """The `task.json` document of a fit."""
        return {"backbone": backbone.spec, "fingerprint": backbone.fingerprint, "classnames": pool.classnames,
                "class_domains": pool.class_domains, "shots": shots, "seed": seed, "data": str(data),
                "method": method, "prompts": {"templates": spec.templates, "per_domain": spec.per_domain,
                                              "per_class": spec.per_class}}

    def save(self, out: str | Path, pool: Dataset | None = None, shots: np.ndarray | None = None,
             report: dict[str, Any] | None = None) -> Path:
        """Write the artifact (`report`, the fit's `fit_report`, also into its method.json), `task.json` and (with
        `pool` and `shots`) `shots.txt`, each file atomically."""
        out = Path(out)
        self.method.save(out, report=report)
        if pool is not None and shots is not None:
            write_shots_file(pool, shots, out / "shots.txt")  # atomic (kshot.data.listfile)
        atomic_write_text(out / "task.json", json.dumps(self.info, indent=2))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "FittedRun":
        """Read a `kshot fit` folder (CheckpointError when `task.json` is missing or unreadable)."""
        folder = Path(folder)
        method = load(folder)
        try:
            info = json.loads((folder / "task.json").read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{folder}: no task.json (not a `kshot fit` folder)") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{folder / 'task.json'}: invalid JSON ({e})") from None
        return cls(method, info)

    def check_backbone(self, backbone: Backbone, where: str | Path = "artifact") -> None:
        """Refuse a backbone that no longer loads as the weights the run was fitted on."""
        want = self.info.get("fingerprint")
        if backbone.fingerprint != want:
            raise CheckpointError(f"{where} was fitted on backbone {want} but {self.info.get('backbone')} now loads "
                                  f"as {backbone.fingerprint} (weights or preprocessing changed)")


# ---------------------------------------------------------------- the one resumable sweep loop


def data_identity(fs: FeatureSet) -> str:
    """12 hex chars over a labelled feature set's paths and labels (the test data's identity in a cell key)."""
    h = hashlib.sha256()
    for p in fs.paths:
        h.update(str(p).encode("utf-8", "surrogateescape") + b"\0")
    h.update(np.asarray(fs.labels.cpu(), dtype=np.int64).tobytes())
    return h.hexdigest()[:12]


class ResultStore:
    """Append-only JSONL of finished cells, keyed by (protocol, dataset, backbone, test data, method, config, shots,
    seed).

    A torn last line (an interrupted write) is cut off when the store is opened, so the next record starts on a line
    of its own; a cell recorded twice (two runs into one folder) counts once (the latest record).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._by_key: dict[tuple, dict[str, Any]] = {}
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        raw = self.path.read_bytes()
        good = 0
        for n, line in enumerate(raw.splitlines(keepends=True), 1):
            complete = line.endswith(b"\n")
            try:
                rec = json.loads(line) if line.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                if complete:
                    log.warning("%s:%d: skipping an unreadable line", self.path, n)
                    good += len(line)
                    continue
                rec, complete = None, False
            if not complete:
                log.warning("%s:%d: cutting off a torn last line (interrupted write)", self.path, n)
                break
            good += len(line)
            if isinstance(rec, dict):
                self._by_key[self.key(rec)] = rec
        if good < len(raw):
            atomic_write_bytes(self.path, raw[:good])

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._by_key.values())

    @staticmethod
    def key(rec: dict[str, Any]) -> tuple:
        return (rec.get("protocol", "fewshot"), rec.get("dataset"), rec.get("backbone"), rec.get("test"),
                rec.get("method"), rec.get("config_hash"), rec.get("shots"), rec.get("seed"))

    def done(self) -> set[tuple]:
        return set(self._by_key)

    def append(self, rec: dict[str, Any]) -> None:
        """Append one record (a line, fsynced); a failed write (disk full, size limit) is cut off again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = memoryview((json.dumps(rec) + "\n").encode("utf-8"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except BaseException as e:
                os.ftruncate(fd, size)  # the file stays as it was: no torn line
                if isinstance(e, OSError) and e.filename is None:
                    raise OSError(e.errno, e.strerror, str(self.path)) from e
                raise
        finally:
            os.close(fd)
        self._by_key[self.key(rec)] = rec


@dataclass(frozen=True)
class Sweep:
    """What a sweep records in every cell key besides (method, shots, seed)."""

    protocol: str
    dataset: str
    backbone: str
    test: str

    def record_key(self, method: str, config_hash_: str, shots: int, seed: int) -> tuple:
        return (self.protocol, self.dataset, self.backbone, self.test, method, config_hash_, shots, seed)


def run_sweep(sweep: Sweep, methods: Sequence[str], shots: Sequence[int], seeds: Sequence[int],
              overrides: dict[str, dict[str, Any]], store: ResultStore,
              cell: Callable[[str, int, int, dict[str, Any]], dict[str, Any]],
              progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every missing (method, K, seed) cell with `cell(method, K, seed, overrides) -> record`; returns the
    records (old and new) of this sweep. Each record gets the sweep's key fields before it is appended."""
    hashes = {m: method_config_hash(m, overrides.get(m, {})) for m in methods}
    cells = [(m, k, s) for m in methods for k in shots for s in seeds]
    done = store.done()
    bar = progress_bar(cells, desc=sweep.dataset, unit="cell", leave=False)
    for method, k, seed in bar:
        if sweep.record_key(method, hashes[method], k, seed) in done:
            continue
        bar.set_postfix_str(f"{method} K={k} seed={seed}")
        rec = {"protocol": sweep.protocol, "dataset": sweep.dataset, "backbone": sweep.backbone, "test": sweep.test,
               "method": method, "shots": k, "seed": seed, "config_hash": hashes[method]}
        rec.update(cell(method, k, seed, overrides.get(method, {})))
        store.append(rec)
        if progress:
            progress(rec)
    keys = {sweep.record_key(m, hashes[m], k, s) for m, k, s in cells}
    return [r for r in store.records if ResultStore.key(r) in keys]


def jsonable(value: Any) -> Any:
    """`value` if JSON can encode it, else its string form (fitted metadata in result records)."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
