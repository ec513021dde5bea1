"""Vectorised hyper-parameter search for cache models (Tip-Adapter, APE, Track1) on validation features.

The cache methods share one logit form (Zhang et al., ECCV'22, Eq. 6; Zhu et al., ICCV'23, Eq. 9)::

    logits = clip_logits + α · exp(−β (1 − A)) · (V ⊙ exp(γ · s))

with clip_logits [N, C] the zero-shot logits, A [N, M] the affinity of N images to M cache keys, V [M, C] the cache
values and s [M] an optional per-entry score (APE's KL confidence; γ = 0 when absent). The official code
(`gaopengcuhk/Tip-Adapter:utils.py: search_hp`, `yangyangyang127/APE:main.py: APE`) loops over a β × α (× γ) grid
and keeps the first cell with the best accuracy (strict `>`). Here every cell is computed with batched tensor ops,
in chunks bounded by `max_elements`, and ties go to the first cell in the same (β outer, α, γ inner) order.

For a fixed (β, γ) the logits are linear in α, so image n is classified correctly exactly for α in an open interval
(lower_n, upper_n): with Z, K its clip and cache logits and y its label, every other class c needs
(Z_y − Z_c) + α (K_y − K_c) > 0. The default `strategy="interval"` computes these bounds once per (β, γ), in
O(N·C), and counts the α values inside them in O(N·A), instead of an arg-max over C for every α (O(N·C·A));
`strategy="argmax"` does the literal arg-max (same counts up to floating-point ties at an interval end).
When every cache row has a single non-zero value (one-hot labels, possibly re-weighted: all kshot cache methods),
the cache logits are contracted per class block ([N, C, k] against [C, k]) instead of against the dense [M, C]
values, C times fewer operations (`class_blocks`). That path runs in blocks of validation rows sized to the CPU
cache (`CACHE_ROWS_ELEMENTS`): per row block the affinity is gathered into class blocks once, and every β of the
grid reuses it (the kernel is rebuilt in place, bit-identical to `cache_kernel`), so memory stays O(rows·M) for any
grid and validation size. Chosen cells and counts are those of the dense path (the tests compare both with the
literal loop). The bounds themselves are found in the 1/α form (`_fast_interval_bounds`): which side a class bounds
depends only on the sign of its clip-logit gap, fixed for the whole search, so each (β, γ) needs one multiply and
one min/max per side instead of divisions and masks; bounds within 1e-5 of a grid α are recomputed by division, so
the counts are unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from kshot.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def linear_grid(scale: float, steps: int, start: float = 0.1) -> torch.Tensor:
    """The official grid: `steps` values `start + i·(scale − start)/steps`, i = 0..steps−1 (so `scale` is excluded).

    Tip-Adapter and APE build β and α this way with start 0.1; APE's γ uses start 0.
    """
    if steps < 1:
        raise ConfigError(f"search steps must be >= 1, got {steps}")
    if scale <= start:
        raise ConfigError(f"search scale {scale} must exceed the grid start {start}")
    i = torch.arange(steps, dtype=torch.float64)
    return (start + i * (scale - start) / steps).float()


def cache_kernel(affinity: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """exp(−β (1 − affinity)): Tip-Adapter's sharpened affinity (β a float, or [B, 1, 1] for a batch of βs)."""
    return torch.exp(-beta * (1.0 - affinity))


@dataclass(frozen=True)
class SearchResult:
    """Outcome of `grid_search`.

    Attributes:
        beta, alpha, gamma: the chosen values (gamma is 0.0 when no γ grid was searched).
        accuracy: validation top-1 accuracy of the chosen cell, in [0, 1].
        correct: [nβ, nα, nγ] int64 count of correct validation predictions in every cell.
    """

    beta: float
    alpha: float
    gamma: float
    accuracy: float
    correct: torch.Tensor


