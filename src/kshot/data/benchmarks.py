"""The CoOp benchmark datasets: folder layout, split file, class-name source, default template, ATPrompt attributes.

Layouts follow `KaiyangZhou/CoOp: DATASETS.md` (with `$DATA/<folder>/...`); templates are CoOp's `CUSTOM_TEMPLATES`
(`trainers/zsclip.py`); attribute bases and the searched attributes are ATPrompt's (`zhengli97/ATPrompt:
docs/ATPrompt.md`, Table 1; `scripts/attribute_compute/main.sh`). Nine datasets ship a `split_zhou_<Name>.json`
(read by `kshot.data.read_coop_split`); FGVCAircraft is read from its `images_variant_<split>.txt` files and ImageNet
from `images/{train,val}/<wnid>/` + `classnames.txt` (val is the test split, as in CoOp).

`load_benchmark(root, split)` reads any of them given `<DATA>/<folder>` (or a split file inside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kshot.data.dataset import Dataset, Item
from kshot.errors import DataError


@dataclass(frozen=True)
class Benchmark:
    """One CoOp benchmark dataset.

    Attributes:
        name: CoOp's dataset class name (also `<Name>` of its split file).
        folder: folder under `$DATA`.
        image_dir: folder the split file's paths are relative to (inside `folder`).
        split_file: `split_zhou_<Name>.json`, or None (FGVCAircraft, ImageNet).
        template: CoOp's hand-written prompt.
        attributes: ATPrompt's searched attributes.
        attribute_bases: the five LLM-proposed candidates ATPrompt searched over.
        num_classes: classes in the full dataset.
        aliases: other names users type.
    """

    name: str
    folder: str
    image_dir: str
    split_file: str | None
    template: str
    attributes: tuple[str, ...]
    attribute_bases: tuple[str, ...]
    num_classes: int
    aliases: tuple[str, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("ImageNet", "imagenet", "images", None, "a photo of a {}.", ("color", "shape"),
              ("color", "size", "shape", "habitat", "behavior"), 1000),
    Benchmark("Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}.",
              ("shape", "size"), ("shape", "color", "material", "function", "size"), 100, ("caltech",)),
    Benchmark("OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet.",
              ("playfulness", "energy"), ("loyalty", "affection", "playfulness", "energy", "intelligence"), 37,
              ("pets",)),
    Benchmark("StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}.", ("luxury",),
              ("design", "engine", "performance", "luxury", "color"), 196, ("cars",)),
    Benchmark("OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
              "a photo of a {}, a type of flower.", ("color", "habitat", "growth"),
              ("color", "flower", "habitat", "growth", "season"), 102, ("flowers", "flowers102")),
    Benchmark("Food101", "food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food.",
              ("flavor", "preparation"), ("flavor", "texture", "origin", "ingredients", "preparation"), 101,
              ("food",)),
    Benchmark("FGVCAircraft", "fgvc_aircraft", "images", None, "a photo of a {}, a type of aircraft.",
              ("design", "range"), ("design", "capacity", "range", "engines", "liveries"), 100, ("aircraft",)),
    Benchmark("SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}.", ("function",),
              ("architecture", "environment", "structure", "design", "function"), 397, ("sun",)),
    Benchmark("DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture.",
              ("pattern", "color", "design"), ("pattern", "texture", "color", "design", "structure"), 47,
              ("dtd", "textures")),
    Benchmark("EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}.",
              ("habitat",), ("habitat", "foliage", "infrastructure", "terrain", "watercourse"), 10),
    Benchmark("UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}.",
              ("precision",), ("precision", "coordination", "technique", "strength", "control"), 101, ("ucf",)),
)}


def _key(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def find_benchmark(name: str) -> Benchmark | None:
    """The benchmark called `name` (dataset name, folder, split-file name or alias; case/punctuation-insensitive)."""
    k = _key(Path(name).name.removeprefix("split_zhou_").removesuffix(".json"))
    for b in BENCHMARKS.values():
        if k in {_key(b.name), _key(b.folder), *(_key(a) for a in b.aliases)}:
            return b
    return None


def is_benchmark_folder(path: str | Path) -> Benchmark | None:
    """The benchmark whose CoOp layout the folder `path` holds, or None: its name must be the benchmark's (folder,
    name or alias) and it must hold its split file (FGVCAircraft: `variants.txt`; ImageNet: `classnames.txt`), so a
    plain photo folder that happens to be called `imagenet` is not one."""
    path = Path(path)
    b = find_benchmark(path.name) if path.is_dir() else None
    marker = None if b is None else {"FGVCAircraft": "variants.txt", "ImageNet": "classnames.txt"}.get(
        b.name, b.split_file)
    return b if marker is not None and (path / marker).is_file() else None


def get_benchmark(name: str) -> Benchmark:
    """Like `find_benchmark`, but unknown names are a `DataError` listing the known ones."""
    b = find_benchmark(name)
    if b is None:
        raise DataError(f"unknown CoOp benchmark dataset {name!r}; known: {', '.join(BENCHMARKS)}")
    return b


def load_benchmark(root: str | Path, split: str = "train", benchmark: str | None = None) -> Dataset:
    """Read a split ('train' | 'val' | 'test') of a CoOp benchmark dataset laid out as in CoOp's DATASETS.md.

    Args:
        root: `$DATA/<folder>` (or its split file).
        benchmark: which dataset; default: recognised from the folder or split-file name.
    """
    from kshot.data.coop_split import read_coop_split

    root = Path(root)
    b = get_benchmark(benchmark) if benchmark else find_benchmark(root.name)
    if b is None:
        raise DataError(f"{root}: not a CoOp benchmark folder name; expected one of "
                        f"{', '.join(x.folder for x in BENCHMARKS.values())} (or pass benchmark=)")
    if root.is_file():
        root = root.parent
    if b.split_file is not None:
        path = root / b.split_file
        if not path.is_file():
            raise DataError(f"{root}: {b.name} needs {b.split_file} in this folder (see CoOp's DATASETS.md)")
        ds = read_coop_split(path, split, image_root=root / b.image_dir if b.image_dir else root, name=b.name)
        return ds
    if b.name == "FGVCAircraft":
        return _read_fgvc(root, split)
    return _read_imagenet(root, split)


def _read_fgvc(root: Path, split: str) -> Dataset:
    """`variants.txt` (class names, one per line) and `images_variant_<split>.txt` (`<image id> <variant>` lines)."""
    variants = root / "variants.txt"
    listing = root / f"images_variant_{split}.txt"
    for p in (variants, listing):
        if not p.is_file():
            raise DataError(f"{root}: FGVCAircraft needs {p.name} (the fgvc-aircraft-2013b data/ folder)")
    names = [ln.strip() for ln in variants.read_text().splitlines() if ln.strip()]
    index = {n: i for i, n in enumerate(names)}
    items = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        image, _, variant = line.strip().partition(" ")
        if variant not in index:
            raise DataError(f"{listing}:{n}: variant {variant!r} is not in {variants.name}")
        items.append(Item(f"{image}.jpg", index[variant]))
    return Dataset(root=root / "images", items=items, classnames=names, name="FGVCAircraft", raw_classnames=names)


def _read_imagenet(root: Path, split: str) -> Dataset:
    """`classnames.txt` (`<wnid> <name>` lines) and `images/<train|val>/<wnid>/*`; test = val (CoOp)."""
    from kshot.data.paths import list_images

    sub = {"train": "train", "val": "val", "test": "val"}.get(split)
    if sub is None:
        raise DataError(f"ImageNet split must be train, val or test, got {split!r}")
    names_file = root / "classnames.txt"
    if not names_file.is_file():
        raise DataError(f"{root}: ImageNet needs classnames.txt (`<wnid> <class name>` per line; CoOp's DATASETS.md)")
    pairs = [ln.strip().split(" ", 1) for ln in names_file.read_text().splitlines() if ln.strip()]
    folder = root / "images" / sub
    wnids = imagenet_wnids(root, split)
    names = dict((p[0], p[1] if len(p) > 1 else p[0]) for p in pairs)
    missing = [w for w in wnids if w not in names]
    if missing:
        raise DataError(f"{names_file}: no class name for folder(s) {missing[:5]}")
    items = [Item(f"{w}/{f}", label) for label, w in enumerate(wnids) for f in list_images(folder / w)]
    classnames = [names[w] for w in wnids]
    return Dataset(root=folder, items=items, classnames=classnames, name="ImageNet", raw_classnames=classnames)


def imagenet_wnids(root: str | Path, split: str = "train") -> list[str]:
    """The wnids of an ImageNet folder's classes in label order (its sorted `images/<split>/<wnid>/` folders)."""
    folder = Path(root) / "images" / {"test": "val"}.get(split, split)
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not wnids:
        raise DataError(f"{folder}: no class folders (expected images/{folder.name}/<wnid>/...)")
    return wnids
