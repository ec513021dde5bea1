"""build_preprocess matches open_clip's and timm's eval transforms, converts any mode to RGB first, and pickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.backbones import PreprocessCfg, build_preprocess
from kshot.errors import ConfigError

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _image(w: int = 97, h: int = 61, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return img if mode == "RGB" else img.convert(mode)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(97, 61), (40, 90)])
def test_matches_open_clip_eval_transform(resize_mode: str, interpolation: str, size: tuple[int, int]) -> None:
    import open_clip

    ours = build_preprocess(PreprocessCfg(48, MEAN, STD, interpolation, resize_mode))
    theirs = open_clip.image_transform(48, is_train=False, mean=MEAN, std=STD, resize_mode=resize_mode,
                                       interpolation=interpolation)
    img = _image(*size)
    out = ours(img)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    assert torch.equal(out, theirs(img))


def test_interpolation_and_resize_mode_change_the_output() -> None:
    img = _image()
    base = build_preprocess(PreprocessCfg(32))(img)
    assert not torch.equal(base, build_preprocess(PreprocessCfg(32, interpolation="bilinear"))(img))
    assert not torch.equal(base, build_preprocess(PreprocessCfg(32, resize_mode="squash"))(img))


def test_normalisation_uses_the_configured_mean_and_std() -> None:
    white = Image.new("RGB", (20, 30), (255, 255, 255))
    out = build_preprocess(PreprocessCfg(16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)))(white)
    assert torch.allclose(out[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1"])
def test_any_mode_is_converted_to_rgb_before_resizing(mode: str) -> None:
    img = _image(mode=mode)
    pre = build_preprocess(PreprocessCfg(24))
    out = pre(img)
    assert out.shape == (3, 24, 24)
    assert torch.equal(out, pre(img.convert("RGB")))


def test_timm_crop_pct_matches_timm_transform() -> None:
    import timm

    data = {"input_size": (3, 40, 40), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "crop_pct": 0.875, "crop_mode": "center"}
    theirs = timm.data.create_transform(**data)
    ours = build_preprocess(PreprocessCfg(40, data["mean"], data["std"], "bicubic", "shortest"), crop_pct=0.875)
    img = _image(83, 57)
    assert torch.equal(ours(img), theirs(img))


def test_picklable_for_dataloader_workers() -> None:
    pre = build_preprocess(PreprocessCfg(16))
    img = _image()
    first = pre(img)
    clone = pickle.loads(pickle.dumps(pre))
    assert torch.equal(clone(img), first)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"resize_mode": "fill"}, "resize_mode"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_bad_configs_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_preprocess(PreprocessCfg(**kwargs))


def test_bad_crop_pct_and_non_images() -> None:
    with pytest.raises(ConfigError, match="crop_pct"):
        build_preprocess(PreprocessCfg(16), crop_pct=1.5)
    with pytest.raises(TypeError, match="PIL image"):
        build_preprocess(PreprocessCfg(16))(np.zeros((4, 4, 3)))  # type: ignore[arg-type]
