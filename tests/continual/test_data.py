"""Task data: the paper's square vs short-side preprocessing, image folders, class-count checks, digits splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.continual.config import TaskSpec
from kshot.continual.data import build_transform, load_task_data, make_loader
from kshot.errors import DataError


def _image(w: int = 40, h: int = 20) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 4] = 255  # a white band on the left: cropped away by a centre crop, kept by a squash
    return Image.fromarray(a)


def test_short_side_resize_is_not_a_square_resize() -> None:
    img = _image()
    square = build_transform(TaskSpec(name="c", image_size=8, resize="square", mean=(0, 0, 0), std=(1, 1, 1)),
                             train=False)(img)
    short = build_transform(TaskSpec(name="f", image_size=8, resize="short_side", resize_size=10,
                                     mean=(0, 0, 0), std=(1, 1, 1)), train=False)(img)
    assert square.shape == short.shape == (3, 8, 8)
    assert square[:, :, 0].mean() > 0.9  # the squash keeps the band at the left edge
    assert short[:, :, 0].mean() < 0.1  # short side 10 -> 20 x 10, centre crop 8 x 8 drops it
    from torchvision.transforms import functional as TF

    ref = TF.to_tensor(TF.center_crop(TF.resize(img, 10), [8, 8]))
    assert torch.allclose(short, ref)


def _folder(root: Path, classes: list[str], n: int = 2) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            _image(12, 10).save(root / c / f"{i}.png")
    return root


def test_image_folder_task_and_its_class_checks(tmp_path: Path) -> None:
    tr, te = _folder(tmp_path / "train", ["a", "b"]), _folder(tmp_path / "test", ["a", "b"], 1)
    spec = TaskSpec(name="t", train=str(tr), test=str(te), image_size=8, train_augment="random_crop")
    data = load_task_data(spec)
    assert data.num_classes == 2 and len(data.train) == 4 and len(data.test) == 2
    x, y = next(iter(make_loader(data.train, 4, True, 0)))
    assert x.shape == (4, 3, 8, 8) and sorted(y.tolist()) == [0, 0, 1, 1]
    with pytest.raises(DataError, match="num_classes=3 but .* has 2 classes"):
        load_task_data(TaskSpec(name="t", train=str(tr), test=str(te), num_classes=3))
    extra = _folder(tmp_path / "train2", ["a", "b", "c"])
    with pytest.raises(DataError, match="only in train: \\['c'\\]"):
        load_task_data(TaskSpec(name="t", train=str(extra), test=str(te)))


def test_digits_split_is_disjoint_stratified_and_deterministic() -> None:
    spec = TaskSpec(name="d", source="digits", classes=(3, 5), image_size=12, train_augment="none")
    a, b = load_task_data(spec), load_task_data(spec)
    assert a.classnames == ["3", "5"] and a.train.images.shape[1:] == (3, 12, 12)
    assert torch.equal(a.train.images, b.train.images) and set(a.test.labels.tolist()) == {0, 1}
    train_rows = {tuple(r.flatten().tolist()) for r in a.train.images[:, 0, ::3, ::3]}
    test_rows = {tuple(r.flatten().tolist()) for r in a.test.images[:, 0, ::3, ::3]}
    assert len(test_rows & train_rows) <= 2  # a few digits in sklearn are exact duplicates; the indices are disjoint
    assert 0.2 < len(a.test) / (len(a.test) + len(a.train)) < 0.3
