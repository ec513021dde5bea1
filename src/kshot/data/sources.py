"""`load_dataset`: one entry point that finds the layout of a path and reads it into a `Dataset`.

Layouts (registry `LAYOUTS`, names usable as `layout=`):

| layout | what `path` is | splits |
|---|---|---|
| `challenge` | folder with train.txt + classes.txt/classes_b.txt (or that train.txt) | train, testA, testB, test |
| `coop` | a `split_zhou_<Name>.json` (or a folder holding exactly one) | train, val, test |
| `listfile` | a `<relpath> <label>` .txt list | the file itself (split not used) |
| `imagefolder` | `root/<class>/<img>`; or `root/<split>/<class>/<img>` | train = root, or the `<split>` sub-folder |
| `folder` | a flat folder of unlabelled images | the folder itself (split not used) |

Auto-detection tries them in that order of specificity.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol

from kshot.data.challenge import challenge_classes, domains_or_none, is_challenge_root, read_challenge
from kshot.data.coop_split import is_coop_split_file, read_coop_split
from kshot.data.dataset import Dataset
from kshot.data.imagefolder import looks_like_image_folder, read_flat_folder, read_image_folder
from kshot.data.listfile import read_classes_file, read_list_file
from kshot.data.paths import OnMissing, list_images
from kshot.errors import DataError
from kshot.registry import Registry

log = logging.getLogger(__name__)


class LayoutReader(Protocol):
    def __call__(self, path: Path, split: str, classes_file: Path | str | None, image_root: Path | str | None,
                 on_missing: OnMissing) -> Dataset: ...


LAYOUTS: Registry[LayoutReader] = Registry("dataset layout")


def _refuse(layout: str, **given: object) -> None:
    used = [k for k, v in given.items() if v is not None]
    if used:
        raise DataError(f"layout {layout!r} does not take {', '.join(used)}")


@LAYOUTS.register("challenge", "Jittor challenge: train.txt + classes*.txt + TrainSet/ + flat TestSetA/B")
def _challenge(path: Path, split: str, classes_file, image_root, on_missing) -> Dataset:
    root = path.parent if path.is_file() else path
    return read_challenge(root, split, classes_file=classes_file, image_root=image_root, on_missing=on_missing)


@LAYOUTS.register("coop", "CoOp/Dassl split_zhou_<Name>.json with train/val/test")
def _coop(path: Path, split: str, classes_file, image_root, on_missing) -> Dataset:
    _refuse("coop", classes_file=classes_file)
    if path.is_dir():
        found = sorted(path.glob("split_zhou_*.json"))
        if len(found) != 1:
            raise DataError(f"{path}: expected one split_zhou_*.json, found {len(found)}; pass the file itself")
        path = found[0]
    return read_coop_split(path, split, image_root=image_root, on_missing=on_missing)


@LAYOUTS.register("listfile", "<relpath> <label> list file (+ optional classes file)")
def _listfile(path: Path, split: str, classes_file, image_root, on_missing) -> Dataset:
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    return read_list_file(path, root=image_root, classes_file=classes_file, on_missing=on_missing)


@LAYOUTS.register("imagefolder", "root/<class>/<img> tree (or root/<split>/<class>/<img>)")
def _imagefolder(path: Path, split: str, classes_file, image_root, on_missing) -> Dataset:
    _refuse("imagefolder", classes_file=classes_file, image_root=image_root)
    sub = path / split
    if sub.is_dir() and not list_images(sub) and looks_like_image_folder(sub):
        return read_image_folder(sub, name=path.name)
    if split != "train":
        raise DataError(f"{path}: image folder has no split {split!r} (no folder {sub} of class folders)")
    return read_image_folder(path)


@LAYOUTS.register("folder", "folder of unlabelled images, sub-folders included (+ optional classes file)")
def _folder(path: Path, split: str, classes_file, image_root, on_missing) -> Dataset:
    _refuse("folder", image_root=image_root)
    if classes_file is None:
        return read_flat_folder(path, recursive=True)
    raw = read_classes_file(classes_file)
    names, doms = challenge_classes(raw)
    return read_flat_folder(path, classnames=names, raw_classnames=raw, class_domains=domains_or_none(doms),
                            recursive=True)


def detect_layout(path: Path | str) -> str:
    """Name of the layout `path` looks like; `DataError` saying what was looked for when nothing matches."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path not found: {path}")
    if path.is_file():
        if is_coop_split_file(path) or path.suffix.lower() == ".json":
            return "coop"
        if path.suffix.lower() == ".txt":
            return "challenge" if path.name == "train.txt" and is_challenge_root(path.parent) else "listfile"
        raise DataError(f"{path}: unknown dataset file type; expected a split_zhou_*.json or a .txt list")
    if is_challenge_root(path):
        return "challenge"
    if len(list(path.glob("split_zhou_*.json"))) == 1:
        return "coop"
    if looks_like_image_folder(path):
        loose = list_images(path)
        if loose:
            raise DataError(f"{path}: holds both images ({len(loose)}, e.g. {loose[0]}) and sub-folders of images, "
                            "so it is neither a folder of images nor one folder per class; pass layout 'folder' "
                            "(--layout folder: every image, unlabelled, sub-folders included) or 'imagefolder' "
                            "(--layout imagefolder: the sub-folders are the classes, the loose images are ignored)")
        return "imagefolder"
    if list_images(path):
        return "folder"
    raise DataError(
        f"{path}: cannot tell the dataset layout. Looked for train.txt + classes.txt (challenge), one "
        "split_zhou_*.json (coop), class sub-folders with images (imagefolder), images (flat folder). "
        f"Pass layout= one of {', '.join(LAYOUTS.names())}."
    )


