import numpy as np
import pytest
from PIL import Image

from kshot.errors import DataError
from kshot.eval.predictions import Predictions
from kshot.eval.result_file import read_result_txt, write_result_txt


def _test_dir(tmp_path, names):
    d = tmp_path / "TestSetA"
    d.mkdir()
    for n in names:
        Image.new("RGB", (4, 4)).save(d / n)
    return d


def test_round_trip_and_validation(tmp_path):
    names = ["image_0002.jpg", "image_0001.jpg", "image_0010.jpg"]
    d = _test_dir(tmp_path, names)
    ids = np.array([[3, 1, 2, 0, 4], [0, 1, 2, 3, 4], [402, 401, 400, 5, 6]])
    path = write_result_txt(tmp_path / "result.txt", [f"TestSetA/{n}" for n in names], ids, zip_it=True)
    assert (tmp_path / "result.zip").is_file()
    lines = path.read_text().splitlines()
    assert lines[0] == "image_0001.jpg 0 1 2 3 4"
    rf = read_result_txt(path, num_classes=403, test_dir=d)
    assert rf.as_dict()["image_0010.jpg"].tolist() == [402, 401, 400, 5, 6]
    assert rf.as_dict()["image_0002.jpg"].tolist() == [3, 1, 2, 0, 4]


@pytest.mark.parametrize("line,msg", [
    ("a.jpg 1 2 3 4", "expected"),
    ("a.jpg 1 2 3 4 x", "integers"),
    ("a.jpg 1 2 3 4 999", "outside"),
    ("a.jpg 1 1 2 3 4", "repeated"),
])
def test_reader_rejects_bad_lines(tmp_path, line, msg):
    p = tmp_path / "r.txt"
    p.write_text(line + "\n")
    with pytest.raises(DataError, match=msg):
        read_result_txt(p, num_classes=10)


def test_reader_rejects_duplicates_and_mismatch(tmp_path):
    d = _test_dir(tmp_path, ["a.jpg", "b.jpg"])
    p = tmp_path / "r.txt"
    p.write_text("a.jpg 0 1 2 3 4\na.jpg 0 1 2 3 4\n")
    with pytest.raises(DataError, match="duplicate"):
        read_result_txt(p)
    p.write_text("a.jpg 0 1 2 3 4\nc.jpg 0 1 2 3 4\n")
    with pytest.raises(DataError, match="missing"):
        read_result_txt(p, test_dir=d)


def test_writer_rejects_duplicate_filenames(tmp_path):
    with pytest.raises(DataError, match="duplicate"):
        write_result_txt(tmp_path / "r.txt", ["x/a.jpg", "y/a.jpg"], np.zeros((2, 5), dtype=int))


def test_predictions_csv_round_trip(tmp_path):
    import torch

    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    p = Predictions.from_logits(["a.png", "b.png"], logits, k=2)
    assert p.ids.tolist() == [[1, 2], [0, 2]]
    q = Predictions.read_csv(p.write_csv(tmp_path / "p.csv"))
    assert q.paths == p.paths and (q.ids == p.ids).all()
    np.testing.assert_allclose(q.scores, p.scores, atol=1e-6)
    (tmp_path / "bad.csv").write_text("file,x\n")
    with pytest.raises(DataError):
        Predictions.read_csv(tmp_path / "bad.csv")


def test_names_with_spaces_round_trip_and_a_sixth_id_is_refused(tmp_path):
    names = ["my cat 1.jpg", "dog.jpg"]
    d = _test_dir(tmp_path, names)
    ids = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    path = write_result_txt(tmp_path / "result.txt", names, ids)
    rf = read_result_txt(path, num_classes=10, test_dir=d)
    assert rf.as_dict()["my cat 1.jpg"].tolist() == [1, 2, 3, 4, 5]
    (tmp_path / "six.txt").write_text("a.jpg 1 2 3 4 5 6\n")  # one id too many is not a name 'a.jpg 1'
    with pytest.raises(DataError, match="expected"):
        read_result_txt(tmp_path / "six.txt", num_classes=10)
    with pytest.raises(DataError, match="line break"):
        write_result_txt(tmp_path / "r2.txt", ["a\nb.jpg"], ids[:1])


def test_result_zip_is_deterministic(tmp_path):
    import os
    import time
    import zipfile

    ids = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    write_result_txt(tmp_path / "a" / "result.txt", ["x.jpg", "y.jpg"], ids, zip_it=True)
    first = (tmp_path / "a" / "result.zip").read_bytes()
    old = os.umask(0o077)
    try:
        time.sleep(1.1)  # another wall-clock second, another umask: same bytes
        write_result_txt(tmp_path / "b" / "result.txt", ["y.jpg", "x.jpg"], ids[::-1], zip_it=True)
    finally:
        os.umask(old)
    assert (tmp_path / "b" / "result.zip").read_bytes() == first
    with zipfile.ZipFile(tmp_path / "a" / "result.zip") as z:
        assert z.namelist() == ["result.txt"] and z.read("result.txt") == (tmp_path / "a" / "result.txt").read_bytes()
        assert z.infolist()[0].date_time == (1980, 1, 1, 0, 0, 0)


def test_kshot_score_reads_result_txt_names_with_spaces(tmp_path, capsys):
    import json

    from kshot.cli import app
    from kshot.cli_errors import run_cli

    names = ["my cat 1.jpg", "a dog.jpg", "plain.jpg"]
    ids = np.array([[1, 2, 3, 4, 5], [2, 1, 3, 4, 5], [3, 1, 2, 4, 5]])
    write_result_txt(tmp_path / "result.txt", names, ids)
    (tmp_path / "labels.txt").write_text("TestSetA/my cat 1.jpg 1\nTestSetA/a dog.jpg 2\nTestSetA/plain.jpg 4\n")
    assert run_cli(app, ["score", str(tmp_path / "result.txt"), "--labels", str(tmp_path / "labels.txt"),
                         "--layout", "list", "--json", str(tmp_path / "m.json")]) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["top1"] == pytest.approx(2 / 3) and m["top5"] == pytest.approx(1.0)
