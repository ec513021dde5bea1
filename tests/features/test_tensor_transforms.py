"""Tensor preprocessing against the PIL path it replaces: pixels (in 8-bit levels) and features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.backbones.base import Backbone, PreprocessCfg
from kshot.backbones.transforms import build_preprocess
from kshot.data.dataset import Dataset, Item
from kshot.data.images import load_image
from kshot.errors import ConfigError
from kshot.features.decode import decode_cpu
from kshot.features.extract import ExtractConfig, extract_features, fast_path_check
from kshot.features.tensor_transforms import (
    Geometry,
    Normalizer,
    TensorPreprocess,
    pil_to_uint8,
    resize_crop,
    resize_crop_many,
)

# Stated tolerances (8-bit levels, against the PIL transform on the same decoded pixels). Measured here:
# CPU uint8 kernel max 2 / mean <= 0.011; float two-pass kernel (the GPU's) max 2 / mean <= 0.048 (bilinear; bicubic
# <= 0.0005); nearest exact.
MAX_LEVELS = 2.0
MEAN_LEVELS = {"bicubic": 0.02, "bilinear": 0.06, "nearest": 0.001}


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Photo-like uint8 [h, w, 3]: gradient + blobs + sensor noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = rng.uniform(0, 255, 3) + xx[..., None] * rng.uniform(-0.3, 0.3, 3) + yy[..., None] * rng.uniform(-0.3, 0.3, 3)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, max(4, w / 4))
        img[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def write_variety(root: Path, seed: int = 0) -> list[str]:
    """One file per awkward case: 500x375, 333x500 progressive, grey, RGBA, palette, CMYK, tiny, EXIF-rotated."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(rng, 375, 500)).save(root / "land.jpg", quality=90)
    Image.fromarray(photo(rng, 500, 333)).save(root / "port_prog.jpg", quality=90, progressive=True)
    Image.fromarray(photo(rng, 300, 400)[..., 0]).save(root / "grey.jpg", quality=90)
    alpha = rng.integers(0, 256, (240, 320, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([photo(rng, 240, 320), alpha], 2), "RGBA").save(root / "rgba.png")
    Image.fromarray(photo(rng, 200, 260)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    Image.fromarray(photo(rng, 260, 300)).convert("CMYK").save(root / "cmyk.jpg", quality=90)
    Image.fromarray(photo(rng, 20, 30)).save(root / "tiny.png")
    im = Image.fromarray(photo(rng, 300, 400))
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 (load_image does not apply it by default; neither do we)
    im.save(root / "exif6.jpg", quality=90, exif=exif)
    return ["land.jpg", "port_prog.jpg", "grey.jpg", "rgba.png", "palette.png", "cmyk.jpg", "tiny.png", "exif6.jpg"]


@pytest.fixture(scope="module")
def variety(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("variety")
    return root, write_variety(root)


CFGS = {
    "shortest-bicubic": PreprocessCfg(),
    "crop-0.875": PreprocessCfg(crop_pct=0.875),
    "squash-bilinear": PreprocessCfg(resize_mode="squash", interpolation="bilinear"),
    "longest": PreprocessCfg(resize_mode="longest"),
    "nearest": PreprocessCfg(interpolation="nearest"),
}


@pytest.mark.parametrize("name", list(CFGS))
@pytest.mark.parametrize("float_path", [False, True], ids=["uint8", "float"])
def test_matches_pil_preprocess_on_awkward_images(variety, name, float_path):
    root, files = variety
    cfg = CFGS[name]
    pil, ours = build_preprocess(cfg), TensorPreprocess(cfg)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    diffs = []
    for f in files:
        ref = pil(load_image(root / f))
        got = ours(decode_cpu(root / f), float_path=float_path)
        assert got.shape == ref.shape == (3, 224, 224)
        diffs.append(((ref - got) * std * 255).abs())
    d = torch.stack(diffs)
    assert float(d.max()) <= MAX_LEVELS + 1e-3, (name, float(d.max()))
    assert float(d.mean()) <= MEAN_LEVELS[cfg.interpolation] + 1e-6, (name, float(d.mean()))


def test_exif_orientation_is_not_applied_like_load_image(variety):
    root, _ = variety
    img = decode_cpu(root / "exif6.jpg")
    assert tuple(img.shape[1:]) == load_image(root / "exif6.jpg").size[::-1] == (300, 400)


@pytest.mark.parametrize("geom", [Geometry(), Geometry(32, "squash"), Geometry(48, "longest"),
                                  Geometry(40, crop_pct=0.9)])
def test_output_geometry_and_grey_expansion(geom):
    g = torch.Generator().manual_seed(0)
    for h, w in [(37, 91), (91, 37), (5, 7), (geom.size, geom.size)]:
        rgb = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        out = resize_crop(rgb, geom)
        assert out.shape == (3, geom.size, geom.size) and out.dtype == torch.uint8 and out.is_contiguous()
        grey = resize_crop(rgb[:1], geom)
        assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
        assert torch.equal(grey[0], resize_crop(rgb[:1].expand(3, -1, -1).contiguous(), geom)[0])


def test_identity_when_already_at_size():
    x = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(resize_crop(x, Geometry(24)), x)
    assert torch.equal(resize_crop(x, Geometry(24), float_path=True), x)


def test_batched_mixed_sizes_equal_one_by_one():
    g = torch.Generator().manual_seed(2)
    geom = Geometry(32)
    imgs = [torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=g)
            for c, h, w in [(3, 40, 50), (1, 40, 50), (3, 40, 50), (3, 64, 33), (3, 40, 50), (1, 9, 12)]]
    out = resize_crop_many(imgs, geom)
    assert out.shape == (6, 3, 32, 32)
    for i, img in enumerate(imgs):
        assert torch.equal(out[i], resize_crop(img, geom))
    assert torch.equal(resize_crop(torch.stack([imgs[0], imgs[2]]), geom)[1], out[2])


def test_normalizer_matches_reference_formula():
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    mean, std = (0.48, 0.45, 0.40), (0.26, 0.26, 0.27)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalizer(mean, std)(x), ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(Normalizer(mean, std)(x[0]), ref[0], atol=2e-6, rtol=0)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="resize_mode"):
        Geometry(resize_mode="fit")
    with pytest.raises(ConfigError, match="crop_pct"):
        Geometry(crop_pct=1.5)
    with pytest.raises(TypeError, match="uint8"):
        resize_crop(torch.zeros(3, 4, 4), Geometry(4))
    with pytest.raises(ValueError, match="C in"):
        resize_crop(torch.zeros(4, 4, 4, dtype=torch.uint8), Geometry(4))
    with pytest.raises(ValueError, match="RGB"):
        pil_to_uint8(Image.new("L", (4, 4)))


# ----------------------------------------------------------------------------- features
def tiny_vit_backbone(seed: int = 0) -> Backbone:
    """A real open_clip ViT (patch 32, 224 px, 2 layers of width 128) with kshot's open_clip-style preprocess."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)  # open_clip initialises from the global RNG; tests run in one process each
    model = CLIP(embed_dim=64, vision_cfg=CLIPVisionCfg(layers=2, width=128, head_width=32, patch_size=32,
                                                         image_size=224),
                 text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)).eval()
    cfg = PreprocessCfg()
    return Backbone("test:tiny-vit", "tiny-vit", model, build_preprocess(cfg), cfg, None, 64, f"tiny-vit-{seed}")


def _min_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum(1).min())


@pytest.mark.parametrize("spec", ["toy:clip", "tiny-vit"])
def test_features_agree_with_pil_path(variety, spec):
    from kshot.backbones import load_backbone

    root, files = variety
    bb = load_backbone("toy:clip") if spec == "toy:clip" else tiny_vit_backbone()
    ok, worst, mean = fast_path_check(bb)
    assert ok and worst <= 3 and mean < 0.1
    ds = Dataset(root, [Item(f, 0) for f in files], ["x"], name="variety")
    run = {m: extract_features(bb, ds, cfg=ExtractConfig(decode=m, batch_size=3, num_workers=0, progress=False))
           for m in ("pil", "cpu")}
    assert not run["pil"].bad and not run["cpu"].bad
    # measured: 1 - cos <= 2e-7 for both (fp32); bf16 costs ~2e-5 on either path
    assert _min_cos(run["pil"].features, run["cpu"].features) > 1 - 1e-5
    # the GPU's kernel (float two-pass) under bf16, emulated on the CPU: still well within bf16 tolerance
    geom = Geometry.of_backbone(bb)
    crops = torch.stack([resize_crop(decode_cpu(root / f), geom, float_path=True) for f in files])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        f16 = bb.encode_image(Normalizer(bb.preprocess_cfg.mean, bb.preprocess_cfg.std)(crops))
    assert _min_cos(run["pil"].features, torch.nn.functional.normalize(f16.float(), dim=-1)) > 0.999
