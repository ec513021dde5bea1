"""CLIP-LoRA beside linear_probe, LP++ and Tip-Adapter-F on the toy world (toy:clip, CPU), via the kshot commands.

    PYTHONPATH=src python benchmarks/lora_toy.py --out /tmp/lora_toy --iters 300

For each group (opaque: Creatures; named: Shapes + Novel) and K in 1/4/16: `kshot fit DATA -m M -k K --seed 1`
then `kshot predict DATA --split test -a RUN`; prints a Markdown table of top-1 %. clip_lora runs `--iters` total
iterations (the official 500 × K is too long for a CPU table) at batch 32.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

METHODS = ("linear_probe", "lpp", "tip_adapter_f", "clip_lora")
GROUPS = {"opaque": ("Creatures",), "named": ("Shapes", "Novel")}


def top1(pred: Path, data: Path) -> float:
    from kshot.data.sources import load_dataset

    ds = load_dataset(data, layout="imagefolder", split="test")
    labels = {it.path: ds.classnames[it.label] for it in ds.items}
    with open(pred) as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if k not in ("path",))
    names = [ds.classnames[int(r[key])] if r[key].isdigit() else r[key] for r in rows]
    return 100 * sum(n == labels[r["path"]] for n, r in zip(names, rows)) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/lora_toy"))
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    kshot = [sys.executable, "-m", "kshot"]
    for group, domains in GROUPS.items():
        data = args.out / group
        if not data.exists():
            export_world(World(), "imagefolder", data, domains=domains, n_train=16, n_val=4, n_test=25)
        print(f"\n| {group} top-1 % | " + " | ".join(f"{k}-shot" for k in args.shots) + " |")
        print("|---|" + "---:|" * len(args.shots))
        for m in METHODS:
            cells = []
            for k in args.shots:
                run = args.out / "runs" / f"{group}-{m}-{k}"
                extra = ["--set", f"iters={args.iters}", "--set", "progress=false"] if m == "clip_lora" else []
                common = ["--layout", "imagefolder", "--cache", str(args.out / "cache"), "--device", "cpu"]
                subprocess.run([*kshot, "fit", str(data), "-m", m, "-k", str(k), "--seed", "1", "-o", str(run),
                                *extra, *common], check=True, capture_output=True)
                pred = run / "test.csv"
                subprocess.run([*kshot, "predict", str(data), "--split", "test", "-a", str(run), "-o", str(pred),
                                *common], check=True, capture_output=True)
                cells.append(f"{top1(pred, data):.2f}")
            print(f"| {m} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