def grid_search(clip_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor, labels: torch.Tensor,
                betas: torch.Tensor, alphas: torch.Tensor, gammas: torch.Tensor | None = None,
                scores: torch.Tensor | None = None, max_elements: int = 1 << 24,
                strategy: str = "interval") -> SearchResult:
    """Best (β, α, γ) by validation accuracy, over the full grid, vectorised.

    Args:
        clip_logits: [N, C] zero-shot logits of the validation images (already scaled).
        affinity: [N, M] affinity of the validation images to the cache keys.
        values: [M, C] cache values (one-hot labels, possibly re-weighted).
        labels: [N] validation labels in [0, C).
        betas, alphas: 1-D grids.
        gammas: optional 1-D grid for the per-entry weighting exp(γ·scores); needs `scores`.
        scores: [M] per-entry scores (APE's KL confidence).
        max_elements: bound on the size of the largest intermediate tensor (memory knob; the result does not
            depend on it).
        strategy: "interval" (default, fast) or "argmax" (literal); see the module docstring.

    Returns:
        The first best cell in (β, α, γ) loop order, as the official code picks it.
    """
    n, c = clip_logits.shape
    if affinity.shape[0] != n or values.shape != (affinity.shape[1], c) or labels.shape != (n,):
        raise DataError(f"grid_search: inconsistent shapes clip_logits {tuple(clip_logits.shape)}, affinity "
                        f"{tuple(affinity.shape)}, values {tuple(values.shape)}, labels {tuple(labels.shape)}")
    if n == 0:
        raise DataError("grid_search: the validation split is empty")
    if (gammas is None) != (scores is None):
        raise ConfigError("grid_search: gammas and scores go together")
    if strategy not in ("interval", "argmax"):
        raise ConfigError(f"grid_search: strategy must be 'interval' or 'argmax', got {strategy!r}")
    dev = clip_logits.device
    betas, alphas = betas.to(dev, torch.float32), alphas.to(dev, torch.float32)
    gammas_t = torch.zeros(1, device=dev) if gammas is None else gammas.to(dev, torch.float32)
    # per-entry weights for every γ: [G, M] (exp(0) = 1 without a γ grid)
    entry_w = torch.ones(1, values.shape[0], device=dev) if scores is None else torch.exp(
        gammas_t[:, None] * scores.to(dev).float()[None])
    ng, na = len(gammas_t), len(alphas)
    labels = labels.to(dev)
    clip_logits, affinity, values = clip_logits.float(), affinity.float(), values.to(dev).float()
    blocks = class_blocks(values)
    if blocks is not None:  # one non-zero per cache row: contract per class block instead of against dense values
        index, weight = blocks  # [C, k] entry ids (M = padding), [M] value of each entry
        block_w = torch.nn.functional.pad(entry_w * weight[None], (0, 1))[:, index]  # [G, C, k]
    else:
        weighted = values[None] * entry_w[:, :, None]  # [G, M, C]

    parts = _interval_parts(clip_logits, labels)
    with torch.no_grad():
        if blocks is not None and strategy == "interval":
            correct = _blocked_interval_counts(parts, affinity, index, block_w, betas, alphas, max_elements)
        else:
            correct = _dense_counts(parts, clip_logits, labels, affinity, betas, alphas, ng, strategy, max_elements,
                                    (index, block_w) if blocks is not None else None,
                                    None if blocks is not None else weighted)
    best = int(torch.argmax(correct.flatten()))  # first maximum = official strict-> loop order
    ib, rest = divmod(best, na * ng)
    ia, ig = divmod(rest, ng)
    result = SearchResult(beta=float(betas[ib]), alpha=float(alphas[ia]),
                          gamma=float(gammas_t[ig]) if gammas is not None else 0.0,
                          accuracy=float(correct.flatten()[best]) / n, correct=correct.cpu())
    log.info("grid search: beta=%.3f alpha=%.3f gamma=%.3f val acc=%.4f over %d cells", result.beta, result.alpha,
             result.gamma, result.accuracy, correct.numel())
    return result


CACHE_ROWS_ELEMENTS = 1 << 21  # ≈ 8 MB of float32 per row block: the per-β passes stay in the CPU cache


