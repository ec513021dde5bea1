"""Vectorised numpy renderer of the toy world: one coloured shape on a textured grey background.

Every image is drawn from a per-image attribute record (shape, colour, size, background, position) plus nuisance
factors (colour jitter, rotation, position jitter, background tint and texture period, pixel noise) drawn from the
caller's `np.random.Generator`. Shapes are inside-tests on 2x supersampled coordinates, averaged down (anti-aliased).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kshot.errors import ConfigError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)

# Base RGB of each colour (jittered by +-RenderCfg.colour_jitter per channel).
_RGB = np.array(
    [[220, 40, 40], [40, 180, 60], [50, 80, 230], [235, 220, 50], [150, 60, 200], [50, 210, 220], [245, 140, 30],
     [245, 245, 245]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class RenderCfg:
    """Nuisance ranges of the renderer (all lengths are fractions of the image side).

    Defaults follow the feasibility prototype (reference/toyworld-feasibility.md) with a larger "small" size, which the
    prototype named as the main source of shape errors.
    """

    image_size: int = 32  # pixels per side; 32 is the shipped model's input, 64 also works
    supersample: int = 2  # inside-tests run on a (S*k)^2 grid, then box-averaged (anti-aliasing)
    small_radius: tuple[float, float] = (0.17, 0.21)
    large_radius: tuple[float, float] = (0.30, 0.35)
    rotation_deg: float = 15.0  # uniform in +-rotation_deg
    colour_jitter: float = 20.0  # uniform in +-colour_jitter per RGB channel
    bg_level: tuple[float, float] = (40.0, 140.0)  # grey level of the background
    bg_contrast: tuple[float, float] = (25.0, 45.0)  # amplitude of stripes / dots / checks
    noise_sigma: tuple[float, float] = (2.0, 8.0)  # std of Gaussian pixel noise, uint8 units


def _inside(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside-test of one shape on local coordinates scaled so that the shape's radius is 1. y points up."""
    ax, ay = np.abs(x), np.abs(y)
    name = SHAPES[shape]
    if name == "circle":
        return x * x + y * y <= 1.0
    if name == "square":
        return np.maximum(ax, ay) <= 0.8
    if name == "diamond":
        return ax + ay <= 1.05
    if name == "ring":
        r = np.sqrt(x * x + y * y)
        return (r <= 1.0) & (r >= 0.55)
    if name == "cross":
        return ((ax <= 0.32) & (ay <= 0.95)) | ((ax <= 0.95) & (ay <= 0.32))
    if name == "triangle":  # equilateral, apex up, circumradius 1 (centroid at origin)
        yy = y + 0.15
        return (yy >= -0.5) & (np.sqrt(3.0) * ax + yy <= 1.0)
    if name == "star":  # five-pointed, outer radius 1, inner radius 0.42, a tip pointing up
        theta = np.arctan2(x, y)  # 0 at the top
        sector = np.pi / 5.0
        a = np.abs(np.mod(theta + sector, 2 * sector) - sector)  # angle from the nearest tip, in [0, sector]
        r = np.sqrt(x * x + y * y)
        px, py = r * np.cos(a), r * np.sin(a)  # point folded into the tip's half-sector (tip on +x axis)
        ix, iy = 0.42 * np.cos(sector), 0.42 * np.sin(sector)
        # inside when on the origin side of the edge from the tip (1, 0) to the inner vertex (ix, iy)
        return (px - 1.0) * iy - py * (ix - 1.0) <= 0.0
    if name == "heart":
        hx, hy = x * 1.15, y * 1.15 + 0.1
        return (hx * hx + hy * hy - 1.0) ** 3 - hx * hx * hy ** 3 <= 0.0
    raise ConfigError(f"unknown shape index {shape}")


