"""The toy CLIP round-trips through a Jittor export: `kshot export --backbone toy:clip -o toy.pkl`, then `-b toy.pkl`
rebuilds it from the layout sidecar (sizes, tokenizer vocabulary, preprocessing) with the same weights (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kshot.backbones import load_backbone
from kshot.cli import app
from tests.interop.test_predict import _toy_folder, _top5
from tests.jittor_backend.helpers import needs_jittor


def _run(*args: str) -> None:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output + repr(r.exception)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "toy.pkl"
    _run("export", "--backbone", "toy:clip", "-o", str(out))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _toy_folder(tmp_path_factory.mktemp("toy") / "imgs")


def test_sidecar_carries_the_toy_tokenizer_and_the_file_loads_as_the_toy_clip(exported: Path) -> None:
    toy = load_backbone("toy:clip")
    sidecar = json.loads(Path(str(exported) + ".layout.json").read_text())
    assert sidecar["toy"]["tokenizer"]["vocab"] == toy.tokenizer.vocab
    bb = load_backbone(str(exported))
    assert bb.fingerprint == toy.fingerprint and bb.preprocess_cfg == toy.preprocess_cfg
    names = ["brontle", "a photo of a red circle"]
    assert torch.equal(bb.tokenizer(names), toy.tokenizer(names))
    with torch.no_grad():
        got, want = bb.model.encode_text(bb.tokenizer(names)), toy.model.encode_text(toy.tokenizer(names))
    torch.testing.assert_close(got, want)
    assert bb.logit_scale == pytest.approx(toy.logit_scale)


def test_predict_with_the_exported_file_equals_toy_clip(exported: Path, data: Path, tmp_path: Path) -> None:
    common = ["predict", str(data), "--cache", str(tmp_path / "cache")]
    _run(*common, "-b", str(exported), "-o", str(tmp_path / "pkl.csv"))
    _run(*common, "-b", "toy:clip", "-o", str(tmp_path / "toy.csv"))
    got, want = _top5(tmp_path / "pkl.csv"), _top5(tmp_path / "toy.csv")
    assert len(got) == 12 and got == want


def test_a_sidecar_without_toy_section_keeps_shape_inference(exported: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(exported.read_bytes())
    doc = json.loads(Path(str(exported) + ".layout.json").read_text())
    doc.pop("toy")
    Path(str(plain) + ".layout.json").write_text(json.dumps(doc))
    bb = load_backbone(str(plain))  # inferred open_clip architecture (OpenAI's conventions), not the toy CLIP
    assert bb.arch != "toy-clip"


@needs_jittor
def test_jittor_backend_runs_the_exported_toy_clip(exported: Path, data: Path, tmp_path: Path) -> None:
    common = ["predict", str(data), "-b", str(exported), "--cache", str(tmp_path / "cache")]
    _run(*common, "-o", str(tmp_path / "torch.csv"))
    _run(*common, "-o", str(tmp_path / "jittor.csv"), "--backend", "jittor")
    assert _top5(tmp_path / "torch.csv") == _top5(tmp_path / "jittor.csv")
