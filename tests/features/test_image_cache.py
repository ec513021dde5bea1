"""Decoded-image cache: contents, sharing across models, resume after an interrupted fill, keying, torn files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.backbones.base import Backbone, PreprocessCfg
from kshot.backbones.transforms import build_preprocess
from kshot.data.dataset import Dataset, Item
from kshot.errors import CacheError
from kshot.features import decode as decode_mod
from kshot.features import extract as extract_mod
from kshot.features.decode import load_crop
from kshot.features.extract import ExtractConfig, extract_features
from kshot.features.image_cache import BAD, MISSING, OK, ImageCache
from kshot.features.tensor_transforms import Geometry
from tests.features.test_tensor_transforms import photo

SIZE = 24


class _Pool(torch.nn.Module):
    """A tiny image tower: mean colour and a seeded conv -> [N, 8]."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def backbone(seed: int = 0, size: int = SIZE, crop_pct: float = 1.0) -> Backbone:
    cfg = PreprocessCfg(image_size=size, crop_pct=crop_pct)
    return Backbone(f"test:pool{seed}", "pool", _Pool(seed).eval(), build_preprocess(cfg), cfg, None, 8, f"p{seed}")


@pytest.fixture
def ds(tmp_path) -> Dataset:
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    root.mkdir()
    names = []
    for i in range(10):
        h, w = (30 + 3 * i, 41) if i % 2 else (37, 29 + 2 * i)
        name = f"{i}.jpg" if i % 3 else f"{i}.png"
        Image.fromarray(photo(rng, h, w)).save(root / name, **({"quality": 90} if name.endswith("jpg") else {}))
        names.append(name)
    (root / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    names.insert(4, "bad.jpg")
    return Dataset(root, [Item(n, i % 2) for i, n in enumerate(names)], ["a", "b"], name="ic")


def cfg(tmp_path: Path, **kw) -> ExtractConfig:
    return ExtractConfig(batch_size=3, num_workers=0, progress=False, image_cache=tmp_path / "icache", **kw)


def test_fill_stores_crops_and_bad_items(tmp_path, ds):
    bb = backbone()
    res = extract_features(bb, ds, cfg=cfg(tmp_path))
    cache = ImageCache(tmp_path / "icache", ds, Geometry.of_backbone(bb))
    assert (cache.status == OK).sum() == 10 and cache.status[4] == BAD
    assert "cannot read image" in cache.bad_reason(4) and cache.bad_reason(0) is None
    for i in (0, 3, 7):
        assert torch.equal(cache.read([i])[0], load_crop(ds.abspath(i), cache.geom))
    assert torch.equal(cache.read([5, 1, 9]), torch.stack([cache.read([i])[0] for i in (5, 1, 9)]))
    direct = extract_features(bb, ds, cfg=ExtractConfig(batch_size=3, num_workers=0, progress=False, decode="cpu"))
    assert res.bad == direct.bad and len(res.bad) == 1 and res.bad[0][0] == 4
    torch.testing.assert_close(res.features, direct.features, atol=1e-6, rtol=0)
    manifest = json.loads((cache.dir / "manifest.json").read_text())
    assert manifest["shape"] == [11, 3, SIZE, SIZE] and manifest["geometry"]["size"] == SIZE


def test_second_backbone_with_same_geometry_skips_decoding(tmp_path, ds, monkeypatch):
    extract_features(backbone(0), ds, cfg=cfg(tmp_path))
    monkeypatch.setattr(decode_mod, "decode_cpu", lambda *a, **k: pytest.fail("decoded although cached"))
    other = extract_features(backbone(1), ds, [9, 2, 4, 0], cfg=cfg(tmp_path))
    assert [i for i, _ in other.bad] == [4] and other.features[2].abs().sum() == 0
    assert len(list((tmp_path / "icache").iterdir())) == 1


def test_changed_geometry_or_dataset_is_a_new_entry(tmp_path, ds):
    extract_features(backbone(), ds, cfg=cfg(tmp_path))
    extract_features(backbone(size=SIZE + 8), ds, cfg=cfg(tmp_path))
    extract_features(backbone(crop_pct=0.875), ds, cfg=cfg(tmp_path))
    assert len(list((tmp_path / "icache").iterdir())) == 3
    Image.new("RGB", (50, 40), (0, 200, 0)).save(ds.abspath(0))  # new size/mtime: new signature
    before = ImageCache(tmp_path / "icache", ds, Geometry.of_backbone(backbone()))
    assert (before.status == MISSING).all()
    extract_features(backbone(), ds, cfg=cfg(tmp_path))
    fresh = ImageCache(tmp_path / "icache", ds, Geometry.of_backbone(backbone()))
    assert torch.equal(fresh.read([0])[0], load_crop(ds.abspath(0), fresh.geom))


def test_interrupted_fill_resumes_with_only_the_missing_items(tmp_path, ds, monkeypatch):
    monkeypatch.setattr(extract_mod, "COMMIT_EVERY", 3)
    real = decode_mod.FileItems.__getitem__
    seen: list[int] = []

    def crash_after_six(self, j):
        if len(seen) == 6:
            raise KeyboardInterrupt
        seen.append(self.indices[j])
        return real(self, j)

    monkeypatch.setattr(decode_mod.FileItems, "__getitem__", crash_after_six)
    with pytest.raises(KeyboardInterrupt):
        extract_features(backbone(), ds, cfg=cfg(tmp_path))
    cache = ImageCache(tmp_path / "icache", ds, Geometry.of_backbone(backbone()))
    assert (cache.status != MISSING).sum() == 6  # both finished batches were committed
    seen.clear()
    monkeypatch.setattr(decode_mod.FileItems, "__getitem__", lambda self, j: seen.append(self.indices[j])
                        or real(self, j))
    res = extract_features(backbone(), ds, cfg=cfg(tmp_path))
    assert sorted(seen) == list(range(6, 11))
    direct = extract_features(backbone(), ds, cfg=ExtractConfig(num_workers=0, progress=False, decode="cpu"))
    torch.testing.assert_close(res.features, direct.features, atol=1e-6, rtol=0)


def test_torn_and_foreign_files(tmp_path, ds, caplog):
    geom = Geometry.of_backbone(backbone())
    extract_features(backbone(), ds, cfg=cfg(tmp_path))
    entry = ImageCache(tmp_path / "icache", ds, geom).dir
    # torn state file: warn and refill everything
    (entry / "state.npz").write_bytes(b"PK\x03\x04 torn")
    with caplog.at_level(logging.WARNING):
        assert (ImageCache(tmp_path / "icache", ds, geom).status == MISSING).all()
    assert "unreadable state file" in caplog.text
    # images file of the wrong size: rebuilt, state dropped
    extract_features(backbone(), ds, cfg=cfg(tmp_path))
    with open(entry / "images.u8", "r+b") as f:
        f.truncate(100)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        c = ImageCache(tmp_path / "icache", ds, geom)
    assert "wrong size" in caplog.text and (c.status == MISSING).all()
    assert (entry / "images.u8").stat().st_size == 11 * 3 * SIZE * SIZE
    # foreign manifest (another geometry) and torn manifest: refuse, naming the folder
    meta = json.loads((entry / "manifest.json").read_text())
    meta["geometry"]["size"] = 99
    (entry / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="geometry"):
        ImageCache(tmp_path / "icache", ds, geom)
    (entry / "manifest.json").write_text('{"kind": "kshot-ima')
    with pytest.raises(CacheError, match="unreadable image-cache manifest"):
        ImageCache(tmp_path / "icache", ds, geom)


def test_concurrent_commits_merge(tmp_path, ds):
    geom = Geometry.of_backbone(backbone())
    a, b = ImageCache(tmp_path / "ic", ds, geom), ImageCache(tmp_path / "ic", ds, geom)
    a.write([0, 1], torch.stack([load_crop(ds.abspath(i), geom) for i in (0, 1)]))
    b.write([2], load_crop(ds.abspath(2), geom)[None])
    b.mark_bad(4, "cannot read image bad.jpg: corrupt")
    a.commit()
    b.commit()
    c = ImageCache(tmp_path / "ic", ds, geom)
    assert c.status[:5].tolist() == [OK, OK, OK, MISSING, BAD] and c.bad_reason(4).endswith("corrupt")
    assert torch.equal(c.read([1])[0], load_crop(ds.abspath(1), geom))


def test_not_used_for_augmented_views_or_mismatched_preprocess(tmp_path, ds, caplog):
    from kshot.features.augment import AugmentPolicy
    from tests.helpers import tiny_backbone

    with caplog.at_level(logging.WARNING):
        extract_features(backbone(), ds, [0, 1], cfg=cfg(tmp_path), policy=AugmentPolicy("tip", 1), view=0)
        extract_features(tiny_backbone(), ds, [0, 1], cfg=cfg(tmp_path))
    assert not (tmp_path / "icache").exists() or not any((tmp_path / "icache").iterdir())
    assert caplog.text.count("decoded-image cache is not used") == 2
