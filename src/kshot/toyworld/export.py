"""Write toy-world splits to disk as PNG files in the layouts kshot reads.

| layout | files |
|---|---|
| `imagefolder` | `out/<part>/<class>/<i>.png` for part in train, val, test (class = name with '_' for spaces) |
| `coop` | `out/split_zhou_Toy.json` (train/val/test lists of `[relpath, label, classname]`), `out/images/<class>/` |
| `challenge` | see below |

The challenge layout: `out/train.txt` (`TrainSet/<Domain>/<Class>/<n>.png <label>`, the whole pool, val included),
`out/classes.txt` (`<Domain>_<name> <id>`, the classes with training images), `out/classes_b.txt` (all classes: the
B round adds those without), a flat `out/TestSetA/image_<n>.png` (test images of every class, shuffled) and the
hidden labels `out/test_labels.txt` (`TestSetA/<file> <label>`, ids of classes_b.txt).

Challenge ids are world order: classes with training images first, then those without (as the B round's cars).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kshot.errors import ConfigError
from kshot.toyworld.generator import ToySplit, World

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("imagefolder", "coop", "challenge")
#: Domains with training images: the default of the ImageFolder and CoOp exports (one label space in every part).
LABELLED_DOMAINS: tuple[str, ...] = ("Shapes", "Novel", "Creatures")
COOP_NAME = "Toy"


def _dirname(name: str) -> str:
    return "_".join(name.split())


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def _write_text(path: Path, lines: Sequence[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(path)


def export_imagefolder(split: ToySplit, out: str | Path, parts: Sequence[str] = ("train", "val", "test")) -> Path:
    """Write `out/<part>/<class>/<i>.png`; returns `out`. Classes with no image in a part get no folder there."""
    out = Path(out)
    for part in parts:
        data = getattr(split, part)
        counters: dict[int, int] = {}
        for img, label in zip(data.images, data.labels):
            i = counters.get(int(label), 0)
            counters[int(label)] = i + 1
            _save_png(out / part / _dirname(split.classnames[label]) / f"{i}.png", img)
    return out


def export_coop(split: ToySplit, out: str | Path, name: str = COOP_NAME) -> Path:
    """Write `out/split_zhou_<name>.json` and `out/images/<class>/<part>_<i>.png`; returns the JSON path."""
    out = Path(out)
    lists: dict[str, list[list]] = {}
    for part in ("train", "val", "test"):
        data = getattr(split, part)
        rows, counters = [], {}
        for img, label in zip(data.images, data.labels):
            c = int(label)
            i = counters.get(c, 0)
            counters[c] = i + 1
            rel = f"{_dirname(split.classnames[c])}/{part}_{i}.png"
            _save_png(out / "images" / rel, img)
            rows.append([rel, c, split.classnames[c]])
        lists[part] = rows
    path = out / f"split_zhou_{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(lists))
    tmp.replace(path)
    return path


def export_challenge(split: ToySplit, out: str | Path, seed: int = 0, include_val: bool = True) -> Path:
    """Write the Jittor challenge layout (see the module table); returns `out`.

    Args:
        split: classes with `has_train` must come before those without (world order guarantees it).
        out: target folder.
        seed: shuffles the flat test folder's order.
        include_val: add the val images to the training pool (the challenge has no separate val list).
    """
    out = Path(out)
    n_seen = sum(split.has_train)
    if any(split.has_train[n_seen:]) or not all(split.has_train[:n_seen]):
        raise ConfigError("challenge export: classes with training images must precede those without")
    raw = [f"{d}_{_dirname(n)}" for n, d in zip(split.classnames, split.domains)]
    lines = []
    images = [split.train.images] + ([split.val.images] if include_val else [])
    labels = [split.train.labels] + ([split.val.labels] if include_val else [])
    counters: dict[int, int] = {}
    for img, label in zip(np.concatenate(images), np.concatenate(labels)):
        c = int(label)
        i = counters.get(c, 0)
        counters[c] = i + 1
        rel = f"TrainSet/{split.domains[c]}/{_dirname(split.classnames[c])}/{i}.png"
        _save_png(out / rel, img)
        lines.append(f"{rel} {c}")
    _write_text(out / "train.txt", lines)
    _write_text(out / "classes.txt", [f"{r} {i}" for i, r in enumerate(raw[:n_seen])])
    _write_text(out / "classes_b.txt", [f"{r} {i}" for i, r in enumerate(raw)])
    order = np.random.default_rng(seed).permutation(len(split.test.labels))
    width = max(4, len(str(len(order))))
    test_lines = []
    for n, j in enumerate(order, start=1):
        fname = f"image_{n:0{width}d}.png"
        _save_png(out / "TestSetA" / fname, split.test.images[j])
        test_lines.append(f"TestSetA/{fname} {int(split.test.labels[j])}")
    _write_text(out / "test_labels.txt", test_lines)
    return out


def export_world(
    world: World,
    layout: str,
    out: str | Path,
    domains: Sequence[str] | None = None,
    n_train: int = 32,
    n_val: int = 8,
    n_test: int = 25,
    seed: int = 0,
) -> Path:
    """Render a split of `world` and write it in `layout`; returns the written folder (coop: the JSON file).

    Args:
        domains: which domains; default all for 'challenge', `LABELLED_DOMAINS` for the others.
        n_train, n_val, n_test: images per class in each part (classes without training images get test only).
        seed: split seed (also shuffles the challenge test folder).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown toy-world export layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if domains is None and layout != "challenge":
        domains = LABELLED_DOMAINS
    split = world.make_split(domains, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    log.info("exporting %d classes (%d train, %d val, %d test images) as %s to %s", len(split.classnames),
             len(split.train.labels), len(split.val.labels), len(split.test.labels), layout, out)
    if layout == "imagefolder":
        return export_imagefolder(split, out)
    if layout == "coop":
        return export_coop(split, out)
    return export_challenge(split, out, seed=seed)
