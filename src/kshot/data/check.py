"""`check_dataset`: is `DATA/<folder>` complete and CoOp's? Counts, missing and unreadable images, split overlaps.

Problems (any one fails the check): a half-prepared or absent folder; listed images that do not exist (named by
folder, so a missing class shows as its folder); per-split image counts or the class count differing from CoOp's
published table (for a seeded split, from the counts its manifest recorded, since the per-class rounding differs
from CoOp's); images that do not decode (ImageNet variants included); one path in two splits. Byte-identical images in
two splits are a warning (some official datasets contain a few).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from kshot.data.catalog import Entry, get_entry
from kshot.data.coop_build import VARIANT_IMAGES, variant_images
from kshot.data.dataset import Dataset
from kshot.data.imagenet_variants import load_variant
from kshot.data.paths import MissingFilesError
from kshot.data.prepare import MANIFEST, partial_dir, read_manifest
from kshot.errors import DataError

from kshot.data.benchmarks import load_benchmark

_SHOW = 5


@dataclass
class SplitRow:
    """One split's numbers: images found, images expected (None: nothing to compare with), classes with images."""

    split: str
    images: int
    expected: int | None
    classes: int


@dataclass
class CheckReport:
    """The outcome of `check_dataset`; `ok` is False when `problems` is not empty."""

    name: str
    folder: Path
    split_source: str
    classes: int = 0
    rows: list[SplitRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(name: str, root: Path | str, *, decode: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Check `root/<folder>` of dataset `name`.

    Args:
        decode: also open every image (slow on the full datasets) to find unreadable ones and byte duplicates.
        progress: called as (images done, total) while decoding.
    """
    entry = get_entry(name)
    root = Path(root)
    folder = root / entry.folder
    if not folder.is_dir():
        if partial_dir(root, entry).exists():
            raise DataError(f"{folder}: half-prepared (found {partial_dir(root, entry).name}); re-run "
                            f"`kshot data prepare {entry.name}` to complete it")
        raise DataError(f"{folder}: not found; run `kshot data prepare {entry.name} --root {root}`")
    manifest = read_manifest(folder)
    split = (manifest or {}).get("split", {})
    source = split.get("source", "unknown (no manifest)")
    report = CheckReport(entry.name, folder, source + ("" if split.get("coop", True) else " (NOT CoOp's split)"))
    if manifest is None:
        report.warnings.append(f"no {MANIFEST}: not made by `kshot data prepare`; counts are checked all the same")
    recorded = (manifest or {}).get("counts", {})
    seeded = split.get("coop") is False
    expected = tuple(recorded.get(s) for s in ("train", "val", "test")) if seeded else entry.counts
    if seeded:
        report.warnings.append(f"seeded split (seed {split.get('seed')}), not CoOp's {entry.split_file}: results "
                                   "are not comparable to published ones; counts compared with the manifest")
    if entry.variant:
        _check_variant(entry, folder, expected, report)
        if decode and report.rows:
            try:
                _decode({"test": load_variant(folder, entry.name).dataset}, report, progress)
            except DataError as e:  # e.g. no classnames.txt
                report.problems.append(str(e))
        return report
    splits = _read_splits(entry, folder, report)
    for i, s in enumerate(("train", "val", "test")):
        if s in splits:
            ds = splits[s]
            n_classes = len({it.label for it in ds.items})
            report.rows.append(SplitRow(s, len(ds), expected[i], n_classes))
            report.classes = max(report.classes, ds.num_classes)
            if expected[i] is not None and len(ds) != expected[i]:
                report.problems.append(f"split '{s}': {len(ds)} images, expected {expected[i]} "
                                       f"({_diff(len(ds), expected[i])})")
    if splits and report.classes != entry.classes:
        report.problems.append(f"{report.classes} classes, expected {entry.classes}")
    _overlaps(splits, report)
    if decode and splits:
        _decode(splits, report, progress)
    return report


def _diff(got: int, want: int) -> str:
    return f"{want - got} missing" if got < want else f"{got - want} extra"


def _read_splits(entry: Entry, folder: Path, report: CheckReport) -> dict[str, Dataset]:
    splits = {}
    for s in ("train", "val", "test"):
        if entry.name == "ImageNet" and s == "val":
            continue  # CoOp tests ImageNet on its val set: 'val' and 'test' are one folder
        try:
            splits[s] = load_benchmark(folder, s, entry.name)
        except MissingFilesError as e:
            where = Counter(p.rpartition("/")[0] or "." for p, _ in e.missing)
            shown = ", ".join(f"{d} ({n})" for d, n in where.most_common(_SHOW))
            report.problems.append(f"split '{s}': {len(e.missing)} listed images are missing, under {shown}"
                                   f"{' ...' if len(where) > _SHOW else ''}")
        except DataError as e:
            report.problems.append(f"split '{s}': {e}")
    return splits


def _overlaps(splits: dict[str, Dataset], report: CheckReport) -> None:
    seen: dict[str, str] = {}
    dups = []
    for s, ds in splits.items():
        for it in ds.items:
            if it.path in seen and seen[it.path] != s:
                dups.append(f"{it.path} ({seen[it.path]}, {s})")
            seen.setdefault(it.path, s)
    if dups:
        report.problems.append(f"{len(dups)} images are in two splits: {', '.join(dups[:_SHOW])}")


def _decode(splits: dict[str, Dataset], report: CheckReport, progress: Callable[[int, int], None] | None) -> None:
    total = sum(len(ds) for ds in splits.values())
    bad, by_hash, done = [], defaultdict(set), 0
    for s, ds in splits.items():
        for it in ds.items:
            data = (ds.root / it.path).read_bytes()
            by_hash[hashlib.blake2b(data, digest_size=16).digest()].add((s, it.path))
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
            except (OSError, SyntaxError, ValueError) as e:
                bad.append(f"{it.path} ({e})")
            done += 1
            if progress and (done % 500 == 0 or done == total):
                progress(done, total)
    if bad:
        report.problems.append(f"{len(bad)} images do not decode: {', '.join(bad[:_SHOW])}")
    across = [sorted(v) for v in by_hash.values() if len({s for s, _ in v}) > 1]
    if across:
        report.warnings.append(f"{len(across)} byte-identical images in different splits, e.g. "
                               f"{', '.join(f'{a[0][1]} = {a[1][1]}' for a in across[:3])}")


def _check_variant(entry: Entry, folder: Path, expected: tuple, report: CheckReport) -> None:
    try:
        per_class = variant_images(entry.name, folder)
    except DataError as e:
        report.problems.append(str(e))
        return
    n = sum(per_class.values())
    report.classes = len(per_class)
    report.rows.append(SplitRow("test", n, expected[2], sum(1 for v in per_class.values() if v)))
    if expected[2] is not None and n != expected[2]:
        report.problems.append(f"{VARIANT_IMAGES[entry.name]}: {n} images, expected {expected[2]} "
                               f"({_diff(n, expected[2])})")
    if len(per_class) != entry.classes:
        report.problems.append(f"{len(per_class)} class folders, expected {entry.classes}")
