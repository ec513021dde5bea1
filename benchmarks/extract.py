"""Extraction throughput: kshot's FeatureStore vs the naive open_clip loop, same model, same JPEGs, one run.

Baseline: open_clip's own preprocess in a PIL DataLoader, fp32, batch 64, min(8, cores) workers, model(...).encode_image.
kshot: `FeatureStore.get` (first run: decode + encode + atomic cache write; rerun: cache hit), on the same device,
with autocast on CUDA. Images: photo-like 500x375 JPEGs at quality 90, generated here.

    python benchmarks/extract.py --model ViT-B-32 --n 256           # CPU here (minutes)
    python benchmarks/extract.py --model ViT-B-32 --n 8192 --batch-size 512 --device cuda

Prints images/s for both and the ratio. Random weights: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_jpegs(root: Path, n: int, seed: int = 0) -> list[Path]:
    """Photo-like 500x375 JPEGs: smooth colour gradients + blobs + sensor noise, quality 90."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    paths = []
    for i in range(n):
        base = rng.uniform(0, 255, 3)
        grad = rng.uniform(-0.3, 0.3, (2, 3))
        img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
        for _ in range(4):
            cx, cy, r = rng.uniform(0, 500), rng.uniform(0, 375), rng.uniform(20, 120)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
            img[mask] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, img.shape)
        p = root / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.preprocess(Image.open(self.paths[i]).convert("RGB"))


def naive(model, preprocess, paths, device, workers: int) -> float:
    loader = torch.utils.data.DataLoader(_Files(paths, preprocess), batch_size=64, num_workers=workers)
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            model.encode_image(x.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from kshot.backbones import load_backbone
    from kshot.data.dataset import Dataset, Item
    from kshot.features import ExtractConfig, FeatureStore

    device = torch.device(args.device)
    workers = min(8, os.cpu_count() or 1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kshot-bench-"))
    paths = make_jpegs(work / "images", args.n)
    bb = load_backbone(f"open_clip:{args.model}", device=str(device))
    print(f"model {args.model} (random init), {args.n} JPEGs 500x375 q90, device {device}, {workers} workers")

    base = naive(bb.model, bb.preprocess, paths, device, workers)
    ds = Dataset(work / "images", [Item(p.name) for p in paths], [], name="bench")
    store = FeatureStore(work / "cache", extract=ExtractConfig(batch_size=args.batch_size, num_workers=workers,
                                                                device=str(device), progress=False))
    t0 = time.perf_counter()
    store.get(bb, ds)
    first = args.n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    store.get(bb, ds)
    rerun = args.n / (time.perf_counter() - t0)
    print(f"{'naive open_clip loop (fp32, bs 64)':<42} {base:10.1f} img/s   1.00x")
    print(f"{'kshot extract, first run':<42} {first:10.1f} img/s   {first / base:.2f}x")
    print(f"{'kshot extract, cached rerun':<42} {rerun:10.1f} img/s   {rerun / base:.2f}x")


if __name__ == "__main__":
    main()
