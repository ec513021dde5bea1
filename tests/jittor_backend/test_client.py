"""The Jittor path against PyTorch: toy CLIP, a small ViT and a small ModifiedResNet CLIP, and the six heads.

Jittor compiles on first import and JIT-compiles every new op, so each model runs in ONE worker session inside a
module-scoped fixture that does all the work; the tests only assert on its results. Skipped without a Jittor
interpreter ($KSHOT_JITTOR_PYTHON or jittor installed here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kshot.interop.export import method_to_jittor_dict, save_jittor_artifact
from kshot.jittor_backend.client import JittorSession
from kshot.jittor_backend.runtime import JittorError
from kshot.methods import create
from tests.jittor_backend.helpers import needs_jittor, probe_inputs
from tests.methods.conftest_cachemethods import make_task

pytestmark = needs_jittor

HEADS = ("zeroshot", "linear_probe", "lpp", "tip_adapter", "tip_adapter_f", "ape")
FEATURE_ATOL = 1e-4  # the tolerance on features


def _toy_inputs(backbone) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from kshot.toyworld.generator import World
    from kshot.toyworld.model import images_to_tensor

    world = World()
    ids = world.class_ids("Shapes")[:8]
    images = images_to_tensor(world.render(ids + ids[:4], seed=3), backbone.preprocess_cfg)
    names = [world.classnames[i] for i in ids]
    return images, backbone.tokenize([f"a photo of a {n}." for n in names]), names


def _fitted_heads(tmp: Path) -> tuple[dict[str, Any], dict[str, Path], torch.Tensor]:
    task, test = make_task(c=6, k=4, d=32, val_per_class=3, test_per_class=5, views=3)
    methods, paths = {}, {}
    for name in HEADS:
        overrides = {"epochs": 5} if name == "tip_adapter_f" else {}
        methods[name] = create(name, **overrides).fit(task)
        paths[name] = save_jittor_artifact(method_to_jittor_dict(methods[name]), tmp / f"{name}.pkl")
    return methods, paths, test.features


@pytest.fixture(scope="module")
def toy_run(toy_backbone, tmp_path_factory) -> dict[str, Any]:
    """One worker on the toy CLIP: features, logits, every head, a refused head, an empty batch."""
    tmp = tmp_path_factory.mktemp("jittor_heads")
    images, tokens, _ = _toy_inputs(toy_backbone)
    methods, paths, feats = _fitted_heads(tmp)
    coop = save_jittor_artifact({"kshot_format": "method/1", "method": "coop", "config": "{}", "meta": "{}",
                                 "ctx": torch.zeros(4, 32).numpy()}, tmp / "coop.pkl")
    out: dict[str, Any] = {"heads": {}}
    with torch.no_grad():
        out["torch_image"] = toy_backbone.encode_image(images)
        out["torch_text"] = toy_backbone.encode_text(tokens)
        out["torch_heads"] = {n: m.logits(feats) for n, m in methods.items()}
    with JittorSession(toy_backbone) as session:
        out["info"] = dict(session.info)
        out["jt_image"] = session.encode_image(images)
        out["jt_text"] = session.encode_text(tokens)
        out["scale"] = toy_backbone.logit_scale
        out["jt_logits"] = session.clip_logits(out["jt_image"], out["jt_text"], out["scale"])
        for name, path in paths.items():
            out["heads"][name] = session.head_logits(path, feats)
        try:
            session.head_logits(coop, feats)
        except JittorError as e:
            out["coop_error"] = str(e)
        out["after_error"] = session.head_logits(paths["tip_adapter"], feats[:2])
        out["empty"] = session.head_logits(paths["lpp"], feats[:0])
        out["timings"] = dict(session.timings)
    return out


def _model_run(backbone, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> dict[str, Any]:
    if images is None:
        images, tokens = probe_inputs(backbone.model)
    with torch.no_grad():
        ref = (backbone.encode_image(images), backbone.model.encode_text(tokens))
    with JittorSession(backbone) as session:
        got = (session.encode_image(images), session.encode_text(tokens))
    return {"torch": ref, "jittor": got}


@pytest.fixture(scope="module")
def vit_run(vit_backbone) -> dict[str, Any]:
    return _model_run(vit_backbone)


@pytest.fixture(scope="module")
def rn_run(rn_backbone) -> dict[str, Any]:
    return _model_run(rn_backbone)


def test_toy_features_agree_to_1e4(toy_run):
    for kind in ("image", "text"):
        ref, got = toy_run[f"torch_{kind}"], toy_run[f"jt_{kind}"]
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert (got - ref).abs().max() < FEATURE_ATOL, kind
    assert toy_run["torch_image"].abs().max() > 0.1  # not a degenerate all-zero comparison


def test_toy_zero_shot_top1_agrees_fully(toy_run):
    img = F.normalize(toy_run["torch_image"], dim=-1)
    txt = F.normalize(toy_run["torch_text"], dim=-1)
    logits = toy_run["scale"] * img @ txt.T
    got = toy_run["jt_logits"]
    assert torch.equal(got.argmax(1), logits.argmax(1))
    assert (got - logits).abs().max() < 1e-3  # logits are ~100 x cosines


@pytest.mark.parametrize("name", HEADS)
def test_exported_heads_predict_the_same_ids(toy_run, name):
    ref, got = toy_run["torch_heads"][name], toy_run["heads"][name]
    assert got.shape == ref.shape
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert (got - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))


def test_unsupported_method_is_named_and_the_worker_keeps_serving(toy_run):
    assert "method 'coop' has no Jittor head" in toy_run["coop_error"] and "tip_adapter_f" in toy_run["coop_error"]
    assert torch.allclose(toy_run["after_error"], toy_run["heads"]["tip_adapter"][:2])
    assert toy_run["empty"].shape == (0, 6)


@pytest.mark.parametrize("run", ["vit_run", "rn_run"])
def test_small_clips_agree(run, request):
    res = request.getfixturevalue(run)
    for ref, got in zip(res["torch"], res["jittor"]):
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= FEATURE_ATOL * max(1.0, float(ref.abs().max())), run


def test_session_reports_version_and_timings(toy_run):
    assert toy_run["info"]["jittor"] and toy_run["info"]["device"] == "cpu"
    assert set(toy_run["timings"]) >= {"encode_image", "encode_text", "clip_logits", "head_logits"}


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["open_clip:ViT-B-32-quickgelu", "open_clip:RN50"])
def test_full_size_random_init_clips_agree(spec):
    """Real CLIP sizes (12/8-head ViT-B/32 + text, RN50's [3, 4, 6, 3] stages), random init: no weights needed."""
    from kshot.backbones import load_backbone

    backbone = load_backbone(spec)
    size = backbone.preprocess_cfg.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokens = backbone.tokenize(["a photo of a dog.", "a diagram"])
    res = _model_run(backbone, images, tokens)
    for ref, got in zip(res["torch"], res["jittor"]):
        assert (got - ref).abs().max() <= FEATURE_ATOL * max(1.0, float(ref.abs().max())), spec
