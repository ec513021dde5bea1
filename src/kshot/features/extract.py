"""Batched image-feature extraction: Dataset + Backbone -> L2-normalised features, streaming.

Images are decoded in DataLoader workers (PIL, via `kshot.data.images.load_image`, which converts any mode to RGB and
rejects corrupt files). A bad image does not kill a run: it is skipped, reported at the end and recorded by the cache
manifest. On CUDA the encoder runs under bf16 autocast (fp16 where bf16 is missing) with pinned host memory.
Memory stays bounded by batch size × prefetch, plus the [N, D] output.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from kshot.backbones.base import Backbone
from kshot.data.dataset import Dataset
from kshot.errors import DataError
from kshot.features.augment import AugmentPolicy, apply_view, build_augment, view_seed

log = logging.getLogger(__name__)


@dataclass
class ExtractConfig:
    """Extraction settings (none of them changes the features, so none is part of the cache key).

    Attributes:
        batch_size: images per forward pass (CPU default 128; use 512–1024 on a GPU).
        num_workers: decoding processes; None = automatic (0 for small jobs, else up to 8 and the core count).
        device: 'cpu', 'cuda', ... ; None = CUDA when available.
        amp: autocast (bf16, or fp16 where bf16 is unsupported) on CUDA.
        progress: show a progress bar.
    """

    batch_size: int = 128
    num_workers: int | None = None
    device: str | None = None
    amp: bool = True
    progress: bool = True

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def resolved_workers(self, n_items: int) -> int:
        if self.num_workers is not None:
            return self.num_workers
        if n_items < 2000:
            return 0
        return max(0, min(8, (os.cpu_count() or 1)))


class _ImageItems(TorchDataset):
    """Decodes item `i` (optionally augmented view `view`); returns (tensor, index, error message or '')."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], preprocess: Callable, image_size: int,
                 policy: AugmentPolicy, view: int | None):
        self.dataset, self.indices, self.preprocess = dataset, list(indices), preprocess
        self.policy, self.view = policy, view
        self.aug = build_augment(policy, image_size) if view is not None else None
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int, str]:
        from kshot.data.images import load_image

        i = self.indices[j]
        try:
            img = load_image(self.dataset.abspath(i))
            if self.aug is not None:
                img = apply_view(self.aug, img, view_seed(self.policy, self.view, i))
            return self.preprocess(img), i, ""
        except DataError as e:
            return torch.zeros(3, self.image_size, self.image_size), i, str(e)


@dataclass
class ExtractResult:
    """Output of `extract_features` for one view.

    Attributes:
        features: float32 [len(indices), D], L2-normalised (zero rows where the image was bad).
        bad: (dataset index, reason) of images that could not be read.
    """

    features: torch.Tensor
    bad: list[tuple[int, str]] = field(default_factory=list)


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def iter_batches(backbone: Backbone, dataset: Dataset, indices: Sequence[int], cfg: ExtractConfig,
                 policy: AugmentPolicy = AugmentPolicy(), view: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
    """Yield (positions within `indices` [B], features [B, D] float32 CPU, bad items) batch by batch."""
    device = cfg.resolved_device()
    items = _ImageItems(dataset, indices, backbone.preprocess, backbone.preprocess_cfg.image_size, policy, view)
    workers = cfg.resolved_workers(len(items))
    loader = DataLoader(items, batch_size=cfg.batch_size, num_workers=workers, shuffle=False,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    pos = {i: p for p, i in enumerate(indices)}
    backbone.model.eval()
    with torch.no_grad():
        for images, idx, errors in loader:
            images = images.to(device, non_blocking=True)
            if device.type == "cuda" and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                feats = backbone.encode_image(images)
            feats = F.normalize(feats.float(), dim=-1).cpu()
            bad = [(int(i), e) for i, e in zip(idx.tolist(), errors) if e]
            if bad:
                bad_rows = torch.tensor([k for k, e in enumerate(errors) if e])
                feats[bad_rows] = 0.0
            yield torch.tensor([pos[int(i)] for i in idx]), feats, bad


def extract_features(backbone: Backbone, dataset: Dataset, indices: Sequence[int] | None = None,
                     cfg: ExtractConfig | None = None, policy: AugmentPolicy = AugmentPolicy(),
                     view: int | None = None, desc: str = "extract") -> ExtractResult:
    """Encode `dataset[indices]` (all items by default) -> ExtractResult with features [N, D]."""
    from tqdm.auto import tqdm

    cfg = cfg or ExtractConfig()
    indices = list(range(len(dataset))) if indices is None else list(indices)
    out = torch.zeros(len(indices), backbone.embed_dim)
    bad: list[tuple[int, str]] = []
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=not cfg.progress, leave=False)
    for pos, feats, b in iter_batches(backbone, dataset, indices, cfg, policy, view):
        out[pos] = feats
        bad.extend(b)
        bar.update(len(pos))
    bar.close()
    return ExtractResult(out, bad)
