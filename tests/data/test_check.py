"""`check_dataset` catches every corruption the fixtures are put through: missing class, missing or truncated images,
a wrong split file, an image in two splits, counts off CoOp's table."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from kshot.data import catalog
from kshot.data.check import check_dataset
from kshot.data.prepare import MANIFEST, prepare_dataset
from tests.data.coop_archives import PER_CLASS, write_archives


@pytest.fixture
def caltech(tmp_path, monkeypatch):
    """A prepared 3-class Caltech101 fixture (seeded split) under tmp_path/DATA."""
    e = catalog.CATALOG["Caltech101"]
    monkeypatch.setitem(catalog.CATALOG, "Caltech101", dataclasses.replace(e, classes=3))
    write_archives("Caltech101", tmp_path / "dl", tmp_path / "s")
    return prepare_dataset("Caltech101", tmp_path / "DATA", tmp_path / "dl").path


def _problems(tmp_path) -> str:
    report = check_dataset("caltech", tmp_path / "DATA")
    assert not report.ok
    return " | ".join(report.problems)


def test_clean_fixture_passes_and_labels_the_seeded_split(caltech, tmp_path):
    report = check_dataset("Caltech101", tmp_path / "DATA")
    assert report.ok and "NOT CoOp's" in report.split_source
    assert any("not comparable" in w for w in report.warnings)
    assert sum(r.images for r in report.rows) == 3 * PER_CLASS


def test_missing_class_is_named(caltech, tmp_path):
    shutil.rmtree(caltech / "101_ObjectCategories" / "ant")
    assert "listed images are missing, under ant (" in _problems(tmp_path)


def test_truncated_image_does_not_decode(caltech, tmp_path):
    img = next((caltech / "101_ObjectCategories" / "Faces").iterdir())
    img.write_bytes(img.read_bytes()[:60])
    assert f"do not decode: Faces/{img.name}" in _problems(tmp_path)
    assert check_dataset("Caltech101", tmp_path / "DATA", decode=False).ok  # --fast skips decoding


def test_wrong_split_file(caltech, tmp_path):
    split_path = caltech / "split_zhou_Caltech101.json"
    split = json.loads(split_path.read_text())
    split["test"] = split["test"][:-1]  # one image short of what prepare recorded
    split["val"].append(split["train"][0])  # and one image in two splits
    split_path.write_text(json.dumps(split))
    problems = _problems(tmp_path)
    assert "split 'test': " in problems and "1 missing" in problems
    assert "images are in two splits" in problems


def test_counts_compared_with_coop_table_when_split_is_coop(caltech, tmp_path):
    manifest = json.loads((caltech / MANIFEST).read_text())
    manifest["split"] = {"source": "file", "file": "split_zhou_Caltech101.json", "coop": True}
    (caltech / MANIFEST).write_text(json.dumps(manifest))
    assert "split 'train': " in _problems(tmp_path) and "expected 4128" in _problems(tmp_path)


def test_hand_made_folder_is_checked_with_a_warning(caltech, tmp_path):
    (caltech / MANIFEST).unlink()
    report = check_dataset("Caltech101", tmp_path / "DATA")
    assert any("not made by" in w for w in report.warnings)
    assert "expected 4128" in " ".join(report.problems)  # no manifest: CoOp's table is the reference


def test_class_missing_from_the_archive_fails_the_class_count(tmp_path, monkeypatch):
    import tarfile

    e = catalog.CATALOG["Caltech101"]
    monkeypatch.setitem(catalog.CATALOG, "Caltech101", dataclasses.replace(e, classes=3))
    write_archives("Caltech101", tmp_path / "dl", tmp_path / "s")
    shutil.rmtree(tmp_path / "s" / "101_ObjectCategories" / "ant")  # the archive as if it lacked a class
    with tarfile.open(tmp_path / "dl" / "101_ObjectCategories.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "s" / "101_ObjectCategories", arcname="101_ObjectCategories")
    prepare_dataset("Caltech101", tmp_path / "DATA", tmp_path / "dl")  # the seeded split agrees with itself ...
    assert "2 classes, expected 3" in _problems(tmp_path)  # ... but not with CoOp's class count
