"""Test data are matched to the fitted classes by name, not by index (issue 23, "Wrong accuracy with no warning").

On a 16-class toy world: a test folder without one class (every later index shifts) scores like the full test minus
that class; a test folder whose class folder is re-cased (sorts elsewhere, same name) scores exactly like the full
test; a renamed folder (a class the model never saw) is an error naming it in `eval` and scored as wrong, with a
warning, in `predict`/`score`.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from kshot.cli import app
from kshot.cli_errors import run_cli

N_TEST = 2  # test images per class


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    status = run_cli(app, argv)
    out = capsys.readouterr()
    return status, out.out + out.err


def _variant(world: Path, dst: Path, drop: str | None = None, rename: tuple[str, str] | None = None) -> Path:
    """A labelled test dataset `dst/test/<class>/...` copied from the world's test split."""
    shutil.copytree(world / "test", dst / "test")
    if drop:
        shutil.rmtree(dst / "test" / drop)
    if rename:
        (dst / "test" / rename[0]).rename(dst / "test" / rename[1])
    return dst


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = tmp_path_factory.mktemp("classmatch")
    world = export_world(World(), "imagefolder", root / "world", domains=["Creatures"], n_train=4, n_val=0,
                         n_test=N_TEST)
    classes = sorted(p.name for p in (world / "test").iterdir())
    first, middle = classes[0], classes[len(classes) // 2]
    paths = {"world": world, "cache": root / "cache", "art": root / "lpp", "first": Path(first)}
    paths["t_missing"] = _variant(world, root / "t_missing", drop=first)
    paths["t_renamed"] = _variant(world, root / "t_renamed", rename=(first, first + "_renamed"))
    paths["t_recased"] = _variant(world, root / "t_recased", rename=(middle, middle.capitalize()))
    assert run_cli(app, ["fit", str(world), "-m", "lpp", "-k", "2", "-o", str(paths["art"]),
                         "--cache", str(paths["cache"])]) == 0
    full = root / "full.csv"
    assert run_cli(app, ["predict", str(world), "-a", str(paths["art"]), "-o", str(full),
                         "--cache", str(paths["cache"])]) == 0
    paths["full"] = full
    return paths


def _eval(toy: dict[str, Path], test: Path, out: Path, capsys: pytest.CaptureFixture) -> dict[str, dict]:
    status, text = _run(["eval", str(toy["world"]), "--test", str(test), "--methods", "zeroshot,lpp",
                         "--shots", "2", "--seeds", "1", "-o", str(out), "--cache", str(toy["cache"])], capsys)
    assert status == 0, text
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {r["method"]: r for r in recs}


def _correct_by_class(toy: dict[str, Path]) -> dict[str, int]:
    """Top-1 hits per true class of the artifact's predictions on the full test split."""
    hits: dict[str, int] = {}
    with toy["full"].open(newline="") as f:
        for row in csv.DictReader(f):
            truth = row["path"].split("/")[0]
            hits[truth] = hits.get(truth, 0) + (row["label1"] == truth)
    return hits


def test_eval_test_missing_a_class_scores_the_others(toy: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    full = _eval(toy, toy["world"], tmp_path / "full", capsys)
    part = _eval(toy, toy["t_missing"], tmp_path / "part", capsys)
    n_full, n_part = 16 * N_TEST, 15 * N_TEST
    for method in ("zeroshot", "lpp"):  # the same fitted model: only the dropped class's hits are gone
        hits_full, hits_part = round(full[method]["top1"] * n_full), round(part[method]["top1"] * n_part)
        assert hits_full - N_TEST <= hits_part <= hits_full, (method, hits_full, hits_part)
    assert part["lpp"]["top1"] > 2 / 16  # far above what index matching gave (0 %)


def test_eval_recased_folder_scores_exactly_as_the_original(toy: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    full = _eval(toy, toy["world"], tmp_path / "full", capsys)
    recased = _eval(toy, toy["t_recased"], tmp_path / "recased", capsys)  # sorts first now: every index differs
    for method in ("zeroshot", "lpp"):
        assert recased[method]["top1"] == full[method]["top1"]
        assert recased[method]["mean_per_class"] == full[method]["mean_per_class"]


def test_eval_unknown_test_class_is_an_error_naming_it(toy: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    status, text = _run(["eval", str(toy["world"]), "--test", str(toy["t_renamed"]), "--methods", "zeroshot",
                         "--shots", "1", "--seeds", "1", "-o", str(tmp_path / "ev"), "--cache", str(toy["cache"])],
                        capsys)
    assert status != 0 and "Traceback" not in text
    assert f"{toy['first']}_renamed" in text and "error:" in text
    assert not (tmp_path / "ev" / "results.jsonl").exists()


def test_predict_and_score_test_missing_a_class(toy: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    out, scores = tmp_path / "p.csv", tmp_path / "s.json"
    status, text = _run(["predict", str(toy["t_missing"]), "-a", str(toy["art"]), "-o", str(out),
                         "--cache", str(toy["cache"])], capsys)
    assert status == 0 and "Traceback" not in text, text
    hits = _correct_by_class(toy)
    expect = (sum(hits.values()) - hits[str(toy["first"])]) / (15 * N_TEST)
    status, text = _run(["score", str(out), "--labels", str(toy["t_missing"]), "--json", str(scores)], capsys)
    assert status == 0, text
    metrics = json.loads(scores.read_text())
    assert metrics["n"] == 15 * N_TEST
    assert metrics["top1"] == pytest.approx(expect)


def test_predict_and_score_unknown_class_count_as_wrong_with_a_warning(toy: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    out, scores = tmp_path / "p.json", tmp_path / "s.json"
    status, text = _run(["predict", str(toy["t_renamed"]), "-a", str(toy["art"]), "-o", str(out),
                         "--cache", str(toy["cache"])], capsys)
    assert status == 0 and "Traceback" not in text, text
    assert "warning:" in text and f"{toy['first']}_renamed" in text
    hits = _correct_by_class(toy)
    expect = (sum(hits.values()) - hits[str(toy["first"])]) / (16 * N_TEST)
    status, text = _run(["score", str(out), "--labels", str(toy["t_renamed"]), "--json", str(scores)], capsys)
    assert status == 0 and f"{toy['first']}_renamed" in text, text
    metrics = json.loads(scores.read_text())
    assert metrics["n"] == 16 * N_TEST and metrics["top1"] == pytest.approx(expect)
