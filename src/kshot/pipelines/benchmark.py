"""Timing of a whole challenge pipeline on a synthetic replica of the B round (for `benchmarks/challenge.py`).

The replica has the real round's class structure — 374 classes with pool images in the four challenge domains and
29 Stanford-Cars classes without — and synthetic images (a class colour plus noise; only the timing is meaningful).
Backbones default to the seed-004 architectures with random weights (`open_clip:ViT-B-32@random`,
`open_clip:RN101@random`, `timm:convnextv2_base@random`), so no download is needed; `--small` swaps in toy-size
models for a quick CPU run. The anchor is seed 004's README: 20 minutes of inference on an A6000, > 22 GB of GPU memory.
Each call prints one JSON record: total seconds, peak host/GPU memory, and seconds per stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: (domain, classes) of the real B round, in id order (reference/challenge-and-seeds.md §A).
B_ROUND = (("Animal", 52), ("Caltech-101", 91), ("Food-101", 101), ("Thu-dog", 130), ("Stanford-Cars", 29))
REAL_BACKBONES = {"backbones.vit": "open_clip:ViT-B-32@random", "backbones.rn": "open_clip:RN101@random",
                  "backbones.convnext": "timm:convnextv2_base@random"}


def write_synthetic_challenge(root: Path, pool_per_class: int = 6, test_images: int = 2000, image_size: int = 64,
                              seed: int = 0, domains: Sequence[tuple[str, int]] = B_ROUND) -> Path:
    """Write train.txt, classes.txt, classes_b.txt, TrainSet/ and TestSetB/ (JPEG). The last domain has no pool."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names, lines, cid = [], [], 0
    colours = rng.integers(0, 256, size=(sum(n for _, n in domains), 3))

    def image(c: int) -> Image.Image:
        noise = rng.normal(0, 40, size=(image_size, image_size, 3))
        return Image.fromarray(np.clip(colours[c] + noise, 0, 255).astype(np.uint8))

    for d, (domain, n) in enumerate(domains):
        for j in range(n):
            names.append(f"{domain}_class{j}")
            if d < len(domains) - 1:
                folder = root / "TrainSet" / domain / f"class{j}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(pool_per_class):
                    image(cid).save(folder / f"{i}.jpg", quality=85)
                    lines.append(f"TrainSet/{domain}/class{j}/{i}.jpg {cid}")
            cid += 1
    n_seen = cid - domains[-1][1]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names[:n_seen])))
    (root / "classes_b.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    test = root / "TestSetB"
    test.mkdir(exist_ok=True)
    for k, c in enumerate(rng.integers(0, cid, size=test_images)):
        image(int(c)).save(test / f"image_{k:06d}.jpg", quality=85)
    return root


def benchmark(root: Path, config: str = "seed004_clip_b", overrides: dict[str, Any] | None = None,
              device: str | None = None, batch_size: int = 256, workers: int | None = None,
              out: Path | None = None, cache: Path | None = None) -> dict[str, Any]:
    """Run a pipeline once on `root` (cold feature cache unless `cache` is reused) and return its timing record."""
    from kshot.pipelines.configfile import load_config
    from kshot.pipelines.runner import RunOptions, run_challenge

    cfg = load_config(config, overrides or {})
    with tempfile.TemporaryDirectory() as tmp:
        opts = RunOptions(out=out or Path(tmp) / "out", split="testB", cache_dir=cache or Path(tmp) / "cache",
                          device=device, batch_size=batch_size, workers=workers, force=True, save_artifacts=False)
        start = time.perf_counter()
        res = run_challenge(cfg, root, opts)
        total = time.perf_counter() - start
    rep = res.report
    return {"config": cfg.name, "device": rep["device"], "test_images": rep["data"]["test_images"],
            "classes": rep["data"]["num_classes"], "shots": rep["data"]["shots"], "total_s": round(total, 2),
            "peak_host_mb": rep["peak_host_mb"], "peak_gpu_mb": rep["peak_gpu_mb"],
            "stages": {s["name"]: {"fit_s": s.get("fit_s"), "predict_s": round(s.get("predict_s", 0.0), 3),
                                   "fit_peak_gpu_mb": s.get("fit_peak_gpu_mb")} for s in rep["stages"]},
            "parameters": {"loaded": rep["parameters"]["loaded_total"], "by_use": rep["parameters"]["by_use_total"]}}


def small_overrides() -> dict[str, Any]:
    """Toy-size stand-ins for the three seed-004 models (a CPU run in minutes)."""
    return {"backbones.vit": "open_clip:ViT-S-32@random", "backbones.rn": "open_clip:ViT-S-32-alt@random",
            "backbones.convnext": "timm:convnextv2_atto@random"}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, help="existing replica (default: write one to a temp folder)")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--pool-per-class", type=int, default=6)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--config", default="seed004_clip_b")
    p.add_argument("--small", action="store_true", help="smaller random-init models (quick CPU run)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra config override key=value")
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    overrides: dict[str, Any] = dict(REAL_BACKBONES)
    if args.small:
        overrides.update(small_overrides())
    for pair in args.sets:
        k, _, v = pair.partition("=")
        overrides[k] = v
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or write_synthetic_challenge(Path(tmp) / "replica", args.pool_per_class, args.test_images,
                                                      args.image_size)
        rec = benchmark(root, args.config, overrides, args.device, args.batch_size, args.workers)
    print(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
