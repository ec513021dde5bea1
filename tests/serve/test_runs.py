"""The web app's fit (`serve.runs.fit_run`) of a method that trains through the image encoder: it gets the shot
images, and its validation and test scores are those of its own tuned encoder, recomputed here from the saved run."""

from __future__ import annotations

import json

import torch

from kshot import experiment as ex
from kshot.serve.runs import Job, fit_run
from tests.methods.test_clip_lora import _features, _world


def test_an_encoder_tuning_fit_is_scored_on_its_tuned_encoder(tmp_path, monkeypatch):
    from kshot.backbones import load_backbone
    from kshot.data.sources import load_dataset
    from kshot.methods import load

    _world(tmp_path / "data", shots=4)
    scored, real = [], ex.test_features

    def spy(store, backbone, *a, **k):  # which encoder's features the test split is scored on
        scored.append(backbone.spec)
        return real(store, backbone, *a, **k)

    monkeypatch.setattr(ex, "test_features", spy)
    metrics = fit_run(tmp_path / "data", "clip_lora", 2, 1, "toy:clip", tmp_path / "run", tmp_path / "cache", {},
                      Job("j"), overrides={"iters": 3, "batch_size": 4, "lr": 0.01, "dropout": 0.0})
    bb = load_backbone("toy:clip")
    method = load(tmp_path / "run").attach_backbone(bb)
    tuned_bb = method.tuned_backbone(bb)
    assert scored == [tuned_bb.spec] and tuned_bb.spec != bb.spec
    assert json.loads((tmp_path / "run" / "task.json").read_text())["val_encoder"] == tuned_bb.spec
    test = load_dataset(tmp_path / "data", split="test")
    tuned, frozen = _features(tuned_bb, test), _features(bb, test)
    assert not torch.allclose(tuned, frozen, atol=1e-4)  # the encoders differ
    pred = method.logits(tuned).argmax(1)
    assert metrics["test_top1"] == float((pred == torch.as_tensor(test.labels)).float().mean())
    assert 0.0 <= metrics["val_top1"] <= 1.0 and len(metrics["recall"]) == 4
    assert (tmp_path / "run" / "confusion.png").is_file()
