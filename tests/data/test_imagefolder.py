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


def test_symlink_loop_and_second_link_are_read_once(tmp_path, img, caplog):
    root = tmp_path / "pets"
    for i in range(3):
        img(root / "cat" / "sub" / f"{i}.png", seed=i)
    img(root / "dog" / "0.png")
    (root / "cat" / "sub" / "loop").symlink_to(root / "cat")  # cat/sub/loop -> cat: an endless tree
    (root / "cat" / "again").symlink_to(root / "cat" / "sub")  # a second link to a folder walked anyway
    ds = read_image_folder(root)
    assert [it.path for it in ds.items if it.label == 0] == ["cat/again/0.png", "cat/again/1.png", "cat/again/2.png"]
    assert len(ds) == 4  # 4 real images, each once
    assert "symlink loop" in caplog.text


def test_non_utf8_file_and_folder_names_are_skipped_with_a_warning(tmp_path, img, caplog):
    import os

    root = tmp_path / "pets"
    img(root / "cat" / "a.png")
    img(root / "dog" / "b.png")
    bad_file = os.path.join(os.fsencode(root / "cat"), b"caf\xe9.png")
    bad_dir = os.path.join(os.fsencode(root), b"\xff_class")
    with open(bad_file, "wb") as f:
        f.write((root / "cat" / "a.png").read_bytes())
    os.makedirs(bad_dir)
    with open(os.path.join(bad_dir, b"x.png"), "wb") as f:
        f.write((root / "cat" / "a.png").read_bytes())
    ds = read_image_folder(root)
    assert ds.raw_classnames == ["cat", "dog"] and [it.path for it in ds.items] == ["cat/a.png", "dog/b.png"]
    assert "not valid UTF-8" in caplog.text and "caf\\xe9.png" in caplog.text
    with open(os.path.join(os.fsencode(root / "dog"), b"\xfe.jpg"), "wb") as f:
        f.write(b"")
    flat = read_flat_folder(root / "dog")
    assert [it.path for it in flat.items] == ["b.png"]


def test_non_utf8_name_gives_no_traceback_in_kshot_extract(tmp_path, img, capsys):
    import os

    from kshot.cli import app
    from kshot.cli_errors import run_cli

    root = tmp_path / "pets"
    for c in ("cat", "dog"):
        img(root / c / "a.png")
    with open(os.path.join(os.fsencode(root / "cat"), b"\xe9t\xe9.png"), "wb") as f:
        f.write((root / "cat" / "a.png").read_bytes())
    assert run_cli(app, ["extract", str(root), "--cache", str(tmp_path / "cache"), "--workers", "0"]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "cached 2 x" in out.err
