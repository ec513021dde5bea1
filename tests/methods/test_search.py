"""The vectorised β/α/γ grid search against a literal loop over the grid (the official search_hp shape)."""

from __future__ import annotations

import pytest
import torch

from kshot.errors import ConfigError, DataError
from kshot.methods.search import (_fast_interval_bounds, _interval_bounds, _interval_parts, _SignedParts, class_blocks,
                                  correct_alpha_interval, grid_search, linear_grid)


def _problem(seed: int = 0, n: int = 40, m: int = 24, c: int = 6):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(c, (n,), generator=g)
    clip = 3.0 * torch.randn(n, c, generator=g)
    key_labels = torch.randint(c, (m,), generator=g)
    affinity = torch.rand(n, m, generator=g) * 0.5 + 0.5 * (labels[:, None] == key_labels[None]).float()
    values = torch.nn.functional.one_hot(key_labels, c).float()
    scores = torch.rand(m, generator=g) * 3
    return clip, affinity, values, labels, scores


def _literal_search(clip, affinity, values, labels, betas, alphas, gammas=None, scores=None):
    """The official loop: β outer, α, γ inner; strict > keeps the first best cell."""
    best, best_cell = -1, None
    counts = {}
    for b in betas.tolist():
        for a in alphas.tolist():
            for gm in (gammas.tolist() if gammas is not None else [0.0]):
                vals = values * torch.exp(gm * scores)[:, None] if scores is not None else values
                logits = clip + a * (torch.exp(-b * (1 - affinity)) @ vals)
                acc = int((logits.argmax(1) == labels).sum())
                counts[(b, a, gm)] = acc
                if acc > best:
                    best, best_cell = acc, (b, a, gm)
    return best, best_cell, counts


def test_linear_grid_matches_official_formula():
    grid = linear_grid(7.0, 200)
    official = [i * (7 - 0.1) / 200 + 0.1 for i in range(200)]
    assert torch.allclose(grid.double(), torch.tensor(official, dtype=torch.float64), atol=1e-6)
    gammas = linear_grid(1.0, 20, start=0.0)
    assert gammas[0] == 0 and abs(float(gammas[-1]) - 0.95) < 1e-6


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("strategy", ["interval", "argmax"])
@pytest.mark.parametrize("with_gamma", [False, True])
def test_grid_search_matches_literal_loop(with_gamma, strategy, dense):
    clip, affinity, values, labels, scores = _problem()
    if dense:  # soft values: several non-zeros per row, the dense contraction path
        values = 0.7 * values + 0.3 * torch.rand(values.shape, generator=torch.Generator().manual_seed(1))
        assert class_blocks(values) is None
    betas, alphas = linear_grid(7.0, 7), linear_grid(5.0, 5)
    gammas = linear_grid(1.0, 3, start=0.0) if with_gamma else None
    res = grid_search(clip, affinity, values, labels, betas, alphas, gammas, scores if with_gamma else None,
                      strategy=strategy)
    best, cell, counts = _literal_search(clip, affinity, values, labels, betas, alphas, gammas,
                                         scores if with_gamma else None)
    assert (res.beta, res.alpha, res.gamma) == pytest.approx(cell)
    assert res.accuracy == pytest.approx(best / len(labels))
    flat = torch.tensor(list(counts.values()))
    assert torch.equal(res.correct.flatten(), flat)


def test_grid_search_ties_pick_first_cell():
    clip, affinity, values, labels, _ = _problem()
    # a huge zero-shot margin makes every cell give the same predictions: all cells tie
    clip = 1e4 * torch.nn.functional.one_hot(labels, clip.shape[1]).float()
    res = grid_search(clip, affinity, values, labels, linear_grid(7.0, 5), linear_grid(3.0, 4))
    assert res.correct.unique().numel() == 1
    assert res.beta == pytest.approx(0.1) and res.alpha == pytest.approx(0.1)


@pytest.mark.parametrize("strategy", ["interval", "argmax"])
def test_grid_search_chunking_does_not_change_the_result(strategy):
    clip, affinity, values, labels, scores = _problem(seed=3)
    args = (clip, affinity, values, labels, linear_grid(7.0, 11), linear_grid(3.0, 7), linear_grid(1.0, 3, 0.0),
            scores)
    big = grid_search(*args, max_elements=1 << 26, strategy=strategy)
    small = grid_search(*args, max_elements=100, strategy=strategy)
    assert torch.equal(big.correct, small.correct)
    assert (big.beta, big.alpha, big.gamma) == (small.beta, small.alpha, small.gamma)


