"""The ImageNet variants read from CoOp's layouts: V2's numbered folders, wnid folders, README.txt, errors."""

from __future__ import annotations

import pytest

from kshot.data.coop_source import load_any
from kshot.data.imagenet_variants import find_variant, is_variant_folder, load_variant
from kshot.errors import DataError
from tests.data.conftest import write_rgb

WNIDS = [f"n{i:08d}" for i in range(12)]


def _names(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(WNIDS)))


def test_v2_folders_are_classnames_line_numbers_in_numeric_order(tmp_path):
    root = tmp_path / "imagenetv2"
    _names(root)
    for c in (11, 2, 10):
        write_rgb(root / "imagenetv2-matched-frequency-format-val" / str(c) / "a.jpeg", seed=c)
    assert is_variant_folder(root).name == "ImageNetV2"
    v = load_variant(root)
    assert v.wnids == [WNIDS[2], WNIDS[10], WNIDS[11]]  # numeric order, not '10' < '11' < '2'
    assert v.dataset.classnames == ["class 2", "class 10", "class 11"]
    assert [(it.path, it.label) for it in v.dataset.items] == [("2/a.jpeg", 0), ("10/a.jpeg", 1), ("11/a.jpeg", 2)]
    write_rgb(root / "imagenetv2-matched-frequency-format-val" / "12" / "a.jpeg")
    with pytest.raises(DataError, match=r"class folders are 0\.\.11"):
        load_variant(root)


def test_wnid_folders_skip_readme_and_need_a_class_name(tmp_path):
    root = tmp_path / "imagenet-adversarial"
    _names(root)
    for w in (WNIDS[7], WNIDS[3]):
        write_rgb(root / "imagenet-a" / w / "x.jpg")
    (root / "imagenet-a" / "README.txt").write_text("readme")
    v = load_variant(root)
    assert v.wnids == [WNIDS[3], WNIDS[7]] and v.dataset.name == "ImageNetA" and len(v.dataset) == 2
    assert load_any(root, split="test").classnames == ["class 3", "class 7"]  # every reader finds it
    with pytest.raises(DataError, match="test-only"):
        load_any(root, split="train")
    write_rgb(root / "imagenet-a" / "n99999999" / "x.jpg")
    with pytest.raises(DataError, match=r"no class name for folder\(s\) \['n99999999'\]"):
        load_variant(root)


def test_lookup_and_layout_detection(tmp_path):
    assert find_variant("imagenet-sketch").name == "ImageNetSketch" and find_variant("ImageNetR").folder == \
        "imagenet-rendition"
    assert find_variant("imagenet") is None
    (tmp_path / "imagenet-rendition").mkdir()
    assert is_variant_folder(tmp_path / "imagenet-rendition") is None  # no classnames.txt / imagenet-r/
    with pytest.raises(DataError, match="not an ImageNet variant folder"):
        load_variant(tmp_path / "photos")
