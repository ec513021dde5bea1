"""On-disk feature cache: safetensors shards + a JSON manifest, keyed by everything that changes the features.

Key = hash(format version, backbone fingerprint (architecture + weights + preprocessing), dataset root, item list
(path, label, file size, mtime), augmentation policy and views). A changed key is a different cache entry, so a cache
is never silently stale; a rerun with the same key reuses it.

Layout of one entry `<root>/<key>/`:
  * ``part-<view>-<chunk>.safetensors`` — features of one chunk of items for one view, each written atomically
    (temp file + rename) as soon as it is computed; an interrupted run resumes from the parts already on disk;
  * ``features.safetensors`` — the joined result (`features` [N, D], `labels` [N], optional `aug` [V, N, D]);
  * ``manifest.json`` — written last: the key fields, shapes and the unreadable images that were skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kshot.backbones.base import Backbone
from kshot.data.dataset import Dataset
from kshot.errors import CacheError
from kshot.features.augment import AugmentPolicy
from kshot.features.extract import ExtractConfig, extract_features
from kshot.features.featureset import FeatureSet

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
DEFAULT_CHUNK = 8192


def default_cache_dir() -> Path:
    """`$KSHOT_CACHE` or `~/.cache/kshot/features`."""
    return Path(os.environ.get("KSHOT_CACHE", Path.home() / ".cache" / "kshot")) / "features"


def items_signature(dataset: Dataset) -> str:
    """Hash of the item list: relative path, label and the file's size and mtime (missing files hash as such)."""
    h = hashlib.sha256()
    h.update(str(dataset.root.resolve()).encode())
    for it in dataset.items:
        try:
            st = (dataset.root / it.path).stat()
            sig = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            sig = "missing"
        h.update(f"{it.path}\t{it.label}\t{sig}\n".encode())
    return h.hexdigest()


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


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _try_load(path: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception as e:  # a torn or foreign file: recompute it rather than trust it
        log.warning("ignoring unreadable cache file %s (%s)", path, e)
        return None


@dataclass
class FeatureStore:
    """Feature cache rooted at `root`.

    Attributes:
        root: cache directory (created on demand).
        chunk: items per resumable part file.
        extract: extraction settings.
    """

    root: Path
    chunk: int = DEFAULT_CHUNK
    extract: ExtractConfig | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.extract = self.extract or ExtractConfig()
        self.last_hit: bool | None = None

    def entry_dir(self, backbone: Backbone, dataset: Dataset, policy: AugmentPolicy = AugmentPolicy()) -> Path:
        return self.root / cache_key(backbone, dataset, policy)[0]

    def get(self, backbone: Backbone, dataset: Dataset, policy: AugmentPolicy = AugmentPolicy(),
            name: str = "features") -> FeatureSet:
        """Features of every item of `dataset` (+ `policy.views` augmented views), from cache or computed.

        Sets `self.last_hit` to True when the result came entirely from the cache.
        """
        key, fields = cache_key(backbone, dataset, policy)
        entry = self.root / key
        manifest_path = entry / "manifest.json"
        if manifest_path.is_file():
            fs = self._load_entry(entry, dataset)
            if fs is not None:
                self.last_hit = True
                return fs
        self.last_hit = False
        entry.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        n = len(dataset)
        views: list[int | None] = [None] + list(range(policy.views))
        per_view: list[torch.Tensor] = []
        bad: dict[int, str] = {}
        for view in views:
            chunks = []
            for start in range(0, n, self.chunk):
                stop = min(n, start + self.chunk)
                part = entry / f"part-{'base' if view is None else view}-{start // self.chunk:05d}.safetensors"
                data = _try_load(part)
                if data is None or data["features"].shape[0] != stop - start:
                    desc = f"{name}" + ("" if view is None else f" view {view + 1}/{policy.views}")
                    res = extract_features(backbone, dataset, range(start, stop), self.extract, policy, view, desc)
                    data = {"features": res.features,
                            "bad": torch.tensor([i for i, _ in res.bad] or [-1], dtype=torch.int64)}
                    _atomic_save(data, part)
                    for i, reason in res.bad:
                        bad[i] = reason
                else:
                    for i in data["bad"].tolist():
                        if i >= 0:
                            bad.setdefault(i, "unreadable (recorded in a previous run)")
                chunks.append(data["features"])
            per_view.append(torch.cat(chunks) if chunks else torch.zeros(0, backbone.embed_dim))
        labels = torch.as_tensor(dataset.labels)
        tensors = {"features": per_view[0], "labels": labels}
        if policy.views:
            tensors["aug"] = torch.stack(per_view[1:])
        _atomic_save(tensors, entry / "features.safetensors")
        manifest = dict(fields, n=n, dim=int(per_view[0].shape[1]), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
                        seconds=round(time.time() - t0, 3),
                        skipped=[{"path": dataset.items[i].path, "reason": r} for i, r in sorted(bad.items())])
        _atomic_write_text(json.dumps(manifest, indent=2), manifest_path)
        for part in entry.glob("part-*.safetensors"):
            part.unlink()
        if bad:
            log.warning("%d unreadable images were skipped (zero features); listed in %s", len(bad), manifest_path)
        return self._to_featureset(tensors, dataset, bad)

    def _load_entry(self, entry: Path, dataset: Dataset) -> FeatureSet | None:
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CacheError(f"{entry}: unreadable manifest ({e}); delete the folder to rebuild") from None
        tensors = _try_load(entry / "features.safetensors")
        if tensors is None or tensors["features"].shape[0] != manifest.get("n") or manifest.get("n") != len(dataset):
            log.warning("cache entry %s is incomplete or inconsistent with its manifest; rebuilding", entry)
            (entry / "manifest.json").unlink()
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
