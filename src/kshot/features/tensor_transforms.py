"""Tensor preprocessing: uint8 images -> resize + center crop (uint8 [3, S, S]) -> normalised float, on any device.

The geometry follows `kshot.backbones.transforms.ImagePreprocess` (open_clip's / timm's eval transform) exactly:
'shortest' resizes the short side to S / crop_pct (floor) with the long side truncated as torchvision computes it, then
center-crops S x S (offsets rounded as torchvision's `center_crop`); 'squash' resizes both sides; 'longest' fits the
long side and pads centred with black. Interpolation is antialiased bicubic/bilinear, or nearest with Pillow's
source-pixel rule. The resized image is rounded to uint8, as PIL does, so the uint8 crop is what a decoded-image cache
stores and normalisation `(x / 255 - mean) / std` is a separate step that runs on the accelerator.

Resampling is separable, in two passes rounded to uint8 in between, in the order Pillow uses (horizontal first;
Pillow 13 goes vertical first when the height loses more than twice as many pixels as the width — probed once at run
time, `pil_vertical_first_rule`); columns/rows outside the crop are dropped after their pass. Two kernels:

* CPU: torch's native uint8 antialiased kernels on channels-last tensors (each pass rounds to uint8 as Pillow does).
* GPU (and CPU with ``float_path=True``): float kernels, rounded and clamped to [0, 255] after each pass.

Measured against Pillow 13's `Image.resize` on the same decoded pixels (tests/features/test_tensor_transforms.py:
500x375, 333x500 progressive, grey, RGBA, palette, CMYK, 30x20 and EXIF-tagged files; shortest/crop_pct 0.875/
squash/longest): bicubic max 2 levels, mean <= 0.011 (uint8 kernel) and <= 0.0005 (float kernel); bilinear max 2,
mean <= 0.048; nearest bit-exact (Pillow's running-sum source index is reproduced). 200 random sizes (up- and
downscaling, both orders): max 2, mean 0.005 (uint8) / 0.0004 (float). Doing both passes in one call instead, as
`F.interpolate` would, errs by up to 26 levels on Pillow 13's vertical-first cases. The CUDA float kernels were not
measured here (no GPU in this session); they may round differently in the last bit, i.e. one more level on a few
pixels.

After normalisation one level is 1 / (255 * std) ~ 0.015 in model-input units. Features through this path vs the PIL
path: 1 - cos <= 2e-7 in fp32 for toy:clip and a 224 px open_clip ViT; under bf16 autocast 1 - cos ~ 2e-5, which is
what bf16 costs the PIL path too.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from kshot.backbones.base import PreprocessCfg
from kshot.errors import ConfigError

log = logging.getLogger(__name__)

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class Geometry:
    """Where the pixels of the model input come from (everything but normalisation).

    Attributes:
        size: side S of the square model input, pixels.
        resize_mode: 'shortest' | 'squash' | 'longest' (see the module docstring).
        crop_pct: center-crop fraction; the resize target is floor(S / crop_pct) when < 1 (timm eval transform).
        interpolation: 'bicubic' | 'bilinear' | 'nearest'.
    """

    size: int = 224
    resize_mode: str = "shortest"
    crop_pct: float = 1.0
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ConfigError(f"image size must be positive, got {self.size}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @classmethod
    def from_cfg(cls, cfg: PreprocessCfg, crop_pct: float | None = None) -> "Geometry":
        """Geometry of a `PreprocessCfg` (crop_pct overrides `cfg.crop_pct`, as `build_preprocess` allows)."""
        pct = float(cfg.crop_pct if crop_pct is None else crop_pct)
        return cls(int(cfg.image_size), cfg.resize_mode, pct, cfg.interpolation)

    @classmethod
    def of_backbone(cls, backbone: Any) -> "Geometry":
        """Geometry of `backbone.preprocess` (its own `crop_pct` when it has one, else the config's)."""
        return cls.from_cfg(backbone.preprocess_cfg, getattr(backbone.preprocess, "crop_pct", None))

    def key(self) -> dict[str, Any]:
        return {"size": self.size, "resize_mode": self.resize_mode, "crop_pct": self.crop_pct,
                "interpolation": self.interpolation}

    def resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """Size (height, width) an h x w image is resized to before the crop/pad."""
        s = self.size
        if self.resize_mode == "longest":
            ratio = max(w, h) / s
            return max(1, round(h / ratio)), max(1, round(w / ratio))
        scaled = math.floor(s / self.crop_pct) if self.crop_pct < 1.0 else s
        if self.resize_mode == "squash":
            return scaled, scaled
        if w <= h:  # torchvision's rule: short side = scaled, long side truncated
            return int(scaled * h / w), scaled
        return scaled, int(scaled * w / h)


def _interp_kwargs(mode: str) -> dict[str, Any]:
    return {"mode": mode, "antialias": True, "align_corners": False}


def _crop_offset(n: int, s: int) -> int:
    return int(round((n - s) / 2.0))  # torchvision center_crop


def _float_two_pass(x: torch.Tensor, resize_h: Callable, resize_w: Callable, vertical_first: bool) -> torch.Tensor:
    y = x.float()
    for step in ((resize_h, resize_w) if vertical_first else (resize_w, resize_h)):
        y = step(y, lambda t: t.round_().clamp_(0, 255))
    return y.to(torch.uint8)


@functools.cache
def pil_vertical_first_rule() -> bool:
    """Does the installed Pillow resample vertically first when the height shrinks more than twice as many pixels as
    the width (Pillow 13; earlier versions always go horizontal first)? Probed once on a small random image."""
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (61, 20), dtype=np.uint8)
    ref = torch.from_numpy(np.asarray(Image.fromarray(arr).resize((18, 10), Image.Resampling.BICUBIC)).copy())
    t = torch.from_numpy(arr)[None, None].float()
    kw = _interp_kwargs("bicubic")
    errs = []
    for first in ((10, 20), (61, 18)):  # vertical pass first, horizontal pass first
        y = F.interpolate(t, size=first, **kw).round_().clamp_(0, 255)
        y = F.interpolate(y, size=(10, 18), **kw).round_().clamp_(0, 255)
        errs.append(float((y[0, 0] - ref.float()).abs().mean()))
    return errs[0] < errs[1]


