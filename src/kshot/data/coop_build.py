"""Per-dataset knowledge for building CoOp's layout from the official archives, and for listing labelled images.

Where each archive's contents go follows `KaiyangZhou/CoOp: DATASETS.md`; the class lists and names follow CoOp's
readers (`KaiyangZhou/CoOp @ main : datasets/<name>.py`): Caltech101 drops `BACKGROUND_Google` and `Faces_easy` and
renames four classes; OxfordPets takes the breed from the image name of `annotations/{trainval,test}.txt`;
StanfordCars moves the year to the front of `cars_meta.mat`'s names; OxfordFlowers reads `imagelabels.mat` and
`cat_to_name.json`; SUN397 reverses the '/'-separated parts of `ClassName.txt`; EuroSAT renames its ten classes;
the others use their class folders. `list_items` is only used when no `split_zhou_<Name>.json` is at hand.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

from scipy.io import loadmat

from kshot.data.paths import is_image_name
from kshot.errors import DataError

#: archive file name -> (folder inside the unpacked archive to take, where it goes in the dataset folder).
PLACE: dict[str, tuple[str, str]] = {
    "food-101.tar.gz": ("food-101", ""),
    "fgvc-aircraft-2013b.tar.gz": ("fgvc-aircraft-2013b/data", ""),
    "dtd-r1.0.1.tar.gz": ("dtd", ""),
    "ImageNet-Sketch.zip": ("sketch", "images"),
    "ILSVRC2012_img_val.tar": ("", "images/val"),
    "ILSVRC2012_devkit_t12.tar.gz": ("ILSVRC2012_devkit_t12", ".devkit"),
}

_CALTECH_IGNORED = {"BACKGROUND_Google", "Faces_easy"}
_CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
_EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}

#: ImageNet variant -> its image folder (class sub-folders) inside the dataset folder.
VARIANT_IMAGES = {"ImageNetV2": "imagenetv2-matched-frequency-format-val", "ImageNetSketch": "images",
                  "ImageNetA": "imagenet-a", "ImageNetR": "imagenet-r"}

Row = tuple[str, int, str]  # (path relative to the image folder, label, class name)


def merge_into(src: Path, dest: Path) -> None:
    """Move every entry of `src` into `dest` (merging folders that already exist there, e.g. after a resume)."""
    dest.mkdir(parents=True, exist_ok=True)
    for child in sorted(src.iterdir()):
        target = dest / child.name
        if child.is_dir() and target.is_dir():
            merge_into(child, target)
            child.rmdir()
        else:
            if target.is_dir():
                shutil.rmtree(target)
            child.replace(target)


def unpack_imagenet_train(outer_dir: Path, dest: Path) -> None:
    """ILSVRC2012_img_train.tar holds one `<wnid>.tar` per class: unpack each into `dest/<wnid>/`."""
    for inner in sorted(outer_dir.glob("*.tar")):
        target = dest / inner.stem
        target.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(inner) as tf:
                tf.extractall(target, filter="data")
        except (tarfile.TarError, EOFError) as e:
            raise DataError(f"{inner.name} inside ILSVRC2012_img_train.tar: truncated or corrupt ({e})") from None
        inner.unlink()


def arrange_imagenet_val(root: Path) -> None:
    """Sort the flat `images/val/*.JPEG` into `images/val/<wnid>/` with the devkit's ground truth, then drop it."""
    devkit = root / ".devkit" / "data"
    meta, truth = devkit / "meta.mat", devkit / "ILSVRC2012_validation_ground_truth.txt"
    val = root / "images" / "val"
    flat = sorted(p for p in val.iterdir() if p.is_file())
    if not flat:
        return
    if not (meta.is_file() and truth.is_file()):
        raise DataError("ImageNet: ILSVRC2012_devkit_t12.tar.gz lacks data/meta.mat or the validation ground truth")
    synsets = loadmat(meta, squeeze_me=True)["synsets"]
    wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    labels = [int(x) for x in truth.read_text().split()]
    if len(labels) != len(flat):
        raise DataError(f"ImageNet: {len(flat)} validation images but {len(labels)} ground-truth labels")
    for path, label in zip(flat, labels):
        (val / wnid[label]).mkdir(exist_ok=True)
        path.replace(val / wnid[label] / path.name)
    shutil.rmtree(root / ".devkit")


