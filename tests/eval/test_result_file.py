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


def test_filename_with_spaces_round_trips(tmp_path):
    names = ["my photo 1.jpg", "plain.jpg"]
    d = _test_dir(tmp_path, names)
    ids = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    path = write_result_txt(tmp_path / "result.txt", [f"TestSetA/{n}" for n in names], ids)
    rf = read_result_txt(path, num_classes=10, test_dir=d)
    assert rf.as_dict()["my photo 1.jpg"].tolist() == [1, 2, 3, 4, 5]
    assert rf.as_dict()["plain.jpg"].tolist() == [5, 4, 3, 2, 1]
