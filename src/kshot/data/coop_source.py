"""`load_any`: `load_dataset`, except that a CoOp benchmark folder (`$DATA/<folder>`, recognised by its name) is read
through its definition, so FGVCAircraft and ImageNet (no split file) work in every protocol, and an ImageNet variant
folder (`kshot.data.imagenet_variants`) is read as its test split."""

from __future__ import annotations

from pathlib import Path

from kshot.data.dataset import Dataset
from kshot.data.imagenet_variants import is_variant_folder, load_variant
from kshot.data.sources import load_dataset
from kshot.errors import DataError

from kshot.data.benchmarks import find_benchmark, load_benchmark


def load_any(path: Path | str, layout: str = "auto", split: str = "train") -> Dataset:
    """Read `split` of `path`: a CoOp benchmark folder by its definition when `layout` is 'auto', else by layout."""
    path = Path(path)
    variant = is_variant_folder(path) if layout == "auto" else None
    if variant is not None:
        if split != "test":
            raise DataError(f"{path}: {variant.name} is test-only (a domain-generalisation target, e.g. of `kshot "
                            f"bench --protocol dg`); it has no split {split!r}")
        return load_variant(path).dataset
    bench = find_benchmark(path.name) if layout == "auto" and path.is_dir() else None
    if bench is not None and (bench.split_file is None or (path / bench.split_file).is_file()):
        return load_benchmark(path, split, bench.name)
    inside = sorted(p.name for p in path.iterdir() if p.is_dir() and find_benchmark(p.name)) if path.is_dir() else []
    if bench is None and layout == "auto" and inside:
        raise DataError(f"{path} is a folder of datasets; pass one of them, e.g. {path / inside[0]} (found: "
                        f"{', '.join(inside)})")
    return load_dataset(path, layout=layout, split=split)