def test_interval_and_argmax_strategies_agree_on_larger_problems():
    for seed in range(4):
        clip, affinity, values, labels, scores = _problem(seed=seed, n=200, m=90, c=15)
        values = values * (0.5 + torch.rand(values.shape[0], 1, generator=torch.Generator().manual_seed(seed)))
        args = (clip, affinity, values, labels, linear_grid(7.0, 30), linear_grid(5.0, 20), linear_grid(1.0, 5, 0.0),
                scores)
        fast, literal = grid_search(*args), grid_search(*args, strategy="argmax")
        assert torch.equal(fast.correct, literal.correct)


def test_class_blocks_group_entries_by_class():
    labels = torch.tensor([2, 0, 2, 2, 0])
    values = torch.nn.functional.one_hot(labels, 4).float() * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[:, None]
    index, weight = class_blocks(values)
    assert index.tolist() == [[1, 4, 5], [5, 5, 5], [0, 2, 3], [5, 5, 5]]  # 5 = padding
    assert weight.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    lopsided = torch.nn.functional.one_hot(torch.tensor([0] * 50 + [1, 2, 3]), 40).float()
    assert class_blocks(lopsided) is None  # padding 40 x 50 would dwarf the 53 entries


def test_interval_handles_exact_ties_like_argmax():
    # classes 0 and 2 share every logit with the label class 1 of image 0: argmax prefers the lower index
    clip = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
    cache = torch.tensor([[[0.5, 0.5, 0.5], [0.0, 0.0, 3.0]]])
    lower, upper = correct_alpha_interval(clip, cache, torch.tensor([1, 1]))
    assert lower[0, 0] == float("inf")  # class 0 (lower index) always wins the tie
    assert lower[0, 1] == float("-inf") and upper[0, 1] == pytest.approx(1 / 3)


def test_grid_search_bad_inputs():
    clip, affinity, values, labels, scores = _problem()
    grid = linear_grid(3.0, 3)
    with pytest.raises(DataError, match="inconsistent shapes"):
        grid_search(clip, affinity[:, :-1], values, labels, grid, grid)
    with pytest.raises(DataError, match="empty"):
        grid_search(clip[:0], affinity[:0], values, labels[:0], grid, grid)
    with pytest.raises(ConfigError, match="go together"):
        grid_search(clip, affinity, values, labels, grid, grid, gammas=grid)
    with pytest.raises(ConfigError, match="strategy"):
        grid_search(clip, affinity, values, labels, grid, grid, strategy="fast")
    with pytest.raises(ConfigError, match="steps"):
        linear_grid(3.0, 0)
    with pytest.raises(ConfigError, match="exceed"):
        linear_grid(0.05, 3)


def _grid_counts(lower, upper, alphas):
    return (lower[..., None] < alphas) & (alphas < upper[..., None])  # [..., N, A]: which α each row gets right


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_bounds_count_exactly_like_the_division(seed):
    """The signed 1/α form counts the same grid α as `_interval_bounds` on every row, including clip ties, exact
    cache ties, classes ahead with less cache, and bounds placed exactly on a grid α (recomputed exactly)."""
    g = torch.Generator().manual_seed(seed)
    n, c = 300, 9
    alphas = linear_grid(7.0, 20)
    clip = torch.randn(n, c, generator=g).mul(4).round().div(2)  # coarse values: many clip ties
    labels = torch.randint(0, c, (n,), generator=g)
    cache = torch.rand(3, n, c, generator=g).mul(8).round().div(4)  # many exact cache ties
    # rows 0..39: no clip tie, and a bound at a grid α to the last ulp (seeds 1, 2 miscount without the fallback)
    rows = torch.arange(40)
    clip[rows] = torch.randn(40, c, generator=g) - 20 * torch.rand(40, 1, generator=g)
    lab = labels[rows]
    other = (lab + 1) % c
    unit = 0.3 + 2 * torch.rand(3, 40, generator=g)
    cache[:, rows, other] = cache[:, rows, lab] - unit
    d_k = cache[:, rows, lab] - cache[:, rows, other]  # as the search computes it
    clip[rows, other] = clip[rows, lab] + alphas[rows % 20] * d_k[0]  # image-level: bound ≈ α_j for γ row 0
    parts = _interval_parts(clip, labels)
    lower, upper = _interval_bounds(parts, cache)
    fast_lo, fast_up = _fast_interval_bounds(_SignedParts.of(parts), cache, alphas)
    assert torch.equal(_grid_counts(fast_lo, fast_up, alphas), _grid_counts(lower, upper, alphas))
    assert bool(_SignedParts.of(parts).clip_tie.any())  # the tie fallback is exercised
