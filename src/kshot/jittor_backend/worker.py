"""The Jittor worker process: `python -m kshot.jittor_backend.worker JOB_DIR` (protocol in `runtime.py`).

Reads `JOB_DIR/job.json` ({"env": flags, "device": "cpu"|"cuda", optional "weights": file name, "layout": CLIP
layout}), sets Jittor's flags, imports Jittor, loads the weights with `jt.load` and answers requests:

| op | fields | writes |
|---|---|---|
| encode_image | input (.npy float32 [N, 3, S, S]), output | un-normalised features [N, D] |
| encode_text | input (.npy int64 [N, L]), output | un-normalised features [N, D] |
| clip_logits | image, text (.npy [N, D], [C, D]), scale, output | scale · normalise(image) normalise(text)ᵀ [N, C] |
| head_logits | artifact (path of a `method/1` export), input (.npy [N, D], normalised), output | logits [N, C] |
| shutdown | | |

Every answer is one JSON line on the original stdout ({"ok": true, "seconds": ...} or {"ok": false, "error": ...});
anything else printed (Jittor's compile progress) is redirected to stderr, i.e. the worker log.
Needs only the stdlib, numpy and Jittor.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any


def _send(channel: IO[str], reply: dict[str, Any]) -> None:
    channel.write(json.dumps(reply) + "\n")
    channel.flush()


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _Server:
    """State of one worker: the model (if any), loaded heads, and the job folder."""

    def __init__(self, job_dir: Path, job: dict[str, Any]):
        import jittor as jt
        import numpy as np

        from kshot.jittor_backend.arch import layout_from_dict
        from kshot.jittor_backend.clip_model import JittorCLIP

        self.jt, self.np, self.job_dir = jt, np, job_dir
        self.model = None
        self.heads: dict[str, Any] = {}
        if job.get("weights"):
            raw = jt.load(str(job_dir / job["weights"]))
            state = {k: np.asarray(v.numpy() if isinstance(v, jt.Var) else v) for k, v in raw.items()}
            self.model = JittorCLIP(state, layout_from_dict(job["layout"]))

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.job_dir / p

    def _load(self, name: str) -> Any:
        return self.np.load(self._path(name), allow_pickle=False)

    def _need_model(self) -> Any:
        if self.model is None:
            raise RuntimeError("this Jittor session has no CLIP weights (started without a backbone)")
        return self.model

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        np = self.np
        if op == "encode_image":
            out = self._need_model().encode_image(self._load(req["input"]))
        elif op == "encode_text":
            out = self._need_model().encode_text(self._load(req["input"]).astype(np.int64))
        elif op == "clip_logits":
            out = self._clip_logits(self._load(req["image"]), self._load(req["text"]), float(req["scale"]))
        elif op == "head_logits":
            out = self._head(req["artifact"]).logits(self._load(req["input"]).astype(np.float32))
        else:
            raise ValueError(f"unknown op {op!r}")
        np.save(self._path(req["output"]), np.ascontiguousarray(out, dtype=np.float32))
        return {"output": req["output"], "shape": list(out.shape)}

    def _clip_logits(self, image: Any, text: Any, scale: float) -> Any:
        jt, np = self.jt, self.np

        def unit(a: Any) -> Any:
            x = jt.array(np.ascontiguousarray(a, dtype=np.float32))
            return x / jt.maximum(jt.sqrt((x * x).sum(dim=-1, keepdims=True)), 1e-12)

        with jt.no_grad():
            return (scale * jt.matmul(unit(image), unit(text).transpose(1, 0))).numpy()

    def _head(self, artifact: str) -> Any:
        from kshot.jittor_backend.artifact import read_method_artifact
        from kshot.jittor_backend.heads import JittorHead

        key = str(self._path(artifact))
        if key not in self.heads:
            self.heads[key] = JittorHead(read_method_artifact(key))
        return self.heads[key]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m kshot.jittor_backend.worker JOB_DIR", file=sys.stderr)
        return 2
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (Jittor's compile progress) go to the log, never into the protocol
    sys.stdout = sys.stderr
    job_dir = Path(argv[1])
    job = json.loads((job_dir / "job.json").read_text())
    os.environ.update({str(k): str(v) for k, v in job.get("env", {}).items()})
    t0 = time.perf_counter()
    try:
        import jittor as jt
    except BaseException as e:  # noqa: BLE001 - a failed compile may raise anything, even SystemExit
        traceback.print_exc()
        # SystemExit(0): Jittor rebuilt its jit_utils and asks for a rerun (jittor/compiler.py check_cache_compile)
        rerun = isinstance(e, SystemExit) and not e.code
        _send(channel, {"ok": False, "stage": "import", "error": _error(e), "retry": rerun})
        return 3
    device = job.get("device", "cpu")
    try:
        if device == "cuda":
            if not jt.has_cuda:
                raise RuntimeError("this Jittor build found no usable CUDA (see the log for the reason)")
            jt.flags.use_cuda = 1
    except BaseException as e:  # noqa: BLE001
        traceback.print_exc()
        _send(channel, {"ok": False, "stage": "device", "error": _error(e)})
        return 3
    try:
        server = _Server(job_dir, job)
    except BaseException as e:  # noqa: BLE001
        traceback.print_exc()
        _send(channel, {"ok": False, "stage": "load", "error": _error(e)})
        return 3
    _send(channel, {"ok": True, "ready": True, "jittor": jt.__version__, "device": device,
                    "seconds": time.perf_counter() - t0})
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except json.JSONDecodeError as e:
            _send(channel, {"ok": False, "error": f"bad request line: {e}"})
            continue
        if req.get("op") == "shutdown":
            break
        t = time.perf_counter()
        try:
            reply = server.handle(req)
        except Exception as e:  # noqa: BLE001 - report and keep serving
            traceback.print_exc()
            _send(channel, {"ok": False, "error": _error(e)})
            continue
        _send(channel, {"ok": True, "seconds": time.perf_counter() - t, **reply})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
