"""Accuracy-matrix metrics against hand-computed values."""

from __future__ import annotations

import math

import torch

from kshot.continual.metrics import average_accuracy, backward_transfer, digest, forgetting

R = [[80.0], [60.0, 90.0], [70.0, 50.0, 70.0]]


def test_average_accuracy_bwt_and_forgetting() -> None:
    assert average_accuracy(R) == (70 + 50 + 70) / 3
    assert backward_transfer(R) == ((70 - 80) + (50 - 90)) / 2
    assert forgetting(R) == ((80 - 70) + (90 - 50)) / 2  # max over earlier rows, not the diagonal only


def test_forgetting_uses_the_best_earlier_accuracy() -> None:
    r = [[50.0], [70.0, 90.0], [60.0, 90.0, 80.0]]  # task 0 improved after task 1 (positive transfer)
    assert backward_transfer(r) == ((60 - 50) + 0) / 2
    assert forgetting(r) == ((70 - 60) + 0) / 2


def test_one_task_has_no_transfer() -> None:
    assert math.isnan(backward_transfer([[90.0]])) and math.isnan(forgetting([[90.0]]))


def test_digest_is_bit_exact() -> None:
    x = torch.tensor([[1.0, 2.0]])
    assert digest(x) == digest(x.clone()) != digest(torch.nextafter(x, x + 1))
