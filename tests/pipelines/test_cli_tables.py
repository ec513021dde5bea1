"""`kshot challenge run --test-labels` prints the real test table on the console, not only the pool estimate."""

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

import kshot.pipelines.runner as runner_mod
from kshot.cli import app


def _report(with_test: bool) -> dict:
    def metrics(top1):
        return {"n": 40, "top1": top1, "top5": 0.9}

    stages = [{"name": "zs", "fit_s": 0.5, "metrics": {"estimate": metrics(0.5), "test": metrics(0.375) if with_test
                                                        else None}},
              {"name": "tip", "fit_s": 1.5, "metrics": {"estimate": metrics(0.6), "test": metrics(0.4125) if with_test
                                                         else None}}]
    return {"stages": stages, "parameters": {"loaded_total": 10, "by_use_total": 10},
            "rule": {"compliant": True, "detail": ""}}


def _run(monkeypatch, tmp_path, with_test):
    def fake(cfg, root, opts):
        assert (opts.test_labels is not None) == with_test
        return runner_mod.RunResult(tmp_path / "result.txt", ["a.png"], np.zeros((1, 5), int), _report(with_test),
                                    tmp_path / "report.md")

    monkeypatch.setattr(runner_mod, "run_challenge", fake)
    args = ["challenge", "run", str(tmp_path), "--config", "toy_cascade", "-o", str(tmp_path / "o")]
    r = CliRunner().invoke(app, args + (["--test-labels", str(tmp_path / "labels.txt")] if with_test else []),
                           terminal_width=200)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return " ".join(r.output.split())  # table titles wrap at the console width


def test_test_labels_print_the_test_table(monkeypatch, tmp_path: Path):
    out = _run(monkeypatch, tmp_path, True)
    assert "estimated accuracy" in out and "test accuracy (scored with --test-labels)" in out
    test_part = out.split("test accuracy", 1)[1]
    assert "37.50" in test_part and "41.25" in test_part


def test_without_test_labels_only_the_estimate(monkeypatch, tmp_path: Path):
    out = _run(monkeypatch, tmp_path, False)
    assert "estimated accuracy" in out and "test accuracy" not in out
