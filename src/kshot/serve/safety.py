"""Input checks of the web app: paths confined to the configured roots, upload size and pixel limits."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from kshot.errors import DataError


def inside(roots: list[Path], relative: str) -> Path:
    """The folder `relative` names under one of `roots` ('<root index or name>/<path>' or a path under the first).

    Raises:
        DataError: absolute paths, '..' escapes, symlinks out of the root, or a missing folder.
    """
    if not relative or Path(relative).is_absolute() or "\\" in relative:
        raise DataError(f"dataset path {relative!r} must be relative to a data root")
    for root in roots:
        candidate = (root / relative).resolve()
        if candidate.is_relative_to(root.resolve()):
            if candidate.is_dir():
                return candidate
        else:
            raise DataError(f"dataset path {relative!r} leaves the data root")
    raise DataError(f"no dataset folder {relative!r} under the data roots")


def read_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Uploaded bytes -> RGB PIL image, refusing oversized files, oversized images and non-images (DataError)."""
    if len(data) > max_bytes:
        raise DataError(f"upload of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise DataError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels}")
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise DataError(f"not a readable image ({e})") from None
    return img.convert("RGB")
