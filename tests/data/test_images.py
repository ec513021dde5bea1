"""load_image: every PIL mode to 8-bit RGB, and specific errors for broken files."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image, ImageFile

from kshot.data.dataset import Dataset, Item
from kshot.data.images import ImageReadError, check_images, load_image, to_rgb
from kshot.errors import DataError


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB" and img.size == (8, 8)
    return np.asarray(img)


def test_rgb_jpeg_roundtrip_and_independent_of_file(tmp_path, img):
    p = img(tmp_path / "a.jpg")
    out = load_image(p)
    a = _rgb(out)
    p.unlink()  # the image must not need the file any more
    assert np.array_equal(np.asarray(out), a)


@pytest.mark.parametrize("suffix", ["png", "bmp", "webp", "gif"])
def test_other_formats_decode_to_rgb(tmp_path, img, suffix):
    _rgb(load_image(img(tmp_path / f"a.{suffix}")))


def test_greyscale_is_replicated_to_three_channels(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(g).save(tmp_path / "g.png")
    a = _rgb(load_image(tmp_path / "g.png"))
    for c in range(3):
        assert np.array_equal(a[..., c], g)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[..., 0] = 200          # red channel
    arr[:4, :, 3] = 0          # top half fully transparent
    arr[4:, :, 3] = 255        # bottom half opaque
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    a = _rgb(load_image(tmp_path / "a.png"))
    assert (a[:4] == 255).all()                      # transparent -> white, not black
    assert (a[4:] == [200, 0, 0]).all()


def test_la_is_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 2), dtype=np.uint8)
    arr[:, :4, 1] = 255  # left opaque black, right transparent
    Image.fromarray(arr, "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    a = _rgb(load_image(tmp_path / "la.png"))
    assert (a[:, :4] == 0).all() and (a[:, 4:] == 255).all()


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 255] + [10, 20, 30] + [0, 0, 0] * 254)
    for x in range(8):
        p.putpixel((x, 0), 1)  # first row uses the transparent index
    p.save(tmp_path / "p.png", transparency=1)
    assert Image.open(tmp_path / "p.png").mode == "P"
    a = _rgb(load_image(tmp_path / "p.png"))
    assert (a[0] == 255).all()
    assert (a[1:] == [0, 0, 255]).all()


def test_palette_without_transparency(tmp_path):
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0] + [10, 20, 30] + [0, 0, 0] * 254)
    p.save(tmp_path / "p.gif")
    assert (_rgb(load_image(tmp_path / "p.gif")) == [10, 20, 30]).all()


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    a = _rgb(load_image(tmp_path / "c.jpg")).astype(int)
    assert a[..., 0].mean() > 200 and a[..., 1].mean() < 60 and a[..., 2].mean() < 60  # pure red


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    g = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0..65520
    Image.fromarray(g).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a = _rgb(load_image(tmp_path / "g16.png"))
    want = np.rint(g.astype(float) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(a[..., 0], want)
    assert a.max() > 250 and len(np.unique(a[..., 0])) > 50  # a bare convert would saturate almost everything


def test_mode_i_and_f_in_memory():
    i = Image.fromarray(np.full((8, 8), 65535, dtype=np.int32))
    assert i.mode == "I" and (np.asarray(to_rgb(i)) == 255).all()
    f = Image.fromarray(np.full((8, 8), 300.0, dtype=np.float32))
    assert f.mode == "F" and (np.asarray(to_rgb(f)) == 255).all()


def test_truncated_jpeg_is_a_data_error_naming_the_file(tmp_path, img):
    data = img(tmp_path / "a.jpg").read_bytes()
    bad = tmp_path / "trunc.jpg"
    bad.write_bytes(data[: len(data) - 40])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(ImageReadError) as e:
        load_image(bad)
    assert "trunc.jpg" in str(e.value) and "truncated" in e.value.reason
    assert isinstance(e.value, DataError)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_header_only_and_garbage_files(tmp_path, img):
    data = img(tmp_path / "a.jpg").read_bytes()
    (tmp_path / "h.jpg").write_bytes(data[:10])
    (tmp_path / "txt.jpg").write_bytes(b"this is not an image at all")
    for name in ("h.jpg", "txt.jpg"):
        with pytest.raises(ImageReadError, match=name):
            load_image(tmp_path / name)


def test_zero_byte_and_missing_files(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"z\.jpg.*empty file \(0 bytes\)"):
        load_image(tmp_path / "z.jpg")
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "nope.jpg")


def test_exif_transpose_is_opt_in(tmp_path):
    arr = np.zeros((4, 8, 3), dtype=np.uint8)  # wide image
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (8, 4)
    assert load_image(tmp_path / "r.jpg", exif_transpose=True).size == (4, 8)


def test_check_images_reports_each_bad_file(tmp_path, img):
    img(tmp_path / "ok.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(img(tmp_path / "x.jpg").read_bytes()[:200])
    ds = Dataset(tmp_path, [Item("ok.jpg", 0), Item("empty.png", 0), Item("bad.jpg", 0), Item("gone.jpg", 0)], ["a"])
    bad = dict(check_images(ds))
    assert set(bad) == {"empty.png", "bad.jpg", "gone.jpg"}
    assert "0 bytes" in bad["empty.png"] and "not found" in bad["gone.jpg"]
