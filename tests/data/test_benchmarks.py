"""CoOp benchmark definitions: name lookup, readers for split-file, FGVCAircraft and ImageNet layouts; presets."""

import json

import numpy as np
import pytest
from PIL import Image

from kshot.errors import ConfigError, DataError
from kshot.data.benchmarks import BENCHMARKS, find_benchmark, is_benchmark_folder, load_benchmark
from kshot.methods.prompting.presets import preset_overrides


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(path)


def test_lookup_by_name_folder_alias_and_split_file():
    assert len(BENCHMARKS) == 11
    for name in ("dtd", "DescribableTextures", "split_zhou_DescribableTextures.json", "Textures"):
        assert find_benchmark(name).name == "DescribableTextures"
    assert find_benchmark("caltech-101").attributes == ("shape", "size")
    assert find_benchmark("oxford_pets").attributes == ("playfulness", "energy")
    assert find_benchmark("mnist") is None


def test_split_file_dataset_reads_images_under_its_image_dir(tmp_path):
    root = tmp_path / "dtd"
    rows = {"train": [["banded/a.jpg", 0, "banded"], ["zigzagged/b.jpg", 1, "zigzagged"]],
            "val": [], "test": [["zigzagged/c.jpg", 1, "zigzagged"]]}
    for s in rows.values():
        for p, _, _ in s:
            _img(root / "images" / p)
    (root / "split_zhou_DescribableTextures.json").write_text(json.dumps(rows))
    ds = load_benchmark(root, "test")
    assert ds.name == "DescribableTextures" and ds.classnames == ["banded", "zigzagged"]
    assert ds.root == root / "images" and [it.label for it in ds.items] == [1]
    with pytest.raises(DataError, match="split_zhou_OxfordPets.json"):
        load_benchmark(tmp_path / "dtd", benchmark="pets")


def test_fgvc_and_imagenet_layouts(tmp_path):
    fg = tmp_path / "fgvc_aircraft"
    fg.mkdir()
    (fg / "variants.txt").write_text("707-320\nA300B4\n")
    (fg / "images_variant_test.txt").write_text("0001 A300B4\n0002 707-320\n")
    ds = load_benchmark(fg, "test")
    assert [(it.path, it.label) for it in ds.items] == [("0001.jpg", 1), ("0002.jpg", 0)]
    (fg / "images_variant_val.txt").write_text("0003 Boeing 747\n")
    with pytest.raises(DataError, match=r"images_variant_val.txt:1: variant 'Boeing 747'"):
        load_benchmark(fg, "val")
    im = tmp_path / "imagenet"
    _img(im / "images" / "val" / "n02" / "x.JPEG")
    _img(im / "images" / "val" / "n01" / "y.JPEG")
    (im / "classnames.txt").write_text("n01 tench\nn02 goldfish\n")
    ds = load_benchmark(im, "test")
    assert ds.classnames == ["tench", "goldfish"] and [it.label for it in ds.items] == [0, 1]


def test_presets():
    assert preset_overrides("seed000", "caltech101", "coop") == {"n_ctx": 4, "epochs": 25}
    want = {"n_ctx": 2, "epochs": 10, "dataset": "DescribableTextures"}
    assert preset_overrides("seed000", "dtd", "atprompt") == want
    assert preset_overrides("official", "oxford_pets", "atprompt")["epochs"] == 100
    assert preset_overrides("official", "dtd", "zeroshot") == {}
    with pytest.raises(ConfigError, match="unknown prompt preset"):
        preset_overrides("fast", "dtd", "coop")


def test_is_benchmark_folder_needs_the_name_and_the_layout(tmp_path):
    for folder, marker in (("dtd", "split_zhou_DescribableTextures.json"), ("fgvc_aircraft", "variants.txt"),
                           ("imagenet", "classnames.txt")):
        (tmp_path / folder).mkdir()
        assert is_benchmark_folder(tmp_path / folder) is None  # a photo folder that happens to have the name
        (tmp_path / folder / marker).write_text("")
        assert is_benchmark_folder(tmp_path / folder).folder == folder
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "split_zhou_DescribableTextures.json").write_text("")
    assert is_benchmark_folder(tmp_path / "photos") is None
    assert is_benchmark_folder(tmp_path / "dtd" / "split_zhou_DescribableTextures.json") is None  # a file
