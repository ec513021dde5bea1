"""`kshot export --format jittor`: method artifacts and continual checkpoints as `jt.save`-style `.pkl` files.

What a Jittor user gets is checked the way `jt.load` reads it (plain `pickle.loads` of the payload after the SHA-1
trailer), and the exported arrays are loaded back into a fresh kshot method to show nothing was lost.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kshot.backbones.jittor_pkl import read_jittor_artifact, strip_trailer
from kshot.cli import app
from kshot.errors import CheckpointError, ConfigError
from kshot.interop.export import export_jittor, method_to_jittor_dict
from kshot.jittor_backend.runtime import jittor_available
from kshot.methods import create
from kshot.methods.base import config_to_dict

from ..methods.test_contract import make_task


def jt_load(path: Path) -> dict:
    """What `jt.load` does with a file that ends in Jittor's trailer."""
    return pickle.loads(strip_trailer(path.read_bytes()))


@pytest.mark.parametrize("name", ["tip_adapter", "lpp", "linear_probe"])
def test_method_export_holds_every_tensor_and_reloads_to_the_same_logits(name: str, tmp_path: Path) -> None:
    task = make_task()
    method = create(name).fit(task)
    res = export_jittor(tmp_path / f"{name}.pkl", source=method.save(tmp_path / name))
    assert res.kind == "method" and res.arrays == len(method.state_dict())
    doc = jt_load(res.path)
    assert doc["kshot_format"] == "method/1" and doc["method"] == name
    assert json.loads(doc["config"]) == json.loads(json.dumps(config_to_dict(method.config)))
    for key, tensor in method.state_dict().items():
        assert isinstance(doc[key], np.ndarray) and doc[key].shape == tuple(tensor.shape), key
        np.testing.assert_allclose(doc[key], tensor.float().numpy(), rtol=0, atol=0)
    fresh = create(name, **json.loads(doc["config"]))
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in doc.items() if isinstance(v, np.ndarray)},
                          json.loads(doc["meta"]))
    fresh.fitted_ = True
    x = task.unlabeled.features
    assert torch.equal(fresh.logits(x).argmax(1), method.logits(x).argmax(1))
    assert read_jittor_artifact(res.path)["method"] == name  # kshot's own safe reader agrees


def test_continual_export_has_masks_heads_and_meta(tmp_path: Path) -> None:
    from kshot.continual.config import PhaseConfig
    from kshot.continual.sequence import run_method

    from ..continual.conftest import digits_config

    cfg = digits_config("tiny_vgg", limit=40, train=PhaseConfig(1, 0.1, 0), retrain=PhaseConfig(0, 0.03, 0))
    run_method(cfg, tmp_path / "run", "packnet")
    res = export_jittor(tmp_path / "packnet.pkl", source=tmp_path / "run" / "packnet")
    doc = jt_load(res.path)
    assert doc["kshot_format"] == "continual/1" and doc["method"] == "packnet"
    masks = {k: v for k, v in doc.items() if k.startswith("mask.")}
    heads = sorted(k for k in doc if k.startswith("head.") and k.endswith(".weight"))
    assert masks and all(m.dtype == np.uint8 for m in masks.values())
    owners = set(np.unique(np.concatenate([m.ravel() for m in masks.values()])).tolist())
    assert {2, 3, 4} <= owners, f"every task owns weights: {owners}"  # owner k + 2 for task k
    assert [h.split(".")[1] for h in heads] == sorted(t.name for t in cfg.tasks)
    for name, mask in masks.items():
        w = doc[f"backbone.{name[len('mask.'):]}.weight"]
        assert w.shape == mask.shape and np.all(w[mask == 0] == 0), name  # free weights are zero
    assert json.loads(doc["meta"])["learner"]["tasks"] == [t.name for t in cfg.tasks]


