"""Path hygiene: normalisation, escape refusal, missing-file policy, duplicate names."""

from __future__ import annotations

import pytest

from kshot.data.paths import (
    MissingFilesError,
    atomic_write_text,
    check_missing,
    check_unique_names,
    find_missing,
    is_image_name,
    normalize_relpath,
)
from kshot.errors import DataError


@pytest.mark.parametrize("raw,want", [
    ("TrainSet\\Animal\\Bear\\1.jpg", "TrainSet/Animal/Bear/1.jpg"),
    ("./a//b/./c.png", "a/b/c.png"),
    ("  a/b.jpg ", "a/b.jpg"),
])
def test_normalize(raw, want):
    assert normalize_relpath(raw, "f:1") == want


@pytest.mark.parametrize("raw,msg", [
    ("../secret.jpg", "escapes"),
    ("a/../../b.jpg", "escapes"),
    ("..\\x.jpg", "escapes"),
    ("/etc/passwd", "absolute"),
    ("C:\\data\\x.jpg", "absolute"),
    ("\\\\server\\share\\x.jpg", "absolute"),
    ("", "empty"),
    ("./", "names no file"),
])
def test_normalize_refuses(raw, msg):
    with pytest.raises(DataError, match=msg) as e:
        normalize_relpath(raw, "list.txt:7")
    assert "list.txt:7" in str(e.value)


def test_image_extensions_case_insensitive():
    assert is_image_name("A.JPG") and is_image_name("b.JpEg") and is_image_name("c.webp")
    assert not is_image_name("notes.txt") and not is_image_name("jpg")


def test_missing_policy(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"x")
    rels = ["d/a.jpg", "d/b.jpg", "e/c.jpg"]
    assert find_missing(tmp_path, rels) == [1, 2]
    wheres = ["l:1", "l:2", "l:3"]
    with pytest.raises(MissingFilesError) as e:
        check_missing(tmp_path, rels, wheres, "error", "l")
    assert [p for p, _ in e.value.missing] == ["d/b.jpg", "e/c.jpg"]
    assert "l:2" in str(e.value) and "l:3" in str(e.value) and "2 of 3" in str(e.value)
    keep, skipped = check_missing(tmp_path, rels, wheres, "skip", "l")
    assert keep == [0] and [s[0] for s in skipped] == ["d/b.jpg", "e/c.jpg"]
    assert check_missing(tmp_path, rels, wheres, "ignore", "l") == ([0, 1, 2], [])
    with pytest.raises(DataError, match="on_missing"):
        check_missing(tmp_path, rels, wheres, "maybe", "l")  # type: ignore[arg-type]


def test_missing_error_lists_count_beyond_the_shown_ones(tmp_path):
    rels = [f"x/{i}.jpg" for i in range(30)]
    with pytest.raises(MissingFilesError) as e:
        check_missing(tmp_path, rels, [f"l:{i}" for i in range(30)], "error", "l")
    assert len(e.value.missing) == 30 and "10 more" in str(e.value)


def test_unique_names_case_insensitive():
    check_unique_names(["a.jpg", "b.jpg"], "w")
    with pytest.raises(DataError, match="duplicate file name"):
        check_unique_names(["a.jpg", "A.JPG"], "w")


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "sub" / "f.txt", "hello\n")
    assert (tmp_path / "sub" / "f.txt").read_text() == "hello\n"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.txt"]