def _vertical_first(h: int, w: int, nh: int, nw: int) -> bool:
    return nh < h and (h - nh) > 2 * (w - nw) and pil_vertical_first_rule()


def _nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source index of each output pixel exactly as Pillow's NEAREST resize computes it (a running double sum of
    the scale from half a step, truncated), so no pixel lands one off."""
    import numpy as np

    scale = n_in / n_out
    pos = np.cumsum(np.concatenate([[scale * 0.5], np.full(n_out - 1, scale)]))
    return torch.from_numpy(np.clip(pos.astype(np.int64), 0, n_in - 1)).to(device)


def resize_crop(images: torch.Tensor, geom: Geometry, *, float_path: bool | None = None) -> torch.Tensor:
    """Resize and center-crop (or pad) images of one size to the model input, staying uint8.

    Args:
        images: uint8 [C, H, W] or [B, C, H, W], C = 1 (grey) or 3 (RGB), on any device.
        geom: target geometry.
        float_path: use the rounded float kernel; None = on every device except the CPU.

    Returns:
        uint8 [3, S, S] or [B, 3, S, S] on the input's device (grey is repeated to 3 channels after resizing).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"resize_crop expects uint8 images, got {images.dtype}")
    single = images.ndim == 3
    x = images.unsqueeze(0) if single else images
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected [C, H, W] or [B, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    nh, nw = geom.resized_hw(h, w)
    s = geom.size
    top, left = (0, 0) if geom.resize_mode == "longest" else (_crop_offset(nh, s), _crop_offset(nw, s))
    rows, cols = (max(0, top), min(nh, top + s)), (max(0, left), min(nw, left + s))
    if geom.interpolation == "nearest":
        y = x
        if nw != w:
            y = y.index_select(-1, _nearest_index(w, nw, x.device)[cols[0]:cols[1]])
        else:
            y = y[..., cols[0]:cols[1]]
        if nh != h:
            y = y.index_select(-2, _nearest_index(h, nh, x.device)[rows[0]:rows[1]])
        else:
            y = y[..., rows[0]:rows[1], :]
    else:
        kw = _interp_kwargs(geom.interpolation)

        fmt = torch.channels_last  # torch's uint8 kernels are fastest on NHWC (measured 2-6x); harmless for float

        def resize_w(t: torch.Tensor, fix: Callable) -> torch.Tensor:
            if nw != w:
                t = fix(F.interpolate(t.contiguous(memory_format=fmt), size=(t.shape[-2], nw), **kw))
            return t[..., cols[0]:cols[1]]

        def resize_h(t: torch.Tensor, fix: Callable) -> torch.Tensor:
            if nh != h:
                t = fix(F.interpolate(t.contiguous(memory_format=fmt), size=(nh, t.shape[-1]), **kw))
            return t[..., rows[0]:rows[1], :]

        vfirst = _vertical_first(h, w, nh, nw)
        if (x.device.type != "cpu") if float_path is None else float_path:
            y = _float_two_pass(x, resize_h, resize_w, vfirst)
        else:  # torch's native uint8 kernels round each pass to uint8, like Pillow
            same = lambda t: t  # noqa: E731
            y = resize_w(resize_h(x, same), same) if vfirst else resize_h(resize_w(x, same), same)
    if y.shape[-2:] != (s, s):  # 'longest' (or an image smaller than the crop): pad centred with black
        ph, pw = s - y.shape[-2], s - y.shape[-1]
        y = F.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0)
    if y.shape[1] == 1:
        y = y.expand(-1, 3, -1, -1)
    y = y.contiguous()
    return y[0] if single else y


