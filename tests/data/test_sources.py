"""load_dataset: layout detection per path, forced layouts, split handling, clear errors."""

from __future__ import annotations

import json

import pytest

from kshot.data.sources import LAYOUTS, detect_layout, load_dataset
from kshot.errors import DataError


def test_challenge_detected_from_root_or_train_txt(challenge_root):
    assert detect_layout(challenge_root) == "challenge"
    assert detect_layout(challenge_root / "train.txt") == "challenge"
    assert len(load_dataset(challenge_root)) == 18
    assert len(load_dataset(challenge_root / "train.txt")) == 18
    ds = load_dataset(challenge_root, split="testA")
    assert len(ds) == 4 and not ds.has_labels


def test_coop_detected_from_file_or_folder(tmp_path, img):
    img(tmp_path / "images" / "a.jpg")
    img(tmp_path / "images" / "b.jpg")
    f = tmp_path / "split_zhou_Tiny.json"
    f.write_text(json.dumps({"train": [["a.jpg", 0, "x"]], "val": [], "test": [["b.jpg", 1, "y"]]}))
    assert detect_layout(f) == "coop" and detect_layout(tmp_path) == "coop"
    assert load_dataset(f, split="test").items[0].path == "b.jpg"
    assert load_dataset(tmp_path).classnames == ["x", "y"]
    with pytest.raises(DataError, match="does not take classes_file"):
        load_dataset(f, classes_file="c.txt")


def test_listfile(tmp_path, img):
    img(tmp_path / "i" / "a.jpg")
    (tmp_path / "list.txt").write_text("i\\a.jpg 1\n")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert detect_layout(tmp_path / "list.txt") == "listfile"
    ds = load_dataset(tmp_path / "list.txt", classes_file=tmp_path / "names.txt")
    assert ds.items[0].path == "i/a.jpg" and ds.classnames == ["cat", "dog"]


def test_imagefolder_and_split_subfolders(tmp_path, img):
    img(tmp_path / "plain" / "a" / "1.jpg")
    assert detect_layout(tmp_path / "plain") == "imagefolder"
    assert load_dataset(tmp_path / "plain").classnames == ["a"]
    with pytest.raises(DataError, match="no split 'test'"):
        load_dataset(tmp_path / "plain", split="test")
    img(tmp_path / "tv" / "train" / "a" / "1.jpg")
    img(tmp_path / "tv" / "train" / "b" / "1.jpg")
    img(tmp_path / "tv" / "test" / "a" / "2.jpg")
    img(tmp_path / "tv" / "test" / "b" / "2.jpg")
    tr = load_dataset(tmp_path / "tv", split="train")
    te = load_dataset(tmp_path / "tv", split="test")
    assert tr.root == tmp_path / "tv" / "train" and te.root == tmp_path / "tv" / "test"
    assert te.classnames == tr.classnames == ["a", "b"] and te.name == "tv"


def test_flat_folder_with_challenge_classes(tmp_path, img):
    img(tmp_path / "t" / "1.jpg")
    (tmp_path / "classes.txt").write_text("Animal_Polar_bear 0\nThu-dog_pug 1\n")
    assert detect_layout(tmp_path / "t") == "folder"
    ds = load_dataset(tmp_path / "t", classes_file=tmp_path / "classes.txt")
    assert ds.classnames == ["Polar bear", "pug"] and ds.class_domains == ["Animal", "Thu-dog"]


def test_forced_layout_and_errors(tmp_path, img, challenge_root):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset layout.*layout="):
        load_dataset(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown dataset file type"):
        load_dataset(tmp_path / "x.csv")
    with pytest.raises(DataError, match="unknown dataset layout 'bogus'"):
        load_dataset(challenge_root, layout="bogus")
    # forcing: the challenge root's TestSetA read as a plain folder
    ds = load_dataset(challenge_root / "TestSetA", layout="folder")
    assert len(ds) == 4 and ds.classnames == []
    assert set(LAYOUTS.names()) == {"challenge", "coop", "listfile", "imagefolder", "folder"}
