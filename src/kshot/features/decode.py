"""Decoding image files into uint8 model-input crops, on CPU worker processes or batched on the GPU (nvJPEG).

Modes (`ExtractConfig.decode`):

* ``gpu`` — workers only read file bytes; the main process decodes the JPEGs of a batch with
  `torchvision.io.decode_jpeg(list, device='cuda')` (batched nvJPEG) and resizes/crops them on the GPU;
* ``cpu`` — workers decode (`torchvision.io.decode_jpeg`, libjpeg-turbo) and resize + crop to uint8 [3, S, S]; the
  main process uploads uint8 (4x less host->device traffic than float) and normalises on the device;
* ``pil`` — the reference path: `kshot.data.images.load_image` + the backbone's own PIL `preprocess` (float);
* ``auto`` — ``gpu`` when the device is CUDA and nvJPEG works there, else ``cpu``.

Only baseline/extended/progressive 8-bit JPEGs with 1 (grey) or 3 components take the fast decoders (the GPU: baseline
only, and not Adobe-RGB-coded files); the file must also end in the EOI marker, so truncated files never reach them.
Everything else — PNG, CMYK JPEG, 12-bit, arithmetic-coded, a file the fast decoder rejects — falls back per image to
`load_image` (which converts every PIL mode to RGB and raises `ImageReadError` for corrupt files, with the same
messages as before) followed by the same tensor resize, so both paths give the same crops. On this machine
torchvision's CPU decoder and Pillow give bit-identical pixels for 4:2:0/4:2:2/4:4:4, progressive and grey JPEGs
(both are libjpeg-turbo with the default islow IDCT and fancy upsampling); nvJPEG may differ by a level or two.
EXIF orientation is not applied on any path, matching `load_image`'s default (and CLIP's published features).

torchvision >= 0.29 marks its image decoders deprecated (superseded by torchcodec); the warning is silenced here, and
if `decode_jpeg` ever disappears, every image takes the PIL fallback.
"""

from __future__ import annotations

import functools
import io
import logging
import queue
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from kshot.data.dataset import Dataset
from kshot.errors import ConfigError, DataError
from kshot.features.tensor_transforms import Geometry, pil_to_uint8, resize_crop, resize_crop_many

log = logging.getLogger(__name__)

MODES = ("auto", "gpu", "cpu", "pil")
_SOF_FAST = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)
_SOF_GPU = {0xC0, 0xC1}
_SOF_ALL = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 = DHT, C8 = reserved, CC = DAC


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header of a JPEG says. `adobe_transform` is the APP14 'Adobe' colour transform, if present."""

    sof: int
    precision: int
    height: int
    width: int
    components: int
    adobe_transform: int | None = None

    @property
    def cpu_fast(self) -> bool:
        return self.sof in _SOF_FAST and self.precision == 8 and self.components in (1, 3) and self.width > 0

    @property
    def gpu_fast(self) -> bool:
        return self.cpu_fast and self.sof in _SOF_GPU and not (self.components == 3 and self.adobe_transform == 0)


def parse_jpeg_header(data: bytes | bytearray | memoryview) -> JpegHeader | None:
    """Parse markers up to the first frame header; None if `data` is not a well-formed JPEG start."""
    mv = memoryview(data)
    n = len(mv)
    if n < 4 or mv[0] != 0xFF or mv[1] != 0xD8:
        return None
    pos, adobe = 2, None
    while pos + 4 <= n:
        if mv[pos] != 0xFF:
            return None
        marker = mv[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any frame header
            return None
        (length,) = struct.unpack(">H", mv[pos + 2:pos + 4])
        body = mv[pos + 4:pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            return None
        if marker == 0xEE and len(body) >= 12 and bytes(body[:5]) == b"Adobe":
            adobe = body[11]
        if marker in _SOF_ALL:
            if len(body) < 6:
                return None
            precision, height, width, comps = struct.unpack(">BHHB", body[:6])
            return JpegHeader(marker, precision, height, width, comps, adobe)
        pos += 2 + length
    return None


def _ends_with_eoi(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[-16:]).rstrip(b"\x00").endswith(b"\xff\xd9")


@functools.cache
def _tv_decoder() -> tuple[Callable[..., Any], Any] | None:
    """(decode_jpeg, ImageReadMode.UNCHANGED), or None when this torchvision has no JPEG decoder."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        log.warning("torchvision.io.decode_jpeg is unavailable; every image is decoded with PIL")
        return None

    def quiet_decode(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():  # torchvision >= 0.29 warns on every call (deprecated for torchcodec)
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(*args, **kwargs)

    return quiet_decode, ImageReadMode.UNCHANGED


def read_bytes(path: Path | str) -> torch.Tensor | None:
    """The file as a 1-D uint8 tensor (no copy of the read buffer), or None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            buf = bytearray(size)
            if f.readinto(buf) != size or size == 0:
                return None
    except OSError:
        return None
    return torch.frombuffer(buf, dtype=torch.uint8)


def decode_cpu(path: Path | str, data: torch.Tensor | None = None) -> torch.Tensor:
    """Decode a file to uint8 [C, H, W] (C = 1 or 3): torchvision's libjpeg-turbo for plain JPEGs, else `load_image`.

    Raises:
        ImageReadError (a DataError): the file cannot be read by PIL either (message from `load_image`).
    """
    from kshot.data.images import load_image

    data = read_bytes(path) if data is None else data
    tv = _tv_decoder()
    if data is not None and tv is not None:
        raw = data.numpy()
        head = parse_jpeg_header(memoryview(raw))
        if head is not None and head.cpu_fast and _ends_with_eoi(raw):
            try:
                img = tv[0](data, mode=tv[1])
                if img.shape[0] in (1, 3) and tuple(img.shape[1:]) == (head.height, head.width):
                    return img
            except RuntimeError as e:
                log.debug("fast JPEG decode failed for %s (%s); using PIL", path, e)
    return pil_to_uint8(load_image(path))


def load_crop(path: Path | str, geom: Geometry) -> torch.Tensor:
    """Decode + resize + crop one file on the CPU -> uint8 [3, S, S]. Raises ImageReadError for unreadable files."""
    return resize_crop(decode_cpu(path), geom)


@functools.cache
def nvjpeg_usable(device: str) -> bool:
    """True when torchvision's batched nvJPEG decodes a small JPEG on `device` (checked once per device)."""
    tv = _tv_decoder()
    if tv is None or not torch.cuda.is_available():
        return False
    try:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 8), (200, 30, 30)).save(buf, format="JPEG", quality=90)
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        out = tv[0]([data, data], mode=tv[1], device=device)
        return len(out) == 2 and tuple(out[0].shape) == (3, 8, 16)
    except Exception as e:  # any failure (no nvJPEG in this build, driver issue) means: decode on the CPU
        log.info("nvJPEG is not usable on %s (%s); decoding on the CPU", device, e)
        return False


