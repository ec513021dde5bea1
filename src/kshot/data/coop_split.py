"""CoOp/Dassl split files `split_zhou_<Name>.json`: reader and writer.

Format (KaiyangZhou/CoOp `datasets/oxford_pets.py: read_split/save_split`): a JSON object with lists "train", "val"
and "test", each entry `[relative_image_path, int_label, classname]`, paths relative to the dataset's image folder
(e.g. `oxford_pets/images`, `caltech-101/101_ObjectCategories`). The class list is built from all three splits so
that every split shares one label space.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Sequence

from kshot.data.dataset import Dataset, Item
from kshot.data.listfile import clean_name
from kshot.data.paths import OnMissing, atomic_write_text, check_missing, find_missing, normalize_relpath
from kshot.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^split_zhou_(.+)\.json$", re.IGNORECASE)
_PROBE = 5


def is_coop_split_file(path: Path) -> bool:
    """True for a file named `split_zhou_<Name>.json`."""
    return path.is_file() and _NAME.match(path.name) is not None


def coop_dataset_name(path: Path) -> str:
    """'split_zhou_OxfordPets.json' -> 'OxfordPets' (else the file stem)."""
    m = _NAME.match(path.name)
    return m.group(1) if m else path.stem


def _load(path: Path) -> dict[str, list[tuple[str, int, str]]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object with keys {', '.join(SPLITS)}, got {type(obj).__name__}")
    absent = [s for s in SPLITS if s not in obj]
    if absent:
        raise DataError(f"{path}: missing split(s) {', '.join(absent)} (keys present: {', '.join(map(str, obj))})")
    out: dict[str, list[tuple[str, int, str]]] = {}
    for s in SPLITS:
        if not isinstance(obj[s], list):
            raise DataError(f"{path}: '{s}' must be a list, got {type(obj[s]).__name__}")
        rows = []
        for i, e in enumerate(obj[s]):
            where = f"{path}: {s}[{i}]"
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[2], str)):
                raise DataError(f"{where}: expected [path, label, classname], got {e!r:.120}")
            if isinstance(e[1], bool) or not isinstance(e[1], int):
                raise DataError(f"{where}: label {e[1]!r} is not an integer")
            if e[1] < 0:
                raise DataError(f"{where}: label {e[1]} is negative")
            rows.append((normalize_relpath(e[0], where), e[1], e[2]))
        out[s] = rows
    return out


def _classnames(path: Path, splits: dict[str, list[tuple[str, int, str]]]) -> list[str]:
    names: dict[int, tuple[str, str]] = {}
    for s, rows in splits.items():
        for i, (_, label, name) in enumerate(rows):
            if label not in names:
                names[label] = (name, f"{s}[{i}]")
            elif names[label][0] != name:
                raise DataError(f"{path}: {s}[{i}]: label {label} is named {name!r} but {names[label][1]} names it "
                                f"{names[label][0]!r}")
    if not names:
        raise DataError(f"{path}: all splits are empty")
    gaps = sorted(set(range(max(names) + 1)) - set(names))
    if gaps:
        raise DataError(f"{path}: labels must be contiguous from 0; no entry has label(s) {gaps[:10]}"
                        f"{' ...' if len(gaps) > 10 else ''}")
    raw = [names[i][0] for i in range(len(names))]
    if len(set(raw)) != len(raw):
        log.warning("%s: several labels share a class name; prompts for them will be identical", path)
    return raw


def _find_image_root(path: Path, rows: list[tuple[str, int, str]]) -> Path | None:
    """The split file's folder or one of its sub-folders in which the first few listed images exist."""
    probe = [r[0] for r in rows[:_PROBE]]
    cands = [path.parent] + sorted(p for p in path.parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    for c in cands:
        if not find_missing(c, probe):
            return c
    return None


def read_coop_split(path: Path | str, split: str = "train", *, image_root: Path | str | None = None,
                    on_missing: OnMissing = "error", name: str | None = None) -> Dataset:
    """Read one split of a CoOp/Dassl split file.

    Args:
        path: the `split_zhou_<Name>.json` file.
        split: 'train', 'val' or 'test'.
        image_root: folder the paths are relative to. Default: the file's folder or the first sub-folder of it in
            which the first listed images exist (e.g. `images/`, `101_ObjectCategories/`).
        on_missing: 'error' | 'skip' | 'ignore' for listed files that do not exist.
        name: dataset name (default: `<Name>` from the file name).

    Returns:
        Dataset whose classnames come from the file (underscores to spaces; raw spelling in raw_classnames).
    """
    path = Path(path)
    if split not in SPLITS:
        raise DataError(f"CoOp split file: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    splits = _load(path)
    raw = _classnames(path, splits)
    rows = splits[split]
    if image_root is not None:
        root = Path(image_root)
    else:
        found = _find_image_root(path, rows or [r for s in SPLITS for r in splits[s]])
        if found is None and on_missing != "ignore":
            raise DataError(f"{path}: cannot find the images it lists (first: {rows[0][0] if rows else '-'}) in "
                            f"{path.parent} or its sub-folders; pass image_root=")
        root = found or path.parent
        log.info("%s: image root %s", path.name, root)
    keep, skipped = check_missing(root, [r[0] for r in rows], [f"{path}: {split}[{i}]" for i in range(len(rows))],
                                  on_missing, f"{path} ({split})")
    items = [Item(rows[i][0], rows[i][1]) for i in keep]
    return Dataset(root=root, items=items, classnames=[clean_name(r) for r in raw],
                   name=name or coop_dataset_name(path), raw_classnames=raw, skipped=skipped)


def write_coop_split(path: Path | str, train: Dataset, val: Dataset | None, test: Dataset | None) -> None:
    """Write a CoOp/Dassl split file (atomically) from datasets sharing one class list.

    Item paths are written as they are (relative to the image root); class names are the raw names when known.
    A missing split (None) is written as an empty list.
    """
    parts: dict[str, Dataset | None] = {"train": train, "val": val, "test": test}
    names: Sequence[str] = train.raw_classnames or train.classnames
    out: dict[str, list[list[object]]] = {}
    for s, ds in parts.items():
        if ds is None:
            out[s] = []
            continue
        if ds.classnames != train.classnames:
            raise DataError(f"cannot write {path}: split '{s}' has a different class list than 'train'")
        rows = []
        for it in ds.items:
            if it.label is None:
                raise DataError(f"cannot write {path}: split '{s}' item {it.path!r} has no label")
            rows.append([it.path, int(it.label), names[it.label]])
        out[s] = rows
    atomic_write_text(path, json.dumps(out, indent=4, separators=(",", ": ")) + "\n")
