"""Every cached-feature method at ImageNet size: fit time, logits time, peak RSS, top-1, against literal loops.

    python benchmarks/scale.py                  # 1000 classes x 1/4/16 shots, 4 val/class, 50k test, dim 512
    python benchmarks/scale.py --quick          # a small smoke run (seconds)
    python benchmarks/scale.py --out scale.md   # also write the markdown table
    python benchmarks/scale.py --threads 1 --clock process   # CPU seconds: robust on a shared machine
    python benchmarks/scale.py --protocol --out-dir runs/protocol   # the whole few-shot protocol, resumable

**`--protocol`** runs the whole few-shot protocol of `kshot eval --protocol fewshot` (`kshot.eval.fewshot.run_fewshot`,
the same engine: K shots and min(K, 4) val per class drawn from a labelled pool per seed, every cell scored on the
test features) over every cached-feature method × shots 1,2,4,8,16 × seeds 1,2,3 on the synthetic set, with a pool of
`--pool` images per class. Seeds run one after another, each printing its wall time; finished cells are kept in
`--out-dir`/results.jsonl, so a re-run resumes where a killed one stopped. The feature extraction `kshot eval` does
first is not part of it (the features are synthetic).

**The synthetic set** (`synthetic_imagenet`) is built to be as hard as ImageNet for CLIP ViT-B, not trivially
separable: class means share a rank-32 subspace (95 % of their energy), every image adds isotropic noise and a
rank-32 "confusable" noise in that same subspace, and each text weight is its class mean plus rank-32 noise. The
noise levels were calibrated at 1000 classes (seed 0) so that zero-shot top-1 is ≈ 61 % and a 16-shot class-mean
(prototype) classifier ≈ 73 % (prototype + text ≈ 75 %), the ImageNet picture (zero-shot ~60 %, 16-shot methods
~70 %). All features are L2-normalised, logit scale 100.

**Literal loops.** In the same run, interleaved with the methods, each method's official loop as its parity test
states it (`tests/methods/test_<name>.py`; re-stated here, not imported), at the defaults of kshot's config of that
method (`create(name).config`: same epochs, steps, grids, batch), so that both do the same work. `~` marks an
extrapolated time; "big" is more than 100 classes.

- zeroshot: one matmul. `auto`: none ("n/a"; it only selects among the other methods).
- Searches: Tip-Adapter's `search_hp` (β outer, α inner, dense one-hot matmul and arg-max per cell), APE's
  (β, α, γ) loop (`literal_cache_search`). When big, on a 10 % class subset and its first 400 cells, × cells ratio
  × (1/0.1)³ (cost ∝ cells × N·M·C).
- Training loops (`literal_training`: APE-T, Track1, LP++, Tip-Adapter-F's `nn.Linear` keys): their first 20 steps
  at any size, scaled to all steps (`~`), the per-epoch validation timed once; then the official search after
  training (APE-T, Track1, Tip-Adapter-F) as above.
- CLIP-Adapter (`_Adapter`): one separate AdamW run per ρ of `rho_grid`, 300 steps of batch 32, val every 10 steps;
  ZS-LP / CLAP (`official_lp`): 300 epochs of max(1, N // 256) steps, autograd, momentum written out; InMaP
  (`_official_sinkhorn`, `_official_image_opt`): Sinkhorn then 2000 full-batch proxy steps on the test features +
  shots (kshot's fit inputs). All three run in full on small data; when big, their first 20 steps (proxy
  iterations), scaled to all.
- Linear probe: lpclip's scikit-learn `LogisticRegression(lbfgs)` refitted for every C of its search (7 grid + 2 × 8
  bisection fits, tol / N as the scikit-learn versions lpclip ran), in full on small data. When big, a 5-iteration
  fit gives the seconds per lbfgs iteration, times the iterations of the 23 fits, each the iterations kshot's
  L-BFGS needed at that C (`LBFGSIterations` around kshot's fit; kshot's warm starts need fewer than cold starts,
  so this leans in the literal's favour; at 200 classes, dim 64, 4 shots it gave 2.4 s against 2.0 s measured).
- GDA (`official_gda`: per-class loops, pinv): in full at any size.
- ProKeR (`official_proker`): a `linalg.solve` per (β, λ) cell over all rows, then the final solve. When big, on a
  10 % class subset × 1000 (the n³ solves dominate: an upper bound, loose where the subset is small — at 200
  classes it gave 12 s against 1.7 s measured).
- TDA (`official_tda`): the per-image stream loop on kshot's stream (test features, kshot's seeded order), base
  logits zero-shot + the shots' Tip cache (kshot's addition) after Tip's search with `shot_search_steps`. When big,
  the search as Tip's above, and the stream timed on 4 windows of 200 images spread over it (caches brought to each
  window by the official updates, untimed), each standing for a quarter of the stream. kshot's TDA computes the
  stream's cache logits in `logits`, so compare the literal with fit + logits there.

The ratio column is kshot's fit time over the literal loop's (the robust number on a shared machine: both are
timed in the same run). Peak RSS is the largest resident set sampled every 10 ms during fit + logits (the process's
baseline, features included, is part of it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import operator
import resource
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import sklearn
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from kshot.data.fewshot import default_val_shots
from kshot.eval.fewshot import FewShotInputs, FewShotProtocol, ResultStore, cached_feature_methods, run_fewshot
from kshot.eval.report import markdown_table
from kshot.features.featureset import FeatureSet
from kshot.methods import METHODS, Task, create
from kshot.methods.linear_probe import lpclip_val_subset
from kshot.methods.search import linear_grid
from kshot.outputs import atomic_write_text

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]  # `--clock process`: CPU seconds of this process (all threads), robust on a shared machine

RANK, SHARED, IMAGE_NOISE, CONFUSABLE_NOISE, TEXT_NOISE = 32, 0.95, 1.0, 1.25, 0.5  # calibrated, see docstring


@dataclass
class Split:
    train: FeatureSet
    val: FeatureSet
    test: FeatureSet
    text: torch.Tensor


def synthetic_imagenet(classes: int = 1000, dim: int = 512, shots: int = 16, val_per_class: int = 4,
                       test: int = 50000, seed: int = 0) -> Split:
    """The calibrated synthetic set (module docstring): `shots` train and `val_per_class` val images per class."""
    g = torch.Generator().manual_seed(seed)
    rank = min(RANK, dim)
    basis = torch.linalg.qr(torch.randn(dim, rank, generator=g))[0].T  # [rank, D] orthonormal rows
    low = F.normalize(torch.randn(classes, rank, generator=g) @ basis, dim=-1)
    own = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    means = F.normalize(SHARED ** 0.5 * low + (1 - SHARED) ** 0.5 * own, dim=-1)

    def draw(labels: torch.Tensor) -> FeatureSet:
        n = len(labels)
        iso = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
        confusable = F.normalize(torch.randn(n, rank, generator=g) @ basis, dim=-1)
        x = F.normalize(means[labels] + IMAGE_NOISE * iso + CONFUSABLE_NOISE * confusable, dim=-1)
        return FeatureSet(x, labels, [""] * n)

    text_noise = F.normalize(torch.randn(classes, rank, generator=g) @ basis, dim=-1)
    text = F.normalize(means + TEXT_NOISE * text_noise, dim=-1)
    return Split(draw(torch.arange(classes).repeat_interleave(shots)),
                 draw(torch.arange(classes).repeat_interleave(val_per_class)),
                 draw(torch.randint(0, classes, (test,), generator=g)), text)


def first_shots(fs: FeatureSet, k: int) -> FeatureSet:
    """The first k images of every class of a class-sorted set."""
    counts = torch.bincount(fs.labels)
    starts = torch.cumsum(counts, 0) - counts
    idx = (starts[:, None] + torch.arange(k)[None]).flatten()
    return fs.subset(idx)


class PeakRSS:
    """Largest resident set size (bytes) sampled every 10 ms while the block runs."""

    def __enter__(self) -> "PeakRSS":
        self.peak, self._stop = _rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def literal_zeroshot(task: Task, test: torch.Tensor) -> float:
    t0 = clock()
    (task.logit_scale * test @ task.text_weights.T).argmax(1)
    return clock() - t0


def literal_cache_search(task: Task, with_gamma: bool, max_cells: int, alpha_scale: float = 3.0,
                         steps: tuple[int, int] = (200, 20)) -> tuple[float, int]:
    """Time of the official search loop (dense one-hot values, arg-max per cell) over its first `max_cells` cells.

    Returns (seconds for the cells run, total cells of the official grid). APE's γ loop uses APE's KL weights on
    all channels here (the loop's cost does not depend on the channel selection). α's grid ends at `alpha_scale`
    (APE's 7 with γ); `steps` are the (β, α) grid sizes (Tip's 200, 20).
    """
    keys, y = task.train.features, task.train.labels
    val, val_y = task.val.features, task.val.labels
    values = F.one_hot(y, task.num_classes).float()
    betas, alphas = linear_grid(7.0, steps[0]), linear_grid(7.0 if with_gamma else alpha_scale, steps[1])
    gammas = linear_grid(1.0, 20, start=0.0).tolist() if with_gamma else [0.0]
    kl = -torch.log2(torch.softmax(keys @ task.text_weights.T, -1).gather(1, y[:, None]).squeeze(1) + 1e-6)
    total = len(betas) * len(alphas) * len(gammas)
    t0, done, best = clock(), 0, -1
    clip = task.logit_scale * val @ task.text_weights.T
    affinity = val @ keys.T  # computed once, as the official code does
    for b in betas.tolist():
        for a in alphas.tolist():
            for gm in gammas:
                logits = clip + a * torch.exp(-b * (1 - affinity)) @ (values * torch.exp(gm * kl)[:, None])
                acc = int((logits.argmax(1) == val_y).sum())
                best = max(best, acc)
                done += 1
                if done >= max_cells:
                    return clock() - t0, total
    return clock() - t0, total


def literal_training(name: str, task: Task, max_steps: int) -> tuple[float, float]:
    """Per-step seconds of the official training loop (its first `max_steps` steps) and the loop's total steps.

    The forward passes as the parity tests state them (`tests/methods/test_ape_t.py: ReferenceAPET`,
    `test_track1.py: ReferenceTrack1`, `test_lpp.py: _official_lpp`, `test_tip_adapter_f.py: reference_tip_f`: a
    bias-free `nn.Linear` initialised from the cache keys, AdamW + per-step cosine at `TipAdapterFConfig`'s
    defaults, batch 256, 20 epochs, α and β at their initial values): the residual added to cloned keys and text
    weights every step, the dense one-hot values matmul, autograd; LP++ full batch with `nn.Linear` and its
    validation accuracy every iteration (text logits of shots and val computed once, in its favour). The channels
    are the first Q (the loop's cost does not depend on which). The per-epoch validation forward is timed once and
    counted once per epoch.
    """
    x, y = task.train.features, task.train.labels
    c, d, scale = task.num_classes, x.shape[1], task.logit_scale
    values = F.one_hot(y, c).float()
    if name == "lpp":
        clf = torch.nn.Linear(d, c)
        clf.weight.data = values.T @ x
        clf.bias.data.zero_()
        t0 = clock()
        text_logits, val_text = x @ task.text_weights.T, task.val.features @ task.text_weights.T
        alpha = torch.full((1, c), 1.0, requires_grad=True)
        opt = torch.optim.SGD(clf.parameters(), 1e-3, momentum=0.9)
        for _ in range(max_steps):
            loss = F.cross_entropy(clf(x) + torch.ones(len(x), 1) @ alpha * text_logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # the official best-val iteration: validation accuracy every iteration
                (clf(task.val.features) + alpha * val_text).argmax(1).eq(task.val.labels).float().mean()
        return (clock() - t0) / max_steps, 300.0
    batch, sched = 256, None
    if name == "tip_adapter_f":
        cfg = create(name).config
        batch, epochs = cfg.batch_size, cfg.epochs
        adapter = torch.nn.Linear(d, len(x), bias=False)
        adapter.weight = torch.nn.Parameter(x.clone())
        opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * -(-len(y) // batch))
    else:
        q, epochs = (350, 30) if name == "track1" else (350, 20)
        q = min(q, d)
        ch = torch.arange(q)
        res = torch.zeros(c, q, requires_grad=True)
        vw = torch.ones(len(y), 1, requires_grad=True)
        opt = torch.optim.AdamW([res, vw], lr=1e-4, eps=1e-3, weight_decay=0.1)
        keys_sel = F.normalize(x[:, ch], dim=-1)

    def forward(f: torch.Tensor) -> torch.Tensor:
        if name == "tip_adapter_f":
            affinity = adapter(f)
            cache_logits = ((-1) * (cfg.init_beta - cfg.init_beta * affinity)).exp() @ values
            return scale * f @ task.text_weights.T + cache_logits * cfg.init_alpha
        if name == "track1":
            w = task.text_weights.clone()
            w[:, ch] = w[:, ch] + res
            aff = F.normalize(f[:, ch], dim=-1) @ (keys_sel + res[y]).T
            return scale * f @ w.T + 0.8 * torch.exp(-1.0 * (1 - aff)) @ values
        new_keys = x.clone()
        new_keys[:, ch] = new_keys[:, ch] + res[y]
        w = task.text_weights.T.clone()
        w[ch, :] = w[ch, :] + res.T
        return scale * f @ w + 3.0 * ((-1) * (1.0 - 1.0 * (f @ new_keys.t()))).exp() @ (values * vw)

    steps = epochs * -(-len(y) // batch)
    t0 = clock()
    for i in range(max_steps):
        idx = torch.randint(len(y), (min(batch, len(y)),))
        loss = F.cross_entropy(forward(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    per_step = (clock() - t0) / max_steps
    t0 = clock()
    with torch.no_grad():
        for i in range(0, len(task.val), batch):
            forward(task.val.features[i:i + batch])
    return per_step + (clock() - t0) * epochs / steps, float(steps)


def _scaled(loop_s: float, done: int, total: int) -> float:
    """Seconds of `total` steps from the seconds of the first `done`."""
    return loop_s * total / max(1, done)


class LBFGSIterations:
    """While active, records the iterations of every `torch.optim.LBFGS.step` call, in call order.

    kshot's linear probe runs one such call per distinct fit, in the order of its `search_history_`, so the two zip
    into C -> iterations (`literal_linear_probe`). Reading the optimiser state after each fit costs nothing measurable.
    """

    def __enter__(self) -> "LBFGSIterations":
        self.counts: list[int] = []
        self._step = step = torch.optim.LBFGS.step
        counts = self.counts

        def counted(opt: torch.optim.LBFGS, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
            out = step(opt, closure)
            counts.append(int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0)))
            return out

        torch.optim.LBFGS.step = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        torch.optim.LBFGS.step = self._step  # type: ignore[method-assign]


def lpclip_search(score_of: Callable[[float], float], grid: tuple[float, ...], steps: int) -> None:
    """lpclip/linear_probe.py's search as it is written: every grid C fitted, then `steps` bisection rounds in log10 C
    that fit both ends anew (`score_of(C)` fits and scores one C)."""
    accs = [score_of(c) for c in grid]
    peak = grid[int(np.argmax(accs))]
    left, right = 0.1 * peak, 10.0 * peak
    for _ in range(steps):
        acc_left, acc_right = score_of(left), score_of(right)
        mid = 10.0 ** (0.5 * (math.log10(left) + math.log10(right)))
        left, right = (mid, right) if acc_left < acc_right else (left, mid)


def literal_linear_probe(task: Task, big: bool, history: list[tuple[float, float]], iterations: list[int],
                         max_iter: int = 5) -> tuple[float, bool]:
    """Seconds of lpclip's probe: scikit-learn `LogisticRegression(lbfgs)` for every C of `lpclip_search`.

    At the default config (`LinearProbeConfig`: C grid, 8 rounds, max_iter 1000) with tol / N, the convergence rule of
    the scikit-learn versions lpclip ran (module docstring of `kshot.methods.linear_probe`; scikit-learn >= 1.2's
    mean objective stops at chance at 1000 classes with tol). When `big`: one fit of `max_iter` iterations gives the
    seconds per lbfgs iteration, times the iterations of the 23 lpclip fits, each taken as the iterations kshot's
    L-BFGS needed at that C (`iterations`, zipped with kshot's `history` of (C, val score), whose scores also
    steer the bisection). kshot warm-starts along C, the literal starts every fit from 0: the estimate leans in the
    literal's favour. Returns (seconds, extrapolated).
    """
    cfg = create("linear_probe").config
    x, y = task.train.features.double().numpy(), task.train.labels.numpy()
    val = lpclip_val_subset(task.val, int(torch.bincount(task.train.labels).max()), task.seed)
    vx, vy = val.features.double().numpy(), val.labels.numpy()
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    reg: dict[str, Any] = {"l1_ratio": 0.0} if (major, minor) >= (1, 8) else {"penalty": "l2"}

    def fit(c: float, iters: int) -> LogisticRegression:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(solver="lbfgs", C=c, max_iter=iters, tol=cfg.tol / len(x), **reg).fit(x, y)

    if not big:
        t0 = clock()
        lpclip_search(lambda c: fit(c, cfg.max_iter).score(vx, vy), tuple(cfg.c_grid), cfg.search_steps)
        return clock() - t0, False
    t0 = clock()
    clf = fit(1.0, max_iter)
    per_iter_s = (clock() - t0) / max(1, int(clf.n_iter_[0]))
    fits = dict(zip([c for c, _ in history], iterations)) if len(history) == len(iterations) else {}
    scores = dict(history)
    if not scores:  # no search history to replay: every lpclip fit at max_iter (an upper bound)
        return per_iter_s * cfg.max_iter * (len(cfg.c_grid) + 2 * cfg.search_steps), True
    total = 0

    def replay(c: float) -> float:
        nonlocal total
        near = min(scores, key=lambda f: abs(math.log10(f) - math.log10(c)))
        total += fits.get(near, cfg.max_iter)
        return scores[near]

    lpclip_search(replay, tuple(cfg.c_grid), cfg.search_steps)
    return per_iter_s * total, True


def literal_clip_adapter(task: Task, big: bool, max_steps: int) -> tuple[float, bool]:
    """CLIP-Adapter's official module (`tests/methods/test_clip_adapter.py: _Adapter, _literal_logits`) trained as
    kshot's default schedule does (`ClipAdapterConfig`: AdamW, cosine, `steps` of batch 32, val check every
    `eval_every` steps keeping the best state), one separate run per ρ of `rho_grid`. When `big`: the first
    `max_steps` steps of the first ρ, scaled to steps × len(rho_grid)."""
    cfg = create("clip_adapter").config
    x, y, text, scale = task.train.features, task.train.labels, task.text_weights, task.logit_scale
    n, d = x.shape
    batch = n if cfg.batch_size <= 0 else min(cfg.batch_size, n)
    total, done = cfg.steps * len(cfg.rho_grid), 0
    limit = max_steps if big else total
    t0 = clock()
    for rho in cfg.rho_grid:
        adapter = nn.Sequential(nn.Linear(d, d // cfg.reduction, bias=False), nn.ReLU(),
                                nn.Linear(d // cfg.reduction, d, bias=False), nn.ReLU())
        opt = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
        best, pos, order = -1.0, n, torch.arange(n)

        def logits(f: torch.Tensor) -> torch.Tensor:
            feats = rho * adapter(f) + (1 - rho) * f
            feats = feats / feats.norm(dim=-1, keepdim=True)
            return scale * feats @ text.t()

        for step in range(cfg.steps):
            if pos + batch > n:
                order, pos = torch.randperm(n), 0
            idx = order[pos:pos + batch]
            pos += batch
            loss = F.cross_entropy(logits(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if (step + 1) % cfg.eval_every == 0:
                with torch.no_grad():
                    acc = float(logits(task.val.features).argmax(1).eq(task.val.labels).float().mean())
                if acc >= best:
                    best, kept = acc, copy.deepcopy(adapter.state_dict())  # noqa: F841 (kept, as officially)
            done += 1
            if done >= limit:
                return _scaled(clock() - t0, done, total), done < total
    return clock() - t0, False


def literal_inmap(task: Task, big: bool, max_steps: int) -> tuple[float, bool]:
    """InMaP's `sinkhorn` and `image_opt` (`tests/methods/test_inmap.py: _official_sinkhorn, _official_image_opt`,
    [D, C] classifier columns) on kshot's inputs: X = the unlabelled (test) features and the shots (one-hot rows,
    kshot's `use_shots`), `InMaPConfig` defaults (2000 proxy iterations, no early stop). Sinkhorn in float64 as
    kshot (float32 underflows to empty classes). When `big`: the first `max_steps` proxy iterations, scaled to all."""
    cfg = create("inmap").config
    x_u, x_s = task.unlabeled.features, task.train.features
    feat, w = torch.cat([x_u, x_s]), task.text_weights.T.contiguous()
    t0 = clock()
    row, col = x_u.shape[0], w.shape[1]
    p = F.softmax((x_u @ w).double() / cfg.tau_t, dim=1)
    p /= row
    for _ in range(cfg.sinkhorn_iters):
        p /= torch.sum(p, dim=0, keepdim=True)
        p /= col
        p /= torch.sum(p, dim=1, keepdim=True)
        p /= row
    plabel = torch.cat([(p * row).float(), F.one_hot(task.train.labels, col).float()])
    val, idx = torch.max(plabel[:row], dim=1)
    mask = torch.nonzero(val > cfg.alpha).flatten()
    plabel[mask, :] = 0
    plabel[mask, idx[mask]] = 1
    ins = feat.shape[0]
    base = feat.T @ plabel
    classifier, pre_norm, lr = w.clone(), float("inf"), cfg.lr
    fixed_s = clock() - t0
    iters = min(max_steps, cfg.iters) if big else cfg.iters
    t0 = clock()
    for _ in range(iters):
        prob = F.softmax(feat @ classifier / cfg.tau_i, dim=1)
        grad = feat.T @ prob - base
        temp = torch.norm(grad)
        if temp > pre_norm:
            lr /= 2.0
        pre_norm = temp
        classifier -= (lr / (ins * cfg.tau_i)) * grad
        classifier = F.normalize(classifier, dim=0)
    return fixed_s + _scaled(clock() - t0, iters, cfg.iters), iters < cfg.iters


def literal_gda(task: Task) -> float:
    """GDA's `run` (`tests/methods/test_gda.py: official_gda`): per-class means and centring, D · pinv of the shrunk
    scatter, uniform prior, the α list scored on val (first strictly better). Affordable at any size: no
    extrapolation."""
    vecs, labels, val_x, val_y = task.train.features, task.train.labels, task.val.features, task.val.labels
    clip_weights, scale = task.text_weights.T, task.logit_scale
    t0 = clock()
    n_cls = clip_weights.shape[1]
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(n_cls)])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(n_cls)])
    d = center_vecs.shape[1]
    cov_inv = d * torch.linalg.pinv((center_vecs.shape[0] - 1) * center_vecs.T.cov()
                                    + center_vecs.T.cov().trace() * torch.eye(d))
    ps = torch.ones(n_cls) * 1.0 / n_cls
    W = torch.einsum("nd, dc -> cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    best_val_acc, best_alpha = 0.0, 0.1
    for alpha in create("gda").config.alphas:
        val_logits = scale * val_x @ clip_weights + alpha * (val_x @ W + b)
        acc = float(val_logits.argmax(1).eq(val_y).float().mean())
        if acc > best_val_acc:
            best_val_acc, best_alpha = acc, alpha
    return clock() - t0


def literal_proker(task: Task, big: bool) -> tuple[float, bool]:
    """ProKeR's grid search and solve (`tests/methods/test_proker.py: official_proker`): for every (β, λ) of the
    default `linspace` grids (`ProKeRConfig`, 10 × 10) one `torch.linalg.solve` of (K_SS/λ + I) A = Y − F Tᵀ over
    all training rows and the val accuracy, then the final solve. When `big`: on a 10 % class subset, × 1000 (the
    n³ solves dominate; the m·n·C scoring scales the same, the n²·D kernels by 100: an upper bound)."""
    cfg = create("proker").config
    sub = class_subset(task, task.val, 0.1)[0] if big else task
    vecs, labels, val_x, val_y = sub.train.features, sub.train.labels, sub.val.features, sub.val.labels
    clip_weights = sub.text_weights.T

    def rbf(a: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
        return (-beta * (1 - a @ b.T)).exp()

    t0 = clock()
    cache = F.one_hot(labels, num_classes=clip_weights.shape[1]).float()
    logits_text_shots, logits_text_val = vecs @ clip_weights, val_x @ clip_weights
    eye = torch.eye(vecs.size(0))
    best_val_acc, best_beta, best_lmbda = 0.0, float(cfg.beta_grid[0]), float(cfg.lmbda_grid[0])
    for beta in torch.linspace(float(cfg.beta_grid[0]), float(cfg.beta_grid[1]), int(cfg.beta_grid[2])).tolist():
        K_SS, K_XS = rbf(vecs, vecs, beta), rbf(val_x, vecs, beta)
        for lmbda in torch.linspace(float(cfg.lmbda_grid[0]), float(cfg.lmbda_grid[1]),
                                    int(cfg.lmbda_grid[2])).tolist():
            alpha_i = torch.linalg.solve(1 / lmbda * K_SS + eye, cache - logits_text_shots)
            acc = 100 * float((logits_text_val + K_XS @ alpha_i).argmax(1).eq(val_y).float().mean())
            if acc > best_val_acc:
                best_val_acc, best_beta, best_lmbda = acc, beta, lmbda
    torch.linalg.solve(1 / best_lmbda * rbf(vecs, vecs, best_beta) + eye, cache - logits_text_shots)
    return (clock() - t0) * (1000.0 if big else 1.0), big


def literal_zs_lp(task: Task, big: bool, max_steps: int, constraint: bool) -> tuple[float, bool]:
    """ZS-LP / CLAP's training (`tests/methods/test_clap.py: official_lp`): prototypes from the text classifier,
    every step a fresh leaf, autograd, the SGD momentum buffer and Dassl's warm-up + cosine learning rate written out;
    `len(train_loader_x)` = max(1, N // 256) batches per epoch, 300 epochs (`ZSLPConfig`); CLAP adds the l2
    constraint with the zero-shot class confidences. When `big`: the first `max_steps` steps, scaled to all."""
    cfg = create("clap" if constraint else "zs_lp").config
    feats, labels, base_text, scale = task.train.features, task.train.labels, task.text_weights, task.logit_scale
    t0 = clock()
    prototypes = base_text.clone()
    if constraint:
        logits_ds = scale * F.normalize(feats, dim=-1) @ F.normalize(base_text, dim=-1).T
        labels_one_hot = F.one_hot(labels, task.num_classes)
        alpha_constraint = (torch.diag(torch.softmax(logits_ds, -1).t() @ labels_one_hot.to(feats.dtype))
                            / labels_one_hot.sum(0))
    fixed_s = clock() - t0
    num_batches = max(1, len(feats) // cfg.batch_size)
    total = cfg.epochs * num_batches
    limit, done, buf = (max_steps if big else total), 0, None
    t0 = clock()
    for epoch in range(cfg.epochs):
        cur_lr = cfg.warmup_lr if epoch < cfg.warmup_epochs else \
            cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs)) / 2
        idx = torch.randperm(len(feats))
        f_ep, y_ep = feats[idx], labels[idx]
        for batch_idx in range(num_batches):
            f = f_ep[batch_idx * cfg.batch_size:(batch_idx + 1) * cfg.batch_size]
            y = y_ep[batch_idx * cfg.batch_size:(batch_idx + 1) * cfg.batch_size]
            p = prototypes.clone().requires_grad_(True)
            image_features_norm = f / f.norm(dim=-1, keepdim=True)
            prototypes_norm = p / p.norm(dim=-1, keepdim=True)
            loss = F.cross_entropy(image_features_norm @ prototypes_norm.t() * scale, y)
            if constraint:
                loss = loss + torch.mean(alpha_constraint * (p - base_text.clone()).pow(2).sum(-1))
            (grad,) = torch.autograd.grad(loss, p)
            buf = grad.clone() if buf is None else cfg.momentum * buf + grad
            prototypes = prototypes - cur_lr * buf
            done += 1
            if done >= limit:
                return fixed_s + _scaled(clock() - t0, done, total), done < total
    return fixed_s + clock() - t0, False


def literal_tda(task: Task, big: bool, max_steps: int, max_cells: int, windows: int = 4) -> tuple[float, bool]:
    """TDA's per-image stream loop (`tests/methods/test_tda.py: official_tda`: `update_cache`,
    `compute_cache_logits` rebuilding the caches' keys and dense values for every image) over kshot's inputs: the
    unlabelled (test) features in kshot's seeded order, base logits = zero-shot + the shots' Tip cache (kshot's
    addition; dense one-hot values), whose (β, α) search on val is Tip's loop with `TDAConfig.shot_search_steps`
    (`literal_cache_search`). When `big`: the search on a 10 % class subset × 1000 (as Tip's), and the stream timed
    on `windows` windows of 10 · `max_steps` images spread evenly over it (the caches brought to each window's start
    by the official updates from batched base logits, untimed), each window's per-image time standing for its
    1/`windows` of the stream."""
    cfg = create("tda").config
    if len(task.train):
        sub = class_subset(task, task.val, 0.1)[0] if big else task
        secs, total_cells = literal_cache_search(sub, False, max_cells, 3.0,
                                                 steps=tuple(cfg.shot_search_steps))
        search_s = secs * total_cells / min(max_cells, total_cells) * (1000.0 if big else 1.0)
    else:
        search_s = 0.0
    text, scale, keys = task.text_weights, task.logit_scale, task.train.features
    values = F.one_hot(task.train.labels, task.num_classes).float()
    n = len(task.unlabeled)
    stream = task.unlabeled.features[torch.randperm(n, generator=torch.Generator().manual_seed(int(task.seed)))]

    def base_logits(f: torch.Tensor) -> torch.Tensor:
        out = scale * f @ text.T
        if len(keys):
            out = out + cfg.shot_alpha * ((-1) * (cfg.shot_beta - cfg.shot_beta * (f @ keys.T))).exp() @ values
        return out

    def update_cache(cache: dict, pred: int, item: list, capacity: int) -> None:
        if pred in cache:
            if len(cache[pred]) < capacity:
                cache[pred].append(item)
            elif item[1] < cache[pred][-1][1]:
                cache[pred][-1] = item
            cache[pred] = sorted(cache[pred], key=operator.itemgetter(1))
        else:
            cache[pred] = [item]

    def cache_logits(f: torch.Tensor, cache: dict, alpha: float, beta: float, n_cls: int,
                     neg_mask: tuple[float, float] | None = None) -> torch.Tensor:
        cache_keys, cache_values = [], []
        for class_index in sorted(cache.keys()):
            for item in cache[class_index]:
                cache_keys.append(item[0])
                cache_values.append(item[2] if neg_mask else class_index)
        ck = torch.cat(cache_keys, dim=0).permute(1, 0)
        if neg_mask:
            cv = torch.cat(cache_values, dim=0)
            cv = ((cv > neg_mask[0]) & (cv < neg_mask[1])).to(f.dtype)
        else:
            cv = F.one_hot(torch.tensor(cache_values, dtype=torch.int64), num_classes=n_cls).to(f.dtype)
        return alpha * ((-1) * (beta - beta * (f @ ck))).exp() @ cv

    pos_cache: dict = {}
    neg_cache: dict = {}

    def observe(f: torch.Tensor, clip_logits: torch.Tensor) -> None:
        loss = -(clip_logits.softmax(1) * clip_logits.log_softmax(1)).sum(1)
        prob_map = clip_logits.softmax(1)
        pred = int(clip_logits.topk(1, 1, True, True)[1].t()[0])
        prop_entropy = float(loss / math.log2(clip_logits.shape[1]))
        update_cache(pos_cache, pred, [f, loss], cfg.pos_capacity)
        if cfg.neg_entropy[0] < prop_entropy < cfg.neg_entropy[1]:
            update_cache(neg_cache, pred, [f, loss, prob_map], cfg.neg_capacity)

    width = 10 * max_steps if big else n
    starts = sorted({k * n // windows for k in range(windows)}) if big and n > windows * width else [0]
    pos, timed, done = 0, 0.0, 0
    for start in starts:
        for chunk in range(pos, start, 1024):  # untimed: the official updates up to the window
            clip = base_logits(stream[chunk:min(chunk + 1024, start)])
            for j in range(len(clip)):
                observe(stream[chunk + j:chunk + j + 1], clip[j:j + 1])
        end = min(start + width, n)
        t0 = clock()
        for i in range(start, end):
            image_features = stream[i:i + 1]
            clip_logits = base_logits(image_features)
            observe(image_features, clip_logits)
            final_logits = clip_logits.clone()
            if pos_cache:
                final_logits += cache_logits(image_features, pos_cache, cfg.pos_alpha, cfg.pos_beta, task.num_classes)
            if neg_cache:
                final_logits -= cache_logits(image_features, neg_cache, cfg.neg_alpha, cfg.neg_beta,
                                             task.num_classes, cfg.neg_mask)
        timed += clock() - t0
        done += end - start
        pos = end
    return search_s + _scaled(timed, done, n), big or done < n


def class_subset(task: Task, test: FeatureSet, fraction: float) -> tuple[Task, FeatureSet]:
    keep = max(2, int(round(task.num_classes * fraction)))

    def cut(fs: FeatureSet) -> FeatureSet:
        return fs.subset(torch.nonzero(fs.labels < keep).flatten())

    return Task(train=cut(task.train), val=cut(task.val), classnames=task.classnames[:keep],
                text_weights=task.text_weights[:keep], logit_scale=task.logit_scale), cut(test)


# method -> (γ grid, α scale) of the official search after fit/training
SEARCHES = {"tip_adapter": (False, 3.0), "ape": (True, 7.0), "ape_t": (False, 7.0), "track1": (True, 7.0),
            "tip_adapter_f": (False, 3.0)}
TRAINED = ("ape_t", "track1", "lpp", "tip_adapter_f")  # `literal_training`


def literal_time(name: str, task: Task, test: FeatureSet, big: bool, max_cells: int = 400, max_steps: int = 20,
                 fitted: Any = None, lbfgs_counts: list[int] | None = None) -> str:
    """Literal-loop time of method `name` as a table cell (`~` = extrapolated, "n/a" = none: `auto`).

    Training loops (`literal_training`) are timed on their first `max_steps` steps and scaled to all steps; the
    search after training as in `literal_cache_search` (on a 10 % class subset × 1000 when `big`). The other loops
    extrapolate as their docstrings say. `fitted` (kshot's fitted method) and `lbfgs_counts` (`LBFGSIterations` of
    its fit) are used by the linear probe only.
    """
    if name == "zeroshot":
        return seconds_cell(literal_zeroshot(task, test.features))
    approx = False
    if name == "linear_probe":
        total_s, approx = literal_linear_probe(task, big, list(getattr(fitted, "search_history_", [])),
                                               lbfgs_counts or [])
    elif name == "clip_adapter":
        total_s, approx = literal_clip_adapter(task, big, max_steps)
    elif name == "inmap":
        total_s, approx = literal_inmap(task, big, max_steps)
    elif name == "gda":
        total_s = literal_gda(task)
    elif name == "proker":
        total_s, approx = literal_proker(task, big)
    elif name in ("zs_lp", "clap"):
        total_s, approx = literal_zs_lp(task, big, max_steps, constraint=name == "clap")
    elif name == "tda":
        total_s, approx = literal_tda(task, big, max_steps, max_cells)
    elif name in SEARCHES or name in TRAINED:
        total_s = 0.0
        if name in TRAINED:
            per_step, steps = literal_training(name, task, max_steps)
            total_s += per_step * steps
            approx = steps > max_steps
        if name in SEARCHES:
            sub, factor = (class_subset(task, test, 0.1)[0], 1000.0) if big else (task, 1.0)
            with_gamma, alpha_scale = SEARCHES[name]
            secs, total = literal_cache_search(sub, with_gamma, max_cells, alpha_scale)
            cells = min(max_cells, total)
            approx = approx or big or cells < total
            total_s += secs * total / cells * factor
    else:
        return "n/a"
    return ("~" if approx else "") + seconds_cell(total_s)


def seconds_cell(seconds: float) -> str:
    """Seconds for the table: 2 decimals, or 2 significant digits below 0.01 s (so a fast loop is not 0.00)."""
    return f"{seconds:.2f}" if seconds >= 0.01 else f"{seconds:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--test", type=int, default=50000)
    ap.add_argument("--shots", type=int, nargs="+", default=None, help="default 1 4 16 (--protocol: 1 2 4 8 16)")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered cached-feature method")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="small smoke run: 50 classes, dim 64, 2k test")
    ap.add_argument("--no-literal", action="store_true", help="skip the literal-loop baselines")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time, or this process's CPU time (with --threads 1: the time on an idle core)")
    ap.add_argument("--protocol", action="store_true", help="the whole few-shot protocol (module docstring); "
                    "default shots 1 2 4 8 16")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="--protocol: seeds")
    ap.add_argument("--pool", type=int, default=32, help="--protocol: labelled pool images per class")
    ap.add_argument("--out-dir", type=Path, default=Path("kshot-out/scale-protocol"),
                    help="--protocol: results folder (results.jsonl, table.md); a re-run resumes")
    args = ap.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.quick:
        args.classes, args.dim, args.test = min(args.classes, 50), min(args.dim, 64), min(args.test, 2000)
    torch.set_num_threads(args.threads)
    if args.protocol:
        run_protocol(args)
        return
    args.shots = args.shots or [1, 4, 16]
    names = args.methods or [e.name for e in METHODS if not e.obj.needs_backbone]
    data = synthetic_imagenet(args.classes, args.dim, max(args.shots), 4, args.test)
    big = args.classes > 100
    where = "extrapolated where marked ~ (class subsets, first steps, stream windows)" if big else "on the same data"
    header = (f"{args.classes} classes, dim {args.dim}, 4 val/class, {args.test} test, {args.threads} thread(s), "
              f"{args.clock} clock; literal loops {where}")
    lines = [header, "",
             "| method | shots | fit s | logits s | peak RSS GB | top-1 % | literal loop s | fit / literal |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    fit_seconds: dict[tuple[str, int], float] = {}
    for shots in args.shots:
        task = Task(train=first_shots(data.train, shots), val=data.val, classnames=[str(i) for i in range(args.classes)],
                    text_weights=data.text, unlabeled=data.test, logit_scale=100.0, seed=1)
        for name in names:
            method = create(name)
            counter = LBFGSIterations() if name == "linear_probe" else contextlib.nullcontext()
            with PeakRSS() as rss, counter as lbfgs:
                t0 = clock()
                method.fit(task)
                fit_s = clock() - t0
                t0 = clock()
                logits = method.logits(data.test.features)
                logits_s = clock() - t0
            acc = float((logits.argmax(1) == data.test.labels).float().mean())
            del logits
            literal = "—" if args.no_literal else literal_time(name, task, data.test, big, fitted=method,
                                                                 lbfgs_counts=getattr(lbfgs, "counts", None))
            fit_seconds[(name, shots)] = fit_s
            ratio = fit_ratio(fit_s, literal)
            line = (f"| {name} | {shots} | {fit_s:.2f} | {logits_s:.2f} | {rss.peak / 2**30:.2f} | {100 * acc:.1f} | "
                    f"{literal} | {ratio} |")
            lines.append(line)
            print(line, flush=True)
    lines += ["", protocol_estimate(fit_seconds, names, args.shots)]
    print(lines[-1])
    if args.out:
        atomic_write_text(args.out, "\n".join(lines) + "\n")


def run_protocol(args: argparse.Namespace) -> None:
    """`--protocol`: run_fewshot over the synthetic pool, one seed after another, timing each (wall clock)."""
    shots = tuple(args.shots or (1, 2, 4, 8, 16))
    k_val = default_val_shots(max(shots))  # the draw of `run_fewshot`; it silently takes fewer from a small pool
    if args.pool < max(shots) + k_val:
        raise SystemExit(f"--pool {args.pool} is smaller than the largest draw: {max(shots)} shots + "
                         f"{k_val} val per class")
    names = args.methods or cached_feature_methods()
    data = synthetic_imagenet(args.classes, args.dim, args.pool, 1, args.test)
    classnames = [str(i) for i in range(args.classes)]
    inputs = FewShotInputs(f"synthetic-imagenet-{args.classes}", f"synthetic-d{args.dim}", data.train, data.test,
                           classnames, data.text, 100.0)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(args.out_dir / "results.jsonl")
    print(f"protocol: {len(names)} methods x shots {','.join(map(str, shots))} x seeds "
          f"{','.join(map(str, args.seeds))}; {args.classes} classes, dim {args.dim}, pool {args.pool}/class, "
          f"{args.test} test, {args.threads} thread(s); results in {args.out_dir}", flush=True)
    total = 0.0
    records: list[dict[str, Any]] = []  # this protocol's cells, finished earlier or now
    for seed in args.seeds:
        t0 = time.perf_counter()
        records += run_fewshot(inputs, FewShotProtocol(names, shots, (seed,)), store,
                               progress=lambda line: print(line, flush=True))
        wall = time.perf_counter() - t0
        total += wall
        print(f"seed {seed}: {wall:.0f} s wall this run ({wall / 60:.1f} min; cells finished earlier are skipped)",
              flush=True)
    fit = sum(r["fit_seconds"] + r["predict_seconds"] for r in records)
    table = markdown_table(records)
    summary = (f"{len(records)} cells recorded; this run {total:.0f} s wall ({total / 3600:.2f} h); "
               f"fit + logits over the recorded cells {fit:.0f} s ({fit / 3600:.2f} h)")
    atomic_write_text(args.out_dir / "table.md", table + "\n\n" + summary + "\n")
    print(table, summary, sep="\n")


def fit_ratio(fit_s: float, literal: str) -> str:
    """kshot's fit time over the literal loop's table cell ("—" without a positive literal time)."""
    lit = float(literal.lstrip("~")) if literal[-1:].isdigit() else 0.0
    return f"{fit_s / lit:.2g}" if lit > 0 else "—"


def protocol_estimate(fit_seconds: dict[tuple[str, int], float], names: list[str], shots: list[int]) -> str:
    """Whole-protocol wall time (methods × shots 1,2,4,8,16 × 3 seeds), from the measured shots (nearest measured
    shot count for unmeasured ones; an estimate, not a measurement)."""
    total = 0.0
    for k in (1, 2, 4, 8, 16):
        near = min(shots, key=lambda s: (abs(s - k), -s))
        total += 3 * sum(fit_seconds[(n, near)] for n in names)
    return (f"Estimated `kshot eval --protocol fewshot` fit time, {len(names)} methods × shots 1,2,4,8,16 × 3 seeds: "
            f"~{total / 60:.0f} min (from the fits above; shots 2 and 8 take the nearest measured shot count).")


if __name__ == "__main__":
    main()