def resolve_mode(mode: str, device: torch.device) -> str:
    """'auto' -> 'gpu' on CUDA with working nvJPEG, else 'cpu'. A forced 'gpu' without CUDA/nvJPEG raises."""
    if mode not in MODES:
        raise ConfigError(f"unknown decode mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "auto":
        return "gpu" if device.type == "cuda" and nvjpeg_usable(str(device)) else "cpu"
    if mode == "gpu" and (device.type != "cuda" or not nvjpeg_usable(str(device))):
        raise ConfigError(f"decode='gpu' needs a CUDA device with torchvision's nvJPEG (device is {device}); "
                          "use decode='cpu' or 'auto'")
    return mode


@dataclass
class HostBatch:
    """One batch as it leaves the loader (row r of the batch is position `positions[r]` of the requested indices).

    Attributes:
        positions: int64 [B].
        images: uint8 [k, 3, S, S] crops (or float [k, 3, S, S] in 'pil' mode) of rows `img_rows` [k].
        jpeg_data, jpeg_offsets: the raw bytes of rows `jpeg_rows` concatenated, and their k+1 offsets ('gpu' mode).
        jpeg_index: their dataset indices (for the per-image fallback).
        bad: (row, dataset index, message) of unreadable images.
    """

    positions: torch.Tensor
    images: torch.Tensor
    img_rows: torch.Tensor
    jpeg_data: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.uint8))
    jpeg_offsets: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.int64))
    jpeg_rows: list[int] = field(default_factory=list)
    jpeg_index: list[int] = field(default_factory=list)
    bad: list[tuple[int, int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.positions.numel())

    def jpegs(self) -> list[torch.Tensor]:
        off = self.jpeg_offsets.tolist()
        return [self.jpeg_data[a:b] for a, b in zip(off[:-1], off[1:])]

    def pin_memory(self) -> "HostBatch":
        self.images = self.images.pin_memory()
        return self


class FileItems(torch.utils.data.Dataset):
    """Position j of `indices` -> (j, dataset index, kind, payload) for a DataLoader worker.

    kind 'img': payload uint8 [3, S, S] crop; 'jpeg' (only with raw_jpeg=True): payload the file's bytes for the GPU
    decoder; 'bad': payload the error message (the image is skipped and reported, not fatal).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], geom: Geometry, raw_jpeg: bool = False):
        self.dataset, self.indices, self.geom, self.raw_jpeg = dataset, list(indices), geom, raw_jpeg

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, int, str, Any]:
        i = self.indices[j]
        path = self.dataset.abspath(i)
        data = read_bytes(path)
        if self.raw_jpeg and data is not None:
            head = parse_jpeg_header(memoryview(data.numpy()))
            if head is not None and head.gpu_fast and _ends_with_eoi(data.numpy()):
                return j, i, "jpeg", data
        try:
            return j, i, "img", resize_crop(decode_cpu(path, data), self.geom)
        except DataError as e:
            return j, i, "bad", str(e)


class PilItems(torch.utils.data.Dataset):
    """The PIL reference path: `load_image` (+ augmented view `view`) + the backbone's `preprocess` -> float crop."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], preprocess: Callable, policy: Any = None,
                 view: int | None = None, image_size: int = 224):
        from kshot.features.augment import build_augment

        self.dataset, self.indices, self.preprocess = dataset, list(indices), preprocess
        self.policy, self.view = policy, view
        self.aug = build_augment(policy, image_size) if view is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, int, str, Any]:
        from kshot.data.images import load_image
        from kshot.features.augment import apply_view, view_seed

        i = self.indices[j]
        try:
            img = load_image(self.dataset.abspath(i))
            if self.aug is not None:
                img = apply_view(self.aug, img, view_seed(self.policy, self.view, i))
            return j, i, "img", self.preprocess(img)
        except DataError as e:
            return j, i, "bad", str(e)


