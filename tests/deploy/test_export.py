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


def _fit(world, method):
    art = world / f"run_{method}"
    if not art.exists():
        _ok(runner.invoke(app, ["fit", str(world / "folder"), "-m", method, "-k", "2", "-o", str(art),
                                "--cache", str(world / "cache")]))
    return art


@pytest.mark.parametrize("method", EXPORTABLE)
def test_onnx_and_torchscript_match_kshot(world, kshot_logits, tmp_path, method):
    from kshot.deploy.onnx_predict import OnnxClassifier
    from kshot.features.decode import load_crop
    from kshot.methods import load
    from kshot.experiment import predict_logits

    ds, fs = kshot_logits
    art = _fit(world, method)
    expected = predict_logits(load(art), fs).numpy()
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

    for name, words in (("inmap", "transductive"), ("tda", "transductive"), ("coop", "towers")):
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
