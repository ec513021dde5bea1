"""The extraction engine: path choice, OOM backoff, compile fallback, threads, prefetch thread, views."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.backbones.base import Backbone, PreprocessCfg
from kshot.backbones.transforms import build_preprocess
from kshot.data.dataset import Dataset, Item
from kshot.data.images import load_image
from kshot.errors import ConfigError, KshotError
from kshot.features import extract as extract_mod
from kshot.features.augment import AugmentPolicy, apply_view, build_augment, view_seed
from kshot.features.decode import Prefetcher
from kshot.features.extract import ExtractConfig, extract_features, fast_path_check, iter_batches
from tests.features.test_tensor_transforms import photo
from tests.helpers import tiny_backbone

SIZE = 20


class _Tower(torch.nn.Module):
    def __init__(self, oom_above: int | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.oom_above, self.sizes = oom_above, []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.conv(x).mean(dim=(2, 3))


def backbone(oom_above: int | None = None) -> Backbone:
    cfg = PreprocessCfg(image_size=SIZE)
    return Backbone("test:tower", "tower", _Tower(oom_above).eval(), build_preprocess(cfg), cfg, None, 6, "tower")


@pytest.fixture
def ds(tmp_path) -> Dataset:
    rng = np.random.default_rng(1)
    for i in range(9):
        Image.fromarray(photo(rng, 25 + i, 31)).save(tmp_path / f"{i}.jpg", quality=90)
    return Dataset(tmp_path, [Item(f"{i}.jpg", i % 3) for i in range(9)], ["a", "b", "c"], name="e")


def _cfg(**kw) -> ExtractConfig:
    return ExtractConfig(**{"batch_size": 4, "num_workers": 0, "progress": False, **kw})


def _reference(bb: Backbone, ds: Dataset, idx) -> torch.Tensor:
    x = torch.stack([bb.preprocess(load_image(ds.abspath(i))) for i in idx])
    return torch.nn.functional.normalize(bb.model.encode_image(x), dim=-1)


def test_oom_halves_the_batch_and_remembers(ds, caplog):
    bb = backbone(oom_above=1)
    with caplog.at_level(logging.WARNING):
        res = extract_features(bb, ds, cfg=_cfg(decode="cpu"))
    # batch 4 -> OOM at 4, OOM at 2, then 1s for the rest of the run (no retry at the larger sizes)
    assert bb.model.sizes[:3] == [4, 2, 1] and set(bb.model.sizes[3:]) == {1}
    assert len(bb.model.sizes) == 2 + 9
    assert caplog.text.count("out of memory") == 2 and "retrying with batch size 1" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(res.features, _reference(backbone(), ds, range(9)), atol=1e-4, rtol=0)
    bb.model.sizes.clear()
    extract_features(bb, ds, [0, 1, 2], cfg=_cfg(decode="cpu"))
    assert bb.model.sizes == [1, 1, 1]  # the next call starts from the size that fitted


@pytest.mark.slow
def test_real_torch_compile_matches_eager(ds, fresh_compile):
    bb = backbone()
    eager = extract_features(bb, ds, cfg=_cfg(decode="cpu"))
    compiled = extract_features(bb, ds, cfg=_cfg(decode="cpu", compile=True))
    assert extract_mod._COMPILED["step"] is not None  # it compiled (no fallback)
    torch.testing.assert_close(compiled.features, eager.features, atol=1e-5, rtol=0)


def test_oom_at_batch_one_is_a_clear_error(ds):
    with pytest.raises(KshotError, match="even at batch size 1"):
        extract_features(backbone(oom_above=0), ds, cfg=_cfg(decode="cpu"))


@pytest.fixture
def fresh_compile(monkeypatch):
    monkeypatch.setattr(extract_mod, "_COMPILED", {})


def test_compile_failure_falls_back_to_eager(ds, monkeypatch, caplog, fresh_compile):
    def fake_compile(fn, **kw):
        def broken(*a, **k):
            raise RuntimeError("inductor: no C++ compiler found (simulated)")
        return broken

    monkeypatch.setattr(torch, "compile", fake_compile)
    bb = backbone()
    with caplog.at_level(logging.WARNING):
        res = extract_features(bb, ds, cfg=_cfg(decode="cpu", compile=True))
    assert "torch.compile failed" in caplog.text and caplog.text.count("torch.compile failed") == 1
    with torch.no_grad():
        torch.testing.assert_close(res.features, _reference(bb, ds, range(9)), atol=1e-4, rtol=0)


def test_compiled_path_pads_to_one_static_shape_and_is_reused(ds, monkeypatch, fresh_compile):
    shapes, compiles = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiles.append(fn) or (
        lambda model, x, *rest: shapes.append(x.shape[0]) or fn(model, x, *rest)))
    bb = backbone()
    res = extract_features(bb, ds, cfg=_cfg(decode="cpu", compile=True))
    assert shapes == [4, 4, 4]  # the last batch (1 image) is padded
    extract_features(backbone(), ds, [0, 1], cfg=_cfg(decode="cpu", compile=True))
    assert len(compiles) == 1 and shapes[3:] == [4]  # one compiled function for every call and backbone
    with torch.no_grad():
        torch.testing.assert_close(res.features, _reference(bb, ds, range(9)), atol=1e-4, rtol=0)


def test_mismatched_preprocess_takes_the_pil_path_exactly(ds, caplog):
    bb = tiny_backbone()  # its preprocess resizes bilinearly although its cfg says bicubic
    ok, worst, _ = fast_path_check(bb)
    assert not ok and worst > 3
    with caplog.at_level(logging.WARNING):
        res = extract_features(bb, ds, [5, 0, 7], cfg=_cfg(decode="cpu"))
    assert "decoding with PIL" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(res.features, _reference(bb, ds, [5, 0, 7]), atol=1e-6, rtol=0)
    assert fast_path_check(backbone())[0]


def test_augmented_views_use_the_pil_augment_path(ds):
    bb, pol = backbone(), AugmentPolicy("tip", 2, seed=3)
    res = extract_features(bb, ds, [2, 6], cfg=_cfg(decode="cpu"), policy=pol, view=1)
    aug = build_augment(pol, SIZE)
    x = torch.stack([bb.preprocess(apply_view(aug, load_image(ds.abspath(i)), view_seed(pol, 1, i))) for i in (2, 6)])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(bb.model.encode_image(x), dim=-1)
    torch.testing.assert_close(res.features, ref, atol=1e-6, rtol=0)


def test_positions_follow_the_requested_indices(ds):
    bb = backbone()
    idx = [8, 3, 3, 0, 5]
    seen = []
    for pos, feats, bad in iter_batches(bb, ds, idx, _cfg(decode="cpu", batch_size=2)):
        assert feats.shape == (len(pos), 6) and not bad
        seen.extend(pos.tolist())
    assert seen == list(range(5))
    res = extract_features(bb, ds, idx, cfg=_cfg(decode="cpu", batch_size=2))
    torch.testing.assert_close(res.features[1], res.features[2])
    with torch.no_grad():
        torch.testing.assert_close(res.features, _reference(bb, ds, idx), atol=1e-4, rtol=0)


def test_config_validation_and_worker_policy(monkeypatch):
    with pytest.raises(ConfigError, match="prefetch"):
        ExtractConfig(prefetch=0)
    with pytest.raises(ConfigError, match="batch_size"):
        ExtractConfig(batch_size=0)
    monkeypatch.setattr(extract_mod, "_cores", lambda: 16)
    c, cpu, gpu = ExtractConfig(), torch.device("cpu"), torch.device("cuda")
    assert c.resolved_workers(100, cpu) == 0 and ExtractConfig(num_workers=3).resolved_workers(10, cpu) == 3
    assert c.resolved_workers(10_000, cpu) == 2
    assert c.resolved_workers(10_000, gpu, "gpu") == 4 and c.resolved_workers(10_000, gpu, "cpu") == 15


def test_cpu_threads_lowered_during_extraction_and_restored(ds, monkeypatch):
    monkeypatch.setattr(extract_mod, "_cores", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        inside = []
        bb = backbone()
        real = bb.model.encode_image
        bb.model.encode_image = lambda x: inside.append(torch.get_num_threads()) or real(x)
        extract_features(bb, ds, cfg=_cfg(decode="cpu", num_workers=2))
        assert set(inside) == {3} and torch.get_num_threads() == 4  # 4 cores - 2 workers + 1
    finally:
        torch.set_num_threads(before)


def test_prefetch_thread_is_bounded_and_reraises():
    produced = []

    def gen():
        for i in range(100):
            produced.append(i)
            yield i
        raise ValueError("source failed")

    it = iter(Prefetcher(gen(), depth=2))
    assert next(it) == 0
    import time

    time.sleep(0.2)
    assert len(produced) <= 4  # one handed out, two queued, one waiting to be put
    with pytest.raises(ValueError, match="source failed"):
        list(it)
