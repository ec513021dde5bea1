"""ONNX / TorchScript exports equal kshot's own logits on the toy test set, for every exportable method."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kshot.cli import app
from kshot.errors import ExportError

pytest.importorskip("onnxruntime")
runner = CliRunner()
EXPORTABLE = ["zeroshot", "linear_probe", "lpp", "tip_adapter", "tip_adapter_f", "ape", "ape_t", "clip_adapter",
              "track1", "gda", "clap", "proker", "zs_lp", "auto"]


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = tmp_path_factory.mktemp("toy")
    export_world(World(), "imagefolder", root / "folder", domains=("Creatures",), n_train=4, n_val=2, n_test=3,
                 seed=0)
    return root


@pytest.fixture(scope="module")
def kshot_logits(world):
    """(test dataset, backbone, features) computed by kshot's own extraction."""
    from kshot.backbones import load_backbone
    from kshot.data.sources import load_dataset
    from kshot.features import FeatureStore

    ds = load_dataset(world / "folder", split="test")
    bb = load_backbone("toy:clip")
    return ds, FeatureStore(world / "cache").get(bb, ds, name="test")


# encoder- and prompt-tuned methods, trained for a few steps (depth 3 fits the toy CLIP's 3 text / 4 vision layers)
_DEEP = ["depth=3", "epochs=1", "batch_size=4", "lr=0.01"]
TUNED = {
    "clip_lora": ["iters=3", "batch_size=4", "lr=0.01", "dropout=0.0", "progress=false"],
    "maple": _DEEP,
    "promptsrc": [*_DEEP, "depth_vision=3", "gpa=false"],
    "atprompt_maple": _DEEP,
    "atprompt_promptsrc": [*_DEEP, "depth_vision=3", "gpa=false"],
    "coop": ["epochs=2"],
    "kgcoop": ["epochs=2"],
    "atprompt": ["epochs=2"],
}


def _fit(world, method, settings=()):
    art = world / f"run_{method}"
    if not art.exists():
        sets = [a for kv in settings for a in ("--set", kv)]
        _ok(runner.invoke(app, ["fit", str(world / "folder"), "-m", method, "-k", "2", "-o", str(art),
                                "--cache", str(world / "cache"), *sets]))
    return art


def _check_exports(art, tmp_path, ds, expected):
    """Export `art` both ways; the exported logits on the test crops equal `expected` (≤ 1e-4, same top-1)."""
    from kshot.deploy.onnx_predict import OnnxClassifier
    from kshot.features.decode import load_crop

    _ok(runner.invoke(app, ["export", str(art), "--format", "onnx", "-o", str(tmp_path / "onnx" / "m.onnx")]))
    _ok(runner.invoke(app, ["export", str(art), "--format", "torchscript", "-o", str(tmp_path / "ts" / "m.pt")]))
    clf = OnnxClassifier.load(tmp_path / "onnx" / "m.onnx")
    images = torch.stack([load_crop(ds.abspath(i), clf.geometry) for i in range(len(ds))])
    got_onnx = clf.logits(images)
    with torch.no_grad():
        got_ts = torch.jit.load(str(tmp_path / "ts" / "m.pt"))(images).numpy()
    # 1e-4 abs for logits up to 100 (CLIP's logit scale on unit features), then 1e-6 of the largest logit: GDA's
    # unscaled discriminant logits reach ~330 on this set, where float32's spacing is 3e-5, so the few roundings a
    # different summation order (onnxruntime's GEMM vs torch's) makes are ~1.2e-4 (measured) at equal precision.
    tol = 1e-4 * max(1.0, float(np.abs(expected).max()) / 100)
    for got in (got_onnx, got_ts):
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= tol
        assert (got.argmax(1) == expected.argmax(1)).all()
    labels = json.loads((tmp_path / "onnx" / "labels.json").read_text())
    assert [labels[str(i)] for i in range(len(labels))] == ds.classnames
    pre = json.loads((tmp_path / "onnx" / "preprocess.json").read_text())
    size = images.shape[-1]
    assert pre["input"]["shape"] == ["N", 3, size, size] and pre["input"]["dtype"] == "uint8"
    assert f"{size}x{size}" in pre["note"] or f"{size} px" in pre["note"]


