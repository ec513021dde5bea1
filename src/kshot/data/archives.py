"""Archive files for `kshot data prepare`: find them in the user's folder, download them (torchvision), unpack safely.

Downloads go through `torchvision.datasets.utils.download_url`, which verifies the MD5 the catalog records.
Unpacking refuses members that would land outside the target (tar: Python's 'data' filter; zip: path check) and
turns a truncated or corrupt archive into a `DataError` naming the file.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import urllib.error
import zipfile
import zlib
from pathlib import Path
from typing import Callable

from torchvision.datasets.utils import download_url

from kshot.data.catalog import Archive
from kshot.data.paths import normalize_relpath
from kshot.errors import DataError

log = logging.getLogger(__name__)

#: progress(description, done, total) - called while unpacking (members) and never required.
Progress = Callable[[str, int, int], None]


def locate(archive: Archive, source: Path | None, scratch: Path | None = None) -> Path | None:
    """`source/<filename>`, else the file taken out of its wrapper in `source` (into `scratch`, default `source`),
    else None."""
    if source is None:
        return None
    direct = source / archive.filename
    if direct.is_file():
        return direct
    if archive.wrapper and (source / archive.wrapper[0]).is_file():
        (scratch or source).mkdir(parents=True, exist_ok=True)
        return _from_wrapper(source / archive.wrapper[0], archive.wrapper[1], (scratch or source) / archive.filename)
    return None


def _from_wrapper(container: Path, inner: str, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(container) as zf, zf.open(inner) as src, open(dest.with_suffix(".part"), "wb") as out:
            shutil.copyfileobj(src, out)
    except KeyError:
        raise DataError(f"{container}: has no {inner} inside (is it the official archive?)") from None
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{container}: truncated or corrupt archive ({e})") from None
    dest.with_suffix(".part").replace(dest)
    return dest


def download(archive: Archive, dest: Path, mirror: str | None = None) -> Path:
    """Download `archive` into `dest` (torchvision verifies the MD5) and return the file's path.

    Args:
        mirror: base URL replacing the official host (the file name is appended), e.g. a local mirror.
    """
    if archive.url is None:
        raise DataError(f"{archive.filename} cannot be downloaded automatically; put it in a folder and pass --from")
    url = f"{mirror.rstrip('/')}/{archive.url.rsplit('/', 1)[1]}" if mirror else archive.url
    name = archive.wrapper[0] if archive.wrapper else archive.filename
    log.info("downloading %s", url)
    try:
        download_url(url, str(dest), filename=name, md5=archive.md5)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise DataError(f"download of {url} failed ({e}); download {name} yourself and pass --from DIR") from None
    found = locate(archive, dest)
    if found is None:
        raise DataError(f"download of {url} did not produce {archive.filename}")
    return found


def unpack(path: Path, dest: Path, progress: Progress | None = None) -> None:
    """Unpack a tar (any compression) or zip archive into `dest`; a plain file (.mat/.txt/.json) is copied."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(path):
            _unzip(path, dest, progress)
        elif tarfile.is_tarfile(path):
            _untar(path, dest, progress)
        elif path.name.endswith((".tar", ".tgz", ".tar.gz", ".zip")):
            raise DataError(f"{path}: truncated or corrupt archive (not a readable tar/zip)")
        else:
            shutil.copyfile(path, dest / path.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt archive ({e}); download it again") from None


def _untar(path: Path, dest: Path, progress: Progress | None) -> None:
    with tarfile.open(path, "r:*") as tf:
        for i, member in enumerate(tf, 1):
            try:
                tf.extract(member, dest, filter="data")
            except tarfile.FilterError as e:
                raise DataError(f"{path}: unsafe member {member.name!r} ({e})") from None
            if progress and i % 200 == 0:
                progress(path.name, i, 0)


def _unzip(path: Path, dest: Path, progress: Progress | None) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for i, info in enumerate(infos, 1):
            normalize_relpath(info.filename, f"{path}: member")  # refuses absolute paths and '..'
            zf.extract(info, dest)
            if progress and (i % 200 == 0 or i == len(infos)):
                progress(path.name, i, len(infos))