def _blocked_interval_counts(parts: tuple[torch.Tensor, ...], affinity: torch.Tensor, index: torch.Tensor,
                             block_w: torch.Tensor, betas: torch.Tensor, alphas: torch.Tensor,
                             max_elements: int) -> torch.Tensor:
    """Correct counts [B, A, G] for one-hot values: row blocks × every β, segment sums, α by intervals.

    The affinity is gathered once per row block into class blocks [R, C, k]; for every β the kernel
    exp(−β (1 − A)) is formed in place and contracted per class with the [G, C, k] entry weights, so memory is
    O(R·C·k) whatever N and the grid size, and each β costs O(R·C·k·G) plus the O(R·C·G) interval bounds.
    """
    n = affinity.shape[0]
    c, k = index.shape
    ng, na = block_w.shape[0], len(alphas)
    rows = max(1, min(n, min(CACHE_ROWS_ELEMENTS, max_elements) // max(1, c * k, ng * c)))
    w_ck = block_w[0] if ng == 1 else block_w.permute(1, 0, 2).contiguous()  # [C, k] or [C, G, k]
    unit = ng == 1 and bool((w_ck == 1).all())  # plain Tip-Adapter cache: a sum, no weights
    correct = torch.zeros(len(betas), na, ng, dtype=torch.int64, device=affinity.device)
    signed = _SignedParts.of(parts)
    w_ckg = w_ck.transpose(1, 2).contiguous() if ng > 1 else w_ck[:, None]  # [C, k, G] or [C, 1, k]
    for r0 in range(0, n, rows):
        # class-major [C, R, k]: the per-class contraction writes [C, R, G] contiguously, and the bounds reduce
        # over the leading class axis (a [G, R, C] view of it would be strided in every pass)
        one_minus = (1.0 - torch.nn.functional.pad(affinity[r0:r0 + rows], (0, 1))[:, index]).transpose(0, 1)
        one_minus = one_minus.contiguous()
        part = signed.rows(r0, r0 + rows)
        major = part.class_major(ng)
        kern = torch.empty_like(one_minus)
        for ib, beta in enumerate(betas.tolist()):
            torch.mul(one_minus, -beta, out=kern).exp_()  # = cache_kernel(affinity, beta), bit for bit
            if unit:
                cache = kern.sum(-1, keepdim=True)  # [C, R, 1]
            elif ng == 1:
                cache = (kern * w_ckg).sum(-1, keepdim=True)
            else:
                cache = torch.bmm(kern, w_ckg)  # [C, R, G]
            lower, upper = _class_major_bounds(part, major, cache, alphas)  # [G, R]
            inside = (lower[:, None] < alphas[:, None]) & (alphas[:, None] < upper[:, None])  # [G, A, R]
            correct[ib] += inside.sum(dim=-1).T
    return correct


def _dense_counts(parts: tuple[torch.Tensor, ...], clip_logits: torch.Tensor, labels: torch.Tensor,
                  affinity: torch.Tensor, betas: torch.Tensor, alphas: torch.Tensor, ng: int, strategy: str,
                  max_elements: int, blocks: tuple[torch.Tensor, torch.Tensor] | None,
                  weighted: torch.Tensor | None) -> torch.Tensor:
    """Correct counts [B, A, G] with β chunks over the whole [N, M] affinity (dense values, or the literal arg-max)."""
    n, c = clip_logits.shape
    na = len(alphas)
    per_key = n * (blocks[0].numel() if blocks is not None else affinity.shape[1])
    per_beta = ng * n * c  # elements of one β's cache logits
    a_chunk = na if strategy == "interval" else max(1, min(na, max_elements // max(1, per_beta)))
    b_chunk = max(1, max_elements // max(1, 6 * per_beta, per_beta * a_chunk if strategy == "argmax" else 0,
                                         per_key, ng * n * na))
    correct = torch.empty(len(betas), na, ng, dtype=torch.int64, device=affinity.device)
    signed = _SignedParts.of(parts) if strategy == "interval" else None
    for b0 in range(0, len(betas), b_chunk):
        bs = betas[b0:b0 + b_chunk]
        kern = cache_kernel(affinity[None], bs[:, None, None])  # [b, N, M]
        if blocks is not None:
            index, block_w = blocks
            kern = torch.nn.functional.pad(kern, (0, 1))[:, :, index]  # [b, N, C, k]
            cache = torch.einsum("bnck,gck->bgnc", kern, block_w)  # [b, G, N, C]
        else:
            cache = torch.einsum("bnm,gmc->bgnc", kern, weighted)
        if strategy == "interval":
            lower, upper = _fast_interval_bounds(signed, cache, alphas)  # [b, G, N]
            inside = (lower[:, :, None] < alphas[:, None]) & (alphas[:, None] < upper[:, :, None])  # [b,G,A,N]
            correct[b0:b0 + len(bs)] = inside.sum(dim=-1).transpose(1, 2)
            continue
        for a0 in range(0, na, a_chunk):
            al = alphas[a0:a0 + a_chunk]
            total = clip_logits + al[None, :, None, None, None] * cache[:, None]  # [b, a, G, N, C]
            hit = total.argmax(dim=-1).eq(labels)  # [b, a, G, N]
            correct[b0:b0 + len(bs), a0:a0 + len(al)] = hit.sum(dim=-1)
    return correct


def class_blocks(values: torch.Tensor, max_padding: float = 2.0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Group cache entries by class when every row of values [M, C] has at most one non-zero.

    Returns:
        index [C, k]: the entries of class c in row c (k = the largest class size), padded with M; weight [M]: the
        non-zero of each row. None when a row has several non-zeros or padding would exceed `max_padding`·M + C.
    """
    nonzero = values != 0
    if (nonzero.sum(dim=1) > 1).any():
        return None
    m, c = values.shape
    col = nonzero.float().argmax(dim=1)  # all-zero rows: column 0 with weight 0
    weight = values.gather(1, col[:, None]).squeeze(1)
    counts = torch.bincount(col, minlength=c)
    k = int(counts.max()) if m else 0
    if k == 0 or c * k > max_padding * m + c:
        return None
    order = torch.argsort(col, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(m, device=values.device) - starts[col[order]]
    index = torch.full((c, k), m, dtype=torch.long, device=values.device)
    index[col[order], slot] = order
    return index, weight


def correct_alpha_interval(clip_logits: torch.Tensor, cache_logits: torch.Tensor,
                           labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Open α interval (lower, upper) in which argmax(Z + α K) is the label, per image.

    Args:
        clip_logits: Z [N, C].
        cache_logits: K [..., N, C].
        labels: [N].

    Returns:
        lower, upper [..., N]; an image that is never right gets lower = +inf. A class tied with the label for
        every α (same Z and K) wins only if its index is lower, as in `torch.argmax`.
    """
    return _interval_bounds(_interval_parts(clip_logits, labels), cache_logits)


def _interval_parts(clip_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What `_interval_bounds` needs from Z and y, computed once per search."""
    idx = labels[:, None]
    d_z = clip_logits.gather(1, idx) - clip_logits  # [N, C]; 0 for the label itself
    cls = torch.arange(d_z.shape[1], device=d_z.device)
    # classes that beat (or out-rank on a tie) the label when their cache logit equals the label's
    flat_bad = ((d_z < 0) | ((d_z == 0) & (idx > cls))) & (idx != cls)
    return idx, -d_z, flat_bad


@dataclass(frozen=True)
class _SignedParts:
    """`_interval_parts` re-expressed per clip sign (fixed for the whole search), for `_fast_interval_bounds`.

    With s = 1/α, image n beats class c iff d_k > (Z_c − Z_y) s: a bound on s whose direction depends only on the
    sign of Z_c − Z_y, not on β or γ. Classes behind the label in the clip logits give s > d_k/(Z_c − Z_y) (an upper
    bound on α), classes ahead give s < d_k/(Z_c − Z_y) (a lower bound on α).

    Attributes:
        parts: `_interval_parts`' tuple (for the exact fallback).
        inv_behind, inv_ahead: [N, C] 1/(Z_c − Z_y) on the classes behind / ahead of the label, 0 elsewhere.
        pad_ahead: [N, C] 0 on the classes ahead, +inf elsewhere (neutral for the minimum).
        clip_tie: [N] rows where another class has exactly the label's clip logit (handled exactly).
    """

    parts: tuple[torch.Tensor, ...]
    inv_behind: torch.Tensor
    inv_ahead: torch.Tensor
    pad_ahead: torch.Tensor
    clip_tie: torch.Tensor

    @classmethod
    def of(cls, parts: tuple[torch.Tensor, ...]) -> "_SignedParts":
        idx, neg_dz, _ = parts
        zero = torch.zeros((), device=neg_dz.device)
        inv = 1.0 / neg_dz
        ahead, behind = neg_dz > 0, neg_dz < 0
        others = torch.arange(neg_dz.shape[1], device=neg_dz.device) != idx
        return cls(parts, torch.where(behind, inv, zero), torch.where(ahead, inv, zero),
                   torch.where(ahead, zero, torch.full((), float("inf"), device=neg_dz.device)),
                   ((neg_dz == 0) & others).any(dim=1))

    def rows(self, r0: int, r1: int) -> "_SignedParts":
        """The same for validation rows r0:r1."""
        return _SignedParts(tuple(p[r0:r1] for p in self.parts), self.inv_behind[r0:r1], self.inv_ahead[r0:r1],
                            self.pad_ahead[r0:r1], self.clip_tie[r0:r1])


    def class_major(self, ng: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """inv_behind, inv_ahead, pad_ahead as contiguous [C, N, G] (for a class-major [C, N, G] cache: no
        broadcast along the innermost axis, which would take PyTorch's slow elementwise path)."""
        return tuple(t.T[..., None].expand(-1, -1, ng).contiguous()
                     for t in (self.inv_behind, self.inv_ahead, self.pad_ahead))


NEAR_GRID = 1e-5  # relative distance to a grid α under which a bound is recomputed exactly


def _class_major_bounds(sp: _SignedParts, major: tuple[torch.Tensor, ...], cache: torch.Tensor,
                        alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_fast_interval_bounds` for a class-major cache [C, R, G] (`major` = `sp.class_major()`) -> [G, R] each."""
    inv_behind, inv_ahead, pad_ahead = major
    labels = sp.parts[0][:, 0]
    rows = torch.arange(len(labels), device=cache.device)
    d_k = cache[labels, rows] - cache  # [C, R, G]
    q_up = (d_k * inv_behind).amax(dim=0)
    q_lo = torch.addcmul(pad_ahead, d_k, inv_ahead, out=d_k).amin(dim=0)
    lower, upper = _bounds_from_q(q_lo.T, q_up.T)  # [G, R]
    near = _near_grid(lower, upper, alphas) | sp.clip_tie
    if bool(near.any()):
        g, r = near.nonzero().unbind(1)
        exact_lo, exact_up = _interval_bounds(tuple(p[r] for p in sp.parts), cache[:, r, g].T)
        lower[near], upper[near] = exact_lo, exact_up
    return lower, upper


def _bounds_from_q(q_lo: torch.Tensor, q_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α bounds from the 1/α ones: lower = 1/q_lo, upper = 1/q_up, +inf where q ≤ 0 (see `_fast_interval_bounds`)."""
    inf = torch.full((), float("inf"), device=q_lo.device)
    return torch.where(q_lo > 0, 1.0 / q_lo, inf), torch.where(q_up > 0, 1.0 / q_up, inf)


def _near_grid(lower: torch.Tensor, upper: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Where a bound lies within `NEAR_GRID` (relative) of a grid α: [...] bool."""
    tol = NEAR_GRID * alphas.abs()
    return (((lower[..., None] - alphas).abs() <= tol) | ((upper[..., None] - alphas).abs() <= tol)).any(dim=-1)


def _fast_interval_bounds(sp: _SignedParts, cache_logits: torch.Tensor,
                          alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_interval_bounds` with the same counts on the `alphas` grid, in three cheap passes over [..., N, C].

    lower = 1/min over ahead classes of d_k/(Z_c − Z_y), upper = 1/max over behind classes (+inf without one, or
    when an ahead class has d_k ≤ 0: never correct). These differ from `_interval_bounds`' single division by a few
    ulps, so every bound within `NEAR_GRID` (relative) of a grid α, and every row with a clip tie, is recomputed
    with `_interval_bounds` itself: the counts are those of `_interval_bounds`.
    """
    idx = sp.parts[0]
    d_k = cache_logits.gather(-1, idx.expand(*cache_logits.shape[:-1], 1)) - cache_logits  # [..., N, C]
    q_up = (d_k * sp.inv_behind).amax(dim=-1)
    q_lo = torch.addcmul(sp.pad_ahead, d_k, sp.inv_ahead, out=d_k).amin(dim=-1)
    lower, upper = _bounds_from_q(q_lo, q_up)
    near = _near_grid(lower, upper, alphas) | sp.clip_tie
    if bool(near.any()):
        at = near.nonzero()
        rows = at[:, -1]
        exact_lo, exact_up = _interval_bounds(tuple(p[rows] for p in sp.parts), cache_logits[near])
        lower[near], upper[near] = exact_lo, exact_up
    return lower, upper


def _interval_bounds(parts: tuple[torch.Tensor, ...], cache_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx, neg_dz, flat_bad = parts
    d_k = cache_logits.gather(-1, idx.expand(*cache_logits.shape[:-1], 1)) - cache_logits  # [..., N, C]
    ratio = neg_dz / d_k  # α at which class c catches up; only used where d_k != 0 (the label has d_k = 0)
    inf = float("inf")
    lower = ratio.masked_fill(d_k <= 0, -inf).amax(dim=-1)
    upper = ratio.masked_fill_(d_k >= 0, inf).amin(dim=-1)
    flat = d_k == 0
    if int(flat.sum()) > flat[..., 0].numel():  # some class other than the label has the label's cache logit
        lower = lower.masked_fill((flat & flat_bad).any(dim=-1), inf)
    return lower, upper


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] of logits [N, C] against labels [N]."""
    return float(logits.argmax(dim=-1).eq(labels.to(logits.device)).float().mean()) if len(labels) else 0.0
