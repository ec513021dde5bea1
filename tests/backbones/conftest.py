"""Small real-architecture CLIP models (narrow ViT, narrow ModifiedResNet) saved in every supported checkpoint format.

Weights are rounded to fp16-representable values first, so the fp16 Jittor .pkl holds exactly the same numbers as the
fp32 files and every format must load to bit-identical outputs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kshot.backbones.jittor_pkl import MAGIC, save_jittor_pkl

TEXT_CFG = {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 1, "layers": 2}
VIT_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
           "text_cfg": TEXT_CFG}
RN_CFG = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
          "text_cfg": TEXT_CFG}
VIT_NAME = "kshot-test-vit-quickgelu"
RN_NAME = "kshot-test-rn-quickgelu"
FORMATS = ("state_dict.pt", "model.safetensors", "torchscript.pt", "jclip_torch.pkl", "jittor_vars.pkl",
           "fp16_numpy.pkl", "kshot_export.pkl")


def build_clip(cfg: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """open_clip.CLIP with QuickGELU (OpenAI layout), seeded, weights rounded through fp16."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**cfg, quick_gelu=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def jittor_bytes(payload: bytes) -> bytes:
    """`jt.save` layout: pickle bytes + SHA-1 + magic."""
    return payload + hashlib.sha1(payload).digest() + MAGIC


@contextlib.contextmanager
def fake_jittor() -> Iterator[type]:
    """A module 'jittor' whose Var pickles like Jittor's (`Var.__reduce__ = (Var, (numpy_array,))`)."""

    class Var:
        def __init__(self, data: np.ndarray):
            self.data = data

        def __reduce__(self) -> tuple[Any, ...]:
            return (Var, (self.data,))

    Var.__module__, Var.__qualname__ = "jittor", "Var"
    module = types.ModuleType("jittor")
    module.Var = Var  # type: ignore[attr-defined]
    saved = sys.modules.get("jittor")
    sys.modules["jittor"] = module
    try:
        yield Var
    finally:
        if saved is None:
            sys.modules.pop("jittor", None)
        else:
            sys.modules["jittor"] = saved


def write_all_formats(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """Save `model` as each entry of FORMATS under `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    paths = {name: folder / name for name in FORMATS}
    torch.save(state, paths["state_dict.pt"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(paths["model.safetensors"]))
    import warnings

    # OpenAI's released .pt files are TorchScript archives with fp16 weights plus three int entries in the state dict.
    openai_like = copy.deepcopy(model).half()
    vision = model.visual.image_size
    for key, value in (("input_resolution", vision[0] if isinstance(vision, tuple) else vision),
                       ("context_length", TEXT_CFG["context_length"]), ("vocab_size", TEXT_CFG["vocab_size"])):
        if hasattr(openai_like, key):
            delattr(openai_like, key)  # open_clip keeps these as plain ints; OpenAI's archive stores tensors
        openai_like.register_buffer(key, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(openai_like).save(str(paths["torchscript.pt"]))
    # JCLIP README conversion: jt.save(dict of torch tensors)
    paths["jclip_torch.pkl"].write_bytes(jittor_bytes(pickle.dumps(state, protocol=4)))
    with fake_jittor() as Var:
        payload = pickle.dumps({k: Var(v.numpy()) for k, v in state.items()}, protocol=4)
    paths["jittor_vars.pkl"].write_bytes(jittor_bytes(payload))
    # ATPrompt-Jittor converter: plain pickle.dump of fp16 numpy arrays, no trailer
    paths["fp16_numpy.pkl"].write_bytes(pickle.dumps({k: v.half().numpy() for k, v in state.items()}))
    save_jittor_pkl({k: v.numpy() for k, v in state.items()}, paths["kshot_export.pkl"])
    return paths


@pytest.fixture(scope="session")
def vit_model() -> torch.nn.Module:
    return build_clip(VIT_CFG, seed=0)


@pytest.fixture(scope="session")
def rn_model() -> torch.nn.Module:
    return build_clip(RN_CFG, seed=1)


@pytest.fixture(scope="session")
def vit_files(vit_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_all_formats(vit_model, tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="session")
def rn_files(rn_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_all_formats(rn_model, tmp_path_factory.mktemp("rn"))


@pytest.fixture(scope="session")
def registered_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Register the small configs with open_clip (as -quickgelu built-ins); returns {'vit': name, 'rn': name}."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in ((VIT_NAME, VIT_CFG), (RN_NAME, RN_CFG)):
        (folder / f"{name}.json").write_text(json.dumps({**cfg, "quick_gelu": True}))
    open_clip.add_model_config(folder)
    return {"vit": VIT_NAME, "rn": RN_NAME}


@pytest.fixture(scope="session")
def probe_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Images [2, 3, 64, 64] and token ids [2, 16] (< vocab 1000, EOT-like max at the end)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=g)
    tokens = torch.randint(1, 900, (2, 16), generator=g)
    tokens[:, -1] = 999
    return images, tokens
