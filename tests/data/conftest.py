"""Fixtures for the data tests: tiny images written by PIL and a miniature challenge tree."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

ImageWriter = Callable[..., Path]


def write_rgb(path: Path, seed: int = 0, fmt: str | None = None) -> Path:
    """An 8x8 random RGB image at `path` (format from the suffix unless `fmt`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


@pytest.fixture
def img() -> ImageWriter:
    return write_rgb


CHALLENGE_CLASSES = [
    "Animal_Bear", "Animal_Polar_bear", "Caltech-101_Faces_easy", "Food-101_apple_pie", "Thu-dog_Shiba_Dog",
    "Thu-dog_Pomeranian",
]
B_EXTRA = ["Stanford-Cars_Audi_TTS_Coupe_2012", "Stanford-Cars_Dodge_Charger_SRT-8_2009"]


@pytest.fixture
def challenge_root(tmp_path: Path) -> Path:
    """A miniature challenge tree: 6 classes x 3 training images, classes.txt, classes_b.txt (+2 unseen car classes),
    TestSetA with 4 images, TestSetB with 3, and a train.txt with Windows separators on one line."""
    root = tmp_path / "Dataset"
    lines = []
    for label, raw in enumerate(CHALLENGE_CLASSES):
        domain, _, cls = raw.partition("_")
        for n in range(3):
            rel = f"TrainSet/{domain}/{cls}/{n}.jpg"
            write_rgb(root / rel, seed=label * 10 + n)
            lines.append(f"{rel} {label}")
    lines[4] = lines[4].replace("/", "\\")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(CHALLENGE_CLASSES)))
    allb = CHALLENGE_CLASSES + B_EXTRA
    (root / "classes_b.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(allb)))
    for name in ("image_0003.jpg", "image_0001.jpg", "image_0010.jpg", "image_0002.png"):
        write_rgb(root / "TestSetA" / name, seed=99)
    for name in ("b2.jpg", "b1.jpg", "b3.jpeg"):
        write_rgb(root / "TestSetB" / name, seed=98)
    return root
