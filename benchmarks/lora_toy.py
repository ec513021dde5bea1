"""CLIP-LoRA beside linear_probe, LP++ and Tip-Adapter-F on the toy world (toy:clip, CPU), via the kshot commands.

    PYTHONPATH=src python benchmarks/lora_toy.py --out /tmp/lora_toy --iters 300 --groups named
    PYTHONPATH=src python benchmarks/lora_toy.py --out /tmp/lora_toy --methods clip_lora --shots 1 --official-iters

For each group (opaque: Creatures; named: Shapes + Novel; `--groups both` runs the two), method and K:
`kshot fit DATA -m M -k K --seed 1` then `kshot predict DATA --split test -a RUN`; prints a Markdown table of top-1 %
with the wall time of each cell (fit + predict, seconds). clip_lora runs `--iters` total iterations at batch 32, or
with `--official-iters` the official 500 × K (long on a CPU: minutes per cell at 4+ shots).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
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


def lora_settings(iters: int, official: bool) -> list[str]:
    """`--set` options of a clip_lora cell: the official 500 × K iterations, or `iters` in total."""
    return ["--set", "progress=false"] + ([] if official else ["--set", f"iters={iters}"])


def row_label(method: str, iters: int, official: bool) -> str:
    if method != "clip_lora":
        return method
    return "clip_lora (500 × K iterations)" if official else f"clip_lora ({iters} iterations)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/lora_toy"))
    ap.add_argument("--iters", type=int, default=300, help="clip_lora iterations per cell (without --official-iters)")
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--groups", choices=("named", "opaque", "both"), default="both")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--official-iters", action="store_true", help="clip_lora: 500 × shots iterations (official)")
    args = ap.parse_args()
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    kshot = [sys.executable, "-m", "kshot"]
    groups = list(GROUPS) if args.groups == "both" else [args.groups]
    for group in groups:
        data = args.out / group
        if not data.exists():
            export_world(World(), "imagefolder", data, domains=GROUPS[group], n_train=16, n_val=4, n_test=25)
        print(f"\n| {group} top-1 % (wall s) | " + " | ".join(f"{k}-shot" for k in args.shots) + " |")
        print("|---|" + "---:|" * len(args.shots))
        for m in args.methods:
            cells = []
            for k in args.shots:
                tag = "-official" if m == "clip_lora" and args.official_iters else ""
                run = args.out / "runs" / f"{group}-{m}{tag}-{k}"
                extra = lora_settings(args.iters, args.official_iters) if m == "clip_lora" else []
                common = ["--layout", "imagefolder", "--cache", str(args.out / "cache"), "--device", "cpu"]
                t0 = time.perf_counter()
                subprocess.run([*kshot, "fit", str(data), "-m", m, "-k", str(k), "--seed", "1", "-o", str(run),
                                *extra, *common], check=True, capture_output=True)
                pred = run / "test.csv"
                subprocess.run([*kshot, "predict", str(data), "--split", "test", "-a", str(run), "-o", str(pred),
                                *common], check=True, capture_output=True)
                cells.append(f"{top1(pred, data):.2f} ({time.perf_counter() - t0:.0f} s)")
            print(f"| {row_label(m, args.iters, args.official_iters)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
