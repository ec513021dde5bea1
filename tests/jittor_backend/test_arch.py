"""The CLIP layout read off shapes, the exact key set of the Jittor forward, and key-mismatch messages."""

from __future__ import annotations

import pytest

from kshot.errors import CheckpointError
from kshot.jittor_backend.arch import check_keys, expected_shapes, layout_from_dict, read_layout, shapes_of
from tests.jittor_backend.helpers import TEXT_CFG, VIT_CFG


def _params(backbone) -> dict[str, tuple[int, ...]]:
    """Shapes of everything in the state dict the forward reads (drops logit_scale and BN counters)."""
    return {k: v for k, v in shapes_of(backbone.model.state_dict()).items()
            if k != "logit_scale" and not k.endswith("num_batches_tracked")}


def test_vit_layout_and_keys_match_open_clip(vit_backbone):
    shapes = _params(vit_backbone)
    lay = read_layout(shapes, vision_heads=4, text_heads=2)
    v = VIT_CFG["vision_cfg"]
    assert (lay.vision, lay.image_size, lay.patch_size, lay.vision_width, lay.vision_layers) == (
        "vit", v["image_size"], v["patch_size"], v["width"], v["layers"])
    assert (lay.context_length, lay.vocab_size, lay.text_width, lay.embed_dim) == (
        TEXT_CFG["context_length"], TEXT_CFG["vocab_size"], TEXT_CFG["width"], VIT_CFG["embed_dim"])
    assert expected_shapes(lay) == shapes  # every key, every shape, nothing extra
    check_keys(shapes_of(vit_backbone.model.state_dict()), lay)  # logit_scale is an allowed extra


def test_resnet_layout_and_keys_match_open_clip(rn_backbone):
    shapes = _params(rn_backbone)
    lay = read_layout(shapes)
    assert (lay.vision, lay.vision_layers, lay.vision_width, lay.image_size) == ("resnet", (1, 2, 1, 1), 16, 64)
    assert lay.vision_heads == 16 * 32 // 64  # open_clip/OpenAI default for ModifiedResNet
    assert expected_shapes(lay) == shapes


def test_toy_layout_round_trips_through_a_job_dict(toy_backbone):
    lay = read_layout(_params(toy_backbone), vision_heads=4, text_heads=4, activation="gelu")
    assert layout_from_dict(lay.to_dict()) == lay


def test_renamed_and_reshaped_keys_are_named(vit_backbone):
    shapes = _params(vit_backbone)
    lay = read_layout(shapes)
    bad = dict(shapes)
    prefix = "visual.transformer.resblocks.1.attn."
    bad[prefix + "qkv.weight"] = bad.pop(prefix + "in_proj_weight")
    bad["ln_final.bias"] = (7,)
    with pytest.raises(CheckpointError) as e:
        check_keys(bad, lay, "my.pkl")
    msg = str(e.value)
    assert "my.pkl" in msg and "1 missing: visual.transformer.resblocks.1.attn.in_proj_weight" in msg
    assert "1 unexpected: visual.transformer.resblocks.1.attn.qkv.weight" in msg
    assert "ln_final.bias [7] (expected [64])" in msg


def test_vit_keys_checked_against_a_resnet_layout_list_the_differences(vit_backbone, rn_backbone):
    lay = read_layout(_params(rn_backbone))
    with pytest.raises(CheckpointError, match=r"missing: .*visual\.attnpool.*\| \d+ unexpected: .*visual\."):
        check_keys(_params(vit_backbone), lay)


def test_another_architecture_is_refused_with_its_key_names():
    hf_like = {"vision_model.embeddings.patch_embedding.weight": (768, 3, 32, 32),
               "text_model.embeddings.token_embedding.weight": (49408, 512)}
    with pytest.raises(CheckpointError, match=r"neither 'visual\.proj'.*text_model\.embeddings\.token_embedding"):
        read_layout(hf_like)


def test_gaps_and_bad_grids_are_reported(vit_backbone):
    shapes = {k: v for k, v in _params(vit_backbone).items() if ".resblocks.0." not in k or k.startswith("visual")}
    with pytest.raises(CheckpointError, match="gaps"):
        read_layout(shapes)
    odd = dict(_params(vit_backbone), **{"visual.positional_embedding": (18, 64)})
    with pytest.raises(CheckpointError, match="not a square grid"):
        read_layout(odd)


def test_unknown_activation_is_refused(vit_backbone):
    with pytest.raises(CheckpointError, match="activation"):
        read_layout(_params(vit_backbone), activation="relu")
