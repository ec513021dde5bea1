"""Few-shot selection as a seeded, saved artifact: K shots per class, a validation draw, shots files, base/new split.

Protocol facts (reference/methods.md §0): Dassl's `generate_fewshot_dataset` draws K items per class without
replacement, val gets min(K, 4) shots; CoOp's `subsample_classes` makes the first ceil(n/2) labels 'base'.
The challenge lets each team pick 4 images per class from the train.txt pool; the pick is saved as a file in the
train.txt format (`<relpath> <label>`), so it can be shared and re-used byte for byte.

Sampling rules (our choices, documented because results depend on them):
- Each class gets its own generator `default_rng([seed, class])` and takes the first K of a permutation of its pool
  (the pool in dataset order). So a class's shots do not change when other classes are added or removed (e.g. the
  B-round zero-shot classes), and shots are nested: the K=1 pick is inside the K=2 pick, and so on.
- Unlabelled items (label -1) are never drawn.
- A class in `classes` with fewer than K items is a `DataError` naming it, unless `allow_fewer=True`, which takes
  all of them (possibly none) and logs a warning. Classes with no items at all only exist for the sampler when they
  are listed in `classes`; by default the classes are those present in `labels`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from kshot.data.dataset import Dataset, Item
from kshot.data.listfile import parse_list_file, write_list_file
from kshot.errors import DataError

log = logging.getLogger(__name__)

_VAL_STREAM = 1  # extra entropy word so validation draws never reuse the shot permutation


def default_val_shots(k: int) -> int:
    """Validation shots per class for K training shots: min(max(K, 1), 4) (Dassl/CoOp; 1 for zero-shot)."""
    return min(max(k, 1), 4)


def _as_labels(labels: np.ndarray) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 1:
        raise DataError(f"labels must be a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _int_at_least(x: object, lo: int, what: str) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < lo:
        raise DataError(f"{what} must be an integer >= {lo}, got {x!r}")
    return int(x)


def _draw(labels: np.ndarray, candidates: np.ndarray, k: int, seed: int, classes: Sequence[int] | None,
          allow_fewer: bool, stream: tuple[int, ...], what: str) -> np.ndarray:
    k = _int_at_least(k, 1, f"{what}: K")
    seed = _int_at_least(seed, 0, f"{what}: seed")
    cand_labels = labels[candidates]
    wanted = np.unique(cand_labels[cand_labels >= 0]) if classes is None else np.asarray(list(classes), np.int64)
    out, short = [], []
    for c in wanted.tolist():
        pool = candidates[cand_labels == c]
        if len(pool) < k:
            short.append((c, len(pool)))
            if not allow_fewer:
                continue
        rng = np.random.default_rng([int(seed), int(c), *stream])
        out.append(np.sort(rng.permutation(pool)[:k]))
    if short and not allow_fewer:
        listed = ", ".join(f"class {c} has {n}" for c, n in short[:10])
        raise DataError(f"{what}: K={k} but {len(short)} class(es) have fewer items: {listed}"
                        f"{' ...' if len(short) > 10 else ''} (choose a smaller K; from Python, allow_fewer=True "
                        "takes what there is)")
    if short:
        log.warning("%s: %d class(es) have fewer than K=%d items and get all they have (e.g. class %d: %d)", what,
                    len(short), k, short[0][0], short[0][1])
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def sample_k_shot(labels: np.ndarray, k: int, seed: int, *, classes: Sequence[int] | None = None,
                  allow_fewer: bool = False) -> np.ndarray:
    """Pick K items per class without replacement.

    Args:
        labels: int [N] class ids; -1 = unlabelled (never picked).
        k: shots per class.
        seed: non-negative seed (the protocol uses 1, 2, 3).
        classes: the classes that must get shots (default: those present in `labels`).
        allow_fewer: let a class with fewer than K items give all it has instead of raising.

    Returns:
        int64 indices into `labels`, grouped by class (ascending), ascending within a class.
    """
    labels = _as_labels(labels)
    return _draw(labels, np.arange(len(labels)), k, seed, classes, allow_fewer, (), "sample_k_shot")


def sample_val(labels: np.ndarray, exclude_indices: np.ndarray | Sequence[int], k_val: int, seed: int, *,
               classes: Sequence[int] | None = None, allow_fewer: bool = True) -> np.ndarray:
    """Pick `k_val` validation items per class among those not in `exclude_indices` (usually the shots).

    Validation is best effort by default: a class with fewer remaining items gives what it has (`allow_fewer`).
    Use `default_val_shots(K)` = min(K, 4) for the Dassl protocol.

    Returns:
        int64 indices into `labels`, disjoint from `exclude_indices`, grouped by class.
    """
    labels = _as_labels(labels)
    mask = np.ones(len(labels), dtype=bool)
    ex = np.asarray(exclude_indices, dtype=np.int64)
    if ex.size and (ex.min() < 0 or ex.max() >= len(labels)):
        raise DataError(f"sample_val: exclude_indices out of range for {len(labels)} labels")
    mask[ex] = False
    return _draw(labels, np.flatnonzero(mask), k_val, seed, classes, allow_fewer, (_VAL_STREAM,), "sample_val")


def write_shots_file(dataset: Dataset, indices: np.ndarray | Sequence[int], path: Path | str) -> None:
    """Save a selection as `<relpath> <label>` lines (the train.txt format), in the order of `indices`."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
        raise DataError(f"write_shots_file: indices out of range for a dataset of {len(dataset)} items")
    rows = []
    for i in idx.tolist():
        it: Item = dataset.items[i]
        if it.label is None:
            raise DataError(f"write_shots_file: item {i} ({it.path}) has no label")
        rows.append((it.path, it.label))
    write_list_file(path, rows)


