"""Batched image-feature extraction: Dataset + Backbone -> L2-normalised features, streaming.

Pipeline (one batch at a time, `prefetch` batches ahead; host memory is bounded by batch_size x max(prefetch,
workers) images, device memory by two batches, whatever the dataset size):

1. **Decode** (`kshot.features.decode`, `ExtractConfig.decode`): 'gpu' reads bytes in workers and decodes JPEGs with
   batched nvJPEG; 'cpu' decodes and resizes/crops to uint8 in worker processes; 'pil' is the reference path
   (`load_image` + the backbone's own PIL `preprocess`). 'auto' picks 'gpu' on CUDA with nvJPEG, else 'cpu'. The
   tensor paths are used only when the backbone's `preprocess` provably does what its `PreprocessCfg` says: a probe
   image is run through both once per backbone (`fast_path_check`), and a mismatch falls back to 'pil' with a log
   line. Augmented views (`view is not None`) always take the PIL path: the augmentations are PIL transforms whose
   random draws are seeded per view and item (`kshot.features.augment`), and the cache must reproduce them exactly.
2. **Decoded-image cache** (`ExtractConfig.image_cache`, optional): missing items are decoded once into a uint8
   memmap (`kshot.features.image_cache`), then every extraction reads crops from it and skips decoding.
3. **Upload**: uint8 crops (4x less traffic than float) from pinned memory, copied — and in 'gpu' mode nvJPEG-decoded
   and resized — on a side CUDA stream while the previous batch is encoded; normalisation `(x/255 - mean)/std` runs
   on the device, fused into the forward step.
4. **Forward** (`_Encoder`): bf16 autocast on CUDA (fp16 where bf16 is missing; `amp=False` keeps fp32),
   channels_last for CNN towers on CUDA (more than one Conv2d; this converts the backbone's weights in place, which
   does not change results), optional `torch.compile` (`ExtractConfig.compile`: one compiled step function per
   process, shared by every call and backbone; batches are padded to one static shape; a failed compilation logs a
   warning and the process runs eagerly). On `torch.OutOfMemoryError` the batch is split in halves and retried; the
   smaller size is kept (per model and device, for later calls too) and logged, down to 1, then a `KshotError`.

CPU threads: decoding runs in worker processes (one torch thread each, set by the DataLoader; one worker per 8 cores,
since a core decodes ~10x faster than a CPU forward pass consumes); for the duration of an extraction on the CPU the
main process's intra-op threads are capped at (cores - workers + 1) and restored afterwards, so the forward keeps
nearly every core. Nothing is changed at import time.

A bad image does not kill a run: it gets a zero feature row, is reported in `ExtractResult.bad` with the message of
`kshot.data.images.load_image`, and the cache manifest records it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from kshot.backbones.base import Backbone
from kshot.data.dataset import Dataset
from kshot.errors import ConfigError, KshotError
from kshot.features.augment import AugmentPolicy
from kshot.features.decode import (
    MODES, FileItems, HostBatch, PilItems, Prefetcher, collate, decode_gpu, resolve_mode,
)
from kshot.features.tensor_transforms import Geometry, Normalizer, fast_path_check
from kshot.progress import bar as progress_bar

log = logging.getLogger(__name__)

SMALL_JOB = 2000
"""Jobs with fewer items decode in the main process by default (starting workers costs more than it saves)."""
COMMIT_EVERY = 4096
"""Items decoded into the image cache between two progress commits (what an interrupted fill may have to redo)."""


@dataclass
class ExtractConfig:
    """Extraction settings (none of them changes the features beyond float/bf16 rounding, so none is in the cache key).

    Attributes:
        batch_size: images per forward pass (CPU default 128; use 512-1024 on a GPU). Lowered automatically after a
            GPU out-of-memory error.
        num_workers: decoding processes; None = automatic (see `resolved_workers`).
        device: 'cpu', 'cuda', ... ; None = CUDA when available.
        amp: autocast (bf16, or fp16 where bf16 is unsupported) on CUDA.
        progress: show a progress bar.
        decode: 'auto' | 'gpu' | 'cpu' | 'pil' (kshot.features.decode).
        image_cache: root folder of the decoded-image cache; None = do not use one.
        compile: run the image tower under `torch.compile` (falls back to eager, with a warning, if it fails).
        prefetch: batches decoded ahead of the forward pass (in total over the workers).
    """

    batch_size: int = 128
    num_workers: int | None = None
    device: str | None = None
    amp: bool = True
    progress: bool = True
    decode: str = "auto"
    image_cache: Path | None = None
    compile: bool = False
    prefetch: int = 4

    def __post_init__(self) -> None:
        if self.decode not in MODES:
            raise ConfigError(f"unknown decode mode {self.decode!r}; choose one of {', '.join(MODES)}")
        if self.batch_size < 1 or self.prefetch < 1:
            raise ConfigError(f"batch_size and prefetch must be >= 1, got {self.batch_size} and {self.prefetch}")
        if self.image_cache is not None:
            self.image_cache = Path(self.image_cache)

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def resolved_workers(self, n_items: int, device: torch.device | None = None, mode: str = "cpu") -> int:
        """Worker processes: `num_workers` if set; 0 for jobs under SMALL_JOB items; on the CPU device one per 8 cores
        (1-4: a core decodes ~500-700 img/s, 10x what a CPU forward of a CLIP tower consumes); on CUDA with GPU
        decoding 4 (they only read bytes); otherwise cores - 1 (at most 32), since CPU decoding is then the
        bottleneck in front of the GPU."""
        if self.num_workers is not None:
            return self.num_workers
        if n_items < SMALL_JOB:
            return 0
        cores = _cores()
        device = device or self.resolved_device()
        if device.type == "cpu":
            return max(1, min(4, cores // 8))
        if mode == "gpu":
            return min(4, cores)
        return max(1, min(32, cores - 1))


@dataclass
class ExtractResult:
    """Output of `extract_features` for one view.

    Attributes:
        features: float32 [len(indices), D], L2-normalised (zero rows where the image was bad).
        bad: (dataset index, reason) of images that could not be read.
    """

    features: torch.Tensor
    bad: list[tuple[int, str]] = field(default_factory=list)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- forward
def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if device.type == "cuda" and enabled:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _is_cnn(model: torch.nn.Module) -> bool:
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


def _encode_step(model: torch.nn.Module, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                 from_uint8: bool, channels_last: bool, amp: torch.dtype | None) -> torch.Tensor:
    """normalise (uint8 input) -> [channels_last] -> encode under autocast -> L2-normalised float32 [n, D].

    A module-level function taking the model as an argument, so one `torch.compile` of it serves every call and
    every backbone (dynamo guards on the model) and the compiled-code cache holds no per-call state.
    """
    if from_uint8:
        x = torch.addcmul(-shift, x.float(), scale)  # (x / 255 - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
        f = model.encode_image(x) if hasattr(model, "encode_image") else model(x)
    return F.normalize(f.float(), dim=-1)


_COMPILED: dict[str, Callable | None] = {}  # 'step' -> compiled _encode_step, or None after a failed compilation
_OOM_LIMITS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, int]]" = weakref.WeakKeyDictionary()


class _Encoder:
    """uint8 or float image batches -> L2-normalised float32 features on the device, with OOM backoff.

    A batch size lowered after an out-of-memory error is remembered per (model, device) for the rest of the process,
    so later `extract_features` calls (FeatureStore makes one per chunk) start from it.
    """

    def __init__(self, backbone: Backbone, device: torch.device, cfg: ExtractConfig):
        self.backbone, self.device, self.amp = backbone, device, _amp_dtype(device, cfg.amp)
        self._limits = _OOM_LIMITS.setdefault(backbone.model, {})
        self.max_batch = min(cfg.batch_size, self._limits.get(str(device), cfg.batch_size))
        self.scale, self.shift = Normalizer(backbone.preprocess_cfg.mean, backbone.preprocess_cfg.std).consts(device)
        self.channels_last = device.type == "cuda" and _is_cnn(backbone.model)
        if self.channels_last:
            backbone.model.to(memory_format=torch.channels_last)
        # Backbone.encode_image is the model's encode_image (or forward); a subclass that changes it runs eagerly
        self.compile = cfg.compile and type(backbone).encode_image is Backbone.encode_image

    def _eager(self, x: torch.Tensor, from_uint8: bool) -> torch.Tensor:
        if type(self.backbone).encode_image is Backbone.encode_image:
            return _encode_step(self.backbone.model, x, self.scale, self.shift, from_uint8, self.channels_last,
                                self.amp)
        if from_uint8:
            x = torch.addcmul(-self.shift, x.float(), self.scale)
        with torch.autocast(x.device.type, dtype=self.amp) if self.amp is not None else contextlib.nullcontext():
            return F.normalize(self.backbone.encode_image(x).float(), dim=-1)

    def _forward(self, x: torch.Tensor, from_uint8: bool) -> torch.Tensor:
        if not self.compile or _COMPILED.get("step", 0) is None:
            return self._eager(x, from_uint8)
        if "step" not in _COMPILED:
            _COMPILED["step"] = torch.compile(_encode_step, dynamic=False)
        n = x.shape[0]
        if n < self.max_batch:  # one static shape: pad the last batch instead of recompiling
            x = torch.cat([x, x.new_zeros(self.max_batch - n, *x.shape[1:])])
        try:
            return _COMPILED["step"](self.backbone.model, x, self.scale, self.shift, from_uint8,
                                     self.channels_last, self.amp)[:n]
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warning("torch.compile failed (%s: %s); running eagerly for the rest of this process",
                        type(e).__name__, msg)
            _COMPILED["step"] = None
            return self._eager(x[:n], from_uint8)

    def __call__(self, x: torch.Tensor, from_uint8: bool = True) -> torch.Tensor:
        """x: uint8 [n, 3, S, S] crops (or float, already normalised, with from_uint8=False) -> float32 [n, D]."""
        outs, start, n = [], 0, x.shape[0]
        while start < n:
            b = min(self.max_batch, n - start)
            try:
                outs.append(self._forward(x[start:start + b], from_uint8))
                start += b
                continue
            except torch.OutOfMemoryError:
                pass  # handled outside the except block so the failed batch's tensors can be freed
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if b == 1:
                raise KshotError(f"out of memory on {self.device} even at batch size 1 while encoding with "
                                 f"{self.backbone.spec!r}; free device memory or use a smaller model or the CPU")
            self.max_batch = self._limits[str(self.device)] = max(1, b // 2)
            log.warning("out of memory on %s at batch size %d; retrying with batch size %d (kept for the rest of "
                        "this run)", self.device, b, self.max_batch)
        if not outs:
            return torch.zeros(0, self.backbone.embed_dim, device=self.device)
        return torch.cat(outs) if len(outs) > 1 else outs[0]


# --------------------------------------------------------------------------- sources
def _loader(items: torch.utils.data.Dataset, cfg: ExtractConfig, workers: int, pin: bool) -> Iterator[HostBatch]:
    from torch.utils.data import DataLoader

    per_worker = max(1, -(-cfg.prefetch // workers)) if workers else None
    return iter(DataLoader(items, batch_size=cfg.batch_size, num_workers=workers, shuffle=False,
                           collate_fn=collate, pin_memory=pin, prefetch_factor=per_worker,
                           persistent_workers=False))


# --------------------------------------------------------------------------- the run
@dataclass
class _Plan:
    device: torch.device
    mode: str
    geom: Geometry | None
    workers: int


def _plan(backbone: Backbone, dataset: Dataset, n: int, cfg: ExtractConfig, view: int | None) -> _Plan:
    device = cfg.resolved_device()
    mode = "pil" if view is not None else resolve_mode(cfg.decode, device)
    geom = None
    if mode != "pil":
        ok, worst, mean = fast_path_check(backbone)
        if ok:
            geom = Geometry.of_backbone(backbone)
        else:
            level = logging.WARNING if cfg.decode in ("gpu", "cpu") else logging.INFO
            log.log(level, "backbone %r: its preprocess differs from the tensor path of its PreprocessCfg (max %.1f, "
                    "mean %.2f levels on the probe); decoding with PIL", backbone.spec, worst, mean)
            mode = "pil"
    return _Plan(device, mode, geom, cfg.resolved_workers(n, device, mode))


@contextlib.contextmanager
def _cpu_threads(plan: _Plan) -> Iterator[None]:
    """On the CPU device, cap intra-op threads at cores - workers + 1 for the run (the decoders are mostly idle, so
    one core is shared), restoring the caller's setting afterwards; a lower setting is kept."""
    before = torch.get_num_threads()
    target = max(1, _cores() - plan.workers + 1)
    change = plan.device.type == "cpu" and before > target
    if change:
        torch.set_num_threads(target)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


