"""The Jittor challenge layout: class-name cleaning, train pool, test folders, B-round unseen classes, writers."""

from __future__ import annotations

import pytest

from kshot.data.challenge import (
    clean_classname,
    make_raw_classname,
    pick_classes_file,
    read_challenge,
    split_domain,
    write_classes_txt,
    write_train_txt,
)
from kshot.data.listfile import read_classes_file
from kshot.data.paths import MissingFilesError
from kshot.errors import DataError

from .conftest import B_EXTRA, CHALLENGE_CLASSES


@pytest.mark.parametrize("raw,domain,name", [
    ("Animal_Bear", "Animal", "Bear"),
    ("Animal_Polar_bear", "Animal", "Polar bear"),
    ("Caltech-101_Faces_easy", "Caltech-101", "Faces easy"),
    ("Food-101_apple_pie", "Food-101", "apple pie"),
    ("Thu-dog_Shiba_Dog", "Thu-dog", "Shiba Dog"),
    ("Stanford-Cars_Dodge_Charger_SRT-8_2009", "Stanford-Cars", "Dodge Charger SRT-8 2009"),
    ("thu-dog_pug", "Thu-dog", "pug"),                  # case-insensitive prefix
    ("03_Thu-dog_Pomeranian", "Thu-dog", "Pomeranian"),  # text before the domain is dropped
    ("Food-101_Animal_crackers", "Food-101", "Animal crackers"),  # earliest domain wins
    ("Pomeranian", None, "Pomeranian"),                  # already clean
    ("sea_lion", None, "sea lion"),
    ("Animal_", None, "Animal"),                         # nothing after the prefix: not a domain
])
def test_clean_classname(raw, domain, name):
    assert split_domain(raw)[0] == domain
    assert clean_classname(raw) == name


def test_clean_with_extra_domain_and_not_inside_words():
    assert clean_classname("MyDomain_big_cat", ["MyDomain"]) == "big cat"
    assert split_domain("SuperAnimal_x")[0] is None  # 'Animal_' inside a word is not a prefix
    assert clean_classname("Stuffed_Animal_toy") == "Stuffed Animal toy"  # nor inside a name


def test_make_raw_classname_inverts_cleaning():
    for raw in CHALLENGE_CLASSES + B_EXTRA:
        d, _ = split_domain(raw)
        assert make_raw_classname(clean_classname(raw), d) == raw


def test_train_pool(challenge_root):
    ds = read_challenge(challenge_root, "train")
    assert len(ds) == 18 and ds.root == challenge_root and ds.name == "challenge"
    # default class file for train is classes_b.txt: the 2 car classes exist but have no items
    assert ds.num_classes == 8
    assert ds.classnames[:3] == ["Bear", "Polar bear", "Faces easy"]
    assert ds.class_domains == ["Animal", "Animal", "Caltech-101", "Food-101", "Thu-dog", "Thu-dog",
                                "Stanford-Cars", "Stanford-Cars"]
    assert ds.raw_classnames == CHALLENGE_CLASSES + B_EXTRA
    assert set(ds.labels.tolist()) == set(range(6))
    assert ds.items[4].path == "TrainSet/Animal/Polar_bear/1.jpg"  # the backslash line, normalised
    assert ds.items[4].domain == "Animal"
    assert all(ds.abspath(i).is_file() for i in range(len(ds)))


def test_classes_file_choice(challenge_root):
    assert pick_classes_file(challenge_root, "testA").name == "classes.txt"
    assert pick_classes_file(challenge_root, "testB").name == "classes_b.txt"
    ds = read_challenge(challenge_root, "train", classes_file="classes.txt")
    assert ds.num_classes == 6
    (challenge_root / "classes_b.txt").unlink()
    assert pick_classes_file(challenge_root, "testB").name == "classes.txt"
    with pytest.raises(DataError, match="classes file not found"):
        pick_classes_file(challenge_root, "train", "nope.txt")


def test_test_splits_sorted_unlabelled(challenge_root):
    a = read_challenge(challenge_root, "testA")
    assert a.root == challenge_root / "TestSetA"
    assert [it.path for it in a.items] == ["image_0001.jpg", "image_0002.png", "image_0003.jpg", "image_0010.jpg"]
    assert not a.has_labels and (a.labels == -1).all() and a.num_classes == 6
    b = read_challenge(challenge_root, "testB")
    assert [it.path for it in b.items] == ["b1.jpg", "b2.jpg", "b3.jpeg"] and b.num_classes == 8
    with pytest.raises(DataError, match="ambiguous"):
        read_challenge(challenge_root, "test")
    import shutil

    shutil.rmtree(challenge_root / "TestSetA")
    assert len(read_challenge(challenge_root, "test")) == 3
    with pytest.raises(DataError, match="unknown split"):
        read_challenge(challenge_root, "val")


