"""kshot.data.classes: data classes matched to a model's class list by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kshot.data.classes import match_classes, match_dataset
from kshot.data.dataset import Dataset, Item
from kshot.errors import DataError

MODEL = ["apple", "banana tree", "cherry", "date"]


def test_missing_class_shifts_no_label() -> None:
    m = match_classes(["apple", "cherry", "date"], MODEL)
    assert m.index.tolist() == [0, 2, 3] and m.missing == ["banana tree"] and not m.identity
    assert m.labels(np.array([0, 1, 2, -1])).tolist() == [0, 2, 3, -1]


def test_loose_names_match_and_identity() -> None:
    m = match_classes(["Apple", "banana_tree", "cherry", "date"], MODEL)
    assert m.identity and m.classnames == MODEL


def test_unknown_class_is_an_error_naming_it_unless_kept() -> None:
    with pytest.raises(DataError, match="'fig'"):
        match_classes(["apple", "fig"], MODEL, what="test data X")
    kept = match_classes(["apple", "fig"], MODEL, unknown="keep")
    assert kept.unknown == ["fig"] and kept.classnames == [*MODEL, "fig"] and kept.index.tolist() == [0, 4]
    # a class without items is not unknown
    assert match_classes(["apple", "fig"], MODEL, present=[0]).index.tolist() == [0, -1]


def test_two_data_classes_matching_one_model_class_is_an_error() -> None:
    with pytest.raises(DataError, match="both match"):
        match_classes(["cherry", "Cherry"], MODEL)


def test_match_dataset_relabels_and_names_folders() -> None:
    ds = Dataset(Path("/d"), [Item("c/1.png", 1), Item("a/1.png", 0), Item("x.png")], ["apple", "cherry"],
                 class_domains=["fruit", "stone"], raw_classnames=["apple", "cherry"])
    m = match_dataset(ds, MODEL)
    out = m.dataset(ds)
    assert [it.label for it in out.items] == [2, 0, None]
    assert out.classnames == MODEL and out.class_domains == ["fruit", "", "stone", ""]
    bad = Dataset(Path("/d"), [Item("f/1.png", 0)], ["fig tree"], raw_classnames=["fig_tree"])
    with pytest.raises(DataError, match="'fig_tree'"):
        match_dataset(bad, MODEL)
