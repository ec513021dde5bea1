"""The renderer draws the requested shape, colour, size and position."""

from __future__ import annotations

import numpy as np

from kshot.toyworld.render import COLOURS, SHAPES, RenderCfg, render_attributes

_QUIET = RenderCfg(noise_sigma=(0.0, 0.0), colour_jitter=0.0, rotation_deg=0.0)


def _one(shape: int, colour: int = 0, size: int = 1, background: int = 0, position: int = 4, cfg=_QUIET):
    n = 1
    return render_attributes(np.full(n, shape), np.full(n, colour), np.full(n, size), np.full(n, background),
                             np.full(n, position), np.random.default_rng(0), cfg)[0]


def _mask(img: np.ndarray, colour: int) -> np.ndarray:
    from kshot.toyworld.render import _RGB

    return np.abs(img.astype(float) - _RGB[colour]).sum(-1) < 30


def test_every_shape_has_a_distinct_silhouette() -> None:
    masks = [_mask(_one(s), 0) for s in range(len(SHAPES))]
    areas = [int(m.sum()) for m in masks]
    assert min(areas) > 30  # every large shape covers a visible area of a 32x32 image
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            assert (masks[i] != masks[j]).sum() >= 8, (SHAPES[i], SHAPES[j])
    ring, circle = masks[SHAPES.index("ring")], masks[SHAPES.index("circle")]
    assert not ring[15:17, 15:17].any() and circle[15:17, 15:17].all()  # the ring has a hole


def test_colour_size_and_position_are_rendered() -> None:
    for colour in range(len(COLOURS)):
        assert _mask(_one(0, colour), colour).sum() > 30
    assert _mask(_one(0, size=0), 0).sum() < 0.5 * _mask(_one(0, size=1), 0).sum()
    left = np.nonzero(_mask(_one(0, size=0, position=3), 0))[1].mean()
    right = np.nonzero(_mask(_one(0, size=0, position=5), 0))[1].mean()
    assert left < 12 < 20 < right


def test_noise_and_empty_batches() -> None:
    noisy = _one(0, cfg=RenderCfg(noise_sigma=(8.0, 8.0), rotation_deg=0.0, colour_jitter=0.0))
    assert np.abs(noisy.astype(int) - _one(0).astype(int)).mean() > 2
    empty = render_attributes(*(np.zeros(0, np.int64),) * 5, np.random.default_rng(0))
    assert empty.shape == (0, 32, 32, 3)
