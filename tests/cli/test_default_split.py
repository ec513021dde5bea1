"""predict/score without --split: the test split where there is one, else the whole folder; recursive unlabelled
folders, mixed folders refused, `score --skip-missing` (issue 22)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kshot.cli import app
from kshot.data.paths import MissingFilesError
from kshot.data.sources import default_split, detect_layout, load_dataset
from kshot.errors import DataError
from kshot.eval.predictions import Predictions
from tests.helpers import write_image_folder

runner = CliRunner()
COLOURS = {"red": [(220, 20, 20)] * 3, "blue": [(20, 20, 220)] * 3}


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def folders(tmp_path):
    flat = write_image_folder(tmp_path / "flat", COLOURS)  # root/<class>/<img>, no splits
    split = tmp_path / "split"
    write_image_folder(split / "train", COLOURS)
    write_image_folder(split / "test", {"red": [(220, 20, 20)] * 2, "blue": [(20, 20, 220)]})
    nested = write_image_folder(tmp_path / "nested", {"2024": [(9, 9, 9)] * 2, "2025/june": [(99, 9, 9)]})
    mixed = write_image_folder(tmp_path / "mixed", COLOURS)
    (mixed / "loose.png").write_bytes((flat / "red" / "0.png").read_bytes())
    return {"flat": flat, "split": split, "nested": nested, "mixed": mixed}


def test_default_split_is_test_where_there_is_one(folders):
    assert default_split(folders["split"]) == "test"
    assert default_split(folders["flat"]) == "train"  # the whole folder
    assert default_split(folders["nested"], "folder") == "train"
    assert len(load_dataset(folders["split"], split=default_split(folders["split"]))) == 3


def test_folder_layout_reads_sub_folders_unlabelled(folders):
    ds = load_dataset(folders["nested"], layout="folder")
    assert sorted(it.path for it in ds.items) == ["2024/0.png", "2024/1.png", "2025/june/0.png"]
    assert not ds.has_labels


def test_mixed_folder_is_one_clear_error(folders):
    with pytest.raises(DataError, match=r"holds both images \(1, e.g. loose.png\) and sub-folders.*--layout folder"):
        detect_layout(folders["mixed"])
    r = runner.invoke(app, ["predict", str(folders["mixed"]), "-o", "x.csv"])
    assert r.exit_code != 0 and "holds both images" in str(r.exception)


def test_predict_and_score_a_labelled_flat_folder_without_split(folders, tmp_path):
    cache = ["--cache", str(tmp_path / "cache")]
    preds = tmp_path / "p.csv"
    r = _ok(runner.invoke(app, ["predict", str(folders["flat"]), "-o", str(preds), *cache]))
    assert "scores" in r.output  # labelled: scored against its own folders
    assert len(Predictions.read(preds).paths) == 6
    _ok(runner.invoke(app, ["score", str(preds), "--labels", str(folders["flat"]), "--json", str(tmp_path / "m.json")]))
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 6
    # a folder with a test split: only the test images, scored against them
    _ok(runner.invoke(app, ["predict", str(folders["split"]), "-o", str(preds), *cache]))
    assert sorted(Predictions.read(preds).paths) == ["blue/0.png", "red/0.png", "red/1.png"]
    _ok(runner.invoke(app, ["score", str(preds), "--labels", str(folders["split"]), "--json",
                            str(tmp_path / "m.json")]))
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 3


def test_predict_reads_a_folder_with_sub_folders_recursively(folders, tmp_path):
    preds = tmp_path / "p.csv"
    _ok(runner.invoke(app, ["predict", str(folders["nested"]), "--layout", "folder", "--classes", str(folders["flat"]),
                            "-o", str(preds), "--cache", str(tmp_path / "cache")]))
    assert sorted(Predictions.read(preds).paths) == ["2024/0.png", "2024/1.png", "2025/june/0.png"]


def test_score_skip_missing_and_its_hint(tmp_path):
    root = write_image_folder(tmp_path / "imgs", COLOURS)
    split = tmp_path / "split_zhou_Tiny.json"
    rows = [[f"{c}/{i}.png", k, c] for k, c in enumerate(COLOURS) for i in range(3)]
    split.write_text(json.dumps({"train": rows, "val": [], "test": rows + [["red/9.png", 0, "red"]]}))
    preds = tmp_path / "p.csv"
    Predictions([r[0] for r in rows], np.array([[r[1], 1 - r[1]] for r in rows]), np.full((len(rows), 2), 0.5),
                classnames=list(COLOURS)).write(preds)
    args = ["score", str(preds), "--labels", str(split), "--layout", "coop", "--json", str(tmp_path / "m.json")]
    r = runner.invoke(app, args + ["--split", "test"])
    assert isinstance(r.exception, MissingFilesError)
    assert "red/9.png" in str(r.exception) and "--skip-missing" in str(r.exception)
    assert "on_missing" not in str(r.exception)
    _ok(runner.invoke(app, args + ["--skip-missing"]))  # default split: the split file's test split
    assert json.loads((tmp_path / "m.json").read_text())["top1"] == 1.0
    assert root.is_dir()
