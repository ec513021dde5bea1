"""Path hygiene shared by the readers: normalise relative paths, refuse ones that escape the root, find missing files,
list image files, write text files atomically."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Literal, Sequence

from kshot.errors import DataError

log = logging.getLogger(__name__)

#: Extensions (lower case, with dot) that count as images; matched case-insensitively.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})

OnMissing = Literal["error", "skip", "ignore"]
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_LISTED = 20


class MissingFilesError(DataError):
    """Files named by a split/list do not exist. `missing` holds every (path, where) pair, not only the listed ones."""

    def __init__(self, message: str, missing: list[tuple[str, str]]):
        super().__init__(message)
        self.missing = missing


def is_image_name(name: str) -> bool:
    """True when `name` ends in one of `IMAGE_EXTENSIONS` (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def utf8_name(name: str, where: Path | str, warn: bool = True) -> bool:
    """False (with a warning naming it) for a file name that is not valid UTF-8: Python keeps its bytes as
    surrogates, which no result file, manifest or cache key can hold; the reader leaves the file out."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        if warn:
            log.warning("%s: skipping %s: the name is not valid UTF-8 (rename it)", where, ascii(name))
        return False


def normalize_relpath(raw: str, where: str) -> str:
    """Turn a path from a split/list file into a clean relative POSIX path.

    Backslashes become '/', a leading './' and repeated separators are dropped. Absolute paths (POSIX, UNC or with a
    Windows drive) and paths with a '..' component are refused, because they could read outside the dataset root.

    Args:
        raw: the path as written in the file.
        where: 'file:line' (or similar) for the error message.

    Returns:
        e.g. 'TrainSet/Animal/Bear/1.jpg'.
    """
    p = raw.strip().replace("\\", "/")
    if not p:
        raise DataError(f"{where}: empty path")
    if p.startswith("/") or _DRIVE.match(p):
        raise DataError(f"{where}: absolute path {raw!r} is not allowed; paths must be relative to the dataset root")
    parts = p.split("/")
    if "" in parts or "." in parts:
        parts = [c for c in parts if c not in ("", ".")]
    if ".." in parts:
        raise DataError(f"{where}: path {raw!r} escapes the dataset root ('..' is not allowed)")
    if not parts:
        raise DataError(f"{where}: path {raw!r} names no file")
    return "/".join(parts)


def find_missing(root: Path, relpaths: Sequence[str]) -> list[int]:
    """Indices of `relpaths` that are not files under `root`.

    Lists each parent directory once (fast for 10^5 files in a few hundred folders) instead of one stat per file.
    """
    listing: dict[str, set[str] | None] = {}
    missing = []
    for i, rel in enumerate(relpaths):
        parent, _, name = rel.rpartition("/")
        if parent not in listing:
            d = root / parent if parent else root
            try:
                listing[parent] = {e.name for e in os.scandir(d) if e.is_file()}
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                listing[parent] = None
        names = listing[parent]
        if names is None or name not in names:
            missing.append(i)
    return missing


def check_missing(root: Path, relpaths: Sequence[str], wheres: Sequence[str], on_missing: OnMissing,
                  source: str) -> tuple[list[int], list[tuple[str, str]]]:
    """Apply the missing-file policy to the paths a split names.

    Args:
        root: the directory the paths are relative to.
        relpaths: normalised relative paths.
        wheres: 'file:line' per path, used in messages.
        on_missing: 'error' raises `MissingFilesError` listing all of them; 'skip' drops them and returns
            (path, reason) records for `Dataset.skipped`; 'ignore' does not look at the disk at all.
        source: the split/list file, for the message.

    Returns:
        (indices to keep, skipped records).
    """
    if on_missing not in ("error", "skip", "ignore"):
        raise DataError(f"on_missing must be 'error', 'skip' or 'ignore', got {on_missing!r}")
    if on_missing == "ignore":
        return list(range(len(relpaths))), []
    missing = find_missing(root, relpaths)
    if not missing:
        return list(range(len(relpaths))), []
    if on_missing == "error":
        pairs = [(relpaths[i], wheres[i]) for i in missing]
        shown = "\n".join(f"  {w}: {p}" for p, w in pairs[:_MAX_LISTED])
        more = f"\n  ... and {len(pairs) - _MAX_LISTED} more" if len(pairs) > _MAX_LISTED else ""
        raise MissingFilesError(
            f"{len(missing)} of {len(relpaths)} files listed in {source} do not exist under {root}:\n{shown}{more}\n"
            "(pass on_missing='skip' to drop them and continue)",
            pairs,
        )
    log.warning("%d of %d files listed in %s are missing under %s; skipped", len(missing), len(relpaths), source, root)
    drop = set(missing)
    keep = [i for i in range(len(relpaths)) if i not in drop]
    return keep, [(relpaths[i], f"missing file ({wheres[i]})") for i in missing]


def list_images(directory: Path) -> list[str]:
    """Image file names directly inside `directory`, sorted; hidden files are left out."""
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        raise DataError(f"cannot list {directory}: {e}") from e
    return sorted(e.name for e in entries if e.is_file() and not e.name.startswith(".") and is_image_name(e.name)
                  and utf8_name(e.name, directory))


def check_unique_names(names: Iterable[str], where: str) -> None:
    """Refuse names that coincide ignoring case: they collide in result files and on case-insensitive disks."""
    seen: dict[str, str] = {}
    for n in names:
        key = n.lower()
        if key in seen:
            raise DataError(f"{where}: duplicate file name {n!r} (also {seen[key]!r}); test file names must be unique")
        seen[key] = n


def read_text_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (a BOM is dropped, CRLF accepted), without line ends."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    return text.splitlines()


def file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8, '\\n' line ends) to `path` via a temporary file and rename, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; the result is an ordinary file (umask respected)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
