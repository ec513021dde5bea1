"""Decode one image file into an 8-bit RGB PIL image, or fail with a `DataError` naming the file and the reason.

Every PIL mode is mapped to RGB deliberately: palette and alpha images are composited on white (not on black, which
is what a bare `convert("RGB")` does to transparent pixels), 16-bit greyscale is scaled to 8 bits (a bare convert
clips it), CMYK goes through PIL's conversion. The file is fully decoded (`img.load()`), so a truncated JPEG fails
here rather than in a DataLoader worker later. PIL's `LOAD_TRUNCATED_IMAGES` is never switched on by this module.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from kshot.data.dataset import Dataset
from kshot.errors import DataError
from kshot.progress import bar as progress_bar

log = logging.getLogger(__name__)

_BACKGROUND = (255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageReadError(DataError):
    """An image file could not be decoded. `path` and `reason` are kept for reports."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def _sixteen_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit greyscale (mode I;16* or I from a 16-bit PNG) -> 8 bits by v * 255 / 65535, rounded, then RGB."""
    a = np.asarray(img).astype(np.float64)
    a = np.clip(a, 0, 65535) * (255.0 / 65535.0)
    return Image.fromarray(np.rint(a).astype(np.uint8)).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to 8-bit RGB (a new image; the input is not modified).

    Rules: RGB is copied; alpha modes and palette images with transparency are composited on white; I;16/I are
    scaled from 16 bits; F (float) is clipped to [0, 255]; everything else (L, 1, P, CMYK, YCbCr, LAB, HSV) uses
    PIL's own conversion.
    """
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        return _composite_on_white(img)
    if mode in _SIXTEEN_BIT:
        return _sixteen_to_rgb(img)
    if mode == "F":
        a = np.clip(np.asarray(img), 0, 255)
        return Image.fromarray(np.rint(a).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def load_image(path: Path | str, *, exif_transpose: bool = False) -> Image.Image:
    """Read an image file as 8-bit RGB.

    Args:
        path: the image file.
        exif_transpose: rotate according to the EXIF orientation tag. Off by default, matching torchvision's and
            CLIP's loaders (and so the features the published numbers were computed from).

    Returns:
        A fully decoded RGB `PIL.Image.Image`, independent of the file.

    Raises:
        ImageReadError (a DataError): missing or empty file, unknown format, truncated or corrupt data, decompression
            bomb.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot stat file ({e})") from e
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on (set elsewhere): truncated images will not be detected")
    try:
        with Image.open(path) as img:
            img.load()
            if exif_transpose:
                img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"decompression bomb check failed ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as e:
        msg = str(e) or type(e).__name__
        kind = "truncated file" if "truncated" in msg.lower() else "corrupt image data"
        raise ImageReadError(path, f"{kind} ({msg})") from e


def check_images(dataset: Dataset, *, loader: Callable[[Path], Image.Image] = load_image,
                 progress: bool = False) -> list[tuple[str, str]]:
    """Decode every item of `dataset`; return (relative path, reason) for each that fails.

    Args:
        dataset: the items to check (paths relative to `dataset.root`).
        loader: the decoder to use (default `load_image`).
        progress: show a tqdm bar.
    """
    idx = range(len(dataset))
    if progress:
        idx = progress_bar(idx, auto=False, desc="checking images", unit="img")
    bad = []
    for i in idx:
        try:
            loader(dataset.abspath(i))
        except ImageReadError as e:
            bad.append((dataset.items[i].path, e.reason))
        except DataError as e:
            bad.append((dataset.items[i].path, str(e)))
    if bad:
        log.warning("%d of %d images in %s cannot be read", len(bad), len(dataset), dataset.root)
    return bad
