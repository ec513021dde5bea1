"""Folder readers: ImageFolder trees (`root/<class>/<img>`) and flat folders of unlabelled images.

Classes are the sorted sub-directory names (as torchvision's ImageFolder), images are found recursively inside each
class folder, following symbolic links but reading each real folder once (a link loop is not an endless tree).
Names that are not valid UTF-8 are skipped with a warning. Unlike torchvision, hidden entries ('.ipynb_checkpoints', '.DS_Store') are ignored, and an empty class
folder is an error by default (`on_empty="warn"` keeps it as a class with no items, e.g. a zero-shot class).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, Sequence

from kshot.data.dataset import Dataset, Item
from kshot.data.listfile import clean_name
from kshot.data.paths import IMAGE_EXTENSIONS, check_unique_names, drop_non_utf8, is_image_name, list_images
from kshot.errors import DataError

log = logging.getLogger(__name__)

OnEmpty = Literal["error", "warn"]


def class_dirs(root: Path) -> list[str]:
    """Sorted names of the non-hidden sub-directories of `root` (names that are not UTF-8 skipped, with a warning)."""
    try:
        names = [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    except OSError as e:
        raise DataError(f"cannot list {root}: {e}") from e
    return sorted(drop_non_utf8(names, root))


def walk_once(directory: Path):
    """`os.walk(directory, followlinks=True)` in sorted order that visits each real folder once: a symlink loop, or a
    second link to a folder already walked, is skipped (with a warning). Hidden folders and folder names that are not
    UTF-8 are not entered; yields (dirpath, file names) with hidden and non-UTF-8 file names dropped."""
    seen: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            log.warning("%s is the folder %s again (a symlink loop or a second link); not read twice", dirpath,
                        seen[ident])
            dirnames[:] = []
            continue
        seen[ident] = dirpath
        dirnames[:] = sorted(drop_non_utf8((d for d in dirnames if not d.startswith(".")), dirpath))
        yield dirpath, drop_non_utf8((f for f in filenames if not f.startswith(".")), dirpath)


def _images_under(directory: Path) -> list[str]:
    """Image paths under `directory`, relative to it, '/' separated, sorted; hidden files and folders skipped."""
    out = []
    for dirpath, filenames in walk_once(directory):
        rel = os.path.relpath(dirpath, directory)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + f for f in filenames if is_image_name(f))
    return sorted(out)


def _has_image(directory: Path) -> bool:
    return any(any(is_image_name(f) for f in filenames) for _, filenames in walk_once(directory))


def looks_like_image_folder(root: Path) -> bool:
    """True when some sub-directory of `root` holds an image (directly or deeper); stops at the first one."""
    return root.is_dir() and any(_has_image(root / d) for d in class_dirs(root))


def read_image_folder(root: Path | str, *, on_empty: OnEmpty = "error", name: str | None = None) -> Dataset:
    """Read `root/<class>/<...>/<img>`.

    Args:
        root: the folder holding one sub-folder per class.
        on_empty: a class folder without images is an 'error' (default), or a 'warn'ing and a class with no items.
        name: dataset name (default: the folder name).

    Returns:
        Dataset with labels = index of the class folder in sorted order; classnames have underscores turned into
        spaces, raw_classnames are the folder names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    if on_empty not in ("error", "warn"):
        raise DataError(f"on_empty must be 'error' or 'warn', got {on_empty!r}")
    classes = class_dirs(root)
    if not classes:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    items: list[Item] = []
    empty = []
    for label, cls in enumerate(classes):
        files = _images_under(root / cls)
        if not files:
            empty.append(cls)
        items.extend(Item(f"{cls}/{f}", label) for f in files)
    if empty:
        msg = (f"{root}: {len(empty)} class folder(s) hold no image ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
               f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}")
        if on_empty == "error" or len(empty) == len(classes):
            raise DataError(msg + ("" if on_empty == "warn" else " (pass on_empty='warn' to keep them)"))
        log.warning("%s; kept as classes without items", msg)
    loose = list_images(root)
    if loose:
        log.warning("%s: ignoring %d images directly in the root (not in a class folder)", root, len(loose))
    return Dataset(root=root, items=items, classnames=[clean_name(c) for c in classes], name=name or root.name,
                   raw_classnames=classes)


def read_flat_folder(root: Path | str, *, classnames: Sequence[str] | None = None,
                     raw_classnames: Sequence[str] | None = None, class_domains: Sequence[str] | None = None,
                     name: str | None = None, recursive: bool = False) -> Dataset:
    """Read a folder of unlabelled images (a test set): items are the file names (with `recursive`, the '/'-separated
    paths of every image below `root`) in sorted order.

    Args:
        root: the folder.
        recursive: also read the images in sub-folders (hidden ones skipped); they stay unlabelled.
        classnames: the class list the images will be classified into, if known.
        raw_classnames: their raw spelling (same length).
        class_domains: their domains (same length).
        name: dataset name (default: the folder name).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    names = _images_under(root) if recursive else list_images(root)
    if not names:
        raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                        + ("" if recursive else " directly in it"))
    check_unique_names(names, str(root))
    n_cls = len(classnames or [])
    for what, xs in (("raw class names", raw_classnames), ("class domains", class_domains)):
        if xs is not None and len(xs) != n_cls:
            raise DataError(f"{len(xs)} {what} for {n_cls} classes")
    return Dataset(root=root, items=[Item(n) for n in names], classnames=list(classnames or []), name=name or root.name,
                   class_domains=list(class_domains) if class_domains is not None else None,
                   raw_classnames=list(raw_classnames) if raw_classnames is not None else None)
