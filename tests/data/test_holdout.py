"""Seeded stratified hold-out of `kshot eval --holdout`."""

import numpy as np
import pytest

from kshot.data.holdout import holdout_indices
from kshot.errors import ConfigError, DataError


def test_holdout_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(5), [10, 10, 5, 3, 20])
    pool, test = holdout_indices(labels, 0.2, seed=1)
    assert np.intersect1d(pool, test).size == 0
    assert np.union1d(pool, test).size == len(labels)
    per_class = np.bincount(labels[test], minlength=5)
    assert per_class.tolist() == [2, 2, 1, 1, 4]
    assert np.array_equal(holdout_indices(labels, 0.2, seed=1)[1], test)
    assert not np.array_equal(holdout_indices(labels, 0.2, seed=2)[1], test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_holdout_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(ConfigError, match="--holdout"):
        holdout_indices(np.repeat(np.arange(2), 5), fraction, seed=1)


def test_holdout_class_with_one_image_is_named():
    with pytest.raises(DataError, match="class 1 has 1 image"):
        holdout_indices(np.array([0, 0, 1]), 0.5, seed=1)