def resize_crop_many(images: Sequence[torch.Tensor], geom: Geometry, *, float_path: bool | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """`resize_crop` for images of mixed sizes/channels, batched over those that share a shape.

    Args:
        images: uint8 [C, H, W] tensors (C in 1, 3) on one device.
        geom: target geometry.
        float_path: as in `resize_crop`.
        out: optional uint8 [len(images), 3, S, S] to write into.

    Returns:
        uint8 [N, 3, S, S], row i from images[i].
    """
    s = geom.size
    if out is None:
        dev = images[0].device if images else torch.device("cpu")
        out = torch.empty(len(images), 3, s, s, dtype=torch.uint8, device=dev)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    for rows in groups.values():
        batch = torch.stack([images[i] for i in rows]) if len(rows) > 1 else images[rows[0]].unsqueeze(0)
        res = resize_crop(batch, geom, float_path=float_path)
        if len(rows) == 1:
            out[rows[0]] = res[0]
        else:
            out[torch.tensor(rows, device=out.device)] = res
    return out


class Normalizer:
    """uint8 [B, 3, S, S] -> float (x / 255 - mean) / std, as one multiply-add; tensors cached per device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._consts: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def consts(self, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        key = (torch.device(device), dtype)
        if key not in self._consts:
            std = torch.tensor(self.std, dtype=torch.float64)
            scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
            shift = (torch.tensor(self.mean, dtype=torch.float64) / std).view(1, 3, 1, 1)
            self._consts[key] = (scale.to(device=device, dtype=dtype), shift.to(device=device, dtype=dtype))
        return self._consts[key]

    def __call__(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale, shift = self.consts(images.device, dtype)
        x = images.unsqueeze(0) if images.ndim == 3 else images
        y = torch.addcmul(-shift, x.to(dtype), scale)
        return y[0] if images.ndim == 3 else y

    def __getstate__(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "_consts": {}}


class TensorPreprocess:
    """The whole tensor path for one image: uint8 [C, H, W] -> float32 [3, S, S] (resize_crop + Normalizer)."""

    def __init__(self, cfg: PreprocessCfg, crop_pct: float | None = None):
        self.geometry = Geometry.from_cfg(cfg, crop_pct)
        self.normalize = Normalizer(cfg.mean, cfg.std)

    def __call__(self, image: torch.Tensor, *, float_path: bool | None = None) -> torch.Tensor:
        return self.normalize(resize_crop(image, self.geometry, float_path=float_path))


def pil_to_uint8(image: Any) -> torch.Tensor:
    """An RGB PIL image -> uint8 [3, H, W] (a copy, stored HWC: a channels-last view)."""
    import numpy as np

    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got array of shape {arr.shape}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # channels-last strides, what the resize kernels prefer


PROBE_MAX_LEVELS, PROBE_MEAN_LEVELS = 3.0, 0.1
"""Largest / mean difference, in 8-bit levels, the fast path may show against the backbone's PIL preprocess on the
probe images (measured: max 1, mean < 0.01 for kshot's and the toy CLIP's transforms)."""
_PROBES: "weakref.WeakKeyDictionary[Any, tuple[PreprocessCfg, tuple[bool, float, float]]]" = weakref.WeakKeyDictionary()


def fast_path_check(backbone: Any) -> tuple[bool, float, float]:
    """Does the tensor path reproduce `backbone.preprocess`? -> (ok, max diff, mean diff) in 8-bit levels.

    Two fixed noisy probe images (one smaller than the input, one larger, both non-square) go through the backbone's
    PIL `preprocess` and through `resize_crop` + `Normalizer` of its `PreprocessCfg`. Cached per preprocess object.
    """
    pre, cfg = backbone.preprocess, backbone.preprocess_cfg
    try:
        seen_cfg, seen = _PROBES[pre]
        if seen_cfg == cfg:
            return seen
    except (KeyError, TypeError):
        pass
    import numpy as np
    from PIL import Image

    try:
        geom = Geometry.of_backbone(backbone)
    except ConfigError:
        return False, float("inf"), float("inf")
    norm, std = Normalizer(cfg.mean, cfg.std), torch.tensor(cfg.std).view(3, 1, 1)
    rng = np.random.default_rng(20240601)
    s = geom.size
    worst, total, count = 0.0, 0.0, 0
    for w, h in ((max(8, s // 3) + 5, max(6, s // 4) + 3), (2 * s + 13, s + 31)):
        yy, xx = np.mgrid[0:h, 0:w]
        arr = (xx[..., None] * 3 + yy[..., None] * 2 + rng.normal(0, 25, (h, w, 3))) % 256
        img = Image.fromarray(arr.astype(np.uint8))
        try:
            ref = pre(img)
        except Exception as e:  # an unusual preprocess: just do not use the fast path
            log.debug("preprocess probe failed: %s", e)
            return False, float("inf"), float("inf")
        ours = norm(resize_crop(pil_to_uint8(img), geom))
        if not isinstance(ref, torch.Tensor) or ref.shape != ours.shape:
            return False, float("inf"), float("inf")
        d = ((ref.float() - ours) * std * 255.0).abs()
        worst, total, count = max(worst, float(d.max())), total + float(d.sum()), count + d.numel()
    res = (worst <= PROBE_MAX_LEVELS and total / count <= PROBE_MEAN_LEVELS, worst, total / count)
    with contextlib.suppress(TypeError):  # not weak-referenceable: probe again next time (a few ms)
        _PROBES[pre] = (cfg, res)
    return res
