"""`kshot challenge` (the Typer app the main CLI mounts): run, configs, show."""

from __future__ import annotations

from typer.testing import CliRunner

import kshot.toyworld.checkpoint as toy_checkpoint
from kshot.eval.result_file import read_result_txt
from kshot.pipelines.cli import app


def test_run_writes_a_valid_submission(toy_root, small_clip_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(toy_checkpoint, "ASSETS_DIR", small_clip_dir)  # toy:clip -> the small random checkpoint
    args = ["run", str(toy_root), "--config", "toy_cascade", "--out", str(tmp_path / "o"), "--cache",
            str(tmp_path / "c"), "--device", "cpu", "--force", "--set", "cv_folds=2", "--set",
            "stages.lpp.params={iters: 50}", "--set", "stages.creature_net.epochs=1", "--set",
            "stages.creature_net.cv_folds=0", "--set", "estimate_per_class=1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    parsed = read_result_txt(tmp_path / "o" / "result.txt", num_classes=32, test_dir=toy_root / "TestSetA")
    assert len(parsed.filenames) == 160
    assert "parameters:" in res.output


def test_configs_and_show(tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["configs"])
    assert res.exit_code == 0 and "seed004_clip_b" in res.output and "track1" in res.output
    res = runner.invoke(app, ["show", "seed004_clip_b", "--set", "stages.dog.epochs=5"])
    assert res.exit_code == 0 and "epochs: 5" in res.output and "type: cascade" in res.output
