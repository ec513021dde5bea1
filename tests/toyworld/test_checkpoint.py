"""Saving and loading toy checkpoints (fp16 safetensors + JSON) and the `Backbone` wrapper."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from kshot.backbones.base import Backbone
from kshot.errors import CheckpointError
from kshot.toyworld.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_toy_clip, load_toy_model, save_toy_clip
from kshot.toyworld.model import ToyClipCfg, build_toy_clip, toy_preprocess_cfg
from kshot.toyworld.pretrain import make_tokenizer

_SMALL = ToyClipCfg(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1,
                    text_heads=2, embed_dim=32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = make_tokenizer(32)
    cfg = ToyClipCfg(**{**_SMALL.to_dict(), "vocab_size": tok.vocab_size})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = build_toy_clip(cfg).eval()
    out = tmp_path_factory.mktemp("toy")
    save_toy_clip(out, model, tok, cfg, toy_preprocess_cfg(32), {"world": {"seed": 0}, "metrics": {"zs": 0.5}})
    return out, model, tok


def test_round_trip_keeps_weights_in_fp16_precision(saved) -> None:
    out, model, tok = saved
    loaded, tok2, pre, cfg = load_toy_model(out)
    assert tok2.vocab == tok.vocab and cfg["metrics"] == {"zs": 0.5}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = model.encode_image(x), loaded.encode_image(x)
        ta, tb = model.encode_text(tok(["a red star"])), loaded.encode_text(tok2(["a red star"]))
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ta, tb, atol=2e-2, rtol=2e-2)
    assert all(v.dtype == torch.float32 for v in loaded.state_dict().values())


def test_load_toy_clip_is_a_backbone(saved) -> None:
    out, model, tok = saved
    bb = load_toy_clip(out)
    assert isinstance(bb, Backbone) and bb.has_text and bb.embed_dim == 32 and bb.arch == "toy-clip"
    assert bb.spec == "toy:clip" and bb.preprocess_cfg.image_size == 32
    assert bb.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-3)
    assert bb.fingerprint == load_toy_clip(out).fingerprint and len(bb.fingerprint) == 16
    x = bb.preprocess(Image.new("RGB", (40, 40), (200, 10, 10)))
    assert x.shape == (3, 32, 32)
    assert bb.encode_image(x[None]).shape == (1, 32)
    assert bb.encode_text(bb.tokenize(["a zorvik", "a red star"])).shape == (2, 32)


def test_missing_or_broken_checkpoints_raise(saved, tmp_path) -> None:
    out, _, _ = saved
    with pytest.raises(CheckpointError, match="not found"):
        load_toy_model(tmp_path)
    (tmp_path / CONFIG_NAME).write_text((out / CONFIG_NAME).read_text())
    with pytest.raises(CheckpointError, match="weights not found"):
        load_toy_model(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_toy_model(tmp_path)
    cfg = json.loads((out / CONFIG_NAME).read_text())
    cfg["model"]["text_layers"] = 2
    (tmp_path / CONFIG_NAME).write_text(json.dumps(cfg))
    (tmp_path / WEIGHTS_NAME).write_bytes((out / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="do not match"):
        load_toy_model(tmp_path)
