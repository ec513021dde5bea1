"""Exports load back through kshot's data readers with the right labels, class names and pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kshot.data.sources import load_dataset
from kshot.errors import ConfigError
from kshot.toyworld.export import LABELLED_DOMAINS, export_world
from kshot.toyworld.generator import World

N_TRAIN, N_VAL, N_TEST = 2, 1, 2


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def split(world):
    return world.make_split(None, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST, seed=0)


def _pixels(ds, i: int) -> np.ndarray:
    return np.asarray(Image.open(ds.abspath(i)).convert("RGB"))


def _check(ds, names: tuple[str, ...], images: np.ndarray, labels: np.ndarray) -> None:
    """Each loaded item's class name and pixels equal the rendered image with that label (order-free)."""
    by_name: dict[str, list[np.ndarray]] = {}
    for img, lab in zip(images, labels):
        by_name.setdefault(names[lab], []).append(img)
    assert len(ds) == len(labels)
    for i, it in enumerate(ds.items):
        name = ds.classnames[it.label]
        pix = _pixels(ds, i)
        assert any(np.array_equal(pix, ref) for ref in by_name[name]), (it.path, name)


SOME = ["Novel", "Creatures"]  # 24 classes keep the PNG round trips short


def test_imagefolder(tmp_path: Path, world) -> None:
    sub = world.make_split(SOME, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST, seed=0)
    export_world(world, "imagefolder", tmp_path, domains=SOME, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST)
    for part in ("train", "val", "test"):
        ds = load_dataset(tmp_path, layout="imagefolder", split=part)
        assert sorted(ds.classnames) == sorted(sub.classnames)
        _check(ds, sub.classnames, getattr(sub, part).images, getattr(sub, part).labels)


def test_coop(tmp_path: Path, world) -> None:
    sub = world.make_split(SOME, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST, seed=0)
    path = export_world(world, "coop", tmp_path, domains=SOME, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST)
    assert path.name == "split_zhou_Toy.json"
    for part in ("train", "val", "test"):
        ds = load_dataset(path, split=part)
        assert ds.classnames == list(sub.classnames)  # labels are world order
        assert ds.labels.tolist() == getattr(sub, part).labels.tolist()
        _check(ds, sub.classnames, getattr(sub, part).images, getattr(sub, part).labels)


def test_challenge(tmp_path: Path, world, split) -> None:
    export_world(world, "challenge", tmp_path, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST)
    n_seen = sum(split.has_train)
    raw = [f"{d}_{n.replace(' ', '_')}" for n, d in zip(split.classnames, split.domains)]
    pool = load_dataset(tmp_path, split="train")
    assert pool.raw_classnames == raw  # classes_b.txt: every class, ids in world order
    for c in range(n_seen):  # classes with training images: clean names and their domain
        assert pool.classnames[c] == split.classnames[c] and pool.class_domains[c] == split.domains[c]
    assert np.bincount(pool.labels, minlength=len(raw)).tolist() == [N_TRAIN + N_VAL] * n_seen + [0] * (
        len(raw) - n_seen)
    images = np.concatenate([split.train.images, split.val.images])
    _check(pool, split.classnames, images, np.concatenate([split.train.labels, split.val.labels]))
    assert (tmp_path / "classes.txt").read_text().splitlines() == [f"{r} {i}" for i, r in enumerate(raw[:n_seen])]
    # flat unlabelled test folder + hidden labels listing exactly its files
    flat = load_dataset(tmp_path, layout="challenge", split="testA")
    assert flat.labels.tolist() == [-1] * len(split.test.labels)
    hidden = load_dataset(tmp_path / "test_labels.txt", layout="listfile", classes_file=tmp_path / "classes_b.txt",
                          image_root=tmp_path)
    assert sorted(Path(it.path).name for it in hidden.items) == sorted(it.path for it in flat.items)
    assert np.bincount(hidden.labels).tolist() == [N_TEST] * len(raw)
    _check(hidden, tuple(hidden.classnames), split.test.images, split.test.labels)


def test_challenge_clean_names_of_classes_without_training_images(tmp_path: Path, world) -> None:
    export_world(world, "challenge", tmp_path, domains=["Creatures", "Unseen"], n_train=1, n_val=0, n_test=1)
    ids = world.class_ids(["Creatures", "Unseen"])
    pool = load_dataset(tmp_path, split="train")
    assert pool.classnames == [world.classes[i].name for i in ids]
    assert pool.class_domains == [world.classes[i].domain for i in ids]
    flat = load_dataset(tmp_path, split="testA")  # the A-round class list: classes with training images only
    assert flat.classnames == [world.classes[i].name for i in ids if world.classes[i].has_train]


def test_default_domains_are_those_with_training_images(tmp_path: Path, world) -> None:
    assert set(LABELLED_DOMAINS) == {c.domain for c in world.classes if c.has_train}
    export_world(world, "imagefolder", tmp_path, n_train=1, n_val=0, n_test=0)
    ds = load_dataset(tmp_path, layout="imagefolder", split="train")
    assert sorted(ds.classnames) == sorted(c.name for c in world.classes if c.has_train)


def test_unknown_layout(tmp_path: Path, world) -> None:
    with pytest.raises(ConfigError, match="layout"):
        export_world(world, "tfrecord", tmp_path)