@pytest.mark.parametrize("method", EXPORTABLE)
def test_onnx_and_torchscript_match_kshot(world, kshot_logits, tmp_path, method):
    from kshot.experiment import predict_logits
    from kshot.methods import load

    ds, fs = kshot_logits
    art = _fit(world, method)
    _check_exports(art, tmp_path, ds, predict_logits(load(art), fs).numpy())


@pytest.mark.parametrize("method", sorted(TUNED))
def test_tuned_encoder_and_prompt_methods_export_what_kshot_predicts(world, kshot_logits, tmp_path, method):
    """The export runs the tuned image encoder (LoRA / visual prompts) and the learned text features as the head."""
    from kshot.backbones import load_backbone
    from kshot.experiment import predict_logits
    from kshot.features import FeatureStore
    from kshot.methods import load

    ds, base_fs = kshot_logits
    art = _fit(world, method, TUNED[method])
    m, bb = load(art), load_backbone("toy:clip")
    m.attach_backbone(bb)
    tuned = m.tuned_backbone(bb) if "image" in m.trains_encoders else bb
    fs = FeatureStore(world / "cache").get(tuned, ds, name="test") if tuned is not bb else base_fs
    if tuned is not bb:  # the encoder really changed: base features would give other logits
        assert not torch.allclose(fs.features, base_fs.features, atol=1e-4)
    _check_exports(art, tmp_path, ds, predict_logits(m, fs).numpy())
    doc = json.loads((tmp_path / "onnx" / "preprocess.json").read_text())
    assert doc["fingerprint"] == tuned.fingerprint


def test_cocoop_export_says_why_not(world, tmp_path):
    art = _fit(world, "cocoop", ["epochs=1"])
    r = runner.invoke(app, ["export", str(art), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code != 0 and "conditions its prompts on each image" in str(r.exception)
    assert not (tmp_path / "m.onnx").exists()


def test_predict_onnx_writes_the_same_top1_as_kshot(world, tmp_path):
    art = _fit(world, "lpp")
    model = tmp_path / "m.onnx"
    _ok(runner.invoke(app, ["export", str(art), "--format", "onnx", "-o", str(model)]))
    a, b = tmp_path / "onnx.csv", tmp_path / "torch.csv"
    _ok(runner.invoke(app, ["predict", str(world / "folder"), "--onnx", str(model), "-o", str(a)]))
    _ok(runner.invoke(app, ["predict", str(world / "folder"), "-a", str(art), "-o", str(b),
                            "--cache", str(world / "cache")]))
    top1 = [[line.split(",")[:2] for line in p.read_text().splitlines()] for p in (a, b)]
    assert top1[0] == top1[1] and len(top1[0]) > 10


def test_transductive_and_tower_methods_say_why(world):
    from kshot.methods import create

    for name, words in (("inmap", "transductive"), ("tda", "transductive"),
                        ("cocoop", "conditions its prompts on each image")):
        m = create(name)
        m.fitted_ = True
        with pytest.raises(ExportError, match=words):
            m.exportable_head()


def test_export_of_a_fitted_tda_run_is_refused_with_the_reason(world, tmp_path):
    art = _fit(world, "tda")
    r = runner.invoke(app, ["export", str(art), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code != 0 and "transductive" in str(r.exception), r.output
    assert not list(tmp_path.iterdir())  # nothing written


def test_sidecar_of_another_export_is_refused(world, tmp_path):
    from kshot.deploy.onnx_predict import OnnxClassifier
    from kshot.errors import ConfigError

    art = _fit(world, "lpp")
    model = tmp_path / "m.onnx"
    _ok(runner.invoke(app, ["export", str(art), "--format", "onnx", "-o", str(model)]))
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ConfigError, match="checksum"):
        OnnxClassifier.load(model)
    r = runner.invoke(app, ["export", str(art), "--format", "tflite", "-o", str(tmp_path / "x")])
    assert r.exit_code != 0 and "onnx" in str(r.exception)