def _file_source(backbone: Backbone, dataset: Dataset, indices: list[int], cfg: ExtractConfig, plan: _Plan,
                 policy: AugmentPolicy, view: int | None, pin: bool) -> Iterator[HostBatch]:
    if plan.mode == "pil":
        items: torch.utils.data.Dataset = PilItems(dataset, indices, backbone.preprocess, policy, view,
                                                   backbone.preprocess_cfg.image_size)
    else:
        assert plan.geom is not None
        items = FileItems(dataset, indices, plan.geom, raw_jpeg=plan.mode == "gpu")
    return _loader(items, cfg, plan.workers, pin)


def _fill_cache(cache: Any, dataset: Dataset, missing: list[int], cfg: ExtractConfig, plan: _Plan,
                backbone: Backbone, desc: str) -> None:
    """Decode `missing` dataset items into the image cache, committing every few thousand items."""
    bar = progress_bar(total=len(missing), desc=f"{desc}: decode -> image cache", unit="img", disable=not cfg.progress,
                       leave=False)
    since = 0
    try:
        for host in _file_source(backbone, dataset, missing, cfg, plan, AugmentPolicy(), None, pin=False):
            idx = [missing[p] for p in host.positions.tolist()]
            if len(host.img_rows):
                cache.write([idx[r] for r in host.img_rows.tolist()], host.images)
            if host.jpeg_rows:
                crops, bad = decode_gpu(host, plan.geom, plan.device, dataset)
                host.bad.extend(bad)
                bad_rows = {r for r, _, _ in bad}
                keep = [k for k, r in enumerate(host.jpeg_rows) if r not in bad_rows]
                cache.write([idx[host.jpeg_rows[k]] for k in keep], crops[keep].cpu())
            for _, i, why in host.bad:
                cache.mark_bad(i, why)
            since += len(host)
            bar.update(len(host))
            if since >= COMMIT_EVERY:
                cache.commit()
                since = 0
    finally:
        try:
            cache.commit()  # rows written so far are complete: keep them for the next run
        except Exception as e:
            log.warning("could not record image-cache progress in %s: %s", cache.dir, e)
        bar.close()


