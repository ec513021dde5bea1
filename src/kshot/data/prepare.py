"""`prepare_dataset`: build CoOp's layout under `DATA/<folder>` from the official archives, resumably and atomically.

Steps, all inside the temporary sibling `DATA/.<folder>.partial/` (the dataset folder itself only appears, by one
rename, once everything below succeeded):

1. each archive is found in `--from DIR` (or downloaded through torchvision when it has a URL), unpacked into
   `.kshot/tmp/` and moved into place; `.kshot/<archive>.done` is written after it, so a re-run after a kill skips
   the finished archives and redoes the one it was in;
2. the split: `split_zhou_<Name>.json` from `--split-file` or the `--from` folder when present (CoOp's), else a
   seeded per-class split with the proportions of CoOp's published counts, marked `"coop": false` in the manifest
   (results on it are not comparable to papers); FGVCAircraft, ImageNet and the ImageNet variants ship their own;
3. every split is read back (every listed image must exist) and counted;
4. `kshot_manifest.json` is written last, then the folder is renamed into place.

A dataset folder without `kshot_manifest.json` was not made (or not finished) by this command and is refused.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kshot.data.archives import Progress, download, locate, unpack
from kshot.data.catalog import Entry, get_entry
from kshot.data.coop_build import (PLACE, Row, arrange_imagenet_val, list_items, merge_into, unpack_imagenet_train,
                                   variant_images)
from kshot.data.paths import MissingFilesError, atomic_write_text
from kshot.errors import DataError

from kshot.data.benchmarks import BENCHMARKS, load_benchmark

log = logging.getLogger(__name__)

MANIFEST = "kshot_manifest.json"
_STATE = ".kshot"


@dataclass(frozen=True)
class Prepared:
    """What `prepare_dataset` did: the folder, its manifest, and whether it was already there."""

    path: Path
    manifest: dict
    existed: bool


def partial_dir(root: Path, entry: Entry) -> Path:
    """The temporary sibling a dataset is built in."""
    return root / f".{entry.folder}.partial"


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a prepared dataset folder, or None when it has none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt manifest ({e}); delete the folder and prepare it again") from None


def prepare_dataset(name: str, root: Path | str, source: Path | str | None = None, *, split_file: Path | str | None
                    = None, seed: int = 1, mirror: str | None = None, progress: Progress | None = None) -> Prepared:
    """Build `root/<folder>` for dataset `name` (see the module docstring).

    Args:
        name: a catalog name or alias ('Caltech101', 'pets', ...).
        root: the `$DATA` folder.
        source: folder holding the official archives; None downloads those that have a URL.
        split_file: a `split_zhou_<Name>.json` to use (default: the one in `source`, if any).
        seed: seed of the generated split when no split file is at hand.
        mirror: base URL replacing the official download hosts.
        progress: called while unpacking as (archive name, members done, total or 0).
    """
    entry = get_entry(name)
    root, src = Path(root), Path(source) if source is not None else None
    final = root / entry.folder
    if final.exists():
        manifest = read_manifest(final)
        if manifest is None:
            raise DataError(f"{final} exists but was not made by `kshot data prepare` (no {MANIFEST}); move it away "
                            "to rebuild it, or check it with `kshot data check`")
        return Prepared(final, manifest, True)
    if src is not None and not src.is_dir():
        raise DataError(f"--from folder not found: {src}")
    work = partial_dir(root, entry)
    state = work / _STATE
    if work.exists():
        log.warning("%s: resuming a half-prepared dataset", work)
    shutil.rmtree(state / "tmp", ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    archives = []
    downloads = root / ".downloads" / entry.folder
    for archive in entry.archives:
        path = locate(archive, src, downloads)
        if path is None and not archive.required:
            continue
        done = state / f"{archive.filename}.done"
        if path is None and not done.exists():
            if archive.url is None:
                raise DataError(f"{entry.name} needs {archive.filename} ({archive.size}) in the --from folder"
                                + (f": {entry.note}" if entry.note else ""))
            path = download(archive, downloads, mirror)
        if not done.exists():
            _place(archive.filename, path, work, state / "tmp", progress)
            atomic_write_text(done, "")
        archives.append(archive.filename)
    if entry.name == "ImageNet":
        arrange_imagenet_val(work)
    split = _split(entry, work, src, Path(split_file) if split_file else None, seed)
    counts, classes = _count(entry, work, split)
    manifest = {"kshot_manifest": 1, "dataset": entry.name, "folder": entry.folder, "archives": archives,
                "split": split, "counts": counts, "classes": classes,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    shutil.rmtree(state)
    atomic_write_text(work / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    work.rename(final)
    log.info("prepared %s in %s", entry.name, final)
    return Prepared(final, manifest, False)


def _place(filename: str, path: Path, work: Path, tmp: Path, progress: Progress | None) -> None:
    take, dest = PLACE.get(filename, ("", ""))
    shutil.rmtree(tmp, ignore_errors=True)
    unpack(path, tmp, progress)
    if filename == "ILSVRC2012_img_train.tar":
        unpack_imagenet_train(tmp, work / "images" / "train")
    elif (tmp / take).is_dir():
        merge_into(tmp / take, work / dest)
    else:
        raise DataError(f"{path}: expected a folder {take!r} inside; is it the official archive?")
    shutil.rmtree(tmp)


def _split(entry: Entry, work: Path, src: Path | None, given: Path | None, seed: int) -> dict:
    if entry.split_file is None:
        return {"source": "official", "coop": True}
    if given is None and src is not None and (src / entry.split_file).is_file():
        given = src / entry.split_file
    if given is not None:
        if not given.is_file():
            raise DataError(f"--split-file not found: {given}")
        shutil.copyfile(given, work / entry.split_file)
        return {"source": "file", "file": given.name, "coop": given.name == entry.split_file}
    rows = list_items(entry.name, work)
    if not rows:
        raise DataError(f"{entry.name}: the archives hold no labelled images")
    atomic_write_text(work / entry.split_file, json.dumps(seeded_split(rows, entry.counts, seed)) + "\n")
    log.warning("%s: no %s at hand: wrote a seeded split (seed %d) with CoOp's proportions; results on it are not "
                "comparable to published ones", entry.name, entry.split_file, seed)
    return {"source": "seeded", "seed": seed, "coop": False}


def seeded_split(rows: list[Row], counts: tuple[int, int | None, int], seed: int) -> dict[str, list[list]]:
    """Split `rows` per class into train/val/test with the proportions of `counts` (rounded as CoOp rounds).

    Returns:
        the split-file object {"train": [[path, label, classname], ...], "val": ..., "test": ...}.
    """
    total = sum(c or 0 for c in counts)
    p_train, p_val = counts[0] / total, (counts[1] or 0) / total
    by_class: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        by_class[r[1]].append(r)
    rng = random.Random(seed)
    out: dict[str, list[list]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        items = sorted(by_class[label])
        rng.shuffle(items)
        n_train, n_val = round(len(items) * p_train), round(len(items) * p_val)
        for split, part in (("train", items[:n_train]), ("val", items[n_train:n_train + n_val]),
                            ("test", items[n_train + n_val:])):
            out[split] += [list(r) for r in part]
    return out


def _count(entry: Entry, work: Path, split_info: dict) -> tuple[dict[str, int], int]:
    """Images per split, read back through the CoOp readers (a missing listed image is a one-line error naming the
    split file when one was given), and classes."""
    if entry.variant:
        per_class = variant_images(entry.name, work)
        return {"test": sum(per_class.values())}, len(per_class)
    counts, classes = {}, 0
    for split in ("train", "val", "test"):
        if entry.name == "ImageNet" and split == "val":
            continue
        try:
            ds = load_benchmark(work, split, BENCHMARKS[entry.name].name)
        except MissingFilesError as e:
            given = split_info.get("file")
            raise DataError(f"{entry.name}: split '{split}' of {given or entry.split_file} lists {len(e.missing)} "
                            f"image(s) the archives do not hold (e.g. {e.missing[0][0]})"
                            + (f": is {given} the split file of {entry.name}?" if given else "")) from None
        counts[split], classes = len(ds), max(classes, ds.num_classes)
    return counts, classes
