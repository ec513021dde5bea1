"""load_backbone: every spec form and checkpoint format loads to identical encoders; bad input fails precisely."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from kshot.backbones import BACKBONES, Backbone, PreprocessCfg, load_backbone
from kshot.backbones.open_clip_source import preprocess_cfg_of
from kshot.errors import CheckpointError, ConfigError

from .conftest import FORMATS, VIT_CFG, build_clip


def _outputs(bb: Backbone, probe: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = probe
    with torch.no_grad():
        return bb.encode_image(images), bb.encode_text(tokens)


def _reference(model: torch.nn.Module, probe: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = probe
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.fixture(scope="module")
def vit_backbones(vit_files: dict[str, Path]) -> dict[str, Backbone]:
    return {fmt: load_backbone(str(path)) for fmt, path in vit_files.items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_vit_formats_match_the_source_model(fmt, vit_backbones, vit_model, probe_inputs) -> None:
    bb = vit_backbones[fmt]
    img, txt = _outputs(bb, probe_inputs)
    ref_img, ref_txt = _reference(vit_model, probe_inputs)
    assert torch.equal(img, ref_img) and torch.equal(txt, ref_txt)
    assert bb.embed_dim == 32 and img.shape == (2, 32)
    assert bb.logit_scale == pytest.approx(float(vit_model.logit_scale.detach().exp()))
    assert bb.fingerprint == vit_backbones["state_dict.pt"].fingerprint
    assert bb.extra["model_cfg"]["quick_gelu"] is True and bb.extra["inferred_arch"] is True


@pytest.mark.parametrize("fmt", ["torchscript.pt", "jclip_torch.pkl"])
def test_modified_resnet_formats_match(fmt, rn_files, rn_model, probe_inputs) -> None:
    bb = load_backbone(str(rn_files[fmt]))
    for got, ref in zip(_outputs(bb, probe_inputs), _reference(rn_model, probe_inputs), strict=True):
        assert torch.equal(got, ref)


def test_named_arch_and_inferred_builtin_agree(registered_configs, vit_files, vit_model, probe_inputs) -> None:
    name = registered_configs["vit"]
    named = load_backbone(f"open_clip:{name}@{vit_files['jittor_vars.pkl']}")
    inferred = load_backbone(str(vit_files["state_dict.pt"]))
    via_arch = load_backbone(str(vit_files["model.safetensors"]), arch=name)
    assert inferred.arch == named.arch == via_arch.arch == name  # the inferred config matches the built-in
    assert named.fingerprint == inferred.fingerprint == via_arch.fingerprint
    for got, ref in zip(_outputs(named, probe_inputs), _reference(vit_model, probe_inputs), strict=True):
        assert torch.equal(got, ref)


def test_fingerprint_tracks_weights_and_activation(vit_files, vit_backbones, tmp_path) -> None:
    other = build_clip(VIT_CFG, seed=5)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    assert load_backbone(str(tmp_path / "other.pt")).fingerprint != vit_backbones["state_dict.pt"].fingerprint
    gelu = load_backbone(str(vit_files["state_dict.pt"]), quick_gelu=False)
    assert gelu.fingerprint != vit_backbones["state_dict.pt"].fingerprint
    assert gelu.extra["model_cfg"]["quick_gelu"] is False


def test_quick_gelu_changes_outputs(vit_files, vit_model, probe_inputs) -> None:
    gelu = load_backbone(str(vit_files["state_dict.pt"]), quick_gelu=False)
    img, _ = _outputs(gelu, probe_inputs)
    assert not torch.allclose(img, _reference(vit_model, probe_inputs)[0])


def test_random_init_is_seeded_and_leaves_global_rng_alone(registered_configs) -> None:
    name = registered_configs["vit"]
    state = torch.get_rng_state()
    a = load_backbone(f"open_clip:{name}")
    b = load_backbone(f"open_clip:{name}@random")
    assert torch.equal(torch.get_rng_state(), state)
    assert a.fingerprint == b.fingerprint
    assert a.extra["pretrained"] is None and a.tokenizer is not None
    tokens = a.tokenize(["a photo of a dog"])
    assert tokens.shape == (1, 16) and tokens.dtype == torch.int64


def test_shape_mismatch_names_the_tensors(registered_configs, rn_files) -> None:
    with pytest.raises(CheckpointError, match="do not fit architecture kshot-test-vit") as err:
        load_backbone(f"open_clip:{registered_configs['vit']}@{rn_files['state_dict.pt']}")
    msg = str(err.value)  # an RN checkpoint into a ViT: the ViT's own keys are missing, the ResNet's are unexpected
    assert "missing: visual.class_embedding" in msg and "unexpected: visual.attnpool" in msg, msg


def test_offline_pretrained_tag_explains_local_files(monkeypatch) -> None:
    import open_clip.factory

    def offline(*args, **kwargs):
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(CheckpointError) as err:
        load_backbone("open_clip:ViT-B-32@openai")
    msg = str(err.value)
    assert "open_clip:ViT-B-32@/path/to/file" in msg and "HF_HUB_OFFLINE" in msg
    assert "--arch" not in msg  # no such option (issue 22)


def test_unknown_arch_tag_and_prefix() -> None:
    with pytest.raises(ConfigError, match="did you mean"):
        load_backbone("open_clip:ViT-B-33@openai")
    with pytest.raises(CheckpointError, match="no pretrained tag 'nonsense'.*openai"):
        load_backbone("open_clip:ViT-B-32@nonsense")
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone("weights/ViT-B-32.pkl")
    with pytest.raises(CheckpointError, match="no such file"):
        load_backbone("clip:ViT-B-32")  # not a registered prefix, not a file
    with pytest.raises(ConfigError, match="names no architecture"):
        load_backbone("open_clip:@openai")
    with pytest.raises(ConfigError, match="only applies to a file"):
        load_backbone("open_clip:ViT-B-32", arch="RN101")


def test_open_clip_preprocess_values_come_from_the_model_cfg() -> None:
    import open_clip

    model = build_clip(VIT_CFG)
    open_clip.set_model_preprocess_cfg(model, {
        "size": (64, 64), "mode": "RGB", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
        "interpolation": "bilinear", "resize_mode": "squash", "fill_color": 0,
    })
    assert preprocess_cfg_of(model) == PreprocessCfg(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", "squash")
    open_clip.set_model_preprocess_cfg(model, {"size": (64, 48), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    with pytest.raises(ConfigError, match="non-square"):
        preprocess_cfg_of(model)


def test_timm_random_model() -> None:
    bb = load_backbone("timm:test_vit@random")
    assert bb.tokenizer is None and not bb.has_text and bb.logit_scale == 1.0
    assert bb.preprocess_cfg.image_size == 160 and bb.extra["crop_pct"] == pytest.approx(0.95)
    with torch.no_grad():
        feats = bb.encode_image(torch.zeros(2, 3, 160, 160))
    assert feats.shape == (2, bb.embed_dim)
    with pytest.raises(TypeError, match="image-only"):
        bb.encode_text(torch.zeros(1, 4, dtype=torch.long))
    assert load_backbone("timm:test_vit@random").fingerprint == bb.fingerprint


def test_timm_local_weights_drop_the_classifier(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        full = timm.create_model("test_vit", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "test_vit.safetensors"))
    bb = load_backbone(f"timm:test_vit@{tmp_path / 'test_vit.safetensors'}")
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(bb.encode_image(x), full.forward_head(full.forward_features(x), pre_logits=True))
    assert bb.fingerprint != load_backbone("timm:test_vit@random").fingerprint


def test_timm_errors(monkeypatch, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown timm model"):
        load_backbone("timm:not_a_model_xyz")
    with pytest.raises(ConfigError, match="expected 'random' or a weights file"):
        load_backbone("timm:test_vit@latest")
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(CheckpointError, match=r"timm:test_vit.r160_in1k@/path/to/model.safetensors"):
        load_backbone("timm:test_vit.r160_in1k")
    torch.save({"w": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="do not fit timm model"):
        load_backbone(f"timm:test_vit@{tmp_path / 'other.pt'}")


def test_toy_prefix_delegates_to_the_toy_world(monkeypatch) -> None:
    calls = {}
    sentinel = types.SimpleNamespace(to=lambda device: sentinel)

    def load_toy_clip(path=None, device="cpu", spec="toy:clip"):
        calls.update(device=device, spec=spec)
        return sentinel

    monkeypatch.setitem(sys.modules, "kshot.toyworld.checkpoint", types.SimpleNamespace(load_toy_clip=load_toy_clip))
    assert load_backbone("toy:clip") is sentinel
    assert calls == {"device": "cpu", "spec": "toy:clip"}
    with pytest.raises(ConfigError, match="toy:clip"):
        load_backbone("toy:dino")


def test_registry_lists_the_sources() -> None:
    assert {"open_clip", "hf-hub", "timm", "toy", "file"} <= set(BACKBONES.names())
    with pytest.raises(ConfigError, match="non-empty"):
        load_backbone("  ")


@pytest.mark.online
def test_openai_vit_b32_golden_shapes() -> None:
    bb = load_backbone("open_clip:ViT-B-32@openai")
    assert bb.embed_dim == 512 and bb.logit_scale == pytest.approx(100.0)
    assert bb.extra["model_cfg"]["quick_gelu"] is True
