"""`kshot fit` of a method that trains through the image encoder scores its validation split on the *tuned* encoder's
features: the printed and stored (task.json, method.json) accuracy is recomputed here from the loaded artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kshot.cli import app
from tests.methods.test_clip_lora import _features, _world

FAST = {"maple": ["depth=3", "epochs=1", "batch_size=4", "lr=0.05"],
        "clip_lora": ["iters=3", "batch_size=4", "lr=0.01"]}


@pytest.mark.parametrize("name", sorted(FAST))
def test_fit_reports_validation_accuracy_of_the_tuned_encoder(tmp_path: Path, name: str) -> None:
    from kshot import experiment as ex
    from kshot.backbones import load_backbone
    from kshot.data.sources import load_dataset
    from kshot.methods import load

    _world(tmp_path / "data", shots=4)
    run = tmp_path / "run"
    sets = [a for s in FAST[name] for a in ("--set", s)]
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "data"), "-m", name, "-o", str(run), "-k", "2", "--seed", "1",
                                   "--layout", "imagefolder", "--cache", str(tmp_path / "cache"), "--device", "cpu",
                                   *sets])
    assert res.exit_code == 0, res.output
    assert "validation top-1 of the tuned encoder" in res.output
    task, doc = json.loads((run / "task.json").read_text()), json.loads((run / "method.json").read_text())
    # the same validation images the fit drew, classified by the loaded artifact through its tuned encoder
    pool = load_dataset(tmp_path / "data", layout="imagefolder", split="train")
    val = pool.subset(ex.select_shots(pool, 2, 1).val)
    bb = load_backbone("toy:clip")
    method = load(run).attach_backbone(bb)
    tuned, frozen = _features(method.tuned_backbone(bb), val), _features(bb, val)
    assert not torch.allclose(tuned, frozen, atol=1e-4)  # the two encoders differ, so the check below can fail
    labels = torch.as_tensor(val.labels)
    want = round(100.0 * float((method.logits(tuned).argmax(1) == labels).float().mean()), 2)
    assert task["val_images"] == len(val) == 8
    assert task["val_top1_percent"] == doc["report"]["val_top1_percent"] == want
    assert doc["report"]["val_encoder"] == task["val_encoder"] == method.tuned_backbone(bb).spec != bb.spec
    assert f"{want:.2f} %" in res.output