def read_shots_file(path: Path | str, dataset: Dataset) -> np.ndarray:
    """Map a shots file back to indices into `dataset` (file order).

    Every listed path must be an item of `dataset` with the same label; separators may be '\\' or '/'.

    Returns:
        int64 indices.
    """
    path = Path(path)
    index = {it.path: i for i, it in enumerate(dataset.items)}
    out = []
    for e in parse_list_file(path):
        i = index.get(e.path)
        if i is None:
            raise DataError(f"{path}:{e.line}: {e.path!r} is not an item of dataset {dataset.name!r} ({dataset.root})")
        if dataset.items[i].label != e.label:
            raise DataError(f"{path}:{e.line}: {e.path!r} has label {e.label} here but {dataset.items[i].label} in "
                            f"the dataset")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def base_new_split(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Base-to-new class split (CoOp `subsample_classes`): base = the first ceil(n/2) labels, new = the rest.

    Returns:
        (base ids, new ids), int64, ascending.
    """
    num_classes = _int_at_least(num_classes, 2, "base_new_split: num_classes")
    m = math.ceil(num_classes / 2)
    return np.arange(m, dtype=np.int64), np.arange(m, num_classes, dtype=np.int64)


def select_classes(dataset: Dataset, classes: Sequence[int] | np.ndarray, *, relabel: bool = True) -> Dataset:
    """Keep the items of `classes`; with `relabel`, labels become 0..len(classes)-1 in the given order and the class
    lists are cut to match (as CoOp does for base and new)."""
    cls = [int(c) for c in classes]
    bad = [c for c in cls if not 0 <= c < dataset.num_classes]
    if bad:
        raise DataError(f"select_classes: class ids {bad[:10]} outside 0..{dataset.num_classes - 1}")
    if len(set(cls)) != len(cls):
        raise DataError("select_classes: repeated class ids")
    pos = {c: j for j, c in enumerate(cls)}
    keep = [it for it in dataset.items if it.label in pos]
    if not relabel:
        return dataset.subset([i for i, it in enumerate(dataset.items) if it.label in pos])
    items = [Item(it.path, pos[it.label], it.domain) for it in keep]  # type: ignore[index]

    def cut(xs: list[str] | None) -> list[str] | None:
        return None if xs is None else [xs[c] for c in cls]

    return replace(dataset, items=items, classnames=cut(dataset.classnames), class_domains=cut(dataset.class_domains),
                   raw_classnames=cut(dataset.raw_classnames), skipped=list(dataset.skipped))
