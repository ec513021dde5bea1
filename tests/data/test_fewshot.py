"""Seeded K-shot selection, validation draws, shots files, base/new split."""

from __future__ import annotations

import numpy as np
import pytest

from kshot.data.dataset import Dataset, Item
from kshot.data.fewshot import (
    base_new_split,
    default_val_shots,
    read_shots_file,
    sample_k_shot,
    sample_val,
    select_classes,
    write_shots_file,
)
from kshot.errors import DataError


def _labels(counts, seed=0):
    lab = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(seed).permutation(lab)


def test_k_per_class_without_replacement_deterministic():
    y = _labels([10, 7, 12])
    idx = sample_k_shot(y, 4, seed=1)
    assert idx.dtype == np.int64 and len(idx) == 12 and len(set(idx.tolist())) == 12
    assert np.bincount(y[idx]).tolist() == [4, 4, 4]
    assert y[idx].tolist() == sorted(y[idx].tolist())  # grouped by class
    assert np.array_equal(idx, sample_k_shot(y, 4, seed=1))
    assert not np.array_equal(idx, sample_k_shot(y, 4, seed=2))


def test_no_global_rng_use():
    y = _labels([10, 10])
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    sample_k_shot(y, 3, seed=5)
    assert np.random.random() == before


def test_shots_nested_across_k_and_stable_when_classes_are_added():
    y = _labels([20, 20, 20])
    s1, s2, s4 = (set(sample_k_shot(y, k, seed=3).tolist()) for k in (1, 2, 4))
    assert s1 < s2 < s4
    # appending a class (e.g. new items at the end) does not change the shots of the others
    y2 = np.concatenate([y, np.full(5, 3)])
    a, b = sample_k_shot(y, 4, seed=3), sample_k_shot(y2, 4, seed=3)
    assert np.array_equal(a, b[y2[b] < 3])


def test_too_few_items_names_the_class():
    y = _labels([10, 2, 10])
    with pytest.raises(DataError, match=r"class 1 has 2"):
        sample_k_shot(y, 4, seed=1)
    idx = sample_k_shot(y, 4, seed=1, allow_fewer=True)
    assert np.bincount(y[idx]).tolist() == [4, 2, 4]


def test_classes_argument_makes_empty_classes_visible():
    y = _labels([5, 5])
    with pytest.raises(DataError, match="class 2 has 0"):
        sample_k_shot(y, 1, seed=1, classes=range(3))
    assert len(sample_k_shot(y, 1, seed=1, classes=range(3), allow_fewer=True)) == 2
    assert set(y[sample_k_shot(y, 2, seed=1, classes=[1])].tolist()) == {1}


def test_unlabelled_never_drawn_and_bad_args():
    y = np.array([0, 0, -1, -1, 1, 1])
    idx = sample_k_shot(y, 2, seed=0)
    assert set(idx.tolist()) == {0, 1, 4, 5}
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="K"):
            sample_k_shot(y, bad, seed=0)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="seed"):
        sample_k_shot(y, 1, seed=-3)
    with pytest.raises(DataError, match="1-D"):
        sample_k_shot(np.zeros((2, 2), int), 1, seed=0)
    with pytest.raises(DataError, match="integers"):
        sample_k_shot(np.array([0.0, 1.0]), 1, seed=0)


def test_val_disjoint_from_shots():
    y = _labels([10, 6, 10])
    shots = sample_k_shot(y, 4, seed=1)
    val = sample_val(y, shots, default_val_shots(4), seed=1)
    assert not set(val.tolist()) & set(shots.tolist())
    assert np.bincount(y[val]).tolist() == [4, 2, 4]  # class 1 has only 2 left: best effort by default
    with pytest.raises(DataError, match="class 1 has 2"):
        sample_val(y, shots, 4, seed=1, allow_fewer=False)
    assert default_val_shots(1) == 1 and default_val_shots(16) == 4
    with pytest.raises(DataError, match="out of range"):
        sample_val(y, [len(y)], 1, seed=0)


def _ds(tmp_path, n_per_class=5, classes=3):
    items = [Item(f"TrainSet/D/c{c}/{i}.jpg", c) for c in range(classes) for i in range(n_per_class)]
    return Dataset(tmp_path, items, [f"c{c}" for c in range(classes)])


def test_shots_file_roundtrip(tmp_path):
    ds = _ds(tmp_path)
    idx = sample_k_shot(ds.labels, 2, seed=7)
    f = tmp_path / "shots" / "k2_seed7.txt"
    write_shots_file(ds, idx, f)
    lines = f.read_text().splitlines()
    assert lines[0] == f"{ds.items[idx[0]].path} {ds.items[idx[0]].label}" and len(lines) == 6
    assert np.array_equal(read_shots_file(f, ds), idx)


def test_shots_file_windows_separators_and_errors(tmp_path):
    ds = _ds(tmp_path)
    f = tmp_path / "s.txt"
    f.write_text("TrainSet\\D\\c1\\3.jpg 1\n")
    assert read_shots_file(f, ds).tolist() == [8]
    f.write_text("TrainSet/D/c1/3.jpg 1\nTrainSet/D/c9/0.jpg 0\n")
    with pytest.raises(DataError, match=r"s\.txt:2: .*is not an item"):
        read_shots_file(f, ds)
    f.write_text("TrainSet/D/c1/3.jpg 2\n")
    with pytest.raises(DataError, match="label 2 here but 1"):
        read_shots_file(f, ds)
    with pytest.raises(DataError, match="out of range"):
        write_shots_file(ds, [99], f)
    unl = Dataset(tmp_path, [Item("a.jpg")], [])
    with pytest.raises(DataError, match="no label"):
        write_shots_file(unl, [0], f)


@pytest.mark.parametrize("n,base", [(2, 1), (3, 2), (10, 5), (101, 51)])
def test_base_new_split(n, base):
    b, nw = base_new_split(n)
    assert b.tolist() == list(range(base)) and nw.tolist() == list(range(base, n))


def test_base_new_split_too_small():
    with pytest.raises(DataError):
        base_new_split(1)


def test_select_classes_relabels(tmp_path):
    ds = _ds(tmp_path, n_per_class=2, classes=4)
    ds.class_domains = ["a", "b", "c", "d"]
    _, new = base_new_split(4)
    sub = select_classes(ds, new)
    assert sub.classnames == ["c2", "c3"] and sub.class_domains == ["c", "d"]
    assert sub.labels.tolist() == [0, 0, 1, 1] and sub.items[0].path.endswith("c2/0.jpg")
    keep = select_classes(ds, [3], relabel=False)
    assert keep.labels.tolist() == [3, 3] and keep.num_classes == 4
    with pytest.raises(DataError, match="outside"):
        select_classes(ds, [4])