def _class_folders(image_dir: Path, names: dict[str, str] | None = None, ignore: set[str] = frozenset()) -> list[Row]:
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: missing (the archive did not unpack as expected)")
    classes = sorted(p.name for p in image_dir.iterdir() if p.is_dir() and p.name not in ignore)
    rows = []
    for label, c in enumerate(classes):
        name = (names or {}).get(c, c)
        rows += [(f"{c}/{f.name}", label, name) for f in sorted((image_dir / c).iterdir()) if is_image_name(f.name)]
    return rows


def _pets(root: Path) -> list[Row]:
    rows = []
    for listing in ("trainval.txt", "test.txt"):
        path = root / "annotations" / listing
        if not path.is_file():
            raise DataError(f"OxfordPets: annotations.tar.gz lacks annotations/{listing}")
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith("#"):
                rows.append((f"{parts[0]}.jpg", int(parts[1]) - 1, parts[0].rsplit("_", 1)[0].lower()))
    return rows


def _mat(path: Path, key: str):
    if not path.is_file():
        raise DataError(f"missing {path.name} (expected at {path})")
    return loadmat(path, squeeze_me=True)[key]


def _cars(root: Path) -> list[Row]:
    names = []
    for raw in _mat(root / "devkit" / "cars_meta.mat", "class_names"):
        words = str(raw).split(" ")
        names.append(" ".join([words[-1], *words[:-1]]))  # CoOp: year first
    rows = []
    for folder, mat in (("cars_train", root / "devkit" / "cars_train_annos.mat"),
                        ("cars_test", root / "cars_test_annos_withlabels.mat")):
        for a in _mat(mat, "annotations"):
            label = int(a["class"]) - 1
            rows.append((f"{folder}/{a['fname']}", label, names[label]))
    return rows


def _flowers(root: Path) -> list[Row]:
    names_file = root / "cat_to_name.json"
    if not names_file.is_file():
        raise DataError("OxfordFlowers: without split_zhou_OxfordFlowers.json the class names come from "
                        "cat_to_name.json (CoOp's Google Drive); put it in the --from folder")
    names = json.loads(names_file.read_text())
    labels = [int(x) for x in _mat(root / "imagelabels.mat", "labels")]
    return [(f"image_{i:05d}.jpg", y - 1, names[str(y)]) for i, y in enumerate(labels, 1)]


def _sun(root: Path) -> list[Row]:
    names_file = root / "SUN397" / "ClassName.txt"
    if not names_file.is_file():
        raise DataError("SUN397: SUN397.tar.gz lacks SUN397/ClassName.txt")
    rows = []
    for label, line in enumerate(ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()):
        rel = line.lstrip("/")
        name = " ".join(rel.split("/", 1)[1].split("/")[::-1])  # '/b/bakery/shop' -> 'shop bakery'
        folder = root / "SUN397" / rel
        rows += [(f"{rel}/{f.name}", label, name) for f in sorted(folder.iterdir()) if is_image_name(f.name)] \
            if folder.is_dir() else []
    return rows


def list_items(name: str, root: Path) -> list[Row]:
    """Every labelled image of dataset `name` unpacked in `root`, paths relative to its image folder."""
    if name == "Caltech101":
        return _class_folders(root / "101_ObjectCategories", _CALTECH_NAMES, _CALTECH_IGNORED)
    if name == "EuroSAT":
        return _class_folders(root / "2750", _EUROSAT_NAMES)
    folders = {"Food101": "images", "DescribableTextures": "images", "UCF101": "UCF-101-midframes"}
    if name in folders:
        return _class_folders(root / folders[name])
    readers = {"OxfordPets": _pets, "StanfordCars": _cars, "OxfordFlowers": _flowers, "SUN397": _sun}
    if name not in readers:
        raise DataError(f"{name}: its splits come with the archive; there is nothing to split")
    return readers[name](root)


def variant_images(name: str, root: Path) -> dict[str, int]:
    """Images per class folder of an ImageNet variant unpacked in `root`."""
    folder = root / VARIANT_IMAGES[name]
    if not folder.is_dir():
        raise DataError(f"{name}: missing {folder} (the archive did not unpack as expected)")
    return {c.name: sum(is_image_name(f.name) for f in c.iterdir()) for c in sorted(folder.iterdir()) if c.is_dir()}
