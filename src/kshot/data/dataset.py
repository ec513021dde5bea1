"""The one `Dataset` every source is read into: items (path + optional label + optional domain) and classnames."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Item:
    """One image.

    Attributes:
        path: path relative to the dataset root, with '/' separators.
        label: class index into `Dataset.classnames`, or None (e.g. a flat test folder).
        domain: optional domain name (e.g. 'Animal', 'Thu-dog').
    """

    path: str
    label: int | None = None
    domain: str | None = None


@dataclass
class Dataset:
    """Items under a root, with the class list.

    Attributes:
        root: directory the item paths are relative to.
        items: the images.
        classnames: clean, human-readable class names (index = label).
        class_domains: optional domain per class (same length as classnames).
        name: short dataset name (used for templates and reports).
        raw_classnames: names as the source wrote them (e.g. 'Animal_Bear'), same length as classnames.
        skipped: (path, reason) of items dropped while reading, reported at the end of a run.
    """

    root: Path
    items: list[Item]
    classnames: list[str]
    class_domains: list[str] | None = None
    name: str = "dataset"
    raw_classnames: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def labels(self) -> np.ndarray:
        """int64 [N]; -1 where an item has no label."""
        return np.array([-1 if it.label is None else it.label for it in self.items], dtype=np.int64)

    @property
    def has_labels(self) -> bool:
        return all(it.label is not None for it in self.items)

    @property
    def domains(self) -> list[str] | None:
        """Domain per item (from the item, else from its class), or None when unknown."""
        if all(it.domain is None for it in self.items) and self.class_domains is None:
            return None
        out = []
        for it in self.items:
            d = it.domain
            if d is None and self.class_domains is not None and it.label is not None:
                d = self.class_domains[it.label]
            out.append(d or "")
        return out

    def abspath(self, i: int) -> Path:
        return self.root / self.items[i].path

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Dataset":
        return replace(self, items=[self.items[int(i)] for i in indices], skipped=list(self.skipped))


def items_signature(dataset: Dataset) -> str:
    """Hash of the item list: relative path, label and the file's size and mtime (missing files hash as such)."""
    h = hashlib.sha256()
    h.update(str(dataset.root.resolve()).encode())
    for it in dataset.items:
        try:
            st = (dataset.root / it.path).stat()
            sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        h.update(f"{it.path}\t{it.label}\t{sig}\n".encode())
    return h.hexdigest()