@dataclass
class _Staged:
    host: HostBatch
    images: torch.Tensor  # crops of rows `rows`, on the device
    rows: list[int]
    ready: torch.cuda.Event | None


class _Runner:
    """Per batch: upload (and nvJPEG-decode + resize) on a side stream while the previous batch is encoded on the
    compute stream; features come back through pinned memory, one batch behind."""

    def __init__(self, backbone: Backbone, dataset: Dataset, plan: _Plan, encoder: _Encoder):
        self.backbone, self.dataset, self.plan, self.encoder = backbone, dataset, plan, encoder
        self.cuda = plan.device.type == "cuda"
        self.stream = torch.cuda.Stream(plan.device) if self.cuda else None

    def stage(self, host: HostBatch | None) -> _Staged | None:
        if host is None:
            return None
        rows, dev, ev = host.img_rows.tolist(), self.plan.device, None
        with torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext():
            images = host.images.to(dev, non_blocking=True)
            if host.jpeg_rows:
                crops, bad = decode_gpu(host, self.plan.geom, dev, self.dataset)
                host.bad.extend(bad)
                images = torch.cat([images, crops]) if rows else crops
                rows = rows + host.jpeg_rows
            if self.cuda:
                ev = torch.cuda.Event()
                ev.record(self.stream)
        return _Staged(host, images, rows, ev)

    def compute(self, st: _Staged) -> tuple[HostBatch, torch.Tensor, torch.cuda.Event | None]:
        host, dev = st.host, self.plan.device
        if st.ready is not None:
            main = torch.cuda.current_stream(dev)
            main.wait_event(st.ready)
            st.images.record_stream(main)  # allocated on the side stream, consumed here
        feats = torch.zeros(len(host), self.backbone.embed_dim, device=dev)
        if st.rows:
            idx = torch.tensor(st.rows, device=dev)
            feats[idx] = self.encoder(st.images, from_uint8=st.images.dtype == torch.uint8)
        if host.bad:
            feats[torch.tensor([r for r, _, _ in host.bad], device=dev)] = 0.0
        if not self.cuda:
            return host, feats, None
        out = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
        out.copy_(feats, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(dev))
        return host, out, ev

    def run(self, source: Iterator[HostBatch]) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
        it = iter(source)
        staged = self.stage(next(it, None))
        prev = None
        while staged is not None:
            out = self.compute(staged)  # queued on the GPU; the CPU moves on to the next batch
            staged = self.stage(next(it, None))
            if prev is not None:
                yield self._finish(prev)
            prev = out
        if prev is not None:
            yield self._finish(prev)

    @staticmethod
    def _finish(out: tuple[HostBatch, torch.Tensor, torch.cuda.Event | None]
                ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
        host, feats, ev = out
        if ev is not None:
            ev.synchronize()
        return host.positions, feats, [(i, why) for _, i, why in sorted(host.bad)]


def iter_batches(backbone: Backbone, dataset: Dataset, indices: Sequence[int], cfg: ExtractConfig,
                 policy: AugmentPolicy = AugmentPolicy(), view: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Yield (positions within `indices` [B], features [B, D] float32 CPU, bad items) batch by batch."""
    indices = [int(i) for i in indices]
    plan = _plan(backbone, dataset, len(indices), cfg, view)
    encoder = _Encoder(backbone, plan.device, cfg)
    runner = _Runner(backbone, dataset, plan, encoder)
    pin = plan.device.type == "cuda"
    backbone.model.eval()
    with _cpu_threads(plan), torch.no_grad():
        if cfg.image_cache is not None and plan.geom is not None:
            from kshot.features.image_cache import ImageCache

            cache = ImageCache(cfg.image_cache, dataset, plan.geom)
            missing = cache.missing(indices)
            if missing:
                _fill_cache(cache, dataset, missing, cfg, plan, backbone, "extract")
            source: Iterator[HostBatch] = iter(Prefetcher(cache.batches(indices, cfg.batch_size, pin), cfg.prefetch))
        else:
            if cfg.image_cache is not None:
                log.warning("the decoded-image cache is not used for %s (PIL path)",
                            "augmented views" if view is not None else repr(backbone.spec))
            source = _file_source(backbone, dataset, indices, cfg, plan, policy, view, pin)
        yield from runner.run(source)


def extract_features(backbone: Backbone, dataset: Dataset, indices: Sequence[int] | None = None,
                     cfg: ExtractConfig | None = None, policy: AugmentPolicy = AugmentPolicy(),
                     view: int | None = None, desc: str = "extract") -> ExtractResult:
    """Encode `dataset[indices]` (all items by default) -> ExtractResult with features [N, D]."""
    cfg = cfg or ExtractConfig()
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    out = torch.zeros(len(indices), backbone.embed_dim)
    bad: list[tuple[int, str]] = []
    bar = progress_bar(total=len(indices), desc=desc, unit="img", disable=not cfg.progress, leave=False)
    for pos, feats, b in iter_batches(backbone, dataset, indices, cfg, policy, view):
        out[pos] = feats.to(out.dtype)
        bad.extend(b)
        bar.update(len(pos))
    bar.close()
    return ExtractResult(out, bad)
