"""CLIP-LoRA training speed and peak memory: fused vs unfused q/k/v, with and without gradient checkpointing.

    PYTHONPATH=src python benchmarks/lora.py --arch ViT-B-16 --batch 32 --iters 3 [--device cuda]

Each configuration runs in its own process (random-init open_clip model, LoRA on both towers, dropout 0.25, one
AdamW step per iteration on random images and `--classes` prompts of 77 tokens); after one warm-up step it reports
iterations/s and the peak memory (CPU: the process's max RSS; CUDA: `torch.cuda.max_memory_allocated`), and
the ratios against the fused, non-checkpointed run of the same invocation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(arch: str, batch: int, iters: int, fused: bool, ckpt: bool, device: str, classes: int) -> dict:
    import open_clip
    import torch
    import torch.nn.functional as F

    from kshot.tuning.lora import attention_paths, inject_lora, lora_parameters

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).to(device)
    layers = inject_lora(model, attention_paths(model), rank=2, alpha=1, dropout=0.25, fused=fused)
    params = lora_parameters(layers)
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    model.set_grad_checkpointing(ckpt)
    model.train()
    opt = torch.optim.AdamW(params, lr=2e-4)
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    x = torch.randn(batch, 3, size, size, device=device)
    tokens = torch.randint(1, 1000, (classes, 77), device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu",
                                                                                                       enabled=False)

    def step() -> None:
        with amp:
            img = F.normalize(model.encode_image(x).float(), dim=-1)
            txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
            loss = F.cross_entropy(100 * img @ txt.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"it_s": iters / (time.perf_counter() - t), "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--classes", type=int, default=100, help="prompts through the text tower per step")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        fused, ckpt = (v == "1" for v in args.one.split(","))
        print(json.dumps(one(args.arch, args.batch, args.iters, fused, ckpt, args.device, args.classes)))
        return
    rows = {}
    for fused in (True, False):
        for ckpt in (False, True):
            out = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--batch", str(args.batch),
                                  "--iters", str(args.iters), "--device", args.device, "--classes", str(args.classes),
                                  "--one",
                                  f"{int(fused)},{int(ckpt)}"], check=True, capture_output=True, text=True)
            rows[(fused, ckpt)] = json.loads(out.stdout.strip().splitlines()[-1])
    base = rows[(True, False)]
    print(f"{args.arch}, batch {args.batch}, {args.classes} prompts, {args.iters} timed iterations, {args.device}")
    print("| q/k/v | checkpointing | it/s | x fused | peak MiB | x fused |")
    print("|---|---|---:|---:|---:|---:|")
    for (fused, ckpt), r in rows.items():
        print(f"| {'fused' if fused else 'unfused'} | {'on' if ckpt else 'off'} | {r['it_s']:.3f} | "
              f"{r['it_s'] / base['it_s']:.2f} | {r['peak_mib']:.0f} | {r['peak_mib'] / base['peak_mib']:.2f} |")


if __name__ == "__main__":
    main()
