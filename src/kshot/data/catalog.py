"""What each CoOp benchmark dataset needs: archive names and sizes, where they come from, CoOp's published split sizes.

Sources: layouts and archive names from `KaiyangZhou/CoOp: DATASETS.md`; split sizes from the CoOp paper
(Zhou et al., IJCV 2022, Table 7 "dataset statistics"); download URLs and MD5s are those `torchvision.datasets`
0.29 uses (`caltech.py`, `oxford_iiit_pet.py`, `flowers102.py`, `food101.py`, `fgvc_aircraft.py`, `sun397.py`,
`dtd.py`, `eurosat.py`). Sizes are approximate (as published). Licence notes are a reminder, not legal advice: read
each dataset's page before using it.

Stanford Cars' original link (ai.stanford.edu) is dead (torchvision's `StanfordCars` says so too), SUN397's Princeton
link is often unreachable, ImageNet needs a login, and UCF101's mid-frames, Flowers' `cat_to_name.json` and the
`split_zhou_<Name>.json` files only live on CoOp's Google Drive: for those, `kshot data prepare` asks for the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from kshot.errors import DataError


@dataclass(frozen=True)
class Archive:
    """One file the user downloads.

    Attributes:
        filename: the official file name (what `--from DIR` must contain).
        size: approximate size, as published.
        url: a working download URL (torchvision's), or None when the file cannot be fetched automatically.
        md5: checksum torchvision verifies, or None.
        required: False for files only some paths need (e.g. the split file's absence is handled).
        wrapper: (container file name, path of `filename` inside it): torchvision downloads the container.
    """

    filename: str
    size: str
    url: str | None = None
    md5: str | None = None
    required: bool = True
    wrapper: tuple[str, str] | None = None


@dataclass(frozen=True)
class Entry:
    """One dataset of the catalog.

    Attributes:
        name: CoOp's dataset name (`split_zhou_<name>.json`), e.g. 'Caltech101'.
        folder: folder under `$DATA` (CoOp's DATASETS.md).
        classes: number of classes.
        counts: CoOp's published (train, val, test) image counts; val None for ImageNet (CoOp tests on its val).
        archives: the files to download.
        licence: one-line licence/terms note.
        note: why a file cannot be downloaded, or other advice ('' when none).
        variant: True for the ImageNet variants (test-only, domain generalisation).
    """

    name: str
    folder: str
    classes: int
    counts: tuple[int, int | None, int]
    archives: tuple[Archive, ...]
    licence: str
    note: str = ""
    variant: bool = False

    @property
    def downloadable(self) -> bool:
        """True when every required archive has a URL."""
        return all(a.url for a in self.archives if a.required)

    @property
    def split_file(self) -> str | None:
        """`split_zhou_<Name>.json`, or None for datasets whose splits come with the archive."""
        return None if self.name in _OFFICIAL_SPLITS or self.variant else f"split_zhou_{self.name}.json"


_OFFICIAL_SPLITS = {"ImageNet", "FGVCAircraft"}
_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
_DRIVE = "CoOp's Google Drive (links in CoOp's DATASETS.md)"
_IMAGENET_CLASSNAMES = Archive("classnames.txt", "30 KB")

CATALOG: dict[str, Entry] = {e.name: e for e in (
    Entry("ImageNet", "imagenet", 1000, (1_281_167, None, 50_000), (
        Archive("ILSVRC2012_img_train.tar", "138 GB"), Archive("ILSVRC2012_img_val.tar", "6.3 GB"),
        Archive("ILSVRC2012_devkit_t12.tar.gz", "2.5 MB"), _IMAGENET_CLASSNAMES),
        "ImageNet terms of access: non-commercial research, login at image-net.org",
        f"log in at image-net.org for the ILSVRC2012 files; classnames.txt is on {_DRIVE}"),
    Entry("Caltech101", "caltech-101", 100, (4128, 1649, 2465), (
        Archive("101_ObjectCategories.tar.gz", "131 MB", "https://data.caltech.edu/records/mzrjq-6wc02/files/"
                "caltech-101.zip", "3138e1922a9193bfa496528edbbc45d0",
                wrapper=("caltech-101.zip", "caltech-101/101_ObjectCategories.tar.gz")),),
        "CC BY 4.0 (data.caltech.edu)"),
    Entry("OxfordPets", "oxford_pets", 37, (2944, 736, 3669), (
        Archive("images.tar.gz", "755 MB", f"{_VGG}/pets/data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
        Archive("annotations.tar.gz", "18 MB", f"{_VGG}/pets/data/annotations.tar.gz",
                "95a8c909bbe2e81eed6a22bccdf3f68f")),
        "CC BY-SA 4.0"),
    Entry("StanfordCars", "stanford_cars", 196, (6509, 1635, 8041), (
        Archive("cars_train.tgz", "979 MB"), Archive("cars_test.tgz", "960 MB"), Archive("car_devkit.tgz", "330 KB"),
        Archive("cars_test_annos_withlabels.mat", "185 KB")),
        "non-commercial research only (ImageNet terms)",
        "the original ai.stanford.edu link is dead (torchvision's StanfordCars says so too): get the four files from "
        "a mirror (e.g. Kaggle 'stanford-car-dataset') and pass --from DIR"),
    Entry("OxfordFlowers", "oxford_flowers", 102, (4093, 1633, 2463), (
        Archive("102flowers.tgz", "330 MB", f"{_VGG}/flowers/102/102flowers.tgz", "52808999861908f626f3c1f4e79d11fa"),
        Archive("imagelabels.mat", "1 KB", f"{_VGG}/flowers/102/imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"),
        Archive("cat_to_name.json", "3 KB", required=False)),
        "research use; see the VGG page",
        f"class names (cat_to_name.json) are on {_DRIVE}; the split file also carries them"),
    Entry("Food101", "food-101", 101, (50_500, 20_200, 30_300), (
        Archive("food-101.tar.gz", "5.0 GB", "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                "85eeb15f3717b99a5da872d97d918f87"),),
        "research use; images from foodspotting.com (see the ETH page)"),
    Entry("FGVCAircraft", "fgvc_aircraft", 100, (3334, 3333, 3333), (
        Archive("fgvc-aircraft-2013b.tar.gz", "2.8 GB", f"{_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"),),
        "non-commercial research only"),
    Entry("SUN397", "sun397", 397, (15_880, 3970, 19_850), (
        Archive("SUN397.tar.gz", "37 GB", "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
                "8ca2778205c41d23104230ba66911c7a"),),
        "research use; see the SUN database page",
        "the Princeton link is often unreachable: if the download fails, fetch SUN397.tar.gz elsewhere, pass --from"),
    Entry("DescribableTextures", "dtd", 47, (2820, 1128, 1692), (
        Archive("dtd-r1.0.1.tar.gz", "625 MB", f"{_VGG}/dtd/download/dtd-r1.0.1.tar.gz",
                "fff73e5086ae6bdbea199a49dfb8a4c1"),),
        "research use; see the VGG page"),
    Entry("EuroSAT", "eurosat", 10, (13_500, 5400, 8100), (
        Archive("EuroSAT.zip", "94 MB", "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip", "c8fa014336c82ac7804f0398fcb19387"),),
        "MIT"),
    Entry("UCF101", "ucf101", 101, (7639, 1898, 3783), (Archive("UCF-101-midframes.zip", "1.8 GB"),),
          "research use; see the UCF page", f"CoOp's mid-frames (UCF-101-midframes.zip) are only on {_DRIVE}"),
    Entry("ImageNetV2", "imagenetv2", 1000, (0, None, 10_000), (
        Archive("imagenetv2-matched-frequency.tar.gz", "1.2 GB"), _IMAGENET_CLASSNAMES),
        "MIT", "from github.com/modestyachts/ImageNetV2 (Hugging Face vaishaal/ImageNetV2)", True),
    Entry("ImageNetSketch", "imagenet-sketch", 1000, (0, None, 50_889), (
        Archive("ImageNet-Sketch.zip", "8.4 GB"), _IMAGENET_CLASSNAMES),
        "MIT", "from github.com/HaohanWang/ImageNet-Sketch", True),
    Entry("ImageNetA", "imagenet-adversarial", 200, (0, None, 7500), (
        Archive("imagenet-a.tar", "659 MB"), _IMAGENET_CLASSNAMES),
        "MIT", "from github.com/hendrycks/natural-adv-examples", True),
    Entry("ImageNetR", "imagenet-rendition", 200, (0, None, 30_000), (
        Archive("imagenet-r.tar", "2.1 GB"), _IMAGENET_CLASSNAMES),
        "MIT", "from github.com/hendrycks/imagenet-r", True),
)}

#: Short names users type (lower case, alphanumerics only).
_ALIASES = {"caltech": "Caltech101", "pets": "OxfordPets", "cars": "StanfordCars", "flowers": "OxfordFlowers",
            "flowers102": "OxfordFlowers", "food": "Food101", "aircraft": "FGVCAircraft", "sun": "SUN397",
            "dtd": "DescribableTextures", "textures": "DescribableTextures", "ucf": "UCF101",
            "imagenetsketch": "ImageNetSketch", "imageneta": "ImageNetA", "imagenetr": "ImageNetR"}

#: The 11 datasets of CoOp's few-shot table, in the paper's order.
COOP11 = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft",
          "SUN397", "DescribableTextures", "EuroSAT", "UCF101")


def _key(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def get_entry(name: str) -> Entry:
    """The catalog entry called `name` (CoOp name, folder or alias, any case); `DataError` listing names if unknown."""
    k = _key(name)
    for e in CATALOG.values():
        if k in (_key(e.name), _key(e.folder)):
            return e
    if k in _ALIASES:
        return CATALOG[_ALIASES[k]]
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(CATALOG)}")
