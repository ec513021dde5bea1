"""Tiny stand-ins for the official archives of the CoOp datasets, in their real structure (names, nesting, label files).

Each writer puts the files a user would download into `src` and returns the number of classes. Images are 8x8 JPEGs
from `write_rgb`; `.mat` files are written by scipy with the fields the real ones have.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.io import savemat

from tests.data.conftest import write_rgb

PER_CLASS = 5
IMAGENET_NAMES = "n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n"  # fixture classnames.txt


def _tar(path: Path, tree: Path, arcname: str) -> Path:
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as tf:
        tf.add(tree, arcname=arcname)
    return path


def _zip(path: Path, tree: Path, arcname: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(tree.rglob("*")):
            zf.write(f, f"{arcname}/{f.relative_to(tree).as_posix()}")
    return path


def _class_tree(tree: Path, classes: list[str], stem: str = "img", seed: int = 0) -> Path:
    for c, name in enumerate(classes):
        for i in range(PER_CLASS):
            write_rgb(tree / name / f"{stem}_{i:04d}.jpg", seed=seed + 100 * c + i)
    return tree


def caltech101(src: Path, tmp: Path) -> int:
    tree = _class_tree(tmp / "101_ObjectCategories", ["Faces", "Faces_easy", "BACKGROUND_Google", "ant", "airplanes"])
    _tar(src / "101_ObjectCategories.tar.gz", tree, "101_ObjectCategories")
    return 3


def oxford_pets(src: Path, tmp: Path) -> int:
    breeds = ["Abyssinian", "beagle", "great_pyrenees"]
    lines = {"trainval.txt": [], "test.txt": []}
    for c, b in enumerate(breeds):
        for i in range(1, PER_CLASS + 1):
            write_rgb(tmp / "images" / f"{b}_{i}.jpg", seed=10 * c + i)
            lines["trainval.txt" if i <= 3 else "test.txt"].append(f"{b}_{i} {c + 1} {1 + (c > 0)} {c + 1}")
    (tmp / "annotations").mkdir()
    for name, rows in lines.items():
        (tmp / "annotations" / name).write_text("\n".join(rows) + "\n")
    _tar(src / "images.tar.gz", tmp / "images", "images")
    _tar(src / "annotations.tar.gz", tmp / "annotations", "annotations")
    return len(breeds)


def stanford_cars(src: Path, tmp: Path) -> int:
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Tesla Model S Sedan 2012"]
    for folder, n in (("cars_train", 9), ("cars_test", 6)):
        fnames = [f"{i:05d}.jpg" for i in range(1, n + 1)]
        for i, f in enumerate(fnames):
            write_rgb(tmp / folder / f, seed=i + len(folder))
        ann = np.array([(i % 3 + 1, f) for i, f in enumerate(fnames)], dtype=[("class", "O"), ("fname", "O")])
        mat = tmp / "devkit" / "cars_train_annos.mat" if folder == "cars_train" else src / \
            "cars_test_annos_withlabels.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        savemat(mat, {"annotations": ann})
        _tar(src / f"{folder}.tgz", tmp / folder, folder)
    savemat(tmp / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object)})
    _tar(src / "car_devkit.tgz", tmp / "devkit", "devkit")
    return len(names)


def oxford_flowers(src: Path, tmp: Path) -> int:
    labels = [1 + i % 3 for i in range(3 * PER_CLASS)]
    for i in range(1, len(labels) + 1):
        write_rgb(tmp / "jpg" / f"image_{i:05d}.jpg", seed=i)
    _tar(src / "102flowers.tgz", tmp / "jpg", "jpg")
    savemat(src / "imagelabels.mat", {"labels": np.array([labels])})
    (src / "cat_to_name.json").write_text('{"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "bee balm"}')
    return 3


def food101(src: Path, tmp: Path) -> int:
    _class_tree(tmp / "food-101" / "images", ["apple_pie", "baby_back_ribs", "waffles"])
    (tmp / "food-101" / "meta").mkdir()
    (tmp / "food-101" / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\nwaffles\n")
    _tar(src / "food-101.tar.gz", tmp / "food-101", "food-101")
    return 3


def fgvc_aircraft(src: Path, tmp: Path) -> int:
    data = tmp / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "F-16A/B"]
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, v in enumerate(variants):
        for i in range(PER_CLASS):
            image = f"{1000000 + 10 * c + i:07d}"
            write_rgb(data / "images" / f"{image}.jpg", seed=10 * c + i)
            lines[("train", "train", "val", "test", "test")[i]].append(f"{image} {v}")
    for s, rows in lines.items():
        (data / f"images_variant_{s}.txt").write_text("\n".join(rows) + "\n")
    _tar(src / "fgvc-aircraft-2013b.tar.gz", tmp / "fgvc-aircraft-2013b", "fgvc-aircraft-2013b")
    return len(variants)


def sun397(src: Path, tmp: Path) -> int:
    root = tmp / "SUN397"
    rels = ["a/abbey", "b/bakery/shop", "z/zoo"]
    for c, rel in enumerate(rels):
        for i in range(PER_CLASS):
            write_rgb(root / rel / f"sun_{c}{i}.jpg", seed=10 * c + i)
    (root / "ClassName.txt").write_text("".join(f"/{r}\n" for r in rels))
    _tar(src / "SUN397.tar.gz", root, "SUN397")
    return len(rels)


def dtd(src: Path, tmp: Path) -> int:
    _class_tree(tmp / "dtd" / "images", ["banded", "blotchy", "zigzagged"])
    (tmp / "dtd" / "labels").mkdir()
    (tmp / "dtd" / "labels" / "train1.txt").write_text("banded/img_0000.jpg\n")
    _tar(src / "dtd-r1.0.1.tar.gz", tmp / "dtd", "dtd")
    return 3


def eurosat(src: Path, tmp: Path) -> int:
    _zip(src / "EuroSAT.zip", _class_tree(tmp / "2750", ["AnnualCrop", "Forest", "SeaLake"]), "2750")
    return 3


def ucf101(src: Path, tmp: Path) -> int:
    tree = _class_tree(tmp / "UCF-101-midframes", ["Apply_Eye_Makeup", "Basketball", "Yo_Yo"], stem="v_g01_c01")
    _zip(src / "UCF-101-midframes.zip", tree, "UCF-101-midframes")
    return 3


def imagenet(src: Path, tmp: Path) -> int:
    wnids = ["n01440764", "n01443537", "n01484850"]
    outer = tmp / "train"
    outer.mkdir()
    for c, w in enumerate(wnids):
        _tar(outer / f"{w}.tar", _class_tree(tmp / "t" / w, ["x"], stem=w, seed=10 * c) / "x", ".")
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as tf:
        for f in sorted(outer.iterdir()):
            tf.add(f, arcname=f.name)
    labels = [3, 1, 2, 1, 3, 2]  # ILSVRC2012_ID per validation image, in file order
    for i in range(1, len(labels) + 1):
        write_rgb(tmp / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", seed=500 + i, fmt="JPEG")
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as tf:
        for f in sorted((tmp / "val").iterdir()):
            tf.add(f, arcname=f.name)
    data = tmp / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    synsets = np.array([(i + 1, w, 0) for i, w in enumerate(wnids)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{y}\n" for y in labels))
    _tar(src / "ILSVRC2012_devkit_t12.tar.gz", tmp / "ILSVRC2012_devkit_t12", "ILSVRC2012_devkit_t12")
    (src / "classnames.txt").write_text(IMAGENET_NAMES)
    return len(wnids)


def _with_readme(tree: Path) -> Path:
    (tree / "README.txt").write_text("class folders are wnids\n")  # as in imagenet-a.tar / imagenet-r.tar
    return tree


def imagenet_variants(src: Path, tmp: Path) -> dict[str, int]:
    """The four variants' archives over the three fixture ImageNet classes; returns {name: classes}.

    V2's folders are the line numbers of classnames.txt; -A and -R hold two of the classes each (listed out of wnid
    order), plus their README.txt."""
    (src / "classnames.txt").write_text(IMAGENET_NAMES)
    v2 = tmp / "imagenetv2-matched-frequency-format-val"
    for c in (0, 1, 2):
        for i in range(2):
            write_rgb(v2 / str(c) / f"{c:02d}{i}a9f.jpeg", seed=700 + 10 * c + i, fmt="JPEG")
    _tar(src / "imagenetv2-matched-frequency.tar.gz", v2, v2.name)
    _zip(src / "ImageNet-Sketch.zip", _class_tree(tmp / "sketch", ["n01440764", "n01443537", "n01484850"],
                                                  stem="sketch", seed=800), "sketch")
    _tar(src / "imagenet-a.tar", _with_readme(_class_tree(tmp / "imagenet-a", ["n01484850", "n01443537"], seed=900)),
         "imagenet-a")
    _tar(src / "imagenet-r.tar", _with_readme(_class_tree(tmp / "imagenet-r", ["n01440764", "n01484850"], stem="art",
                                                          seed=950)), "imagenet-r")
    return {"ImageNetV2": 3, "ImageNetSketch": 3, "ImageNetA": 2, "ImageNetR": 2}


WRITERS: dict[str, Callable[[Path, Path], int]] = {
    "ImageNet": imagenet, "Caltech101": caltech101, "OxfordPets": oxford_pets, "StanfordCars": stanford_cars,
    "OxfordFlowers": oxford_flowers, "Food101": food101, "FGVCAircraft": fgvc_aircraft, "SUN397": sun397,
    "DescribableTextures": dtd, "EuroSAT": eurosat, "UCF101": ucf101,
}


def write_archives(name: str, src: Path, tmp: Path) -> int:
    """Write dataset `name`'s fixture archives into `src` (scratch space in `tmp`); returns its class count."""
    src.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    return WRITERS[name](src, tmp)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut `path` to `keep` of its bytes (a download that stopped half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])

