"""Input checks of the web app: paths confined to the configured roots, upload size and pixel limits, and a zip
unpacker that refuses path traversal, links and zip bombs."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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


def file_inside(folder: Path, relative: str) -> Path:
    """The file `relative` ('/'-separated) names under `folder`; DataError when it escapes or does not exist."""
    if not relative or relative.startswith("/") or "\\" in relative or ".." in PurePosixPath(relative).parts:
        raise DataError(f"image path {relative!r} must be relative to the dataset folder, without '..'")
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(f"image path {relative!r} leaves the dataset folder")
    if not path.is_file():
        raise DataError(f"no image {relative!r} in the dataset")
    return path


@dataclass(frozen=True)
class ZipLimits:
    """What an uploaded dataset zip may hold.

    Attributes:
        max_bytes: uncompressed bytes of all members together (as declared, and as actually written).
        max_ratio: largest uncompressed / compressed size of the archive and of any member of over 1 MiB.
        max_members: number of members.
    """

    max_bytes: int = 2 * 2**30
    max_ratio: float = 100.0
    max_members: int = 200_000


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def dataset_name(name: str) -> str:
    """A folder name for an uploaded dataset: letters, digits, '_', '-', '.' (DataError otherwise)."""
    if not _NAME.match(name) or name.endswith(".partial"):
        raise DataError(f"dataset name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting alphanumeric")
    return name


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path, None for a directory entry; DataError for traversal or a link."""
    name = info.filename
    if name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"zip member {name!r} has an absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise DataError(f"zip member {name!r} leaves the dataset folder ('..')")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DataError(f"zip member {name!r} is a symbolic link")
    if info.is_dir():
        return None
    return PurePosixPath(*parts)


def _check_archive(zf: zipfile.ZipFile, packed_size: int, limits: ZipLimits
                   ) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise DataError(f"zip has {len(infos)} members; the limit is {limits.max_members}")
    members = [(i, p) for i in infos if (p := _member_path(i)) is not None]
    total = sum(i.file_size for i, _ in members)
    if total > limits.max_bytes:
        raise DataError(f"zip unpacks to {total} bytes; the limit is {limits.max_bytes}")
    if total > 2**20 and total > limits.max_ratio * max(packed_size, 1):
        raise DataError(f"zip unpacks {total / max(packed_size, 1):.0f}x its size (limit {limits.max_ratio:g}x): "
                        "refused as a zip bomb")
    for i, _ in members:
        if i.file_size > 2**20 and i.file_size > limits.max_ratio * max(i.compress_size, 1):
            raise DataError(f"zip member {i.filename!r} unpacks {i.file_size / max(i.compress_size, 1):.0f}x its "
                            f"size (limit {limits.max_ratio:g}x): refused as a zip bomb")
    return members


def safe_unzip(data: bytes, dest: Path, limits: ZipLimits = ZipLimits()) -> Path:
    """Unpack a dataset zip into the new folder `dest` (a single top folder in the zip is stripped).

    Every member is checked before anything is written: no absolute paths, no '..', no links, at most
    `limits.max_members` members and `limits.max_bytes` declared bytes, no member or archive expanding more than
    `limits.max_ratio` times; while writing, the bytes actually produced are counted against the same limit (a header
    may lie). The zip is unpacked into a hidden temp folder beside `dest` and renamed when complete.

    Raises:
        DataError: not a zip, any check above, or `dest` exists.
    """
    if dest.exists():
        raise DataError(f"a dataset named {dest.name!r} already exists")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise DataError("the upload is not a zip file") from None
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with zf:
            members = _check_archive(zf, len(data), limits)
            if not members:
                raise DataError("the zip holds no files")
            tops = {p.parts[0] for _, p in members}
            strip = len(tops) == 1 and all(len(p.parts) > 1 for _, p in members)
            written = 0
            for info, rel in members:
                target = tmp.joinpath(*(rel.parts[1:] if strip else rel.parts))
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > limits.max_bytes:
                            raise DataError(f"zip unpacks to more than {limits.max_bytes} bytes: refused")
                        out.write(block)
        os.replace(tmp, dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, RuntimeError, zlib.error) as e:
        raise DataError(f"unreadable zip ({e})") from None  # RuntimeError: an encrypted member
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
