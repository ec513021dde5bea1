"""`prepare_dataset` on fixture archives in each dataset's real structure: prepare -> check -> load, for all 11."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kshot.data import catalog
from kshot.data.check import check_dataset
from kshot.data.prepare import MANIFEST, partial_dir, prepare_dataset
from kshot.errors import DataError
from kshot.data.benchmarks import load_benchmark
from tests.data.coop_archives import PER_CLASS, truncate, write_archives


@pytest.fixture
def small(monkeypatch):
    """Make the catalog expect `classes` classes for dataset `name` (the fixtures are tiny)."""
    def patch(name: str, classes: int, counts=None):
        e = catalog.CATALOG[name]
        monkeypatch.setitem(catalog.CATALOG, name, dataclasses.replace(e, classes=classes, counts=counts or e.counts))
    return patch


@pytest.mark.parametrize("name", list(catalog.COOP11))
def test_prepare_check_load_every_dataset(name, tmp_path, small):
    classes = write_archives(name, tmp_path / "dl", tmp_path / "scratch")
    small(name, classes, (PER_CLASS * classes, None, 6) if name == "ImageNet" else
          (6, 3, 6) if name == "FGVCAircraft" else None)
    res = prepare_dataset(name, tmp_path / "DATA", tmp_path / "dl")
    entry = catalog.CATALOG[name]
    assert res.path == tmp_path / "DATA" / entry.folder and not res.existed
    assert not partial_dir(tmp_path / "DATA", entry).exists()
    manifest = json.loads((res.path / MANIFEST).read_text())
    assert manifest["classes"] == classes
    assert manifest["split"]["coop"] is (entry.split_file is None)  # no split_zhou in the fixtures: seeded
    report = check_dataset(name, tmp_path / "DATA")
    assert report.ok, report.problems
    total = sum(r.images for r in report.rows)
    assert total == (PER_CLASS * classes if name != "ImageNet" else PER_CLASS * classes + 6)
    test = load_benchmark(res.path, "test")  # the existing reader finds it by folder name
    assert test.num_classes == classes and len(test) > 0
    assert prepare_dataset(name, tmp_path / "DATA", tmp_path / "dl").existed  # idempotent


def test_class_names_follow_coop(tmp_path, small):
    for name, expect in (("Caltech101", ["face", "airplane", "ant"]), ("SUN397", ["abbey", "shop bakery", "zoo"]),
                         ("StanfordCars", ["2000 AM General Hummer SUV", "2012 Acura RL Sedan",
                                           "2012 Tesla Model S Sedan"]),
                         ("EuroSAT", ["Annual Crop Land", "Forest", "Sea or Lake"])):
        small(name, write_archives(name, tmp_path / name, tmp_path / f"s{name}"))
        res = prepare_dataset(name, tmp_path / "DATA", tmp_path / name)
        assert load_benchmark(res.path, "train").classnames == expect


def test_split_file_is_used_and_labelled_coop(tmp_path, small):
    write_archives("OxfordPets", tmp_path / "dl", tmp_path / "s")
    split = {"train": [["Abyssinian_1.jpg", 0, "abyssinian"], ["beagle_1.jpg", 1, "beagle"]],
             "val": [["Abyssinian_2.jpg", 0, "abyssinian"]], "test": [["beagle_5.jpg", 1, "beagle"]]}
    (tmp_path / "dl" / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    small("OxfordPets", 2, (2, 1, 1))
    res = prepare_dataset("pets", tmp_path / "DATA", tmp_path / "dl")
    assert res.manifest["split"] == {"source": "file", "file": "split_zhou_OxfordPets.json", "coop": True}
    assert res.manifest["counts"] == {"train": 2, "val": 1, "test": 1}
    assert check_dataset("OxfordPets", tmp_path / "DATA").ok


def test_split_file_of_another_dataset_is_one_clear_error_and_resume_takes_the_right_one(tmp_path, small):
    small("DescribableTextures", write_archives("DescribableTextures", tmp_path / "dl", tmp_path / "s"))
    wrong = tmp_path / "split_zhou_OxfordPets.json"
    wrong.write_text(json.dumps({"train": [["Abyssinian_1.jpg", 0, "abyssinian"]], "val": [],
                                 "test": [["beagle_5.jpg", 1, "beagle"]]}))
    with pytest.raises(DataError) as e:
        prepare_dataset("dtd", tmp_path / "DATA", tmp_path / "dl", split_file=wrong)
    msg = str(e.value)
    assert "\n" not in msg and "lists 1 image(s) the archives do not hold (e.g. Abyssinian_1.jpg)" in msg
    assert "is split_zhou_OxfordPets.json the split file of DescribableTextures?" in msg
    assert not (tmp_path / "DATA" / "dtd").exists()
    res = prepare_dataset("dtd", tmp_path / "DATA", tmp_path / "dl")  # resumed, now without the wrong file
    assert res.manifest["split"]["source"] == "seeded" and check_dataset("dtd", tmp_path / "DATA").ok


def test_seeded_split_is_reproducible_and_disjoint(tmp_path, small):
    small("DescribableTextures", write_archives("DescribableTextures", tmp_path / "dl", tmp_path / "s"))
    a = prepare_dataset("dtd", tmp_path / "A", tmp_path / "dl", seed=3)
    b = prepare_dataset("dtd", tmp_path / "B", tmp_path / "dl", seed=3)
    sa = (a.path / "split_zhou_DescribableTextures.json").read_text()
    assert sa == (b.path / "split_zhou_DescribableTextures.json").read_text()
    parts = json.loads(sa)
    paths = [r[0] for s in parts.values() for r in s]
    assert len(paths) == len(set(paths)) == 3 * PER_CLASS
    assert a.manifest["split"] == {"source": "seeded", "seed": 3, "coop": False}


def test_missing_archive_names_the_file_and_why(tmp_path):
    (tmp_path / "dl").mkdir()
    with pytest.raises(DataError, match=r"cars_train\.tgz.*dead"):
        prepare_dataset("cars", tmp_path / "DATA", tmp_path / "dl")


def test_truncated_archive_is_an_error_and_resume_completes(tmp_path, small):
    small("OxfordPets", write_archives("OxfordPets", tmp_path / "dl", tmp_path / "s"))
    good = (tmp_path / "dl" / "annotations.tar.gz").read_bytes()
    truncate(tmp_path / "dl" / "annotations.tar.gz")
    with pytest.raises(DataError, match="annotations.tar.gz: truncated or corrupt"):
        prepare_dataset("OxfordPets", tmp_path / "DATA", tmp_path / "dl")
    entry = catalog.CATALOG["OxfordPets"]
    work = partial_dir(tmp_path / "DATA", entry)
    assert work.is_dir() and not (tmp_path / "DATA" / entry.folder).exists()  # never visible half-done
    assert (work / ".kshot" / "images.tar.gz.done").exists()
    with pytest.raises(DataError, match="half-prepared"):
        check_dataset("OxfordPets", tmp_path / "DATA")
    (tmp_path / "dl" / "annotations.tar.gz").write_bytes(good)
    (tmp_path / "dl" / "images.tar.gz").unlink()  # already unpacked: the resume must not need it again
    res = prepare_dataset("OxfordPets", tmp_path / "DATA", tmp_path / "dl")
    assert sum(res.manifest["counts"].values()) == 3 * PER_CLASS
    assert check_dataset("OxfordPets", tmp_path / "DATA").ok


def test_folder_not_made_by_prepare_is_refused(tmp_path):
    (tmp_path / "DATA" / "eurosat").mkdir(parents=True)
    with pytest.raises(DataError, match="not made by"):
        prepare_dataset("EuroSAT", tmp_path / "DATA", tmp_path)


def test_unsafe_zip_member_is_refused(tmp_path):
    import zipfile

    (tmp_path / "dl").mkdir()
    with zipfile.ZipFile(tmp_path / "dl" / "EuroSAT.zip", "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(DataError, match="escapes"):
        prepare_dataset("EuroSAT", tmp_path / "DATA", tmp_path / "dl")
    assert not (tmp_path / "DATA" / "evil.txt").exists()


def test_imagenet_variant_is_prepared_and_counted(tmp_path, small):
    import tarfile

    from tests.data.conftest import write_rgb

    for c, wnid in enumerate(["n01498041", "n01531178"]):
        for i in range(3):
            write_rgb(tmp_path / "s" / "imagenet-a" / wnid / f"{i}.jpg", seed=10 * c + i)
    (tmp_path / "dl").mkdir()
    with tarfile.open(tmp_path / "dl" / "imagenet-a.tar", "w") as tf:
        tf.add(tmp_path / "s" / "imagenet-a", arcname="imagenet-a")
    (tmp_path / "dl" / "classnames.txt").write_text("n01498041 stingray\nn01531178 goldfinch\n")
    small("ImageNetA", 2, (0, None, 6))
    res = prepare_dataset("imagenet-a", tmp_path / "DATA", tmp_path / "dl")
    assert res.manifest["counts"] == {"test": 6} and (res.path / "classnames.txt").is_file()
    assert check_dataset("ImageNetA", tmp_path / "DATA").ok
    img = res.path / "imagenet-a" / "n01531178" / "1.jpg"
    img.write_bytes(img.read_bytes()[:40])  # a truncated image
    assert "do not decode: n01531178/1.jpg" in " ".join(check_dataset("ImageNetA", tmp_path / "DATA").problems)
    assert check_dataset("ImageNetA", tmp_path / "DATA", decode=False).ok
    (res.path / "imagenet-a" / "n01498041" / "0.jpg").unlink()
    assert "5 images, expected 6 (1 missing)" in " ".join(check_dataset("ImageNetA", tmp_path / "DATA").problems)