#: Short names accepted for `layout` (the CLI documents `list`).
LAYOUT_ALIASES = {"list": "listfile", "folder-of-classes": "imagefolder"}


def default_split(path: Path | str, layout: str = "auto") -> str:
    """The split a command that classifies or scores `path` reads when none is named: 'test' where the dataset has
    one (an image folder with a `test/` folder of class folders, a split file, a challenge root), else 'train',
    which is the whole folder for an image folder, a flat folder or a list file."""
    path = Path(path)
    name = detect_layout(path) if layout == "auto" else LAYOUT_ALIASES.get(layout, layout)
    if name == "imagefolder":
        sub = path / "test"
        return "test" if sub.is_dir() and not list_images(sub) and looks_like_image_folder(sub) else "train"
    return "test" if name in ("challenge", "coop") else "train"


def load_dataset(path: Path | str, layout: str = "auto", split: str = "train", *,
                 classes_file: Path | str | None = None, image_root: Path | str | None = None,
                 on_missing: OnMissing = "error") -> Dataset:
    """Read a dataset from disk.

    Args:
        path: a folder or file (see the module table).
        layout: 'auto' to detect, or a name in `LAYOUTS`.
        split: which split to read ('train', 'val', 'test', 'testA', 'testB' depending on the layout).
        classes_file: class names for layouts without them in the data (challenge override, listfile, folder).
        image_root: the folder item paths are relative to (challenge: train images, or the test folder for test
            splits; coop; listfile).
        on_missing: 'error' | 'skip' | 'ignore' for listed files that do not exist; skipped ones land in
            `Dataset.skipped`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path not found: {path}")
    name = detect_layout(path) if layout == "auto" else LAYOUT_ALIASES.get(layout, layout)
    if name not in LAYOUTS:
        raise DataError(f"unknown dataset layout {layout!r}; choose 'auto' or one of {', '.join(LAYOUTS.names())}")
    reader: Callable[..., Dataset] = LAYOUTS.get(name)
    ds = reader(path, split, classes_file, image_root, on_missing)
    log.info("loaded %s (%s, split %s): %d items, %d classes", path, name, split, len(ds), ds.num_classes)
    return ds
