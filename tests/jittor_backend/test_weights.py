"""Backbone -> JCLIP-named float32 arrays + layout: facts read from the torch modules, refusals, fp16 notes."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from kshot.backbones.jittor_pkl import read_jittor_pkl, save_jittor_pkl
from kshot.errors import CheckpointError
from kshot.jittor_backend.weights import check_clip_state, jclip_state, numpy_state
from tests.helpers import tiny_backbone
from tests.jittor_backend.helpers import RN_CFG, as_backbone


def test_toy_clip_converts_with_its_own_heads_and_activation(toy_backbone):
    state, lay = jclip_state(toy_backbone)
    model_state = toy_backbone.model.state_dict()
    assert set(state) == set(model_state) - {"attn_mask"}
    assert all(v.dtype == np.float32 for v in state.values())
    assert np.array_equal(state["visual.proj"], model_state["visual.proj"].numpy())
    # toy CLIP: 32-wide vision heads (128 / 32 = 4), 4 text heads, open_clip's default exact GELU
    assert (lay.vision_heads, lay.text_heads, lay.activation) == (4, 4, "gelu")
    assert lay.vision == "vit" and lay.image_size == 32 and lay.patch_size == 8


def test_vit_quickgelu_and_resnet_heads(vit_backbone, rn_backbone):
    _, vit = jclip_state(vit_backbone)
    assert (vit.activation, vit.vision_heads, vit.text_heads) == ("quick_gelu", 64 // 16, 2)
    _, rn = jclip_state(rn_backbone)
    assert rn.vision == "resnet" and rn.activation == "gelu"
    assert rn.vision_heads == rn_backbone.model.visual.attnpool.num_heads
    assert rn.bn_eps == rn_backbone.model.visual.bn1.eps


def test_weights_file_round_trips(tmp_path, rn_backbone):
    state, lay = jclip_state(rn_backbone)
    save_jittor_pkl(state, tmp_path / "rn.pkl")
    back = read_jittor_pkl(tmp_path / "rn.pkl")
    assert set(back) == set(state) and all(np.array_equal(back[k], state[k]) for k in state)
    assert check_clip_state(back, vision_heads=lay.vision_heads, text_heads=lay.text_heads,
                            activation=lay.activation) == lay


def test_fp16_model_is_converted_with_a_note(caplog, vit_backbone):
    half = copy.deepcopy(vit_backbone.model).half()
    with caplog.at_level(logging.WARNING, logger="kshot.jittor_backend.weights"):
        state, _ = jclip_state(half)
    assert all(v.dtype == np.float32 for v in state.values())
    assert np.array_equal(state["visual.proj"], half.visual.proj.detach().float().numpy())
    assert "float16 arrays to float32" in caplog.text


def test_numpy_state_converts_fp16_arrays_and_drops_integers(caplog):
    raw = {"a": np.ones(3, np.float16), "b": np.zeros(2, np.float32), "vocab_size": np.array(10),
           "bn.num_batches_tracked": torch.tensor(5), "c": torch.ones(2, dtype=torch.bfloat16)}
    with caplog.at_level(logging.WARNING):
        out = numpy_state(raw, "x.pkl")
    assert set(out) == {"a", "b", "c"} and all(v.dtype == np.float32 for v in out.values())
    assert "x.pkl: converted 1 bfloat16, 1 float16 arrays" in caplog.text
    with pytest.raises(CheckpointError, match="'d' is a list"):
        numpy_state({"d": [1.0]})


def test_image_only_backbone_is_refused():
    with pytest.raises(CheckpointError, match="not a CLIP .*lacks .*token_embedding.*image-only"):
        jclip_state(tiny_backbone())


def test_unsupported_vit_variants_are_refused_by_name():
    import open_clip

    cfg = {**RN_CFG, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8,
                                    "pool_type": "avg", "no_ln_pre": True}}
    model = open_clip.CLIP(**cfg).eval()
    with pytest.raises(CheckpointError, match="pool_type='avg', no ln_pre"):
        jclip_state(as_backbone(model, "test:avgpool"))


def test_state_with_foreign_keys_names_them(vit_backbone):
    state, _ = jclip_state(vit_backbone)
    state["visual.extra_adapter.weight"] = np.zeros(3, np.float32)
    del state["visual.ln_post.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing: visual\.ln_post\.bias \| 1 unexpected: "
                                              r"visual\.extra_adapter\.weight"):
        check_clip_state(state, "adapted.pkl")
