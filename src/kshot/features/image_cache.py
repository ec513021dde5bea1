"""Decoded-image cache: preprocessed (resized + cropped, not normalised) uint8 crops in one memory-mapped array.

Several backbones with the same input geometry, augmented-view-free re-runs and benchmark sweeps then skip JPEG
decoding entirely: extraction reads slices of the array, uploads uint8 and normalises on the device.

Key = hash(format, item signature (`kshot.data.dataset.items_signature`: root, paths, labels, file sizes and
mtimes), item count, geometry (size, resize mode, crop_pct, interpolation)). The model is not part of the key. A
changed dataset or geometry is a different entry, so an entry is never stale.

Layout of one entry `<root>/<key>/`:
  * ``manifest.json`` — written once at creation: kind, format, the key fields, shape and dtype;
  * ``images.u8`` — raw uint8 [N, 3, S, S], C order, memory-mapped (created sparse, filled chunk by chunk);
  * ``state.npz`` — per-item status (0 = not filled, 1 = ok, 2 = unreadable) and the reasons of unreadable items,
    replaced atomically after the rows it marks were flushed to disk. An interrupted fill resumes from it; rows
    written after the last commit are simply redone. Commits from several processes (torchrun ranks) are merged
    under an advisory lock (`fcntl`, where the OS has it).

A manifest that is unreadable or belongs to something else raises `CacheError` naming the folder; an image file of
the wrong size or an unreadable state file is rebuilt with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from kshot.data.dataset import Dataset, items_signature
from kshot.errors import CacheError
from kshot.features.tensor_transforms import Geometry

if TYPE_CHECKING:
    from kshot.features.decode import HostBatch

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
KIND = "kshot-image-cache"
MISSING, OK, BAD = 0, 1, 2


def image_cache_key(dataset: Dataset, geom: Geometry) -> tuple[str, dict[str, Any]]:
    """(20-hex key, key fields) of `dataset` preprocessed to `geom`."""
    fields = {"kind": KIND, "format": FORMAT_VERSION, "items": items_signature(dataset), "n_items": len(dataset),
              "geometry": geom.key()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20], fields


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): single-process use only
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ImageCache:
    """One cache entry: uint8 crops of every item of `dataset` at geometry `geom`, under `root/<key>/`.

    Args:
        root: cache directory (created on demand).
        dataset: the items (their signature is part of the key).
        geom: resize/crop geometry (part of the key).
    """

    def __init__(self, root: Path | str, dataset: Dataset, geom: Geometry):
        self.dataset, self.geom = dataset, geom
        self.key, self.fields = image_cache_key(dataset, geom)
        self.dir = Path(root) / self.key
        self.n, s = len(dataset), geom.size
        self.shape = (self.n, 3, s, s)
        self._pending: dict[int, str | None] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.dir / ".lock"):
            self._open()
        self.status, self.reasons = self._read_state()

    # ----------------------------------------------------------------- files
    def _open(self) -> None:
        manifest, images = self.dir / "manifest.json", self.dir / "images.u8"
        nbytes = int(np.prod(self.shape))
        if manifest.is_file():
            try:
                meta = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise CacheError(f"{manifest}: unreadable image-cache manifest ({e}); delete {self.dir} to rebuild"
                                 ) from None
            want = dict(self.fields, shape=list(self.shape), dtype="uint8")
            got = {k: meta.get(k) for k in want}
            if got != want:
                diff = sorted(k for k in want if got[k] != want[k])
                raise CacheError(f"{self.dir} is not the decoded-image cache of this dataset/geometry (differs in "
                                 f"{', '.join(diff)}); delete the folder to rebuild")
            if not images.is_file() or images.stat().st_size != nbytes:
                log.warning("image cache %s: images.u8 is missing or has the wrong size; rebuilding it", self.dir)
                self._create_images(images, nbytes)
                (self.dir / "state.npz").unlink(missing_ok=True)
        else:
            self._create_images(images, nbytes)
            (self.dir / "state.npz").unlink(missing_ok=True)
            meta = dict(self.fields, shape=list(self.shape), dtype="uint8", dataset_root=str(self.dataset.root),
                        created=time.strftime("%Y-%m-%dT%H:%M:%S"))
            _atomic_write(manifest, json.dumps(meta, indent=2).encode())
        self._mm = np.memmap(images, dtype=np.uint8, mode="r+", shape=self.shape) if self.n else None

    @staticmethod
    def _create_images(path: Path, nbytes: int) -> None:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}-{threading.get_ident()}")
        with open(tmp, "wb") as f:
            f.truncate(nbytes)  # sparse: disk blocks are allocated as rows are written
        os.replace(tmp, path)

    def _read_state(self) -> tuple[np.ndarray, dict[int, str]]:
        path = self.dir / "state.npz"
        status = np.zeros(self.n, dtype=np.uint8)
        if not path.is_file():
            return status, {}
        try:
            with np.load(path, allow_pickle=False) as z:
                disk, idx, why = z["status"], z["bad_index"], z["bad_reason"]
            if disk.shape != (self.n,) or disk.dtype != np.uint8:
                raise ValueError(f"status has shape {disk.shape} and dtype {disk.dtype}")
        except Exception as e:  # torn or foreign: refill rather than trust it
            log.warning("image cache %s: unreadable state file (%s); refilling every item", self.dir, e)
            return status, {}
        return disk.copy(), {int(i): str(r) for i, r in zip(idx.tolist(), why.tolist())}

    # ----------------------------------------------------------------- filling
    def missing(self, indices: Sequence[int]) -> list[int]:
        """The dataset indices among `indices` not yet in the cache (ok or bad), in the given order."""
        return [int(i) for i in indices if self.status[int(i)] == MISSING]

    def write(self, indices: Sequence[int] | torch.Tensor, images: torch.Tensor) -> None:
        """Write uint8 crops [k, 3, S, S] of dataset `indices` (uncommitted until `commit`)."""
        idx = np.asarray(torch.as_tensor(indices).tolist(), dtype=np.int64)
        if images.shape != (len(idx), *self.shape[1:]) or images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 {(len(idx), *self.shape[1:])}, got {images.dtype} {tuple(images.shape)}")
        arr = images.detach().cpu().numpy()
        if len(idx) and np.all(np.diff(idx) == 1):
            self._mm[idx[0]:idx[-1] + 1] = arr
        elif len(idx):
            self._mm[idx] = arr
        for i in idx.tolist():
            self._pending[i] = None

    def mark_bad(self, index: int, reason: str) -> None:
        """Record that dataset item `index` cannot be read (uncommitted until `commit`)."""
        self._pending[int(index)] = reason

    def commit(self) -> None:
        """Flush written rows to disk, then atomically record them as done (merged with other processes' commits)."""
        if not self._pending:
            return
        if self._mm is not None:
            self._mm.flush()
        with _locked(self.dir / ".lock"):
            status, reasons = self._read_state()
            for i, why in self._pending.items():
                status[i] = OK if why is None else BAD
                if why is None:
                    reasons.pop(i, None)
                else:
                    reasons[i] = why
            bad = sorted(reasons)
            tmp = self.dir / f"state.tmp{os.getpid()}-{threading.get_ident()}.npz"
            np.savez(tmp, status=status, bad_index=np.asarray(bad, dtype=np.int64),
                     bad_reason=np.asarray([reasons[i] for i in bad], dtype=np.str_))
            os.replace(tmp, self.dir / "state.npz")
        self.status, self.reasons = status, reasons
        self._pending.clear()

    # ----------------------------------------------------------------- reading
    def read(self, indices: Sequence[int] | np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [k, 3, S, S] crops of dataset `indices` (rows of unreadable/unfilled items are whatever is stored).

        Args:
            indices: dataset indices; an ascending run is read as one slice.
            out: optional uint8 tensor to copy into (e.g. pinned host memory).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if not len(idx):
            return torch.zeros(0, *self.shape[1:], dtype=torch.uint8) if out is None else out[:0]
        if np.all(np.diff(idx) == 1):  # a view of the map: copy it out
            src = torch.from_numpy(np.asarray(self._mm[idx[0]:idx[-1] + 1]))
            return src.clone() if out is None else out[:len(idx)].copy_(src)
        src = torch.from_numpy(np.asarray(self._mm[idx]))  # fancy indexing already copied
        return src if out is None else out[:len(idx)].copy_(src)

    def batches(self, indices: Sequence[int], batch_size: int, pin: bool = False) -> Iterator["HostBatch"]:
        """`HostBatch`es of the crops of dataset `indices` (positions 0.. within `indices`), read from the map;
        items recorded as unreadable (or not filled) become bad rows. `pin`: read into pinned host memory."""
        from kshot.features.decode import HostBatch

        s = self.geom.size
        indices = [int(i) for i in indices]
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            ok_rows = [r for r, i in enumerate(idx) if self.status[i] == OK]
            buf = torch.empty(len(ok_rows), 3, s, s, dtype=torch.uint8, pin_memory=pin)
            images = self.read([idx[r] for r in ok_rows], out=buf)
            bad = [(r, i, self.bad_reason(i) or "not in the image cache") for r, i in enumerate(idx)
                   if self.status[i] != OK]
            yield HostBatch(positions=torch.arange(start, start + len(idx)), images=images,
                            img_rows=torch.tensor(ok_rows, dtype=torch.int64), bad=bad)

    def bad_reason(self, index: int) -> str | None:
        """The recorded reason if item `index` is unreadable, else None."""
        if self.status[index] != BAD:
            return None
        return self.reasons.get(int(index), "unreadable image (recorded in the image cache)")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
