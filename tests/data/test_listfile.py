"""List files (`<relpath> <label>`) and class files: parsing, validation with line numbers, writing."""

from __future__ import annotations

import pytest

from kshot.data.listfile import (
    format_list,
    parse_list_file,
    read_classes_file,
    read_list_file,
    write_classes_file,
    write_dataset_list,
    write_list_file,
)
from kshot.data.paths import MissingFilesError
from kshot.errors import DataError


def _write(p, text: str):
    p.write_bytes(text.encode("utf-8"))
    return p


def test_parse_accepts_crlf_bom_blank_lines_spaces_in_paths_and_backslashes(tmp_path):
    p = _write(tmp_path / "l.txt", "\ufeffa/x.jpg 0\r\n\r\nTrainSet\\Animal\\my cat.jpg 12\r\n")
    es = parse_list_file(p)
    assert [(e.path, e.label, e.line) for e in es] == [("a/x.jpg", 0, 1), ("TrainSet/Animal/my cat.jpg", 12, 3)]


@pytest.mark.parametrize("line,msg", [
    ("justapath.jpg", "expected '<path> <label>'"),
    ("a.jpg x", "not a non-negative integer"),
    ("a.jpg 1.0", "not a non-negative integer"),
    ("a.jpg -1", "not a non-negative integer"),
    ("../a.jpg 1", "escapes"),
    ("/abs/a.jpg 1", "absolute"),
])
def test_parse_errors_name_the_line(tmp_path, line, msg):
    p = _write(tmp_path / "l.txt", f"ok.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=msg) as e:
        parse_list_file(p)
    assert f"{p}:2" in str(e.value)


def test_duplicate_paths(tmp_path):
    p = _write(tmp_path / "l.txt", "a.jpg 0\nb.jpg 1\n.\\a.jpg 0\n")
    with pytest.raises(DataError, match=r"l\.txt:3: duplicate path 'a.jpg' \(first listed on line 1\)"):
        parse_list_file(p)


def test_unlabelled_lines_only_when_allowed(tmp_path):
    p = _write(tmp_path / "l.txt", "a.jpg\nb.jpg 3\n")
    with pytest.raises(DataError):
        parse_list_file(p)
    assert [e.label for e in parse_list_file(p, allow_unlabelled=True)] == [None, 3]


def test_classes_file_with_ids_any_order(tmp_path):
    p = _write(tmp_path / "c.txt", "Animal_Bee 1\nAnimal_Bear 0\n\nFood-101_apple_pie 2\n")
    assert read_classes_file(p) == ["Animal_Bear", "Animal_Bee", "Food-101_apple_pie"]


def test_classes_file_one_name_per_line(tmp_path):
    p = _write(tmp_path / "c.txt", "sea lion\npolar bear\n")
    assert read_classes_file(p) == ["sea lion", "polar bear"]


@pytest.mark.parametrize("text,msg", [
    ("a 0\nb 0\n", r"c\.txt:2: duplicate class id 0"),
    ("a 0\nb 2\n", r"contiguous 0\.\.1; missing \[1\]"),
    ("a 1\nb 2\n", r"missing \[0\]"),
    ("a 0\na 1\n", "duplicate class name 'a'"),
    ("a 0\nb -1\n", "negative class id"),
    ("", "no class names"),
])
def test_classes_file_errors(tmp_path, text, msg):
    with pytest.raises(DataError, match=msg):
        read_classes_file(_write(tmp_path / "c.txt", text))


def test_read_list_file_labels_against_classes(tmp_path, img):
    img(tmp_path / "a.jpg")
    img(tmp_path / "b.jpg")
    _write(tmp_path / "c.txt", "cat_dog 0\nbird 1\n")
    _write(tmp_path / "l.txt", "a.jpg 0\nb.jpg 1\n")
    ds = read_list_file(tmp_path / "l.txt", classes_file=tmp_path / "c.txt")
    assert ds.classnames == ["cat dog", "bird"] and ds.raw_classnames == ["cat_dog", "bird"]
    assert ds.labels.tolist() == [0, 1] and ds.root == tmp_path
    _write(tmp_path / "l.txt", "a.jpg 0\nb.jpg 2\n")
    with pytest.raises(DataError, match=r"l\.txt:2: label 2 is outside the class list"):
        read_list_file(tmp_path / "l.txt", classes_file=tmp_path / "c.txt")


def test_read_list_file_without_classes_and_missing_files(tmp_path, img):
    img(tmp_path / "imgs" / "a.jpg")
    _write(tmp_path / "l.txt", "a.jpg 3\nb.jpg 1\n")
    with pytest.raises(MissingFilesError, match=r"l\.txt:2"):
        read_list_file(tmp_path / "l.txt", root=tmp_path / "imgs")
    ds = read_list_file(tmp_path / "l.txt", root=tmp_path / "imgs", on_missing="skip")
    assert ds.classnames == ["0", "1", "2", "3"] and [it.path for it in ds.items] == ["a.jpg"]
    assert ds.skipped[0][0] == "b.jpg"


def test_write_roundtrip(tmp_path, img):
    rows = [("TrainSet\\A\\x.jpg", 2), ("b.jpg", 0)]
    write_list_file(tmp_path / "o.txt", rows)
    assert (tmp_path / "o.txt").read_bytes() == b"TrainSet/A/x.jpg 2\nb.jpg 0\n"
    assert [(e.path, e.label) for e in parse_list_file(tmp_path / "o.txt")] == [("TrainSet/A/x.jpg", 2), ("b.jpg", 0)]
    with pytest.raises(DataError):
        format_list([("a.jpg", -1)])
    with pytest.raises(DataError):
        format_list([("a.jpg\n", 1)])
    write_classes_file(tmp_path / "c.txt", ["Animal_Bear", "Thu-dog_Shiba_Dog"])
    assert read_classes_file(tmp_path / "c.txt") == ["Animal_Bear", "Thu-dog_Shiba_Dog"]
    with pytest.raises(DataError, match="whitespace"):
        write_classes_file(tmp_path / "c.txt", ["polar bear"])
    with pytest.raises(DataError, match="duplicate"):
        write_classes_file(tmp_path / "c.txt", ["a", "a"])
    img(tmp_path / "b.jpg")
    _write(tmp_path / "l.txt", "b.jpg 0\n")
    ds = read_list_file(tmp_path / "l.txt")
    write_dataset_list(tmp_path / "again.txt", ds)
    assert (tmp_path / "again.txt").read_text() == "b.jpg 0\n"
