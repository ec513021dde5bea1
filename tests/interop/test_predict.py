"""`kshot predict --backend jittor` against the default torch backend: same top-5 ids, zero-shot and a fitted head.

One worker session per command (two commands): skipped without a Jittor interpreter.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from kshot.cli import app
from tests.jittor_backend.helpers import needs_jittor



def _toy_folder(root: Path) -> Path:
    """4 Shapes classes x 3 images of the toy world as an ImageFolder."""
    from kshot.toyworld.generator import World

    world = World()
    ids = world.class_ids("Shapes")[:4]
    for j, cid in enumerate(ids):
        d = root / world.classnames[cid]
        d.mkdir(parents=True)
        for i, img in enumerate(world.render([cid] * 3, seed=10 + j)):
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def _top5(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    cols = [i for i, h in enumerate(head) if h.startswith("id")]
    return {r[0]: [r[i] for i in cols] for r in rows[1:]}


def _run(*args: str) -> None:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output + repr(r.exception)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _toy_folder(tmp_path_factory.mktemp("toy") / "imgs")


@needs_jittor
@pytest.mark.parametrize("mode", ["zeroshot", "tip_adapter"])
def test_jittor_backend_predicts_the_same_ids(mode: str, data: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    extra: list[str] = []
    if mode != "zeroshot":
        art = tmp_path / "art"
        _run("fit", str(data), "-m", mode, "-k", "2", "-o", str(art), "-b", "toy:clip", "--cache", cache,
             "--split", "train")
        extra = ["-a", str(art)]
    common = ["predict", str(data), "--split", "train", "-b", "toy:clip", "--cache", cache, *extra]
    _run(*common, "-o", str(tmp_path / "torch.csv"))
    _run(*common, "-o", str(tmp_path / "jittor.csv"), "--backend", "jittor")
    torch_ids, jittor_ids = _top5(tmp_path / "torch.csv"), _top5(tmp_path / "jittor.csv")
    assert len(torch_ids) == 12 and torch_ids == jittor_ids


def test_without_jittor_the_error_says_how_to_get_it(data: Path, tmp_path: Path, monkeypatch) -> None:
    from kshot.jittor_backend.runtime import JittorError

    monkeypatch.setenv("KSHOT_JITTOR_PYTHON", str(tmp_path / "no-such-python"))
    r = CliRunner().invoke(app, ["predict", str(data), "--split", "train", "--backend", "jittor",
                                 "-o", str(tmp_path / "p.csv")])
    assert isinstance(r.exception, JittorError) and "KSHOT_JITTOR_PYTHON" in str(r.exception)
    assert not (tmp_path / "p.csv").exists()
