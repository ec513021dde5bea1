"""CoOp/Dassl split_zhou_<Name>.json: reading each split, image-root discovery, consistency checks, writer."""

from __future__ import annotations

import json

import pytest

from kshot.data.coop_split import read_coop_split, write_coop_split
from kshot.data.paths import MissingFilesError
from kshot.errors import DataError


@pytest.fixture
def pets(tmp_path, img):
    """oxford_pets/{images/*.jpg, split_zhou_OxfordPets.json} with 3 classes."""
    root = tmp_path / "oxford_pets"
    names = ["abyssinian", "american_bulldog", "beagle"]
    split = {"train": [], "val": [], "test": []}
    for c, name in enumerate(names):
        for n, s in enumerate(["train", "train", "val", "test"]):
            rel = f"{name}_{n}.jpg"
            img(root / "images" / rel, seed=c * 4 + n)
            split[s].append([rel, c, name])
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return root


def test_read_each_split_and_find_image_dir(pets):
    tr = read_coop_split(pets / "split_zhou_OxfordPets.json", "train")
    assert tr.root == pets / "images" and tr.name == "OxfordPets"
    assert len(tr) == 6 and tr.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert tr.classnames == ["abyssinian", "american bulldog", "beagle"]
    assert tr.raw_classnames == ["abyssinian", "american_bulldog", "beagle"]
    va = read_coop_split(pets / "split_zhou_OxfordPets.json", "val")
    te = read_coop_split(pets / "split_zhou_OxfordPets.json", "test")
    assert len(va) == 3 and len(te) == 3 and va.classnames == tr.classnames
    assert all(tr.abspath(i).is_file() for i in range(len(tr)))
    with pytest.raises(DataError, match="unknown split"):
        read_coop_split(pets / "split_zhou_OxfordPets.json", "testA")


def test_image_root_not_found_or_given(pets, tmp_path):
    moved = tmp_path / "elsewhere"
    (pets / "images").rename(moved)
    with pytest.raises(DataError, match="pass image_root"):
        read_coop_split(pets / "split_zhou_OxfordPets.json")
    assert len(read_coop_split(pets / "split_zhou_OxfordPets.json", image_root=moved)) == 6


def _rewrite(pets, fn):
    p = pets / "split_zhou_OxfordPets.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))
    return p


def test_conflicting_classnames(pets):
    p = _rewrite(pets, lambda d: d["test"][0].__setitem__(2, "persian"))
    with pytest.raises(DataError, match=r"test\[0\]: label 0 is named 'persian' but train\[0\] names it 'abyssinian'"):
        read_coop_split(p)


def test_non_contiguous_labels(pets):
    def relabel(d):
        for s in d.values():
            for e in s:
                if e[1] == 1:
                    e[1] = 5
    with pytest.raises(DataError, match=r"contiguous.*\[1, 3, 4\]"):
        read_coop_split(_rewrite(pets, relabel))


@pytest.mark.parametrize("bad,msg", [
    (["a.jpg", 0], "expected \\[path, label, classname\\]"),
    (["a.jpg", "0", "x"], "not an integer"),
    (["a.jpg", True, "x"], "not an integer"),
    (["a.jpg", -1, "x"], "negative"),
    (["../../etc/passwd", 0, "abyssinian"], "escapes"),
    (["/abs.jpg", 0, "abyssinian"], "absolute"),
])
def test_malformed_entries(pets, bad, msg):
    p = _rewrite(pets, lambda d: d["val"].append(bad))
    with pytest.raises(DataError, match=msg) as e:
        read_coop_split(p)
    assert "val[3]" in str(e.value)


def test_not_json_or_missing_keys(pets):
    p = pets / "split_zhou_OxfordPets.json"
    p.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_coop_split(p)
    p.write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="missing split"):
        read_coop_split(p)


def test_missing_files(pets):
    (pets / "images" / "beagle_0.jpg").unlink()
    with pytest.raises(MissingFilesError, match=r"train\[4\]"):
        read_coop_split(pets / "split_zhou_OxfordPets.json", image_root=pets / "images")
    ds = read_coop_split(pets / "split_zhou_OxfordPets.json", image_root=pets / "images", on_missing="skip")
    assert len(ds) == 5 and ds.skipped[0][0] == "beagle_0.jpg"


def test_write_roundtrip(pets, tmp_path):
    f = pets / "split_zhou_OxfordPets.json"
    tr, va, te = (read_coop_split(f, s) for s in ("train", "val", "test"))
    out = pets / "split_zhou_Copy.json"
    write_coop_split(out, tr.subset([0, 2, 4]), va, te)
    assert json.loads(out.read_text())["train"][1] == ["american_bulldog_0.jpg", 1, "american_bulldog"]
    back = read_coop_split(out, "train")
    assert back.name == "Copy" and [it.path for it in back.items] == [tr.items[i].path for i in (0, 2, 4)]
    assert read_coop_split(out, "test").labels.tolist() == te.labels.tolist()
