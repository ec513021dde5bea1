"""Extraction throughput, one run, same generated JPEGs and same model (random weights: speed does not depend on them).

Rows:
  (a) naive: open_clip's own eval preprocess in a PIL DataLoader, fp32, batch 64, min(8, cores) workers,
      `model.encode_image` — the obvious loop users write (issue 9 measured it at 1,727 img/s for ViT-B/32 on the H100);
  (b) kshot from JPEG files: `extract_features` (decode 'auto': batched nvJPEG on CUDA, worker processes on CPU;
      uint8 upload; bf16 autocast on CUDA);
  (c) kshot from the decoded-image cache (filled once first; the fill rate is reported too);
  (d) kshot's pure forward: uint8 crops already on the device -> normalise -> encode (the ceiling for b and c).
Warm-up (cudnn autotuning, torch.compile) is kept out of the kshot rows: on CUDA the JPEG row first extracts two
batches, the cache row follows its fill run, the forward row runs two batches first; the naive row is timed as users
run it. Images: photo-like 500x375 JPEGs at quality 90 (gradient + blobs + sensor noise, ~40-75 KiB).

Targets on one H100 for ViT-B/32 (issue 9; not tests): (d) >= ~32k img/s (timm's compiled figure there), (c) >= 0.9x
(d), (b) >= 10k img/s and >= 5x (a).

    python benchmarks/extract.py                                   # CPU defaults: ViT-S-32, 64 images (< 2 min)
    python benchmarks/extract.py --model ViT-B-32 --n 8192 --batch-size 1024 --device cuda --compile --json out.json
    python benchmarks/extract.py --model RN50 --forward-only --device cuda --batch-size 512
    bash benchmarks/gpu_extract.sh                                 # the prepared one-call H100 run
        (prepare its wheels first, with network: pip download open_clip_torch ftfy wcwidth --no-deps -d .wheels)

Prints a Markdown table (images/s and ratios); --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing


def _one_jpeg(args: tuple[Path, int, int]) -> Path:
    path, i, seed = args
    rng = np.random.default_rng([seed, i])
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    base, grad = rng.uniform(0, 255, 3), rng.uniform(-0.3, 0.3, (2, 3))
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 500), rng.uniform(0, 375), rng.uniform(20, 120)
        img[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def make_jpegs(root: Path, n: int, seed: int = 0, workers: int = 1) -> list[Path]:
    """n photo-like 500x375 JPEGs (quality 90) under root, generated in `workers` processes; existing files kept."""
    root.mkdir(parents=True, exist_ok=True)
    todo = [(root / f"img_{i:05d}.jpg", i, seed) for i in range(n) if not (root / f"img_{i:05d}.jpg").is_file()]
    if workers > 1 and len(todo) > 64:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_one_jpeg, todo, chunksize=32))
    else:
        for t in todo:
            _one_jpeg(t)
    return [root / f"img_{i:05d}.jpg" for i in range(n)]


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(Image.open(self.paths[i]).convert("RGB"))


def open_clip_preprocess(model):
    """open_clip's own eval transform for `model` (its per-model preprocess config)."""
    import open_clip
    from open_clip import transform

    raw = open_clip.get_model_preprocess_cfg(model)
    fields = {k: v for k, v in raw.items() if k in transform.PreprocessCfg.__dataclass_fields__}
    return transform.image_transform_v2(transform.PreprocessCfg(**fields), is_train=False)


def naive(model, preprocess, paths: list[Path], device: torch.device, workers: int) -> float:
    loader = torch.utils.data.DataLoader(_Files(paths, preprocess), batch_size=64, num_workers=workers)
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            model.encode_image(x.to(device))
    _sync(device)
    return len(paths) / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rates(paths: list[Path], pil_preprocess, geom, n: int = 64) -> dict[str, float]:
    """Per-core decode + preprocess rates in this process (one torch thread): open_clip's PIL path vs kshot's CPU path
    (torchvision libjpeg-turbo + uint8 resize/crop). This is what bounds 'cpu' decoding in front of a GPU."""
    from kshot.features.decode import load_crop

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, fn in (("pil_per_core", lambda p: pil_preprocess(Image.open(p).convert("RGB"))),
                         ("kshot_cpu_per_core", lambda p: load_crop(p, geom))):
            fn(paths[0])
            t0 = time.perf_counter()
            for p in paths[:n]:
                fn(p)
            out[name] = round(min(n, len(paths)) / (time.perf_counter() - t0), 1)
        return out
    finally:
        torch.set_num_threads(threads)


def timed_extract(bb, ds, cfg, warm: int) -> float:
    from kshot.features.extract import extract_features

    if warm:
        extract_features(bb, ds, list(range(min(warm, len(ds)))), cfg)
    t0 = time.perf_counter()
    res = extract_features(bb, ds, None, cfg)
    _sync(cfg.resolved_device())
    if res.bad:
        raise RuntimeError(f"benchmark images unreadable: {res.bad[:3]}")
    return len(ds) / (time.perf_counter() - t0)


