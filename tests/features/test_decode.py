"""Decoding: JPEG header triage, fast CPU decode == PIL, per-image fallback, bad files reported like the PIL path."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kshot.data.dataset import Dataset, Item
from kshot.data.images import ImageReadError, load_image
from kshot.errors import ConfigError
from kshot.features import decode as decode_mod
from kshot.features.decode import (
    FileItems,
    collate,
    decode_cpu,
    decode_gpu,
    load_crop,
    nvjpeg_usable,
    parse_jpeg_header,
    resolve_mode,
)
from kshot.features.extract import ExtractConfig, extract_features
from kshot.features.tensor_transforms import Geometry, pil_to_uint8, resize_crop
from tests.features.test_tensor_transforms import photo, tiny_vit_backbone, write_variety

JPEGS = ["land.jpg", "port_prog.jpg", "grey.jpg", "exif6.jpg"]


@pytest.fixture(scope="module")
def variety(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("dec")
    files = write_variety(root)
    data = (root / "land.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_bytes(b"this is not an image\n" * 10)
    return root, files + ["truncated.jpg", "empty.jpg", "text.jpg", "missing.jpg"]


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_header_triage():
    rgb = Image.fromarray(photo(np.random.default_rng(0), 30, 40))
    base = parse_jpeg_header(_jpeg(rgb))
    assert (base.sof, base.precision, base.height, base.width, base.components) == (0xC0, 8, 30, 40, 3)
    assert base.cpu_fast and base.gpu_fast
    prog = parse_jpeg_header(_jpeg(rgb, progressive=True))
    assert prog.sof == 0xC2 and prog.cpu_fast and not prog.gpu_fast
    grey = parse_jpeg_header(_jpeg(rgb.convert("L")))
    assert grey.components == 1 and grey.gpu_fast
    cmyk = parse_jpeg_header(_jpeg(rgb.convert("CMYK")))
    assert cmyk.components == 4 and not cmyk.cpu_fast
    png = io.BytesIO()
    rgb.save(png, format="PNG")
    assert parse_jpeg_header(png.getvalue()) is None
    assert parse_jpeg_header(_jpeg(rgb)[:3]) is None
    assert parse_jpeg_header(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before any frame header


def test_adobe_rgb_coded_jpeg_stays_off_the_gpu():
    app14 = b"Adobe" + bytes([0, 100, 0, 0, 0, 0, 0])  # version 100, flags, transform = 0 (RGB, no YCbCr)
    sof = struct.pack(">BHHB", 8, 16, 16, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
    data = (b"\xff\xd8" + b"\xff\xee" + struct.pack(">H", len(app14) + 2) + app14
            + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof)
    head = parse_jpeg_header(data)
    assert head.adobe_transform == 0 and head.cpu_fast and not head.gpu_fast


@pytest.mark.parametrize("name", JPEGS)
def test_fast_cpu_decode_is_bit_identical_to_pil(variety, name):
    root, _ = variety
    fast = decode_cpu(root / name)
    ref = pil_to_uint8(load_image(root / name))
    if fast.shape[0] == 1:
        fast = fast.expand(3, -1, -1)
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("name", ["cmyk.jpg", "rgba.png", "palette.png", "tiny.png"])
def test_other_formats_fall_back_to_load_image(variety, name, monkeypatch):
    root, _ = variety
    calls = []
    real = decode_mod._tv_decoder()
    monkeypatch.setattr(decode_mod, "_tv_decoder", lambda: (lambda *a, **k: calls.append(1) or real[0](*a, **k),
                                                             real[1]))
    assert torch.equal(decode_cpu(root / name), pil_to_uint8(load_image(root / name)))
    assert not calls  # never offered to the fast decoder


def test_fast_decoder_failure_falls_back_per_image(variety, monkeypatch):
    root, _ = variety

    def broken(*a, **k):
        raise RuntimeError("simulated libjpeg failure")

    monkeypatch.setattr(decode_mod, "_tv_decoder", lambda: (broken, None))
    assert torch.equal(decode_cpu(root / "land.jpg"), pil_to_uint8(load_image(root / "land.jpg")))


@pytest.mark.parametrize("name,reason", [("truncated.jpg", "truncated"), ("empty.jpg", "empty file"),
                                         ("text.jpg", "not a recognised"), ("missing.jpg", "not found")])
def test_bad_files_raise_the_load_image_message(variety, name, reason):
    root, _ = variety
    with pytest.raises(ImageReadError) as fast:
        load_crop(root / name, Geometry(32))
    with pytest.raises(ImageReadError) as ref:
        load_image(root / name)
    assert str(fast.value) == str(ref.value) and reason in fast.value.reason


def test_items_and_collate_mixed_batch(variety):
    root, files = variety
    ds = Dataset(root, [Item(f, 0) for f in files], ["x"], name="mixed")
    geom = Geometry(48)
    items = FileItems(ds, list(range(len(files))), geom)
    batch = collate([items[j] for j in range(len(items))])
    assert batch.positions.tolist() == list(range(len(files)))
    assert batch.images.shape == (8, 3, 48, 48) and batch.images.dtype == torch.uint8
    for k, r in enumerate(batch.img_rows.tolist()):
        assert torch.equal(batch.images[k], resize_crop(pil_to_uint8(load_image(root / files[r])), geom))
    assert [files[r] for r, _, _ in batch.bad] == ["truncated.jpg", "empty.jpg", "text.jpg", "missing.jpg"]
    for r, i, msg in batch.bad:
        with pytest.raises(ImageReadError) as e:
            load_image(root / files[r])
        assert i == r and msg == str(e.value)
    raw = collate([FileItems(ds, [0, 1, 2, 7, 5], geom, raw_jpeg=True)[j] for j in range(5)])
    assert raw.jpeg_rows == [0, 2, 3] and raw.jpeg_index == [0, 2, 7]  # baseline colour/grey go to nvJPEG
    assert [bytes(t.numpy()) for t in raw.jpegs()] == [(root / files[i]).read_bytes() for i in (0, 2, 7)]
    assert raw.img_rows.tolist() == [1, 4]  # progressive and CMYK are decoded on the CPU


@pytest.mark.parametrize("workers", [0, 1])
def test_extract_cpu_decode_matches_pil_path_with_bad_images(variety, workers):
    root, files = variety
    bb = tiny_vit_backbone()
    ds = Dataset(root, [Item(f, 0) for f in files], ["x"], name="mixed")
    pil = extract_features(bb, ds, cfg=ExtractConfig(decode="pil", batch_size=5, num_workers=0, progress=False))
    fast = extract_features(bb, ds, cfg=ExtractConfig(decode="cpu", batch_size=5, num_workers=workers,
                                                      progress=False))
    assert sorted(fast.bad) == sorted(pil.bad) and len(fast.bad) == 4
    ok = [i for i in range(len(files)) if i not in dict(fast.bad)]
    assert float((pil.features[ok] * fast.features[ok]).sum(1).min()) > 1 - 1e-5
    assert fast.features[[i for i, _ in fast.bad]].abs().sum() == 0


def test_resolve_mode():
    cpu = torch.device("cpu")
    assert resolve_mode("auto", cpu) == "cpu" and resolve_mode("pil", cpu) == "pil"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_mode("gpu", cpu)
    with pytest.raises(ConfigError, match="unknown decode mode"):
        resolve_mode("nvjpeg", cpu)
    with pytest.raises(ConfigError, match="unknown decode mode"):
        ExtractConfig(decode="fast")


def test_gpu_mode_plumbing_runs_on_the_cpu(variety, monkeypatch):
    """The 'gpu' path (raw bytes from workers, batched decode, per-image retry, CPU/PIL fallback, row bookkeeping)
    with torchvision's CPU decoder standing in for nvJPEG."""
    from kshot.features import extract as extract_mod

    root, files = variety
    good = (root / "land.jpg").read_bytes()
    (root / "liar.jpg").write_bytes(good[:600] + b"\x00" * 300 + b"\xff\xd9")  # plausible header, garbage body
    files = files + ["liar.jpg"]
    ds = Dataset(root, [Item(f, 0) for f in files], ["x"], name="mixed")
    real = decode_mod._tv_decoder()
    calls = []

    def fake_nvjpeg(data, mode=None, device=None):
        calls.append("batch" if isinstance(data, list) else "one")
        return real[0](data, mode=mode)  # a corrupt member fails the whole batch, as nvJPEG does

    monkeypatch.setattr(decode_mod, "_tv_decoder", lambda: (fake_nvjpeg, real[1]))
    monkeypatch.setattr(extract_mod, "resolve_mode", lambda mode, device: "gpu")
    bb = tiny_vit_backbone()
    gpu = extract_features(bb, ds, cfg=ExtractConfig(batch_size=6, num_workers=0, progress=False))
    pil = extract_features(bb, ds, cfg=ExtractConfig(decode="pil", batch_size=6, num_workers=0, progress=False))
    assert "batch" in calls and "one" in calls  # the batch with liar.jpg was retried image by image
    assert sorted(gpu.bad) == sorted(pil.bad) and len(gpu.bad) == 5
    ok = [i for i in range(len(files)) if i not in dict(gpu.bad)]
    assert float((pil.features[ok] * gpu.features[ok]).sum(1).min()) > 1 - 1e-5


