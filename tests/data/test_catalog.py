"""The catalog: CoOp's published split sizes, names and aliases, what can be downloaded."""

from __future__ import annotations

import pytest

from kshot.data.catalog import CATALOG, COOP11, get_entry
from kshot.errors import DataError
from kshot.data.benchmarks import BENCHMARKS


def test_coop_table_counts():
    assert CATALOG["Caltech101"].counts == (4128, 1649, 2465)
    assert CATALOG["OxfordPets"].counts == (2944, 736, 3669)
    assert CATALOG["FGVCAircraft"].counts == (3334, 3333, 3333)
    assert CATALOG["ImageNet"].counts[1] is None  # CoOp tests ImageNet on its val set


def test_eleven_plus_four_variants_agree_with_the_readers():
    assert len(COOP11) == 11 and sum(e.variant for e in CATALOG.values()) == 4
    for name in COOP11:
        e, b = CATALOG[name], BENCHMARKS[name]
        assert (e.folder, e.classes, e.split_file) == (b.folder, b.num_classes, b.split_file)


def test_downloadable_and_dead_links():
    assert CATALOG["OxfordPets"].downloadable and CATALOG["EuroSAT"].downloadable
    assert not CATALOG["StanfordCars"].downloadable and "dead" in CATALOG["StanfordCars"].note
    assert not CATALOG["ImageNet"].downloadable and not CATALOG["UCF101"].downloadable


def test_names_and_aliases():
    assert get_entry("pets").name == "OxfordPets" and get_entry("food-101").name == "Food101"
    assert get_entry("imagenet-a").name == "ImageNetA" and get_entry("DTD").name == "DescribableTextures"
    with pytest.raises(DataError, match="unknown dataset 'nope'; known: ImageNet"):
        get_entry("nope")
