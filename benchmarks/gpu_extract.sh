#!/usr/bin/env bash
# Issue 9's GPU numbers in ONE device call (the lent H100: torch/torchvision/timm there, no open_clip, no internet).
#
# Preparation, on a machine with network access, in the repository root (the folder is not committed):
#     pip download open_clip_torch ftfy wcwidth --no-deps -d .wheels
# Run (device tool): command "bash benchmarks/gpu_extract.sh", carry [".wheels"] if .wheels is git-ignored,
# timeout_s 600. It writes under $OUT: one JSON and one Markdown table per run, env.txt and run.log.
#
# Plan (~5 min on an H100; every step has its own time limit so one hang cannot eat the call):
#   1. install open_clip_torch, ftfy, wcwidth from .wheels (no index, no deps: the rest is there);
#   2. ViT-B-32, 8192 generated 500x375 q90 JPEGs, batch 1024, eager: naive / kshot JPEG / kshot cache / forward;
#   3. the same rows with --compile (JPEGs reused, naive skipped);
#   4. forward rate (row d) of ViT-B-16 and RN50, eager then compiled.
set -uo pipefail

OUT="${OUT:-$PWD/gpu-out}"
WHEELS="${WHEELS:-.wheels}"
WORK="${WORK:-/tmp/kshot-gpu-bench}"
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/run.log") 2>&1

echo "== env"; {
    date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    nproc; python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
} | tee "$OUT/env.txt"

echo "== install open_clip from $WHEELS"
ls "$WHEELS" || { echo "no $WHEELS folder: run 'pip download open_clip_torch ftfy wcwidth --no-deps -d .wheels' first"; exit 2; }
python3 -m pip install --break-system-packages --no-index --find-links "$WHEELS" --no-deps open_clip_torch ftfy wcwidth \
    || exit 3
python3 -c "import open_clip; print('open_clip', open_clip.__version__)" | tee -a "$OUT/env.txt" || exit 3

bench() {  # bench NAME LIMIT_S ARGS... -> $OUT/NAME.json and $OUT/NAME.md
    local name="$1" limit="$2"; shift 2
    echo "== $name: benchmarks/extract.py $*"
    timeout "$limit" python3 benchmarks/extract.py --device cuda --workdir "$WORK" --json "$OUT/$name.json" "$@" \
        | tee "$OUT/$name.md"
    echo "== $name exit ${PIPESTATUS[0]}"
}

bench vitb32_eager 150 --model ViT-B-32 --n 8192 --batch-size 1024
bench vitb32_compile 200 --model ViT-B-32 --n 8192 --batch-size 1024 --compile --skip-naive
bench vitb16_forward 60 --model ViT-B-16 --batch-size 512 --forward-only
bench rn50_forward 60 --model RN50 --batch-size 512 --forward-only
bench vitb16_forward_compile 120 --model ViT-B-16 --batch-size 512 --forward-only --compile
bench rn50_forward_compile 120 --model RN50 --batch-size 512 --forward-only --compile
echo "== done"; ls -la "$OUT"
