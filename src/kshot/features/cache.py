"""On-disk feature cache: safetensors parts + a JSON manifest, keyed by everything that changes the features.

Key = hash(format version, backbone fingerprint (architecture + weights + preprocessing), dataset root, item list
(path, label, file size, mtime), augmentation policy and views). A changed key is a different cache entry, so a cache
is never silently stale; a rerun with the same key reuses it.

Layout of one entry `<root>/<key>/`:
  * ``part-<view>-<chunk>.safetensors`` — `features` [stop - start, D] of one chunk of items for one view (`base` or
    the augmented view number), written atomically (temp file + rename) as soon as it is computed. Its safetensors
    metadata carries the entry key, backbone fingerprint, FORMAT_VERSION, view, item range [start, stop), the rank
    that wrote it and the unreadable images it met. An interrupted run resumes from the parts on disk; a part whose
    metadata does not match (another model, chunk size or format; torn) is recomputed with a warning, never joined.
  * ``features.safetensors`` — the joined result (`features` [N, D], `labels` [N], optional `aug` [V, N, D]);
  * ``manifest.json`` — written last: the key fields, shapes, the sha256 of the joined tensors, which rank wrote each
    part and the skipped images.
The parts are deleted once the manifest is written.

Nothing is taken on trust: a part's and the joined file's content hash is checked when they are read, and so is the
joined file's header (entry key, backbone fingerprint, format), so hand-edited values or a file copied in from
another entry are recomputed with a warning, never used. One process fills an entry at a time (a `flock` on the entry
folder, released by the kernel even on `kill -9`): a second `kshot extract` of the same entry waits, then reuses it;
temporary files of killed processes are removed by the next one.

Parts are the unit of sharding: with a `Shard` (kshot.features.distributed) rank r computes parts r, r + W, ... and
rank 0 joins them (see docs/scale-out.md). Memory is bounded: extraction streams one chunk at a time, and the join
needs the output tensors plus one part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kshot.backbones.base import Backbone
from kshot.data.dataset import Dataset, items_signature
from kshot.errors import CacheError
from kshot.features.augment import AugmentPolicy
from kshot.features.distributed import Shard
from kshot.features.extract import ExtractConfig, extract_features
from kshot.features.featureset import FeatureSet
from kshot.outputs import dir_lock, file_mode, write_safetensors

log = logging.getLogger(__name__)
FORMAT_VERSION = 3  # 2: part files carry metadata (entry, fingerprint, format, view, range, rank, bad images);
#                    3: parts, joined file and manifest carry a sha256 of the tensors, checked when read
DEFAULT_CHUNK = 8192


def default_cache_dir() -> Path:
    """`$KSHOT_CACHE` or `~/.cache/kshot/features`."""
    return Path(os.environ.get("KSHOT_CACHE", Path.home() / ".cache" / "kshot")) / "features"


def cache_key(backbone: Backbone, dataset: Dataset, policy: AugmentPolicy) -> tuple[str, dict[str, Any]]:
    fields = {
        "format": FORMAT_VERSION,
        "backbone": backbone.fingerprint,
        "backbone_spec": backbone.spec,
        "preprocess": backbone.preprocess_cfg.to_dict(),
        "items": items_signature(dataset),
        "n_items": len(dataset),
        "augment": policy.key(),
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    return key, fields


TMP_MARK = ".tmp-"  # temporary files of an entry: `<name>.tmp-<host>-<pid>` (host too: ranks share the folder)


def _tmp_path(path: Path) -> Path:
    return path.parent / f"{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}"


def _atomic(path: Path, write: Any) -> None:
    """`write(tmp)` then rename onto `path`; the temporary file is removed on any error (disk full, read-only)."""
    tmp = _tmp_path(path)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    _atomic(path, lambda tmp: write_safetensors({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata))


def _atomic_write_text(text: str, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) over the names, dtypes, shapes and bytes of `tensors`: any edited value changes it."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def _try_load(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception as e:  # a torn or foreign file: recompute it rather than trust it
        log.warning("ignoring unreadable cache file %s (%s)", path, e)
        return None


def _header(key: str, fingerprint: str, digest: str) -> dict[str, str]:
    """The safetensors metadata of a joined `features.safetensors`."""
    return {"entry": key, "fingerprint": fingerprint, "format": str(FORMAT_VERSION), "sha256": digest}


def _read_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


@dataclass(frozen=True)
class Part:
    """One resumable unit: items [start, stop) of one view.

    Attributes:
        number: position in view-major order (base view first); rank `number % world` computes it.
        view: None for the un-augmented view, else the augmented view index.
        start, stop: item range.
        path: the part file.
    """

    number: int
    view: int | None
    start: int
    stop: int
    path: Path

    @property
    def view_label(self) -> str:
        return "base" if self.view is None else str(self.view)

    def expected(self, key: str, fingerprint: str) -> dict[str, str]:
        """The metadata a valid part file carries (all strings, as safetensors stores them)."""
        return {"entry": key, "fingerprint": fingerprint, "format": str(FORMAT_VERSION), "view": self.view_label,
                "start": str(self.start), "stop": str(self.stop)}


def plan_parts(entry: Path, n: int, chunk: int, views: int) -> list[Part]:
    """Every part of an entry of `n` items, `chunk` items per part, base view then `views` augmented views."""
    out: list[Part] = []
    for view in [None, *range(views)]:
        for start in range(0, n, chunk):
            label = "base" if view is None else str(view)
            out.append(Part(len(out), view, start, min(n, start + chunk),
                            entry / f"part-{label}-{start // chunk:05d}.safetensors"))
    return out


def check_part(part: Part, key: str, fingerprint: str, dim: int) -> str | None:
    """None when `part.path` is a valid part of this entry, else why not ('missing', or what does not match).

    Reads only the safetensors header (metadata and shapes), not the features.
    """
    from safetensors import safe_open

    if not part.path.is_file():
        return "missing"
    try:
        with safe_open(str(part.path), "pt") as f:
            meta = f.metadata() or {}
            shape = list(f.get_slice("features").get_shape())
    except Exception as e:  # torn, foreign or no 'features' tensor
        return f"unreadable ({type(e).__name__}: {e})"
    for field, want in part.expected(key, fingerprint).items():
        if meta.get(field) != want:
            return f"metadata {field}={meta.get(field)!r}, expected {want!r}"
    if shape != [part.stop - part.start, dim]:
        return f"features shape {shape}, expected {[part.stop - part.start, dim]}"
    return None


@dataclass
class FeatureStore:
    """Feature cache rooted at `root`.

    Attributes:
        root: cache directory (created on demand).
        chunk: items per resumable part file (the unit of resuming and of sharding over ranks).
        extract: extraction settings.

    After `get`: `last_hit` (True when the result came entirely from a joined entry), `last_computed` (names of the
    parts this process computed) and `last_parts` (number of parts in the entry; 0 on a hit).
    """

    root: Path
    chunk: int = DEFAULT_CHUNK
    extract: ExtractConfig | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.chunk < 1:
            raise CacheError(f"chunk must be >= 1 items per part, got {self.chunk}")
        self.extract = self.extract or ExtractConfig()
        self.last_hit: bool | None = None
        self.last_computed: list[str] = []
        self.last_parts = 0

    def entry_dir(self, backbone: Backbone, dataset: Dataset, policy: AugmentPolicy = AugmentPolicy()) -> Path:
        return self.root / cache_key(backbone, dataset, policy)[0]

    def get(self, backbone: Backbone, dataset: Dataset, policy: AugmentPolicy = AugmentPolicy(),
            name: str = "features", shard: Shard | None = None) -> FeatureSet:
        """Features of every item of `dataset` (+ `policy.views` augmented views), from cache or computed.

        Args:
            backbone, dataset, policy: what to encode (all part of the cache key).
            name: label of the progress bar.
            shard: this process's share when several ranks fill one entry (default: one process does all). Rank r
                computes its parts, waits for the others, rank 0 joins, every rank returns the joined features.

        Raises:
            CacheError: a rank waited `shard.timeout` seconds (0: not at all) and parts were still missing; the
                message names them. The parts on disk are kept for the next run.
        """
        shard = shard or Shard()
        key, fields = cache_key(backbone, dataset, policy)
        entry = self.root / key
        self.last_computed, self.last_parts = [], 0
        if shard.world > 1:
            return self._get(backbone, dataset, policy, name, shard, key, fields)
        entry.mkdir(parents=True, exist_ok=True)
        # One process per entry at a time: a second `kshot extract` of the same entry waits, then reuses the result.
        with dir_lock(entry, lambda: log.warning("waiting for another process filling the cache entry %s", entry)):
            for stale in entry.glob(f"*{TMP_MARK}*"):  # temporary files of killed processes (we hold the lock)
                stale.unlink(missing_ok=True)
            return self._get(backbone, dataset, policy, name, shard, key, fields)

    def _get(self, backbone: Backbone, dataset: Dataset, policy: AugmentPolicy, name: str, shard: Shard, key: str,
             fields: dict[str, Any]) -> FeatureSet:
        entry = self.root / key
        if (entry / "manifest.json").is_file():
            fs = self._load_entry(entry, key, backbone.fingerprint, dataset, repair=shard.rank == 0)
            if fs is not None:
                self.last_hit = True
                return fs
        self.last_hit = False
        entry.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        dim, fp = backbone.embed_dim, backbone.fingerprint
        parts = plan_parts(entry, len(dataset), self.chunk, policy.views)
        self.last_parts = len(parts)
        for part in parts:
            if shard.owns(part.number):
                problem = check_part(part, key, fp, dim)
                if problem is not None:
                    if problem != "missing":
                        log.warning("recomputing cache part %s: %s", part.path, problem)
                    self._compute_part(backbone, dataset, policy, part, key, shard, name)

        def missing_parts() -> list[str]:
            return [f"{p.path.name} (rank {p.number % shard.world})" for p in parts
                    if check_part(p, key, fp, dim) is not None]

        if shard.has_group:
            shard.barrier()  # every rank has written its parts
        if shard.rank != 0:
            if shard.has_group:
                shard.barrier()  # rank 0 has joined them
            else:
                shard.wait_until(lambda: [] if (entry / "manifest.json").is_file()
                                 else missing_parts() or ["manifest.json (rank 0 joins the parts)"],
                                 f"the joined entry {entry}")
            if not (entry / "manifest.json").is_file():
                raise CacheError(f"rank {shard.rank}: rank 0 did not finish joining {entry} (see its error)")
            fs = self._load_entry(entry, key, fp, dataset, repair=False)
            if fs is None:
                raise CacheError(f"rank {shard.rank}: the entry {entry} rank 0 joined is unreadable")
            return fs
        try:
            if shard.has_group:
                left = missing_parts()
                if left:
                    raise CacheError(f"{entry}: after every rank finished, parts are missing or invalid: "
                                     f"{', '.join(left)}; with several nodes the cache folder must be on a "
                                     "filesystem all nodes share")
            else:
                shard.wait_until(missing_parts, f"parts of {entry} computed by other ranks")
            fs = self._join(entry, key, fields, dataset, backbone, policy, parts, t0, shard, name)
        finally:
            if shard.has_group:
                shard.barrier()  # release the other ranks (they fail on a missing manifest if the join failed)
        return fs

    def _compute_part(self, backbone: Backbone, dataset: Dataset, policy: AugmentPolicy, part: Part, key: str,
                      shard: Shard, name: str) -> None:
        desc = name + ("" if part.view is None else f" view {part.view + 1}/{policy.views}")
        if shard.world > 1:
            desc += f" [rank {shard.rank}/{shard.world}]"
        res = extract_features(backbone, dataset, range(part.start, part.stop), self.extract, policy, part.view, desc)
        meta = dict(part.expected(key, backbone.fingerprint), rank=str(shard.rank), world=str(shard.world),
                    host=socket.gethostname(), bad=json.dumps([[int(i), str(r)] for i, r in res.bad]),
                    sha256=tensor_digest({"features": res.features}))
        _atomic_save({"features": res.features}, part.path, meta)
        self.last_computed.append(part.path.name)

    def _read_part(self, part: Part, key: str, fingerprint: str) -> tuple[torch.Tensor, dict[str, str]] | None:
        """A part's features and metadata, or None (with a warning) when its content hash or header does not match."""
        from safetensors import safe_open

        with safe_open(str(part.path), "pt") as f:
            meta = f.metadata() or {}
            if any(meta.get(k) != v for k, v in part.expected(key, fingerprint).items()):
                raise CacheError(f"{part.path} changed while joining (metadata {meta}); re-run")
            feats = f.get_tensor("features")
        if meta.get("sha256") != tensor_digest({"features": feats}):
            log.warning("cache part %s does not match its content hash (edited or corrupted); recomputing it",
                        part.path)
            return None
        return feats, meta

    def _join(self, entry: Path, key: str, fields: dict[str, Any], dataset: Dataset, backbone: Backbone,
              policy: AugmentPolicy, parts: list[Part], t0: float, shard: Shard, name: str) -> FeatureSet:
        """Copy every part into preallocated outputs (one part in memory at a time), save, write the manifest."""
        n, dim = len(dataset), backbone.embed_dim
        features = torch.zeros(n, dim)
        aug = torch.zeros(policy.views, n, dim) if policy.views else None
        bad: dict[int, str] = {}
        written_by: dict[str, int] = {}
        for part in parts:
            got = self._read_part(part, key, backbone.fingerprint)
            if got is None:
                self._compute_part(backbone, dataset, policy, part, key, shard, name)
                got = self._read_part(part, key, backbone.fingerprint)
                if got is None:
                    raise CacheError(f"{part.path}: content hash still wrong after recomputing it (disk fault?)")
            feats, meta = got
            target = features if part.view is None else aug[part.view]  # type: ignore[index]
            target[part.start:part.stop] = feats
            for i, reason in json.loads(meta.get("bad", "[]")):
                bad.setdefault(int(i), reason)
            written_by[part.path.name] = int(meta.get("rank", 0))
        tensors = {"features": features, "labels": torch.as_tensor(dataset.labels)}
        if aug is not None:
            tensors["aug"] = aug
        digest = tensor_digest(tensors)
        _atomic_save(tensors, entry / "features.safetensors", _header(key, backbone.fingerprint, digest))
        manifest = dict(fields, n=n, dim=dim, sha256=digest, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                        seconds=round(time.time() - t0, 3), parts=written_by,
                        skipped=[{"path": dataset.items[i].path, "reason": r} for i, r in sorted(bad.items())])
        _atomic_write_text(json.dumps(manifest, indent=2), entry / "manifest.json")
        for leftover in [*entry.glob("part-*"), *entry.glob(f"*{TMP_MARK}*")]:  # joined parts, temp files of killed ranks
            leftover.unlink(missing_ok=True)
        if bad:
            log.warning("%d unreadable images were skipped (zero features); listed in %s", len(bad),
                        entry / "manifest.json")
        return self._to_featureset(tensors, dataset, bad)

    def _load_entry(self, entry: Path, key: str, fingerprint: str, dataset: Dataset, repair: bool = True
                    ) -> FeatureSet | None:
        """The joined entry, or None when it is incomplete, edited or foreign (`repair`: then drop its manifest so it
        is rebuilt). Checks the file's header (entry key, backbone fingerprint, format) and the content hash the
        manifest recorded, so hand-edited values or a file copied from another entry are never used."""
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"{entry}: unreadable manifest ({e}); delete the folder to rebuild") from None
        path = entry / "features.safetensors"
        tensors = _try_load(path)
        problem = None
        if tensors is None or tensors["features"].shape[0] != manifest.get("n") or manifest.get("n") != len(dataset):
            problem = "is incomplete or inconsistent with its manifest"
        else:
            header = _read_header(path)
            digest = manifest.get("sha256")
            want = _header(key, fingerprint, str(digest))
            wrong = [f"{k}={header.get(k)!r} (expected {v!r})" for k, v in want.items() if header.get(k) != v]
            if manifest.get("backbone") != fingerprint:
                wrong.insert(0, f"manifest backbone={manifest.get('backbone')!r} (expected {fingerprint!r})")
            if wrong:
                problem = f"has a foreign or edited header: {'; '.join(wrong)}"
            elif tensor_digest(tensors) != digest:
                problem = "does not match its content hash (values edited or corrupted)"
        if problem is not None:
            log.warning("cache entry %s %s; rebuilding it", entry, problem)
            if repair:
                (entry / "manifest.json").unlink(missing_ok=True)
            return None
        path_to_i = {it.path: i for i, it in enumerate(dataset.items)}
        bad = {path_to_i[s["path"]]: s["reason"] for s in manifest.get("skipped", []) if s["path"] in path_to_i}
        return self._to_featureset(tensors, dataset, bad)

    @staticmethod
    def _to_featureset(tensors: dict[str, torch.Tensor], dataset: Dataset, bad: dict[int, str]) -> FeatureSet:
        fs = FeatureSet(
            features=tensors["features"],
            labels=tensors["labels"].long(),
            paths=[it.path for it in dataset.items],
            aug_features=tensors.get("aug"),
            domains=dataset.domains,
            skipped=[(dataset.items[i].path, r) for i, r in sorted(bad.items())],
        )
        return fs.subset([i for i in range(len(fs)) if i not in bad]) if bad else fs
