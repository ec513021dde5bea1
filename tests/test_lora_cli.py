"""`kshot fit -m clip_lora`, `kshot lora merge` and the merged checkpoint as `-b toy:clip@FILE` in other commands."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from typer.testing import CliRunner

from kshot.cli import app
from tests.methods.test_clip_lora import _features, _world


def _top1(path: Path) -> list[str]:
    with open(path) as f:
        return [row[1] for row in list(csv.reader(f))[1:]]


def test_fit_merge_and_use_the_merged_backbone(tmp_path: Path) -> None:
    from kshot.backbones import load_backbone
    from kshot.methods import load

    train, test = _world(tmp_path / "data")
    run = tmp_path / "run"
    r = CliRunner()
    common = ["--cache", str(tmp_path / "cache"), "--device", "cpu"]
    res = r.invoke(app, ["fit", str(tmp_path / "data"), "-m", "clip_lora", "-o", str(run), "-k", "2", "--layout",
                         "imagefolder", "--set", "iters=6", "--set", "batch_size=8", "--set", "lr=0.001",
                         "--set", "progress=false", *common])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["lora", "merge", str(run), "-o", str(tmp_path / "merged.safetensors")])
    assert res.exit_code == 0, res.output
    merged = load_backbone(f"toy:clip@{tmp_path / 'merged.safetensors'}")
    method = load(run).attach_backbone(load_backbone("toy:clip"))
    tuned = method.tuned_backbone()
    assert merged.fingerprint != load_backbone("toy:clip").fingerprint
    assert torch.allclose(_features(merged, test), _features(tuned, test), atol=1e-5)
    # the artifact predicts through the tuned encoder; the merged file works as a plain backbone elsewhere
    res = r.invoke(app, ["predict", str(tmp_path / "data"), "-a", str(run), "--layout", "imagefolder",
                         "-o", str(tmp_path / "a.csv"), *common])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["extract", str(tmp_path / "data"), "-b", f"toy:clip@{tmp_path / 'merged.safetensors'}",
                         "--layout", "imagefolder", "--split", "test", *common])
    assert res.exit_code == 0, res.output
    assert len(_top1(tmp_path / "a.csv")) == len(test)


def test_merge_of_a_non_lora_run_is_a_clear_error(tmp_path: Path) -> None:
    _world(tmp_path / "data")
    r = CliRunner()
    common = ["--cache", str(tmp_path / "cache"), "--device", "cpu"]
    res = r.invoke(app, ["fit", str(tmp_path / "data"), "-m", "zeroshot", "-o", str(tmp_path / "zs"), "-k", "1",
                         "--layout", "imagefolder", *common])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["lora", "merge", str(tmp_path / "zs"), "-o", str(tmp_path / "m.safetensors")])
    assert res.exit_code != 0 and "no LoRA adapters" in str(res.exception)