def forward_rate(bb, cfg, n: int) -> float:
    """kshot's encoder on uint8 crops already on the device: normalise + encode (+ compile), n images."""
    from kshot.features.extract import _Encoder

    device = cfg.resolved_device()
    s = bb.preprocess_cfg.image_size
    enc = _Encoder(bb, device, cfg)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, 256, (cfg.batch_size, 3, s, s), dtype=torch.uint8, generator=g).to(device)
    steps = max(1, n // cfg.batch_size)
    with torch.no_grad():
        for _ in range(2):
            enc(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            enc(x)
        _sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="open_clip architecture (random init); default ViT-S-32 on CPU, "
                                                  "ViT-B-32 on CUDA")
    ap.add_argument("--n", type=int, default=None, help="images (default 64 on CPU, 8192 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="kshot batch (default 64 on CPU, as the naive loop; 1024 on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--decode", default="auto", choices=["auto", "gpu", "cpu", "pil"])
    ap.add_argument("--workers", type=int, default=None, help="kshot decode workers (default: ExtractConfig's rule)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the image tower (rows b-d)")
    ap.add_argument("--forward-only", action="store_true", help="only row (d)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--workdir", default=None, help="where the JPEGs and caches go (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model_name = args.model or ("ViT-B-32" if cuda else "ViT-S-32")
    n = args.n or (8192 if cuda else 64)
    batch = args.batch_size or (1024 if cuda else 64)
    cores = os.cpu_count() or 1
    if not cuda:
        torch.set_num_threads(cores)  # a benchmark process owns the machine; extraction lowers it while workers run

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from kshot.backbones import load_backbone
    from kshot.data.dataset import Dataset, Item
    from kshot.features.extract import ExtractConfig

    t0 = time.perf_counter()
    bb = load_backbone(f"open_clip:{model_name}@random", device=str(device))
    load_s = time.perf_counter() - t0
    from kshot.features.decode import resolve_mode

    mode = resolve_mode(args.decode, device)
    # workers as ExtractConfig picks them for a large job (small jobs decode in the main process by default)
    workers = args.workers if args.workers is not None else ExtractConfig().resolved_workers(10**9, device, mode)
    cfg = ExtractConfig(batch_size=batch, num_workers=workers, device=str(device), progress=False,
                        decode=args.decode, compile=args.compile)
    rows: dict[str, float] = {}
    extra: dict[str, float] = {"load_s": round(load_s, 2)}
    if not args.forward_only:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="kshot-bench-"))
        t0 = time.perf_counter()
        paths = make_jpegs(work / "images", n, workers=min(16, cores))
        extra["generate_s"] = round(time.perf_counter() - t0, 2)
        ds = Dataset(work / "images", [Item(p.name) for p in paths], [], name="bench")
        from kshot.features.tensor_transforms import Geometry

        extra["decode_img_s"] = decode_rates(paths, open_clip_preprocess(bb.model), Geometry.of_backbone(bb))
        naive_workers = min(8, cores)
        if not args.skip_naive:
            rows["naive"] = naive(bb.model, open_clip_preprocess(bb.model), paths, device, naive_workers)
        rows["jpeg"] = timed_extract(bb, ds, cfg, warm=2 * batch if cuda else 0)
        cache_cfg = ExtractConfig(**{**cfg.__dict__, "image_cache": work / f"image-cache-{os.getpid()}"})
        from kshot.features.extract import extract_features

        t0 = time.perf_counter()
        extract_features(bb, ds, None, cache_cfg)  # fills the cache (and encodes once)
        extra["cache_fill_and_encode_img_s"] = round(n / (time.perf_counter() - t0), 1)
        rows["cache"] = timed_extract(bb, ds, cache_cfg, warm=0)
    rows["forward"] = forward_rate(bb, cfg, max(n, 4 * batch) if cuda else n)

    labels = {
        "naive": f"naive: open_clip preprocess, PIL DataLoader ({min(8, cores)} workers), fp32, batch 64",
        "jpeg": f"kshot from JPEG files (decode={mode}, {workers} worker{'s' * (workers != 1)}, batch {batch})",
        "cache": f"kshot from the decoded-image cache (batch {batch})",
        "forward": f"kshot forward only, uint8 on {device.type} (batch {batch})",
    }
    amp = "bf16 autocast" if cuda and torch.cuda.is_bf16_supported() else ("fp16 autocast" if cuda else "fp32")
    title = (f"{model_name} (random init), {n} JPEGs 500x375 q90, {device.type}"
             f"{' ' + torch.cuda.get_device_name(device) if cuda else ''}, {cores} cores, kshot {amp}"
             f"{', torch.compile' if args.compile else ''}")
    print(f"\n{title}\n")
    print("| path | images/s | vs naive | vs forward |")
    print("|---|---:|---:|---:|")
    for key, rate in rows.items():
        vs_naive = f"{rate / rows['naive']:.2f}x" if "naive" in rows else "-"
        vs_fwd = f"{rate / rows['forward']:.2f}x"
        print(f"| {labels[key]} | {rate:,.0f} | {vs_naive} | {vs_fwd} |" if rate >= 100 else
              f"| {labels[key]} | {rate:.1f} | {vs_naive} | {vs_fwd} |")
    if "decode_img_s" in extra:
        d = extra["decode_img_s"]
        print(f"\nDecode + preprocess per core (1 thread): open_clip PIL {d['pil_per_core']} img/s, kshot CPU path "
              f"{d['kshot_cpu_per_core']} img/s ({d['kshot_cpu_per_core'] / d['pil_per_core']:.2f}x)")
    extra["loadavg_1min_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    print(f"\n(cache fill + first encode: {extra.get('cache_fill_and_encode_img_s', '-')} img/s; "
          f"JPEG generation {extra.get('generate_s', '-')} s; model load {extra['load_s']} s; "
          f"1-min load average at the end {extra['loadavg_1min_end']} on {cores} cores)")
    if args.json:
        out = {"title": title, "model": model_name, "n": n, "batch_size": batch, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
               "cores": cores, "decode": mode, "workers": workers, "compile": args.compile, "amp": amp,
               "img_per_s": {k: round(v, 1) for k, v in rows.items()},
               "ratios": {f"{k}/naive": round(v / rows["naive"], 3) for k, v in rows.items() if "naive" in rows}
               | {f"{k}/forward": round(v / rows["forward"], 3) for k, v in rows.items()},
               "extra": extra, "versions": {"torch": torch.__version__, "python": platform.python_version()}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
