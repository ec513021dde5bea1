"""The README's Python API snippet, run as written on the toy world its comment exports (issue 22: it had drifted)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    """Every ```python block of the README, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_a_python_api_snippet():
    blocks = python_blocks()
    assert blocks and "create(" in blocks[0] and ".fit(task)" in blocks[0]


def test_python_api_snippet_runs(tmp_path, monkeypatch):
    code = "\n".join(python_blocks())
    setup = re.search(r"#\s*(kshot toyworld export [^\n]+)", code)
    assert setup, "the snippet says how its data folder is made"
    env = {**os.environ, "PYTHONPATH": str(README.parent / "src"), "OMP_NUM_THREADS": "1"}
    args = shlex.split(setup.group(1))
    subprocess.run([sys.executable, "-m", "kshot", *args[1:]], cwd=tmp_path, env=env, check=True, timeout=300,
                   capture_output=True)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    logits, test, pool = scope["logits"], scope["test_feats"], scope["pool"]
    assert logits.shape == (len(test), pool.num_classes)
    reloaded = scope["load"]("runs/tip")
    torch.testing.assert_close(reloaded.logits(test.features), logits)
    assert (tmp_path / "cache").is_dir() and (tmp_path / "runs" / "tip" / "method.json").is_file()
