"""Match a labelled dataset's classes to a model's class list by name, never by index.

Two folders of one dataset (or a test set given apart from the training pool) may hold different class sets: a
class folder missing from the test split shifts every later index, a renamed folder is a class the model never saw.
`match_classes` maps each class of the data to its index in the model's list by name (exact, else ignoring case
and `_`/space differences); a class of the model without data is fine; a class of the data unknown to the model is
an error naming it, or (`unknown="keep"`) appended after the model's classes so that its images count as wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np

from kshot.data.dataset import Dataset, Item
from kshot.errors import DataError

Unknown = Literal["error", "keep"]


def norm_name(name: str) -> str:
    """A class name compared loosely: lower case, `_` as space, runs of spaces collapsed."""
    return " ".join(str(name).replace("_", " ").lower().split())


@dataclass(frozen=True)
class ClassMatch:
    """How the classes of some data map onto a model's class list.

    Attributes:
        index: int64 [C_data], the model-side index of each data class (>= len(model classes) for unknown ones,
            -1 for an unknown one without items).
        classnames: the model's class names followed by the unknown data classes (the scoring class list).
        unknown: data classes (with items) the model does not know, as their source spells them.
        missing: names of model classes the data holds no item of.
    """

    index: np.ndarray
    classnames: list[str]
    unknown: list[str]
    missing: list[str]

    @property
    def identity(self) -> bool:
        """True when the labels are already model indices (nothing to remap)."""
        return not self.unknown and np.array_equal(self.index, np.arange(len(self.index)))

    def labels(self, labels: np.ndarray) -> np.ndarray:
        """Data labels [N] -> model-side labels [N]; -1 (unlabelled) stays -1."""
        labels = np.asarray(labels, dtype=np.int64)
        out = np.full(labels.shape, -1, dtype=np.int64)
        ok = labels >= 0
        out[ok] = self.index[labels[ok]]
        return out

    def dataset(self, dataset: Dataset) -> Dataset:
        """`dataset` relabelled into the model's class list (unknown classes appended after it)."""
        if self.identity and dataset.classnames == self.classnames:
            return dataset
        items = [it if it.label is None else Item(it.path, int(self.index[it.label]), it.domain)
                 for it in dataset.items]
        domains = None
        if dataset.class_domains is not None:
            by_index = {int(j): dataset.class_domains[i] for i, j in enumerate(self.index)}
            domains = [by_index.get(j, "") for j in range(len(self.classnames))]
        return replace(dataset, items=items, classnames=list(self.classnames), class_domains=domains,
                       raw_classnames=None, skipped=list(dataset.skipped))


def match_classes(data_classes: Sequence[str], model_classes: Sequence[str], *, present: Sequence[int] | None = None,
                  unknown: Unknown = "error", what: str = "the test data", model: str = "the model",
                  raw: Sequence[str] | None = None) -> ClassMatch:
    """Map `data_classes` onto `model_classes` by name.

    Args:
        data_classes: the class names of the data (index = the data's label).
        model_classes: the class names the model predicts (index = the model's class id).
        present: the data labels that have items (default: all); an unknown class without items is ignored.
        unknown: "error" raises for a data class the model does not know; "keep" appends it to the class list.
        what, model: how the error names the two sides.
        raw: the data classes as their source spells them (e.g. folder names), for messages and `unknown`.

    Raises:
        DataError: naming the unknown class(es) and some of the model's classes (`unknown="error"`), or a data class
            list that names one model class twice.
    """
    model_classes = [str(c) for c in model_classes]
    exact = {c: i for i, c in enumerate(model_classes)}
    loose: dict[str, int] = {}
    for i, c in enumerate(model_classes):
        loose.setdefault(norm_name(c), i)
    used = set(range(len(data_classes))) if present is None else {int(p) for p in present if int(p) >= 0}
    index = np.full(len(data_classes), -1, dtype=np.int64)
    names, new = list(model_classes), []
    taken: dict[int, str] = {}
    for i, c in enumerate(data_classes):
        j = exact.get(c, loose.get(norm_name(c)))
        if j is None:
            if i not in used:
                continue  # a class of the data without items: nothing to score
            new.append(str(raw[i] if raw is not None else c))
            j = len(names)
            names.append(str(c))
        elif j in taken:
            raise DataError(f"{what}: classes {taken[j]!r} and {c!r} both match class {model_classes[j]!r} of "
                            f"{model}")
        taken[j] = str(c)
        index[i] = j
    if new and unknown == "error":
        shown = ", ".join(model_classes[:8]) + (" ..." if len(model_classes) > 8 else "")
        raise DataError(f"{what} has {len(new)} class(es) unknown to {model}: {', '.join(map(repr, new[:10]))}"
                        f"{' ...' if len(new) > 10 else ''} (classes matched by name; {model} has "
                        f"{len(model_classes)}: {shown})")
    hit = {int(index[i]) for i in used}
    missing = [c for j, c in enumerate(model_classes) if j not in hit]
    return ClassMatch(index, names, new, missing)


def match_dataset(dataset: Dataset, model_classes: Sequence[str], *, unknown: Unknown = "error",
                  what: str | None = None, model: str = "the model") -> ClassMatch:
    """`match_classes` for a labelled dataset: only classes with items count as unknown."""
    labels = dataset.labels
    return match_classes(dataset.classnames, model_classes, present=np.unique(labels[labels >= 0]),
                         unknown=unknown, what=what or f"{dataset.root}", model=model, raw=dataset.raw_classnames)
