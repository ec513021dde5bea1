"""Fit + predict time of every cached-feature method at a realistic size, and a whole protocol sweep, on features.

    python benchmarks/methods.py                              # CPU default: 200 classes x 16 shots, 10k test, dim 512
    python benchmarks/methods.py --classes 1000 --test 50000 --device cuda
    python benchmarks/methods.py --classes 1000 --test 50000 --threads 2 --methods gda --sweep-classes 0
                                                              # one method at ImageNet size; peak RSS is then its own

Features are synthetic (class means on the unit sphere + noise; text weights = noisy means), so timings reflect the
methods' cost, not accuracy. The sweep runs every method x shots (1,2,4,8,16) x 3 seeds through the protocol runner.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from kshot.eval.fewshot import FewShotInputs, FewShotProtocol, ResultStore, cached_feature_methods, run_fewshot
from kshot.features.featureset import FeatureSet
from kshot.methods import Task, create
from kshot.experiment import method_overrides


def synthetic(classes: int, per_class: int, test: int, dim: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)

    def draw(labels):
        x = F.normalize(means[labels] + 0.04 * torch.randn(len(labels), dim, generator=g), dim=-1)
        return FeatureSet(x.to(device), labels.to(device), [""] * len(labels))

    pool = draw(torch.arange(classes).repeat_interleave(per_class))
    tst = draw(torch.randint(0, classes, (test,), generator=g))
    text = F.normalize(means + 0.05 * torch.randn(classes, dim, generator=g), dim=-1).to(device)
    return pool, tst, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sweep-classes", type=int, default=50, help="classes in the protocol sweep")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: every cached-feature method)")
    ap.add_argument("--set", action="append", default=[], help="method.key=value override; repeat")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pool, tst, text = synthetic(args.classes, args.shots + 4, args.test, args.dim, args.device)
    idx = torch.arange(len(pool)).view(args.classes, args.shots + 4)
    task = Task(train=pool.subset(idx[:, : args.shots].flatten().cpu()), val=pool.subset(idx[:, args.shots:].flatten()
                .cpu()), classnames=[str(i) for i in range(args.classes)], text_weights=text,
                unlabeled=tst, logit_scale=100.0, seed=1)
    print(f"{args.classes} classes x {args.shots} shots, {args.test} test features, dim {args.dim}, "
          f"device {args.device}, {args.threads} thread(s)")
    print(f"{'method':<14} {'fit s':>9} {'predict s':>10} {'top-1':>7} {'peak RSS MB':>12}")
    names = args.methods.split(",") if args.methods else cached_feature_methods()
    overrides = method_overrides(args.set, names)
    for name in names:
        m = create(name, **overrides.get(name, {}))
        t0 = time.perf_counter()
        m.fit(task)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = m.logits(tst.features)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        pred_s = time.perf_counter() - t0
        acc = (logits.argmax(1) == tst.labels).float().mean().item()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide high-water mark
        print(f"{name:<14} {fit_s:9.2f} {pred_s:10.3f} {100 * acc:7.2f} {peak:12.0f}")

    if args.sweep_classes <= 0:
        return
    pool, tst, text = synthetic(args.sweep_classes, 20, 1000, args.dim, args.device, seed=1)
    inputs = FewShotInputs("bench", "synthetic", pool, tst, [str(i) for i in range(args.sweep_classes)], text)
    proto = FewShotProtocol(cached_feature_methods(), (1, 2, 4, 8, 16), (1, 2, 3))
    t0 = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        records = run_fewshot(inputs, proto, ResultStore(f"{d}/r.jsonl"))
    print(f"sweep: {len(records)} cells (methods x 5 shots x 3 seeds, {args.sweep_classes} classes) in "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
