"""CLI smoke tests on a small toy-world export: extract -> fit -> predict (result.txt) -> score, plus methods/eval."""

import json

import pytest
from typer.testing import CliRunner

from kshot.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = tmp_path_factory.mktemp("toy")
    export_world(World(), "challenge", root / "challenge", n_train=6, n_val=2, n_test=3, seed=0)
    export_world(World(), "imagefolder", root / "folder", n_train=6, n_val=2, n_test=3, seed=0)
    return root


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_help_lists_every_verb():
    out = _ok(runner.invoke(app, ["--help"])).output
    for verb in ("extract", "fit", "predict", "score", "eval", "methods", "demo", "toyworld"):
        assert verb in out


def test_methods_lists_registry():
    out = _ok(runner.invoke(app, ["methods"])).output
    assert "zeroshot" in out and "tip_adapter" in out


def test_extract_fit_predict_score(world, tmp_path):
    cache = ["--cache", str(tmp_path / "cache")]
    ch = world / "challenge"
    r = _ok(runner.invoke(app, ["extract", str(ch), "--split", "train", *cache]))
    assert "cached" in r.output
    r = _ok(runner.invoke(app, ["extract", str(ch), "--split", "train", *cache]))
    assert "reused" in r.output
    art = tmp_path / "tip"
    _ok(runner.invoke(app, ["fit", str(ch), "-m", "tip_adapter", "-k", "2", "--seed", "3", "-o", str(art), *cache]))
    shots = (art / "shots.txt").read_text().splitlines()
    assert len(shots) == 2 * 72  # 72 classes with training images, 2 shots each
    assert json.loads((art / "task.json").read_text())["shots"] == 2
    preds, result = tmp_path / "p.csv", tmp_path / "result.txt"
    _ok(runner.invoke(app, ["predict", str(ch), "--split", "testA", "-a", str(art), "-o", str(preds),
                            "--result-txt", str(result), *cache]))
    from kshot.eval.result_file import read_result_txt

    rf = read_result_txt(result, num_classes=80, test_dir=ch / "TestSetA")
    assert len(rf.filenames) == 80 * 3
    out = _ok(runner.invoke(app, ["score", str(result), "--labels", str(ch / "test_labels.txt"), "--layout", "list",
                                  "--json", str(tmp_path / "m.json")])).output
    assert "top1" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 240 and metrics["top1"] > 2 / 80  # well above chance even at 2 shots


def test_zeroshot_predict_on_imagefolder_scores_itself(world, tmp_path):
    cache = ["--cache", str(tmp_path / "cache")]
    folder = world / "folder"
    out = _ok(runner.invoke(app, ["predict", str(folder), "--split", "test", "-o", str(tmp_path / "z.csv"),
                                  *cache])).output
    assert "scores" in out


def test_fit_rejects_unknown_method_and_override(world, tmp_path):
    r = runner.invoke(app, ["fit", str(world / "folder"), "-m", "nope", "-o", str(tmp_path / "x")])
    assert r.exit_code != 0
    r = runner.invoke(app, ["fit", str(world / "folder"), "-m", "tip_adapter", "--set", "nonsense=1",
                            "-o", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no field" in str(r.exception)


def test_eval_protocol_is_resumable(world, tmp_path):
    args = ["eval", str(world / "folder"), "--methods", "tip_adapter,zeroshot", "--shots", "1,2", "--seeds", "1",
            "-o", str(tmp_path / "ev"), "--cache", str(tmp_path / "cache")]
    _ok(runner.invoke(app, args))
    lines = (tmp_path / "ev" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    _ok(runner.invoke(app, args))
    assert len((tmp_path / "ev" / "results.jsonl").read_text().splitlines()) == 4  # nothing re-run
    assert (tmp_path / "ev" / "folder_curves.png").stat().st_size > 1000


def test_eval_no_val_runs_methods_with_their_defaults_and_fit_predict_gda(world, tmp_path):
    cache = ["--cache", str(tmp_path / "cache")]
    _ok(runner.invoke(app, ["eval", str(world / "folder"), "--methods", "gda,clap,tda", "--shots", "2", "--seeds", "1",
                            "--no-val", "--set", "clap.epochs=5", "-o", str(tmp_path / "ev"), *cache]))
    recs = {r["method"]: r for r in map(json.loads, (tmp_path / "ev" / "results.jsonl").read_text().splitlines())}
    assert recs["gda"]["meta"]["alpha"] == 0.1 and recs["gda"]["meta"]["val_accuracy"] is None
    assert recs["tda"]["meta"]["stream_len"] > 0 and recs["tda"]["meta"]["shot_alpha"] == 1.17  # Tip defaults
    _ok(runner.invoke(app, ["fit", str(world / "folder"), "-m", "gda", "-k", "2", "-o", str(tmp_path / "gda"), *cache]))
    _ok(runner.invoke(app, ["predict", str(world / "folder"), "--split", "test", "-a", str(tmp_path / "gda"),
                            "-o", str(tmp_path / "g.csv"), *cache]))
    assert (tmp_path / "g.csv").stat().st_size > 100
