"""`kshot continual run|eval|report` end to end on the digits config, and its refusal of a changed config."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kshot.continual.cli import app

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "continual" / "digits.yaml"
SMALL = ["schedule.train.epochs=1", "schedule.retrain.epochs=1", "eval_every_epoch=false",
         *[f"tasks.{t}.limit=100" for t in ("digits0-3", "digits4-6", "digits7-9")]]


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def test_run_eval_report_and_changed_config(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", str(CONFIG), "--out", str(out), "-m", "packnet", "--quiet",
                              *_sets(SMALL)])
    assert res.exit_code == 0, res.output
    assert "packnet" in res.output and (out / "report.md").is_file()
    results = json.loads((out / "packnet" / "results.json").read_text())
    assert (out / "packnet" / "log.txt").read_text().count("epoch 1/1") == 6  # train + retrain, 3 tasks

    res = runner.invoke(app, ["eval", str(out / "packnet"), "--json", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [r["accuracy"] for r in rows] == results["accuracy"][-1]

    res = runner.invoke(app, ["run", str(CONFIG), "--out", str(out), "-m", "packnet", "--quiet",
                              *_sets([*SMALL, "schedule.prune=0.7"])])
    assert res.exit_code == 2 and "schedule.prune: 0.5 -> 0.7" in res.output

    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0 and "report.md" in res.output
