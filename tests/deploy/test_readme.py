"""The README's "Look at it" and "Deploy it" commands, run as written (in a fresh folder, `kshot` = this python)."""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")
README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(section: str) -> list[list[str]]:
    text = README.read_text().split(f"## {section}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.strip()]


def _kshot(args: list[str]) -> list[str]:
    assert args[0] == "kshot", args
    return [sys.executable, "-m", "kshot", *args[1:]]


def test_readme_look_and_deploy_commands(tmp_path):
    env = {**os.environ, "KSHOT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    look, deploy = _commands("Look at it"), _commands("Deploy it")

    def run(args):
        r = subprocess.run(_kshot(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{args}\n{r.stdout}\n{r.stderr}"
        return r.stdout + r.stderr

    run(look[0])  # the dataset
    for args in deploy:
        run(args)
    assert (tmp_path / "deploy" / "labels.json").is_file() and (tmp_path / "deploy-ts" / "model.pt").is_file()
    assert len((tmp_path / "onnx.csv").read_text().splitlines()) > 16

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    serve = look[1]
    serve[serve.index("--port") + 1] = port
    proc = subprocess.Popen(_kshot(serve), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                runs = httpx.get(url + "/runs", timeout=60).json()
                break
            except httpx.TransportError:
                assert time.time() < deadline and proc.poll() is None, "kshot serve did not answer"
                time.sleep(0.3)
        assert [r["name"] for r in runs] == ["lpp"]
        image = re.search(r"file=@(\S+)", " ".join(look[3])).group(1)
        r = httpx.post(url + "/predict", params={"run": "lpp", "k": 5},
                       files={"file": (tmp_path / image).read_bytes()}, timeout=120)
        assert r.status_code == 200 and len(r.json()["top"]) == 5, r.text
    finally:
        proc.terminate()
        proc.wait(10)
