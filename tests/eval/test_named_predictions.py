"""Named predictions: `predict` writes CSV / JSON (Parquet with pyarrow) with class names, scores and the run;
`score --labels` takes a '<image> <label>' list with class names or ids, for images that need not exist here."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kshot.cli import app
from kshot.errors import DataError, KshotError
from kshot.eval.predictions import Predictions, read_labels

runner = CliRunner()
NAMES = ["cat", "sea lion", "dog"]


def _preds() -> Predictions:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.5, 4.0], [2.0, 0.0, 3.0]])
    return Predictions.from_logits(["a/1.jpg", "b/2.jpg", "c/3.jpg", "d/4.jpg"], logits, 2, classnames=NAMES,
                                   run="runs/auto")


def test_csv_and_json_carry_names_scores_and_run(tmp_path):
    p = _preds()
    rows = list(csv.DictReader((p.write(tmp_path / "p.csv")).open()))
    assert rows[1]["label1"] == "sea lion" and rows[1]["id1"] == "1" and rows[0]["run"] == "runs/auto"
    assert float(rows[0]["score1"]) > float(rows[0]["score2"])
    data = json.loads(p.write(tmp_path / "p.json").read_text())
    assert data["run"] == "runs/auto" and data["predictions"][2]["labels"] == ["dog", "sea lion"]
    for q in (Predictions.read(tmp_path / "p.csv"), Predictions.read(tmp_path / "p.json")):
        assert np.array_equal(q.ids, p.ids) and q.run == "runs/auto" and q.classnames[:3] == NAMES
    assert Predictions.read(p.write(tmp_path / "x.out", fmt="json")).paths == p.paths  # --format beats the suffix
    with pytest.raises(DataError, match="--format"):
        p.write(tmp_path / "p.xlsx")


def test_parquet_needs_pyarrow_or_writes(tmp_path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(DataError, match="pyarrow"):
            _preds().write(tmp_path / "p.parquet")
        return
    assert pq.read_table(_preds().write(tmp_path / "p.parquet")).num_rows == 4


def test_labels_by_name_or_id(tmp_path):
    (tmp_path / "t.txt").write_text("a/1.jpg cat\nb/2.jpg sea lion\nc/3.jpg Sea_Lion\nd/4.jpg 2\nx.jpg,dog\n")
    assert read_labels(tmp_path / "t.txt", NAMES) == {"a/1.jpg": 0, "b/2.jpg": 1, "c/3.jpg": 1, "d/4.jpg": 2,
                                                      "x.jpg": 2}
    (tmp_path / "bad.txt").write_text("a/1.jpg lion\n")
    with pytest.raises(DataError, match="bad.txt:1: unknown class 'lion'"):
        read_labels(tmp_path / "bad.txt", NAMES)


def test_score_cli_by_names_without_images(tmp_path):
    _preds().write(tmp_path / "p.csv")
    (tmp_path / "truth.txt").write_text("1.jpg cat\n2.jpg sea lion\n3.jpg cat\n4.jpg dog\n")  # basenames match
    r = runner.invoke(app, ["score", str(tmp_path / "p.csv"), "--labels", str(tmp_path / "truth.txt"),
                            "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == 4 and m["top1"] == pytest.approx(0.75)
    assert {"true": "cat", "pred": "dog", "count": 1} in m["confusions"]
    (tmp_path / "bad.txt").write_text("1.jpg cat\n")
    r = runner.invoke(app, ["score", str(tmp_path / "p.csv"), "--labels", str(tmp_path / "bad.txt")])
    assert isinstance(r.exception, KshotError) and "no label for predicted image 'b/2.jpg'" in str(r.exception)


def test_predict_cli_writes_names(tmp_path):
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    export_world(World(), "imagefolder", tmp_path / "folder", n_train=1, n_val=0, n_test=1, seed=0)
    out = tmp_path / "z.json"
    r = runner.invoke(app, ["predict", str(tmp_path / "folder"), "--split", "test", "-o", str(out), "--topk", "2",
                            "--cache", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["run"] == "zeroshot:toy:clip" and data["predictions"][0]["labels"][0] in data["classnames"]
