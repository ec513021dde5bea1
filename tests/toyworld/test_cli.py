"""`kshot toyworld` commands (the typer app the top-level CLI mounts)."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from kshot.toyworld.cli import app

runner = CliRunner()


def test_generate_summary_and_npz(tmp_path) -> None:
    res = runner.invoke(app, ["generate"])
    assert res.exit_code == 0, res.output
    assert "Creatures" in res.output and "16 classes" in res.output
    out = tmp_path / "w.npz"
    res = runner.invoke(app, ["generate", "--out", str(out), "--domains", "Creatures", "--per-class", "2",
                              "--n-test", "1"])
    assert res.exit_code == 0, res.output
    data = np.load(out)
    assert data["train_images"].shape == (32, 32, 32, 3) and data["test_labels"].tolist() == list(range(16))
    assert "zorvik" in data["classnames"].tolist()


def test_export_layouts_and_errors(tmp_path) -> None:
    res = runner.invoke(app, ["export", "--layout", "challenge", "--out", str(tmp_path / "c"), "--per-class", "1",
                              "--n-val", "0", "--n-test", "1", "--domains", "Creatures,Unseen"])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "c" / "train.txt").read_text().splitlines()
    assert len(lines) == 16 and lines[0] == "TrainSet/Creatures/zorvik/0.png 0"
    assert len((tmp_path / "c" / "test_labels.txt").read_text().splitlines()) == 24
    res = runner.invoke(app, ["export", "--layout", "parquet", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "layout" in res.output
