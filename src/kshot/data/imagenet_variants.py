"""The four ImageNet variants of CoOp's domain-generalisation table, read from CoOp's layouts (test-only).

Layouts (`KaiyangZhou/CoOp: DATASETS.md`) and labels (CoOp's `datasets/imagenetv2.py`, `imagenet_sketch.py`,
`imagenet_a.py`, `imagenet_r.py`); every folder also holds ImageNet's `classnames.txt` (`<wnid> <name>`, 1000 lines):

| dataset | folder under $DATA | images | class of a sub-folder |
|---|---|---|---|
| ImageNetV2 | `imagenetv2/` | `imagenetv2-matched-frequency-format-val/<i>/` | the i-th line of classnames.txt |
| ImageNetSketch | `imagenet-sketch/` | `images/<wnid>/` | its wnid (1000 classes) |
| ImageNetA | `imagenet-adversarial/` | `imagenet-a/<wnid>/` | its wnid (200 classes) |
| ImageNetR | `imagenet-rendition/` | `imagenet-r/<wnid>/` | its wnid (200 classes) |

A variant's labels index its own classes (sorted wnids; V2 in classnames.txt order); `Variant.wnids` names them, so a
classifier trained on ImageNet is scored on the columns of those classes (as CoOp builds the -A/-R classifier from
their 200 names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kshot.data.catalog import CATALOG, Entry
from kshot.data.coop_build import VARIANT_IMAGES
from kshot.data.dataset import Dataset, Item
from kshot.data.paths import list_images
from kshot.errors import DataError

#: CoOp's four ImageNet variants, in the order its tables list them.
VARIANTS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")


@dataclass
class Variant:
    """A variant's test images (`dataset`, labels 0..C'-1) and the ImageNet wnid of each of its C' classes."""

    dataset: Dataset
    wnids: list[str]


def _key(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def find_variant(name: str) -> Entry | None:
    """The catalog entry of the variant called `name` (CoOp name or folder, any case), or None."""
    k = _key(Path(name).name)
    return next((CATALOG[v] for v in VARIANTS if k in (_key(v), _key(CATALOG[v].folder))), None)


def is_variant_folder(path: str | Path) -> Entry | None:
    """The variant whose CoOp layout the folder `path` holds (its name, `classnames.txt` and image folder), or None."""
    path = Path(path)
    e = find_variant(path.name) if path.is_dir() else None
    ok = e is not None and (path / "classnames.txt").is_file() and (path / VARIANT_IMAGES[e.name]).is_dir()
    return e if ok else None


def read_classnames(path: Path) -> dict[str, str]:
    """`classnames.txt` (`<wnid> <class name>` lines) -> {wnid: name}, in file order."""
    if not path.is_file():
        raise DataError(f"{path.parent}: missing classnames.txt (`<wnid> <class name>` per line; CoOp's DATASETS.md)")
    pairs = [ln.strip().split(" ", 1) for ln in path.read_text().splitlines() if ln.strip()]
    return {p[0]: p[1] if len(p) > 1 else p[0] for p in pairs}


def load_variant(folder: str | Path, name: str | None = None) -> Variant:
    """Read an ImageNet variant folder (see the module table); `name` defaults to the one its folder name gives."""
    folder = Path(folder)
    e = find_variant(name or folder.name)
    if e is None:
        raise DataError(f"{folder}: not an ImageNet variant folder; expected one of "
                        f"{', '.join(CATALOG[v].folder for v in VARIANTS)}")
    names = read_classnames(folder / "classnames.txt")
    images = folder / VARIANT_IMAGES[e.name]
    subs = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    if not subs:
        raise DataError(f"{images}: no class folders (CoOp's layout: {e.folder}/{VARIANT_IMAGES[e.name]}/<class>/)")
    if e.name == "ImageNetV2":
        order = list(names)
        bad = [s for s in subs if not s.isdigit() or int(s) >= len(order)]
        if bad:
            raise DataError(f"{images}: ImageNetV2 class folders are 0..{len(order) - 1} (line numbers of "
                            f"classnames.txt), found {bad[:5]}")
        subs = sorted(subs, key=int)
        wnids = [order[int(s)] for s in subs]
    else:
        missing = [s for s in subs if s not in names]
        if missing:
            raise DataError(f"{folder / 'classnames.txt'}: no class name for folder(s) {missing[:5]}")
        wnids = subs
    items = [Item(f"{s}/{f}", label) for label, s in enumerate(subs) for f in list_images(images / s)]
    classnames = [names[w] for w in wnids]
    return Variant(Dataset(root=images, items=items, classnames=classnames, name=e.name, raw_classnames=classnames),
                   wnids)