def test_test_folder_elsewhere_and_duplicate_names(challenge_root, tmp_path, img):
    other = tmp_path / "elsewhere"
    img(other / "x.jpg")
    img(other / "notes.txt", fmt="PNG")  # not an image name: ignored
    ds = read_challenge(challenge_root, "testB", image_root=other)
    assert [it.path for it in ds.items] == ["x.jpg"] and ds.root == other
    img(other / "X.JPG")
    with pytest.raises(DataError, match="duplicate file name"):
        read_challenge(challenge_root, "testB", image_root=other)


def test_label_outside_class_list(challenge_root):
    with open(challenge_root / "train.txt", "a") as f:
        f.write("TrainSet/Animal/Bear/9.jpg 8\n")
    with pytest.raises(DataError, match=r"train\.txt:19: label 8 is outside the class list \(0\.\.7"):
        read_challenge(challenge_root, "train")


def test_missing_images_error_or_skip(challenge_root):
    (challenge_root / "TrainSet/Food-101/apple_pie/1.jpg").unlink()
    (challenge_root / "TrainSet/Thu-dog/Pomeranian/2.jpg").unlink()
    with pytest.raises(MissingFilesError) as e:
        read_challenge(challenge_root, "train")
    assert len(e.value.missing) == 2 and "train.txt:11" in str(e.value)
    ds = read_challenge(challenge_root, "train", on_missing="skip")
    assert len(ds) == 16 and len(ds.skipped) == 2
    assert len(read_challenge(challenge_root, "train", on_missing="ignore")) == 18


def test_escaping_paths_refused(challenge_root):
    (challenge_root / "train.txt").write_text("../outside.jpg 0\n")
    with pytest.raises(DataError, match="escapes"):
        read_challenge(challenge_root, "train")


def test_unprefixed_classes_take_domain_from_folders(challenge_root):
    clean = [c.partition("_")[2] for c in CHALLENGE_CLASSES]
    (challenge_root / "classes.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(clean)))
    (challenge_root / "classes_b.txt").unlink()
    ds = read_challenge(challenge_root, "train")
    assert ds.classnames[1] == "Polar bear"
    assert ds.class_domains == ["Animal", "Animal", "Caltech-101", "Food-101", "Thu-dog", "Thu-dog"]


def test_bad_classes_file(challenge_root):
    (challenge_root / "classes_b.txt").write_text("Animal_Bear 0\nAnimal_Bee 0\n")
    with pytest.raises(DataError, match="duplicate class id 0"):
        read_challenge(challenge_root, "train")
    (challenge_root / "classes_b.txt").write_text("Animal_Bear 0\nAnimal_Bee 5\n")
    with pytest.raises(DataError, match="contiguous"):
        read_challenge(challenge_root, "train")


def test_writers_roundtrip(challenge_root, tmp_path):
    ds = read_challenge(challenge_root, "train")
    out = tmp_path / "copy"
    write_train_txt(out / "train.txt", ds)
    write_classes_txt(out / "classes_b.txt", ds)
    assert read_classes_file(out / "classes_b.txt") == CHALLENGE_CLASSES + B_EXTRA
    back = read_challenge(out, "train", image_root=challenge_root)
    assert [it.path for it in back.items] == [it.path for it in ds.items]
    assert back.labels.tolist() == ds.labels.tolist() and back.classnames == ds.classnames
    # without raw names the prefixes are rebuilt from clean name + domain
    from dataclasses import replace

    write_classes_txt(out / "c2.txt", replace(ds, raw_classnames=None))
    assert read_classes_file(out / "c2.txt") == CHALLENGE_CLASSES + B_EXTRA
    with pytest.raises(DataError, match="no label"):
        write_train_txt(out / "t.txt", read_challenge(challenge_root, "testA"))


def test_consistent_prefixes_without_train_folders_are_domains():
    from kshot.data.challenge import challenge_classes, inferred_domains

    raw = ["Shapes_red_star", "Shapes_blue_ring", "Creatures_zorvik", "Creatures_drosk", "Unseen_red_cross",
           "Unseen_green_heart", "Shapes_white_cross", "Shapes_cyan_star", "Shapes_red_ring", "Shapes_blue_star",
           "Creatures_quenna", "Creatures_plimbat"]
    names, doms = challenge_classes(raw)
    assert names[4] == "red cross" and doms[4] == "Unseen"
    assert inferred_domains(["Golden_retriever", "pug", "Labrador_retriever", "Bear"]) == []