def test_export_refuses_unknown_or_unfitted_sources(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a fitted method folder"):
        export_jittor(tmp_path / "x.pkl", source=tmp_path / "empty")
    with pytest.raises(ConfigError, match="no such file"):
        export_jittor(tmp_path / "x.pkl", source=tmp_path / "missing")
    with pytest.raises(ConfigError, match="exactly one"):
        export_jittor(tmp_path / "x.pkl")
    with pytest.raises(CheckpointError, match="not fitted"):
        method_to_jittor_dict(create("tip_adapter"))
    assert not (tmp_path / "x.pkl").exists()


def test_cli_export_method(tmp_path: Path) -> None:
    art = create("tip_adapter").fit(make_task()).save(tmp_path / "tip")
    out = tmp_path / "tip.pkl"
    result = CliRunner().invoke(app, ["export", str(art), "--format", "jittor", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tip_adapter" in jt_load(out)["method"] and "jt.load" in result.output
    bad = CliRunner().invoke(app, ["export", str(art), "--format", "tflite", "--out", str(out)])
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError) and "jittor" in str(bad.exception)
    # onnx/torchscript are formats now (kshot.deploy): they need a `kshot fit` folder, and a bare artifact says so
    bare = CliRunner().invoke(app, ["export", str(art), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert bare.exit_code != 0 and "task.json" in str(bare.exception)


def test_backbone_export_round_trips_through_the_jclip_reader(tmp_path: Path) -> None:
    """`kshot export --backbone`: JCLIP-named float32 arrays that kshot's own .pkl loader turns back into the same
    model (an OpenAI-layout CLIP: QuickGELU, 64-channel heads, which is what JCLIP infers from shapes)."""
    from kshot.backbones import load_backbone
    from kshot.backbones.jittor_pkl import read_jittor_pkl

    from ..backbones.conftest import VIT_CFG, build_clip
    from ..jittor_backend.helpers import as_backbone

    bb = as_backbone(build_clip(VIT_CFG), "test:vit")
    res = export_jittor(tmp_path / "vit.pkl", backbone=bb)
    state = read_jittor_pkl(res.path)
    assert res.kind == "backbone" and {"visual.conv1.weight", "token_embedding.weight", "text_projection"} <= set(state)
    assert all(v.dtype == np.float32 for v in state.values())
    assert json.loads((tmp_path / "vit.pkl.layout.json").read_text())["text_heads"] == 1
    again = load_backbone(str(res.path), device="cpu")
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(1, 999, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again.model.encode_image(x), bb.model.encode_image(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again.model.encode_text(tokens), bb.model.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_toy_clip_export_warns_that_jclip_cannot_infer_its_layout(tmp_path: Path, caplog) -> None:
    out = tmp_path / "toy.pkl"
    with caplog.at_level("WARNING", logger="kshot.interop.export"):
        r = CliRunner().invoke(app, ["export", "--backbone", "toy:clip", "--out", str(out)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    layout = json.loads((tmp_path / "toy.pkl.layout.json").read_text())
    assert layout["activation"] == "gelu" and layout["text_heads"] == 4
    assert any("not in OpenAI's layout" in rec.getMessage() and "4 text heads" in rec.getMessage()
               for rec in caplog.records)


JT_LOAD = r"""
import sys
import numpy as np
import jittor as jt
for path in sys.argv[1:]:
    want = np.load(path + ".npz")
    got = jt.load(path)
    assert isinstance(got, dict), type(got)
    for k in want.files:
        v = got[k]
        v = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        assert v.dtype == want[k].dtype and np.array_equal(v, want[k]), (path, k)
    print(path, len(got), "entries", "method" in got and got["method"])
"""


@pytest.mark.skipif(jittor_available() is not None, reason="no Jittor interpreter ($KSHOT_JITTOR_PYTHON)")
def test_real_jittor_jt_load_reads_every_export(tmp_path: Path) -> None:
    """The files are what Jittor users get: `jt.load` in a Jittor interpreter returns the same arrays."""
    import os
    import subprocess

    from kshot.backbones import load_backbone
    from kshot.continual.config import PhaseConfig
    from kshot.continual.sequence import run_method
    from kshot.jittor_backend.runtime import find_python, jittor_env

    from ..continual.conftest import digits_config

    run_method(digits_config("tiny_vgg", limit=40, train=PhaseConfig(1, 0.1, 0), retrain=PhaseConfig(0, 0.03, 0)),
               tmp_path / "run", "packnet")
    sources = {"lpp.pkl": dict(source=create("lpp").fit(make_task()).save(tmp_path / "lpp")),
               "packnet.pkl": dict(source=tmp_path / "run" / "packnet"),
               "toy.pkl": dict(backbone=load_backbone("toy:clip"))}
    paths = []
    for name, kw in sources.items():
        res = export_jittor(tmp_path / name, **kw)
        doc = jt_load(res.path)
        np.savez(str(res.path) + ".npz", **{k: v for k, v in doc.items() if isinstance(v, np.ndarray)})
        paths.append(str(res.path))
    env = {**os.environ, **jittor_env("cpu")}
    r = subprocess.run([find_python(), "-c", JT_LOAD, *paths], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lpp.pkl" in r.stdout and "packnet.pkl" in r.stdout and "toy.pkl" in r.stdout


def test_export_names_the_head_the_method_class_declares():
    from kshot.experiment import zeroshot_on
    from kshot.interop.export import method_to_jittor_dict
    from kshot.methods import METHODS

    doc = method_to_jittor_dict(zeroshot_on(["a", "b"], torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)))
    assert json.loads(doc["meta"])["jittor_head"] == "zeroshot"
    heads = {e.name: e.obj.jittor_head for e in METHODS if e.obj.jittor_head}
    assert heads == {"zeroshot": "zeroshot", "linear_probe": "linear", "lpp": "lpp", "tip_adapter": "tip",
                     "tip_adapter_f": "tip", "ape": "ape", "gda": "linear", "zs_lp": "linear", "clap": "linear"}
    # the six heads of kshot.jittor_backend.heads; GDA, ZS-LP and CLAP are linear heads (weight, bias)


@pytest.mark.parametrize("name", ["gda", "zs_lp", "clap"])
def test_linear_frontier_heads_export_as_weight_and_bias(name: str, tmp_path: Path) -> None:
    """GDA, ZS-LP and CLAP fit one linear head: the exported weight + bias alone reproduce kshot's logits."""
    task = make_task()
    method = create(name, **({"epochs": 5} if name != "gda" else {})).fit(task)
    res = export_jittor(tmp_path / f"{name}.pkl", source=method.save(tmp_path / name))
    doc = read_jittor_artifact(res.path)
    x = task.unlabeled.features.numpy()
    np.testing.assert_allclose(x @ doc["weight"].T + doc["bias"], method.logits(task.unlabeled.features).numpy(),
                               rtol=1e-5, atol=1e-4)
