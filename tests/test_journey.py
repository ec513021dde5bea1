"""The new user's path of issue 22, on a generated ImageFolder, with no flag beyond those the README shows:
`fit -m auto` -> `eval --holdout` -> `predict` on new images -> `score` against a list of class names."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from rich.console import Console

from kshot.cli import app
from kshot.cli_errors import run_cli
from kshot.eval.predictions import Predictions
from tests.helpers import write_image_folder

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COLOURS = {"red": (210, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 210)}


def _readme_flags() -> set[str]:
    """Every flag written in the README's shell blocks and prose."""
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", README))


def _kshot(args: list[str], capsys) -> str:
    """Run `kshot ARGS` in-process through the console entry point; returns what it printed."""
    assert all(a in _readme_flags() for a in args if a.startswith("-")), f"flag not in the README: {args}"
    buf = io.StringIO()
    rc = run_cli(app, args, console=Console(file=buf, width=200))
    out = capsys.readouterr()
    text = out.out + out.err + buf.getvalue()
    assert rc == 0, f"kshot {' '.join(args)} -> {rc}\n{text}"
    return text


def test_new_user_journey(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KSHOT_CACHE", str(tmp_path / "cache"))
    write_image_folder(tmp_path / "photos", {c: [rgb] * 10 for c, rgb in COLOURS.items()}, seed=1)
    new = tmp_path / "new"
    new.mkdir()
    truth = []
    for c, rgb in COLOURS.items():  # unlabelled new images, one flat folder; the truth as '<image> <name>'
        write_image_folder(tmp_path / "tmp", {c: [rgb] * 2}, seed=7)
        for i in range(2):
            (tmp_path / "tmp" / c / f"{i}.png").rename(new / f"{c}{i}.png")
            truth.append(f"{c}{i}.png {c}")
    (tmp_path / "truth.txt").write_text("\n".join(truth) + "\n")

    out = _kshot(["fit", "photos", "-m", "auto", "-k", "4", "--seed", "1", "-o", "runs/auto"], capsys)
    assert "auto:" in out and "validation top-1" in out  # which method it picked and why, and its accuracy
    meta = json.loads((tmp_path / "runs" / "auto" / "method.json").read_text())["meta"]
    assert meta["chosen"] in meta["selection_top1_percent"] and meta["reason"]  # the record says what and why

    out = _kshot(["eval", "photos", "--holdout", "0.2", "--seed", "1", "--methods", "tip_adapter,lpp", "--shots",
                  "1,2", "--seeds", "1", "-o", "runs/fs"], capsys)
    assert "hold-out:" in out and (tmp_path / "runs" / "fs" / "results.jsonl").is_file()

    _kshot(["predict", "new", "-a", "runs/auto", "-o", "preds.json"], capsys)
    preds = Predictions.read(tmp_path / "preds.json")
    assert sorted(Path(p).name for p in preds.paths) == sorted(t.split()[0] for t in truth)
    assert set(preds.names()[0]) <= set(COLOURS)  # named predictions

    out = _kshot(["score", "preds.json", "--labels", "truth.txt"], capsys)
    n, top1 = re.search(r"all\W+(\d+)\W+([\d.]+)", out).groups()  # the 'scores' table: n, top-1 %
    assert int(n) == 6 and float(top1) >= 50  # solid colours: the picked method gets most of them
