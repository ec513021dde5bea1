"""Outputs that are never seen half-written: atomic file writes and staged run folders.

* `atomic_write(path, write)`: `write` fills a temporary sibling (`.<name>.<pid>.tmp`), which is renamed onto `path`
  only when it returned; on any error (disk full, read-only folder, a kill signal's `KeyboardInterrupt`) the
  temporary file is removed and `path` keeps its previous content.
* `RunFolder(out)`: a command writes its whole run into a temporary sibling folder (`.<name>.staging-<host>-<pid>`)
  that replaces `out` only when the run succeeded, so a failed run leaves the previous one byte-identical. An
  existing finished run (it holds the `marker` file) is replaced only with `overwrite=True`. Folders left by killed
  processes (`kill -9`) are removed, or restored, by the next run into the same `out`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Callable

from kshot.errors import KshotError


def file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def tmp_sibling(path: Path) -> Path:
    """The temporary file `atomic_write` fills for `path` (hidden, per process)."""
    return path.parent / f".{path.name}.{os.getpid()}.tmp"


_TMP_SIBLING = re.compile(r"^\..+\.(\d+)\.tmp$")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the `tmp_sibling` files under `folder` whose writer no longer runs (a `kill -9` mid-write leaves one;
    a run that resumes in place, e.g. `kshot continual run`, calls this first). Returns the removed paths."""
    removed = []
    for p in sorted(Path(folder).rglob(".*.tmp")) if Path(folder).is_dir() else []:
        m = _TMP_SIBLING.match(p.name)
        if m is None or not p.is_file() or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to create a temporary sibling of `path`, then rename it onto `path`.

    The file gets the ordinary mode (umask respected). On any exception the temporary file is deleted and re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        try:
            write(tmp)
        except Exception as e:
            raise as_os_error(e, tmp) from e
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def as_os_error(e: Exception, path: str | Path) -> Exception:
    """A library's I/O error as the `OSError` it wraps (errno and file named), else `e` itself: safetensors reports a
    full disk or a file-size limit as `SafetensorError('... I/O error: File too large (os error 27)')`."""
    m = re.search(r"os error (\d+)", str(e)) if type(e).__name__ == "SafetensorError" else None
    if m is None:
        return e
    code = int(m.group(1))
    return OSError(code, os.strerror(code), str(path))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8, '\\n' line ends) to `path` atomically (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Refuse early (KshotError) a `folder` whose nearest existing ancestor cannot be written (a read-only file system
    or no permission), before any work is done."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.exists() and not p.is_dir():
        raise KshotError(f"{p} is a file, expected a folder (in the {what} {folder})")
    if not os.access(p, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only_fs(p) else "no write permission"
        raise KshotError(f"cannot write into {p} ({why}); choose another {what} than {folder}")


def _read_only_fs(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    """Stage a run's output folder and swap it in on success.

    Use: `folder = RunFolder(out, overwrite=flag, marker="task.json")`; `folder.check()` early (refuses before any
    work); then `with folder as stage: <write into stage>`. Leaving the block normally commits (the staged folder
    becomes `out`, the old `out` is deleted); an exception deletes the staged folder and leaves `out` untouched.
    `keep_as(path)` inside the block moves the staged folder elsewhere instead (e.g. a refused run's report).

    Attributes:
        path: the final folder.
        overwrite: replace an existing finished run.
        marker: the file whose presence makes a folder a finished run.
        what: how messages name the run (e.g. '`kshot fit` run').
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, marker: str = "task.json", what: str = "run"):
        self.path = Path(path)
        self.overwrite = overwrite
        self.marker = marker
        self.what = what
        self._host = socket.gethostname().replace("-", "_")
        self.stage: Path | None = None
        self._done = False

    def _sibling(self, kind: str) -> Path:
        return self.path.parent / f".{self.path.name}.{kind}-{self._host}-{os.getpid()}"

    def check(self) -> None:
        """Refuse now (KshotError) what `commit` would refuse: a file in the way, a finished run without overwrite, a
        non-empty folder that is not a run."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise KshotError(f"{p} exists and is not a folder; choose another output folder")
        check_writable(p.parent, f"parent of the {self.what} folder")  # the staging folder is made beside `p`
        if not p.is_dir() or not any(p.iterdir()):
            return
        if not (p / self.marker).is_file():
            raise KshotError(f"{p} is not empty and holds no {self.marker} (not a {self.what} folder); refusing to "
                             "replace it: choose another output folder")
        if not self.overwrite:
            raise KshotError(f"{p} already holds a finished {self.what}; pass --overwrite to replace it "
                             "(or choose another output folder)")

    def cleanup_stale(self) -> list[Path]:
        """Remove staging folders of dead processes for this output; restore an old run a killed swap left aside.

        Returns:
            The paths removed or restored.
        """
        out: list[Path] = []
        parent = self.path.parent
        if not parent.is_dir():
            return out
        prefix = f".{self.path.name}."
        for entry in sorted(parent.iterdir()):
            name = entry.name
            if not name.startswith(prefix):
                continue
            kind, _, owner = name[len(prefix):].partition("-")
            host, _, pid = owner.rpartition("-")
            if kind not in ("staging", "old") or not pid.isdigit():
                continue
            if host == self._host and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue  # another live run on this machine
            if kind == "old" and not self.path.exists():
                os.rename(entry, self.path)  # killed between the two renames of a swap: the old run comes back
            else:
                shutil.rmtree(entry, ignore_errors=True)
            out.append(entry)
        return out

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with dir_lock(self.path.parent):
            self.cleanup_stale()
        self.check()
        self.stage = self._sibling("staging")
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage.mkdir()
        self._done = False
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._done:
            self.abort()
            return
        self.commit()

    def commit(self) -> Path:
        """Swap the staged folder in as `path` (under a lock of the parent folder, so concurrent commits serialise)."""
        assert self.stage is not None, "commit outside the `with` block"
        try:
            with dir_lock(self.path.parent):
                self.check()  # another run may have finished into `path` meanwhile
                old = None
                if self.path.is_dir():
                    old = self._sibling("old")
                    os.rename(self.path, old)
                os.rename(self.stage, self.path)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def keep_as(self, path: str | Path) -> Path:
        """Move the staged folder to `path` (replacing what is there) instead of committing it; `path` is returned."""
        assert self.stage is not None, "keep_as outside the `with` block"
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path)
        os.rename(self.stage, path)
        self._done = True
        return path

    def abort(self) -> None:
        """Delete the staged folder (if it is still there)."""
        if self.stage is not None and self.stage.exists():
            shutil.rmtree(self.stage, ignore_errors=True)


class dir_lock:
    """An exclusive `flock` on a folder, held inside the `with` block (no lock file, so nothing is left behind; the
    kernel releases it when the holder dies, even by `kill -9`). `on_wait` is called once if another process holds
    it."""

    def __init__(self, folder: Path, on_wait: Callable[[], object] | None = None):
        self.folder = folder
        self.on_wait = on_wait

    def __enter__(self) -> None:
        try:
            self.fd = os.open(self.folder, os.O_RDONLY)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM):
                raise
            self.fd = -1  # an unreadable folder: no lock (writing into it fails with a clear error anyway)
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self.on_wait is not None:
                self.on_wait()  # another process holds it: say so, then wait
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def write_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` (not atomic by itself), with its I/O errors raised as `OSError` (see
    `as_os_error`), so a full disk or a file-size limit is a one-line error like any other write."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:
        err = as_os_error(e, path)
        if err is e:
            raise
        raise err from e


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (see `atomic_write`, `write_safetensors`)."""
    return atomic_write(path, lambda tmp: write_safetensors(tensors, tmp, metadata))


def save_figure(fig: object, path: str | Path, **kwargs: object) -> Path:
    """`fig.savefig` (a matplotlib figure) to `path` atomically; the format comes from the suffix (default png)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))  # type: ignore[attr-defined]