def _background(
    kind: np.ndarray, gx: np.ndarray, gy: np.ndarray, rng: np.random.Generator, cfg: RenderCfg
) -> np.ndarray:
    """Grey backgrounds [N, H, W] (float, uint8 units) of the given texture indices on pixel grids gx, gy in [0, 1)."""
    n = kind.shape[0]
    level = rng.uniform(*cfg.bg_level, size=(n, 1, 1)).astype(np.float32)
    amp = rng.uniform(*cfg.bg_contrast, size=(n, 1, 1)).astype(np.float32)
    period = rng.uniform(0.12, 0.22, size=(n, 1, 1)).astype(np.float32)  # fraction of the image side
    phase = rng.uniform(0.0, 1.0, size=(n, 2, 1, 1)).astype(np.float32)
    vertical = rng.random((n, 1, 1)) < 0.5
    tex = np.full((n, gx.shape[1], gx.shape[2]), 0.5, dtype=np.float32)
    for k in (1, 2, 3):  # striped, dotted, checkered; computed only for the images that use them
        idx = np.nonzero(kind == k)[0]
        if idx.size == 0:
            continue
        fx, fy = gx / period[idx] + phase[idx, 0], gy / period[idx] + phase[idx, 1]
        if k == 1:
            tex[idx] = np.floor(np.where(vertical[idx], fx, fy)) % 2
        elif k == 2:
            tex[idx] = ((fx % 1.0) - 0.5) ** 2 + ((fy % 1.0) - 0.5) ** 2 <= 0.09
        else:
            tex[idx] = (np.floor(fx) + np.floor(fy)) % 2
    return level + amp * (tex - 0.5)


def render_attributes(
    shape: np.ndarray,
    colour: np.ndarray,
    size: np.ndarray,
    background: np.ndarray,
    position: np.ndarray,
    rng: np.random.Generator,
    cfg: RenderCfg = RenderCfg(),
) -> np.ndarray:
    """Draw one image per attribute record.

    Args:
        shape, colour, size, background, position: int arrays [N] indexing SHAPES, COLOURS, SIZES, BACKGROUNDS,
            POSITIONS.
        rng: source of every nuisance factor (the only randomness used).
        cfg: nuisance ranges and image size.

    Returns:
        uint8 array [N, S, S, 3].
    """
    n = int(shape.shape[0])
    s, k = cfg.image_size, cfg.supersample
    if n == 0:
        return np.zeros((0, s, s, 3), dtype=np.uint8)
    g = (np.arange(s * k, dtype=np.float32) + 0.5) / (s * k)
    gx, gy = np.meshgrid(g, g)  # gx varies along columns, gy along rows (down)
    gx, gy = gx[None], gy[None]
    g1 = (np.arange(s, dtype=np.float32) + 0.5) / s
    bx, by = np.meshgrid(g1, g1)  # the background is drawn at the output resolution

    radius = np.where(size == 0, rng.uniform(*cfg.small_radius, size=n), rng.uniform(*cfg.large_radius, size=n))
    # position: 3x3 grid cell centres, clamped so the shape stays inside the image, plus a small jitter
    row, col = position // 3, position % 3
    jitter = rng.uniform(-0.04, 0.04, size=(2, n))
    cx = np.clip(0.2 + 0.3 * col + jitter[0], radius + 0.02, 1 - radius - 0.02)
    cy = np.clip(0.2 + 0.3 * row + jitter[1], radius + 0.02, 1 - radius - 0.02)
    angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, size=n))
    rgb = _RGB[colour] + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, size=(n, 3)).astype(np.float32)

    dx = (gx - cx[:, None, None].astype(np.float32)) / radius[:, None, None].astype(np.float32)
    dy = -(gy - cy[:, None, None].astype(np.float32)) / radius[:, None, None].astype(np.float32)
    cos, sin = np.cos(angle)[:, None, None].astype(np.float32), np.sin(angle)[:, None, None].astype(np.float32)
    lx, ly = cos * dx + sin * dy, -sin * dx + cos * dy
    mask = np.zeros((n, s * k, s * k), dtype=np.float32)
    for sh in np.unique(shape):
        idx = np.nonzero(shape == sh)[0]
        mask[idx] = _inside(int(sh), lx[idx], ly[idx])

    cover = mask.reshape(n, s, k, s * k).sum(axis=2).reshape(n, s, s, k).sum(axis=3)[..., None] / (k * k)
    bg = _background(background, bx[None], by[None], rng, cfg)[..., None]
    img = bg + cover * (rgb[:, None, None, :] - bg)
    sigma = rng.uniform(*cfg.noise_sigma, size=(n, 1, 1, 1)).astype(np.float32)
    img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