def collate(items: list[tuple[int, int, str, Any]]) -> HostBatch:
    """Stack a list of `FileItems`/`PilItems` outputs into one `HostBatch` (runs inside the worker)."""
    imgs = [(r, p) for r, (_, _, k, p) in enumerate(items) if k == "img"]
    jpegs = [(r, p) for r, (_, _, k, p) in enumerate(items) if k == "jpeg"]
    if imgs:
        images = torch.stack([p for _, p in imgs])
    else:
        images = torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    sizes = [0] + [int(p.numel()) for _, p in jpegs]
    return HostBatch(
        positions=torch.tensor([j for j, _, _, _ in items], dtype=torch.int64),
        images=images,
        img_rows=torch.tensor([r for r, _ in imgs], dtype=torch.int64),
        jpeg_data=torch.cat([p for _, p in jpegs]) if jpegs else torch.zeros(0, dtype=torch.uint8),
        jpeg_offsets=torch.tensor(sizes, dtype=torch.int64).cumsum(0),
        jpeg_rows=[r for r, _ in jpegs],
        jpeg_index=[int(items[r][1]) for r, _ in jpegs],
        bad=[(r, i, p) for r, (_, i, k, p) in enumerate(items) if k == "bad"],
    )


def decode_gpu(batch: HostBatch, geom: Geometry, device: torch.device, dataset: Dataset
               ) -> tuple[torch.Tensor, list[tuple[int, int, str]]]:
    """Decode the raw JPEGs of `batch` on `device` (batched nvJPEG) and resize/crop them there.

    Images nvJPEG rejects are retried one by one on the GPU, then decoded on the CPU (PIL fallback included).

    Returns:
        (uint8 [len(batch.jpeg_rows), 3, S, S] on `device`, bad entries (row, dataset index, message)).
    """
    tv = _tv_decoder()
    assert tv is not None, "decode_gpu needs torchvision.io.decode_jpeg"
    decode, unchanged = tv
    data = batch.jpegs()
    try:
        decoded: list[torch.Tensor | None] = list(decode(data, mode=unchanged, device=device))
    except RuntimeError as e:
        log.debug("batched nvJPEG decode failed (%s); decoding one by one", e)
        decoded = []
        for d in data:
            try:
                decoded.append(decode(d, mode=unchanged, device=device))
            except RuntimeError:
                decoded.append(None)
    bad: list[tuple[int, int, str]] = []
    ready: list[torch.Tensor] = []
    for k, img in enumerate(decoded):
        if img is None or img.ndim != 3 or img.shape[0] not in (1, 3):
            try:  # slow path: CPU decode (and PIL), then the same tensor resize on the device
                img = decode_cpu(dataset.abspath(batch.jpeg_index[k]), data[k]).to(device)
            except DataError as e:
                bad.append((batch.jpeg_rows[k], batch.jpeg_index[k], str(e)))
                img = torch.zeros(3, geom.size, geom.size, dtype=torch.uint8, device=device)
        ready.append(img)
    if not ready:
        return torch.zeros(0, 3, geom.size, geom.size, dtype=torch.uint8, device=device), bad
    return resize_crop_many(ready, geom), bad


class Prefetcher:
    """Run a generator in a background thread, at most `depth` items ahead (bounded memory)."""

    def __init__(self, gen: Iterator[Any], depth: int):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(gen,), daemon=True)
        self._t.start()

    def _put(self, msg: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def _run(self, gen: Iterator[Any]) -> None:
        try:
            for item in gen:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as e:  # re-raised in the consumer
            self._put(("error", e))

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                kind, item = self._q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            self._stop.set()
