"""ImageFolder trees and flat folders."""

from __future__ import annotations

import pytest

from kshot.data.imagefolder import looks_like_image_folder, read_flat_folder, read_image_folder
from kshot.errors import DataError


def test_sorted_classes_recursive_images_case_insensitive_ext(tmp_path, img):
    root = tmp_path / "pets"
    img(root / "cat" / "b.JPG")
    img(root / "cat" / "a.png")
    img(root / "cat" / "deeper" / "c.jpeg")
    img(root / "big_dog" / "x.webp")
    (root / "big_dog" / "readme.txt").write_text("not an image")
    img(root / ".ipynb_checkpoints" / "junk.jpg")   # hidden: not a class
    img(root / "cat" / ".hidden.jpg")               # hidden: not an item
    ds = read_image_folder(root)
    assert ds.raw_classnames == ["big_dog", "cat"] and ds.classnames == ["big dog", "cat"]
    assert [(it.path, it.label) for it in ds.items] == [
        ("big_dog/x.webp", 0), ("cat/a.png", 1), ("cat/b.JPG", 1), ("cat/deeper/c.jpeg", 1)]
    assert ds.name == "pets" and looks_like_image_folder(root)


def test_empty_class_error_or_warn(tmp_path, img, caplog):
    img(tmp_path / "a" / "1.jpg")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="hold no image.*: b"):
        read_image_folder(tmp_path)
    ds = read_image_folder(tmp_path, on_empty="warn")
    assert ds.classnames == ["a", "b"] and ds.labels.tolist() == [0]
    assert "b" in caplog.text


def test_no_classes_at_all(tmp_path, img):
    with pytest.raises(DataError, match="no class sub-folders"):
        read_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="hold no image"):
        read_image_folder(tmp_path, on_empty="warn")  # every class empty is always an error
    with pytest.raises(DataError, match="not found"):
        read_image_folder(tmp_path / "nope")


def test_flat_folder(tmp_path, img):
    for n in ("3.jpg", "1.png", "2.gif"):
        img(tmp_path / n)
    (tmp_path / "x.csv").write_text("")
    ds = read_flat_folder(tmp_path, classnames=["a", "b"])
    assert [it.path for it in ds.items] == ["1.png", "2.gif", "3.jpg"] and not ds.has_labels
    assert ds.classnames == ["a", "b"]
    img(tmp_path / "1.PNG")
    with pytest.raises(DataError, match="duplicate file name"):
        read_flat_folder(tmp_path)


def test_flat_folder_without_images(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        read_flat_folder(tmp_path)


def test_symlink_loop_adds_no_items(tmp_path, img):
    img(tmp_path / "a" / "1.jpg")
    img(tmp_path / "b" / "2.jpg")
    (tmp_path / "a" / "up").symlink_to(tmp_path)  # a -> root -> a -> ... (os.walk would follow it 40 times)
    (tmp_path / "b" / "self").symlink_to(tmp_path / "b")
    ds = read_image_folder(tmp_path)
    assert [(it.path, it.label) for it in ds.items][-1] == ("b/2.jpg", 1)
    assert [it.path for it in ds.items if it.label == 1] == ["b/2.jpg"]
    assert sum(1 for it in ds.items if it.path.endswith("1.jpg")) <= 2  # a/1.jpg, at most once more via up/a


def test_non_utf8_file_names_are_left_out_with_a_warning(tmp_path, img, caplog):
    import os

    img(tmp_path / "a" / "1.jpg")
    img(tmp_path / "a" / "2.jpg")
    os.rename(os.fsencode(tmp_path / "a" / "2.jpg"), os.fsencode(tmp_path / "a") + b"/bad\xff name.jpg")
    ds = read_image_folder(tmp_path)
    assert [it.path for it in ds.items] == ["a/1.jpg"]
    assert "not valid UTF-8" in caplog.text
    flat = read_flat_folder(tmp_path / "a")
    assert [it.path for it in flat.items] == ["1.jpg"]
