"""PackNet mask overhead: images/s of a PackNet training step vs. the same network without masks, one run.

Baseline: the same timm backbone (same seed) + a linear head, every weight trainable, plain SGD (momentum 0.9).
PackNet: the network after pruning 50 % of the pretrained weights and finishing a first task (pruned 75 %), training
the second: each step zeroes the gradients of weights the task does not own after the weight decay (forward needs no
mask for the newest task: hidden weights are free, hence zero). Evaluation is timed on the first task, whose view
masks every layer (`torch.where`, cached until the weights change). Baseline eval: the same network, same task.
Random weights and inputs: throughput does not depend on them.

    python benchmarks/continual.py                                  # CPU: resnet18 at 64 px, batch 16
    python benchmarks/continual.py --arch vgg16 --image-size 224 --batch 32 --device cuda --steps 30

Prints images/s for both, the ratio (PackNet / plain; 1.0 = no overhead) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step, n: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18", help="timm model or tiny_vgg/tiny_resnet (default resnet18)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 on a shared box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    from kshot.continual.config import NetworkConfig
    from kshot.continual.learners import Finetune
    from kshot.continual.networks import build_network
    from kshot.continual.packnet import PackNet

    net_cfg = NetworkConfig(arch=args.arch, pretrained=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)

    def setup(name: str):
        built = build_network(net_cfg, seed=0)
        learner = PackNet(built, device) if name == "packnet" else Finetune(built, device)
        if isinstance(learner, PackNet):  # a realistic state: task 1 trains, task 0 is evaluated through masks
            learner.prune_pretrained(0.5)
            learner.begin_task(0, "task0", args.classes, torch.Generator().manual_seed(1))
            learner.prune(0, 0.75)
            learner.end_task(0)
            index = 1
        else:
            learner.begin_task(0, "task0", args.classes, torch.Generator().manual_seed(1))
            learner.end_task(0)
            index = 1
        learner.begin_task(index, "task1", args.classes, torch.Generator().manual_seed(2))
        opt = torch.optim.SGD(learner.param_groups(index, args.weight_decay), lr=1e-3, momentum=0.9)

        def train_step() -> None:
            learner.train_mode(index)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(learner.forward(x, index), y).backward()
            learner.before_step(index, args.weight_decay)
            opt.step()

        return train_step, lambda: learner.logits(x, 0)  # eval: the earlier task (PackNet: masked view)

    steps = {name: setup(name) for name in ("plain", "packnet")}
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "eval": []} for n in steps}
    for _ in range(args.rounds):  # interleaved rounds, median: robust to a busy machine
        for name, (train_step, eval_step) in steps.items():
            times[name]["train"].append(_time_steps(train_step, args.steps, args.warmup, device))
            times[name]["eval"].append(_time_steps(eval_step, args.steps, args.warmup, device))
    results = {n: {f"{k}_img_s": args.batch * args.steps / statistics.median(v) for k, v in t.items()}
               for n, t in times.items()}

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
    print(f"{args.arch} at {args.image_size} px, batch {args.batch}, {dev}")
    for name, r in results.items():
        print(f"  {name:8s} train {r['train_img_s']:9.1f} img/s   eval {r['eval_img_s']:9.1f} img/s")
    ratio_train = results["packnet"]["train_img_s"] / results["plain"]["train_img_s"]
    ratio_eval = results["packnet"]["eval_img_s"] / results["plain"]["eval_img_s"]
    print(f"  PackNet / plain: train {ratio_train:.3f}, eval {ratio_eval:.3f} (1.0 = no mask overhead)")
    print(json.dumps({"bench": "continual.packnet_step", "arch": args.arch, "image_size": args.image_size,
                      "batch": args.batch, "device": dev, **{f"{k}_{m}": v for k, r in results.items()
                                                              for m, v in r.items()},
                      "ratio_train": ratio_train, "ratio_eval": ratio_eval}))


if __name__ == "__main__":
    main()
