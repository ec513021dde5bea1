"""Every cached-feature method at ImageNet size: fit time, logits time, peak RSS, top-1, against literal loops.

    python benchmarks/scale.py                  # 1000 classes x 1/4/16 shots, 4 val/class, 50k test, dim 512
    python benchmarks/scale.py --quick          # a small smoke run (seconds)
    python benchmarks/scale.py --out scale.md   # also write the markdown table
    python benchmarks/scale.py --threads 1 --clock process   # CPU seconds: robust on a shared machine

**The synthetic set** (`synthetic_imagenet`) is built to be as hard as ImageNet for CLIP ViT-B, not trivially
separable: class means share a rank-32 subspace (95 % of their energy), every image adds isotropic noise and a
rank-32 "confusable" noise in that same subspace, and each text weight is its class mean plus rank-32 noise. The
noise levels were calibrated at 1000 classes (seed 0) so that zero-shot top-1 is ≈ 61 % and a 16-shot class-mean
(prototype) classifier ≈ 73 % (prototype + text ≈ 75 %), the ImageNet picture (zero-shot ~60 %, 16-shot methods
~70 %). All features are L2-normalised, logit scale 100.

**Literal loops.** In the same run, interleaved with the methods, the official loops as the parity tests state
them: zero-shot as one matmul, Tip-Adapter's `search_hp` (β outer, α inner, dense one-hot matmul and arg-max per
cell) and APE's (β, α, γ) loop. At more than 100 classes the literal search runs on a 10 % class subset and on its
first cells only, and its time is extrapolated (cost ∝ cells × N·M·C, i.e. × cells ratio × (1/0.1)³); such numbers
are marked `~`. The trained methods' literal loops (APE-T, Track1, LP++: `literal_training`) are timed on their first
20 steps at full size and scaled to all steps (`~`), plus the official search after training for APE-T and Track1.
The ratio column is kshot's fit time over the literal loop's (the robust number on a shared machine: both are
timed in the same run). Peak RSS is the largest resident set sampled every 10 ms during fit + logits (the process's
baseline, features included, is part of it).
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from kshot.features.featureset import FeatureSet
from kshot.methods import METHODS, Task, create
from kshot.methods.search import linear_grid

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


def literal_cache_search(task: Task, with_gamma: bool, max_cells: int, alpha_scale: float = 3.0
                         ) -> tuple[float, int]:
    """Time of the official search loop (dense one-hot values, arg-max per cell) over its first `max_cells` cells.

    Returns (seconds for the cells run, total cells of the official grid). APE's γ loop uses APE's KL weights on
    all channels here (the loop's cost does not depend on the channel selection). α's grid ends at `alpha_scale`
    (APE's 7 with γ).
    """
    keys, y = task.train.features, task.train.labels
    val, val_y = task.val.features, task.val.labels
    values = F.one_hot(y, task.num_classes).float()
    betas, alphas = linear_grid(7.0, 200), linear_grid(7.0 if with_gamma else alpha_scale, 20)
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
    `test_track1.py: ReferenceTrack1`, `test_lpp.py: _official_lpp`): the residual added to cloned keys and text
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
    q, epochs = (350, 30) if name == "track1" else (350, 20)
    q = min(q, d)
    ch = torch.arange(q)
    res = torch.zeros(c, q, requires_grad=True)
    vw = torch.ones(len(y), 1, requires_grad=True)
    opt = torch.optim.AdamW([res, vw], lr=1e-4, eps=1e-3, weight_decay=0.1)
    keys_sel = F.normalize(x[:, ch], dim=-1)

    def forward(f: torch.Tensor) -> torch.Tensor:
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

    steps = epochs * -(-len(y) // 256)
    t0 = clock()
    for i in range(max_steps):
        idx = torch.randint(len(y), (min(256, len(y)),))
        loss = F.cross_entropy(forward(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_step = (clock() - t0) / max_steps
    t0 = clock()
    with torch.no_grad():
        for i in range(0, len(task.val), 256):
            forward(task.val.features[i:i + 256])
    return per_step + (clock() - t0) * epochs / steps, float(steps)


def class_subset(task: Task, test: FeatureSet, fraction: float) -> tuple[Task, FeatureSet]:
    keep = max(2, int(round(task.num_classes * fraction)))

    def cut(fs: FeatureSet) -> FeatureSet:
        return fs.subset(torch.nonzero(fs.labels < keep).flatten())

    return Task(train=cut(task.train), val=cut(task.val), classnames=task.classnames[:keep],
                text_weights=task.text_weights[:keep], logit_scale=task.logit_scale), cut(test)


# method -> (γ grid, α scale) of the official search after fit/training
SEARCHES = {"tip_adapter": (False, 3.0), "ape": (True, 7.0), "ape_t": (False, 7.0), "track1": (True, 7.0)}


def literal_time(name: str, task: Task, test: FeatureSet, big: bool, max_cells: int = 400,
                 max_steps: int = 20) -> str:
    """Literal-loop time for the methods that have one, as a table cell (`~` = extrapolated).

    Training loops (ape_t, track1, lpp) are timed on their first `max_steps` steps at full size and scaled to all
    steps; the search after training as in `literal_cache_search` (on a 10 % class subset × 1000 when `big`).
    """
    if name == "zeroshot":
        return f"{literal_zeroshot(task, test.features):.2f}"
    if name not in SEARCHES and name != "lpp":
        return "n/a"
    total_s, mark = 0.0, ""
    if name in ("ape_t", "track1", "lpp"):
        per_step, steps = literal_training(name, task, max_steps)
        total_s += per_step * steps
        mark = "~" if steps > max_steps else ""
    if name in SEARCHES:
        sub, factor = (class_subset(task, test, 0.1)[0], 1000.0) if big else (task, 1.0)
        with_gamma, alpha_scale = SEARCHES[name]
        secs, total = literal_cache_search(sub, with_gamma, max_cells, alpha_scale)
        cells = min(max_cells, total)
        mark = "~" if big or cells < total or mark else ""
        total_s += secs * total / cells * factor
    return f"{mark}{total_s:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--test", type=int, default=50000)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered cached-feature method")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="small smoke run: 50 classes, dim 64, 2k test")
    ap.add_argument("--no-literal", action="store_true", help="skip the literal-loop baselines")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time, or this process's CPU time (with --threads 1: the time on an idle core)")
    args = ap.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.quick:
        args.classes, args.dim, args.test = min(args.classes, 50), min(args.dim, 64), min(args.test, 2000)
    torch.set_num_threads(args.threads)
    names = args.methods or [e.name for e in METHODS if not e.obj.needs_backbone]
    data = synthetic_imagenet(args.classes, args.dim, max(args.shots), 4, args.test)
    big = args.classes > 100
    header = (f"{args.classes} classes, dim {args.dim}, 4 val/class, {args.test} test, {args.threads} thread(s), "
              f"{args.clock} clock; "
              f"literal loops {'on a 10 % class subset, extrapolated (~)' if big else 'on the same data'}")
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
            with PeakRSS() as rss:
                t0 = clock()
                method.fit(task)
                fit_s = clock() - t0
                t0 = clock()
                logits = method.logits(data.test.features)
                logits_s = clock() - t0
            acc = float((logits.argmax(1) == data.test.labels).float().mean())
            del logits
            literal = "—" if args.no_literal else literal_time(name, task, data.test, big)
            fit_seconds[(name, shots)] = fit_s
            ratio = fit_ratio(fit_s, literal)
            line = (f"| {name} | {shots} | {fit_s:.2f} | {logits_s:.2f} | {rss.peak / 2**30:.2f} | {100 * acc:.1f} | "
                    f"{literal} | {ratio} |")
            lines.append(line)
            print(line, flush=True)
    lines += ["", protocol_estimate(fit_seconds, names, args.shots)]
    print(lines[-1])
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(args.out)


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
