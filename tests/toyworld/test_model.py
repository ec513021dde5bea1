"""The tiny CLIP's architecture, trimmed text encoding and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.errors import ConfigError
from kshot.toyworld.model import (
    ToyClipCfg,
    ToyPreprocess,
    build_toy_clip,
    encode_text_trimmed,
    images_to_tensor,
    toy_preprocess_cfg,
)
from kshot.toyworld.pretrain import make_tokenizer


@pytest.fixture(scope="module")
def model_and_tok():
    tok = make_tokenizer(32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_toy_clip(ToyClipCfg(vocab_size=tok.vocab_size)).eval()
    return model, tok


def test_sizes(model_and_tok) -> None:
    model, tok = model_and_tok
    n = sum(p.numel() for p in model.parameters())
    assert 1.3e6 < n < 1.7e6  # ~1.5M parameters (prototype: 1.46M with a 43-token vocab, ctx 20)
    img = model.encode_image(torch.zeros(2, 3, 32, 32))
    txt = model.encode_text(tok(["a red star", "zorvik"]))
    assert img.shape == (2, 128) and txt.shape == (2, 128)


def test_trimmed_text_encoding_matches_full(model_and_tok) -> None:
    model, tok = model_and_tok
    tokens = tok(["a red star.", "its shape is a star, its color is red, its size is small.", "a zorvik"])
    with torch.no_grad():
        full = model.encode_text(tokens)
        trimmed = encode_text_trimmed(model, tokens)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
    # the pooled feature is the EOT position's: changing a padding token changes nothing
    assert not torch.allclose(full[0], full[1])


def test_preprocess_resizes_converts_and_normalises() -> None:
    cfg = toy_preprocess_cfg(32)
    pre = ToyPreprocess(cfg)
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x = pre(Image.fromarray(arr))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x, images_to_tensor(arr[None], cfg)[0])
    expected = (arr[0, 0, 0] / 255.0 - cfg.mean[0]) / cfg.std[0]
    assert abs(float(x[0, 0, 0]) - expected) < 1e-5
    assert pre(Image.fromarray(arr).resize((64, 48)).convert("L")).shape == (3, 32, 32)
    assert pre(Image.fromarray(arr).convert("RGBA")).shape == (3, 32, 32)


def test_cfg_rejects_unknown_keys() -> None:
    assert ToyClipCfg.from_dict(ToyClipCfg().to_dict()) == ToyClipCfg()
    with pytest.raises(ConfigError, match="unknown"):
        ToyClipCfg.from_dict({"width": 3})