@pytest.mark.gpu
def test_gpu_decode_matches_cpu_crops(variety):
    root, files = variety
    assert nvjpeg_usable("cuda") and resolve_mode("auto", torch.device("cuda")) == "gpu"
    ds = Dataset(root, [Item(f, 0) for f in files], ["x"], name="mixed")
    geom = Geometry(224)
    items = FileItems(ds, list(range(len(files))), geom, raw_jpeg=True)
    batch = collate([items[j] for j in range(len(items))])
    crops, bad = decode_gpu(batch, geom, torch.device("cuda"), ds)
    assert not bad and crops.shape == (len(batch.jpeg_rows), 3, 224, 224)
    for k, r in enumerate(batch.jpeg_rows):
        ref = load_crop(root / files[r], geom).int()
        d = (crops[k].cpu().int() - ref).abs()
        assert int(d.max()) <= 8 and float(d.float().mean()) < 0.5, files[r]  # nvJPEG IDCT/upsampling differ


@pytest.mark.gpu
def test_gpu_extract_agrees_with_pil(variety):
    root, files = variety
    bb = tiny_vit_backbone().to("cuda")
    ds = Dataset(root, [Item(f, 0) for f in files], ["x"], name="mixed")
    pil = extract_features(bb, ds, cfg=ExtractConfig(decode="pil", device="cuda", amp=False, progress=False))
    gpu = extract_features(bb, ds, cfg=ExtractConfig(decode="gpu", device="cuda", progress=False))
    assert sorted(gpu.bad) == sorted(pil.bad)
    ok = [i for i in range(len(files)) if i not in dict(gpu.bad)]
    assert float((pil.features[ok] * gpu.features[ok]).sum(1).min()) > 0.999
