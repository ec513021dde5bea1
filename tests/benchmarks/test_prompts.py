"""benchmarks/prompts.py --deep times a deep (image-side) and a cached-feature (text-side) prompt method on the toy
CLIP (a smoke test of the script, not a timing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_deep_benchmark_prints_a_row_per_method_at_its_official_batch():
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prompts.py"), "--deep", "atprompt_maple,kgcoop",
                          "--depth", "2", "--steps", "1", "--classes", "4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = {m.group(1): m for m in re.finditer(r"(\w+): batch (\d+), (.*?): ([\d.]+) it/s, peak ([\d.]+) GiB",
                                               res.stdout)}
    assert set(rows) == {"atprompt_maple", "kgcoop"}, res.stdout
    assert rows["atprompt_maple"].group(2) == "4" and rows["atprompt_maple"].group(3) == "depth 2"
    assert rows["kgcoop"].group(2) == "128" and "text side only" in rows["kgcoop"].group(3)
    assert all(float(m.group(4)) > 0 and float(m.group(5)) > 0 for m in rows.values())
