"""LoRA adapters on open_clip attention: zero-B identity, merge equality, gradients only on adapters, official
formula parity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kshot.errors import ConfigError
from kshot.tuning.lora import (LoraAttention, adapter_state, attention_paths, inject_lora, lora_parameters,
                               merged_state_dict)
from tests.methods.prompting.conftest import make_toy_backbone


def _model(seed: int = 0) -> nn.Module:
    import copy

    return copy.deepcopy(make_toy_backbone(seed).model)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    tokens = make_toy_backbone(0).tokenizer(["a red star", "a blue circle"])
    return images, tokens


def _randomise_b(layers: dict[str, LoraAttention], seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers.values():
            for p in ("q", "k", "v"):
                getattr(layer, f"{p}_B").copy_(torch.randn(getattr(layer, f"{p}_B").shape, generator=g) * 0.3)


def test_zero_b_is_the_base_model_exactly() -> None:
    base, lora = _model(), _model()
    inject_lora(lora, attention_paths(lora), rank=2, alpha=1, dropout=0.25)
    images, tokens = _inputs()
    with torch.no_grad():
        assert torch.equal(base.encode_image(images), lora.encode_image(images))
        assert torch.equal(base.encode_text(tokens), lora.encode_text(tokens))


def test_merged_checkpoint_equals_adapter_model() -> None:
    base, lora = _model(), _model()
    layers = inject_lora(lora, attention_paths(lora), rank=2, alpha=1, dropout=0.25)
    _randomise_b(layers)
    merged = _model()
    merged.load_state_dict(merged_state_dict(base.state_dict(), adapter_state(layers), layers[next(iter(layers))]
                                             .scaling))
    images, tokens = _inputs()
    with torch.no_grad():
        a, m = lora.encode_image(images), merged.encode_image(images)
        assert not torch.allclose(a, base.encode_image(images), atol=1e-3)  # the adapters do change the model
        assert torch.allclose(a, m, atol=1e-5)
        assert torch.allclose(lora.encode_text(tokens), merged.encode_text(tokens), atol=1e-5)


def test_only_adapter_parameters_receive_gradients() -> None:
    lora = _model()
    layers = inject_lora(lora, attention_paths(lora), rank=2, alpha=1, dropout=0.25)
    for p in lora.parameters():
        if not any(p is q for q in lora_parameters(layers)):
            p.requires_grad_(False)
    lora.train()
    images, tokens = _inputs()
    (lora.encode_image(images).sum() + lora.encode_text(tokens).sum()).backward()
    trainable = {id(p) for p in lora_parameters(layers)}
    for name, p in lora.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert all(getattr(layer, "q_A").grad is not None for layer in layers.values())


def _official_projection(x, w, b, a, bb, r, alpha, drop_mask):
    """CLIP-LoRA's LinearLoRA.forward for one projection, as written there: original + (drop(x) @ (B@A)^T) * s."""
    scaling = alpha / math.sqrt(r)
    original = x @ w.T + b
    xd = x * drop_mask
    return original + (xd @ (bb @ a).T) * scaling


@pytest.mark.parametrize("fused", [True, False])
def test_dropout_path_matches_the_official_formula(fused: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    layer = LoraAttention(mha, rank=2, alpha=1, dropout=0.5, generator=torch.Generator().manual_seed(0), fused=fused)
    _randomise_b({"x": layer})
    layer.train()
    x = torch.randn(2, 5, 8)
    torch.manual_seed(3)
    out, _ = layer(x, x, x, need_weights=False)
    torch.manual_seed(3)
    keep = nn.functional.dropout(torch.ones_like(x), 0.5, training=True)  # same RNG draw as layer.drop
    e = 8
    q, k, v = (_official_projection(x, mha.in_proj_weight[i * e:(i + 1) * e], mha.in_proj_bias[i * e:(i + 1) * e],
                                    getattr(layer, f"{p}_A"), getattr(layer, f"{p}_B"), 2, 1.0, keep)
               for i, p in enumerate("qkv"))
    heads = []
    for h in range(2):
        sl = slice(h * 4, (h + 1) * 4)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 2.0, dim=-1)
        heads.append(att @ v[..., sl])
    want = torch.cat(heads, dim=-1) @ mha.out_proj.weight.T + mha.out_proj.bias
    assert torch.allclose(out, want, atol=1e-5)


def test_backbone_without_attention_is_a_clear_error() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ConfigError, match="attention layers"):
        attention_paths(cnn)


def test_every_layer_of_both_towers_is_adapted() -> None:
    model = _model()
    paths = attention_paths(model)
    n_attn = sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert len(paths) == n_attn and any(p.startswith("visual.") for p in paths) and any(
        p.startswith("transformer.") for p in paths)
