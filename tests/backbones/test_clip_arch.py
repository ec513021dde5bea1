"""Architecture inference from OpenAI-layout state dict shapes."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from kshot.backbones.clip_arch import describe_arch, infer_clip_arch, match_builtin
from kshot.errors import CheckpointError

from .conftest import RN_CFG, VIT_CFG


def _meta_state(cfg: dict[str, Any], quick_gelu: bool = True) -> dict[str, torch.Tensor]:
    """State dict shapes of open_clip.CLIP(cfg) without allocating weights."""
    import open_clip

    with torch.device("meta"):
        return open_clip.CLIP(**copy.deepcopy(cfg), quick_gelu=quick_gelu).state_dict()


def test_small_vit(vit_model: torch.nn.Module) -> None:
    assert infer_clip_arch(vit_model.state_dict()) == VIT_CFG


def test_small_modified_resnet(rn_model: torch.nn.Module) -> None:
    assert infer_clip_arch(rn_model.state_dict()) == RN_CFG


def test_numpy_state_and_non_default_mlp_ratio() -> None:
    cfg = copy.deepcopy(VIT_CFG)
    cfg["vision_cfg"]["mlp_ratio"] = 2.0
    cfg["text_cfg"] = {**cfg["text_cfg"], "width": 128, "heads": 2, "mlp_ratio": 3.0, "context_length": 8}
    state = {k: np.empty(tuple(v.shape), np.float16) for k, v in _meta_state(cfg).items()}
    assert infer_clip_arch(state) == cfg


def test_missing_keys_name_the_problem(vit_model: torch.nn.Module) -> None:
    state = dict(vit_model.state_dict())
    del state["text_projection"]
    with pytest.raises(CheckpointError, match="missing 'text_projection'"):
        infer_clip_arch(state)
    with pytest.raises(CheckpointError, match="neither 'visual.proj'"):
        infer_clip_arch({"fc.weight": torch.zeros(2, 2)})


def test_gaps_and_inconsistent_shapes_are_rejected(vit_model: torch.nn.Module) -> None:
    state = dict(vit_model.state_dict())
    gapped = {k: v for k, v in state.items() if not k.startswith("transformer.resblocks.0.")}
    with pytest.raises(CheckpointError, match="gaps"):
        infer_clip_arch(gapped)
    bad_grid = {**state, "visual.positional_embedding": torch.zeros(18, 64)}
    with pytest.raises(CheckpointError, match="not a square grid"):
        infer_clip_arch(bad_grid)
    mismatch = {**state, "visual.proj": torch.zeros(64, 16)}
    with pytest.raises(CheckpointError, match="differs from text embedding width"):
        infer_clip_arch(mismatch)


def test_openai_torchscript_metadata_must_agree(vit_model: torch.nn.Module) -> None:
    state = dict(vit_model.state_dict())
    meta = {"input_resolution": torch.tensor(64), "context_length": torch.tensor(16), "vocab_size": torch.tensor(1000)}
    ok = {**state, **meta}
    assert infer_clip_arch(ok) == VIT_CFG
    with pytest.raises(CheckpointError, match="input_resolution=224"):
        infer_clip_arch({**ok, "input_resolution": torch.tensor(224)})


def test_describe_arch_names_unknown_configs() -> None:
    assert describe_arch(VIT_CFG, True) == "ViT-w64-L2-p16-i64-t64x2-c16-v1000-e32-quickgelu"
    assert describe_arch(RN_CFG, False).startswith("RN-w16-L1.1.1.1-i64")


@pytest.mark.slow
@pytest.mark.parametrize("builtin", ["ViT-B-32", "RN101"])
def test_full_size_openai_architectures(builtin: str) -> None:
    import open_clip

    cfg = open_clip.get_model_config(f"{builtin}-quickgelu")
    state = _meta_state({k: v for k, v in cfg.items() if k != "quick_gelu"})
    inferred = infer_clip_arch(state)
    assert inferred["embed_dim"] == 512 and inferred["vision_cfg"]["image_size"] == 224
    assert inferred["text_cfg"]["heads"] == 8 and inferred["text_cfg"]["vocab_size"] == 49408
    assert match_builtin(inferred, quick_gelu=True) == f"{builtin}-quickgelu"
    assert match_builtin(inferred, quick_gelu=False) == builtin
