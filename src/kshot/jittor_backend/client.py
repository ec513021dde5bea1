"""Parent-side API of the Jittor backend: one worker per session, torch tensors in and out.

    with JittorSession(backbone) as jt_session:               # starts one worker, loads the weights once
        feats = jt_session.encode_image(images)                # [B, 3, S, S] -> [B, D], like backbone.encode_image
        text = jt_session.encode_text(tokens)                  # [T, L] int64 -> [T, D]
        logits = jt_session.head_logits(artifact_pkl, F.normalize(feats, dim=-1))   # [N, C]

Nothing here imports Jittor; see `runtime.py` for how the worker is found and started.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.backbones.jittor_pkl import save_jittor_pkl
from kshot.jittor_backend.runtime import (
    REQUEST_TIMEOUT_S,
    STARTUP_TIMEOUT_S,
    JittorError,
    Worker,
    check_gpu,
    find_python,
    jittor_available,
    jittor_env,
)
from kshot.jittor_backend.weights import jclip_state
from kshot.methods import METHODS
from kshot.progress import ticker

log = logging.getLogger(__name__)

__all__ = ["JittorError", "JittorSession", "jittor_available"]


class JittorSession:
    """A Jittor worker holding one CLIP's weights (or none, for heads only) for several requests.

    Args:
        backbone: a CLIP `Backbone` (open_clip CLIP or `toy:clip`), or None for a heads-only session.
        python: Jittor interpreter (default: $KSHOT_JITTOR_PYTHON, else this one if it has jittor).
        device: 'cpu' (default) or 'cuda' (checked first: Jittor's arch and CUDA-toolkit limits).
        batch_size: images per encode request (bounds the worker's memory).
        workdir: folder for the job files (default: a temporary folder removed on close).
        startup_timeout, request_timeout: seconds (a cold first import compiles Jittor for minutes).

    Attributes:
        info: the worker's ready line (jittor version, device, startup seconds) once started.
        timings: seconds spent in the worker per op name (summed over requests).
    """

    def __init__(self, backbone: Any = None, python: str | None = None, device: str = "cpu", *,
                 batch_size: int = 64, workdir: str | Path | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT_S, request_timeout: float = REQUEST_TIMEOUT_S):
        jittor_env(device)  # validates the device name
        self.backbone, self.device, self.batch_size = backbone, device, int(batch_size)
        self.python = find_python(python)
        self._workdir, self._own_dir = (Path(workdir), False) if workdir else (None, True)
        self.startup_timeout, self.request_timeout = startup_timeout, request_timeout
        self.worker: Worker | None = None
        self.info: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._ids = itertools.count()

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "JittorSession":
        """Convert the weights, write the job and start the worker (idempotent)."""
        if self.worker is not None:
            return self
        if self.device == "cuda":
            check_gpu(self.python)
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="kshot-jittor-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        job: dict[str, Any] = {"env": jittor_env(self.device), "device": self.device}
        if self.backbone is not None:
            state, layout = jclip_state(self.backbone)
            save_jittor_pkl(state, self._workdir / "weights.pkl")
            log.info("%s: %d arrays (%s CLIP) written for Jittor", getattr(self.backbone, "spec", "backbone"),
                     len(state), layout.vision)
            job.update(weights="weights.pkl", layout=layout.to_dict())
        t0 = time.perf_counter()
        worker = Worker(self.python, self._workdir, self.startup_timeout, self.request_timeout)
        try:
            with ticker("starting the Jittor worker (the first start compiles Jittor's ops: minutes)"):
                self.info = worker.start(job)
        except BaseException:
            self._cleanup()
            raise
        self.info["wall_seconds"] = time.perf_counter() - t0
        self.worker = worker
        return self

    def close(self) -> None:
        """Stop the worker and remove the temporary job folder."""
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._own_dir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "JittorSession":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ requests
    def _call(self, op: str, **arrays_and_fields: Any) -> np.ndarray:
        if self.worker is None:
            self.start()
        assert self.worker is not None and self._workdir is not None
        rid = next(self._ids)
        fields: dict[str, Any] = {}
        written = []
        for key, value in arrays_and_fields.items():
            if isinstance(value, np.ndarray):
                name = f"r{rid}_{key}.npy"
                np.save(self._workdir / name, value)
                written.append(self._workdir / name)
                fields[key] = name
            else:
                fields[key] = value
        out = f"r{rid}_out.npy"
        try:
            reply = self.worker.request(op, output=out, **fields)
            self.timings[op] = self.timings.get(op, 0.0) + float(reply.get("seconds", 0.0))
            return np.load(self._workdir / out)
        finally:
            for p in [*written, self._workdir / out]:
                p.unlink(missing_ok=True)

    def _batched(self, op: str, x: np.ndarray) -> np.ndarray:
        parts = [self._call(op, input=x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embed_dim), np.float32)

    @property
    def embed_dim(self) -> int:
        return int(getattr(self.backbone, "embed_dim", 0) or 0)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] float (preprocessed) -> un-normalised features float32 [B, D] on images' device."""
        x = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self._batched("encode_image", x)).to(images.device)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [T, L] int64 -> un-normalised text features float32 [T, D] on tokens' device."""
        x = tokens.detach().cpu().long().contiguous().numpy()
        return torch.from_numpy(self._batched("encode_text", x)).to(tokens.device)

    def clip_logits(self, image_features: torch.Tensor, text_weights: torch.Tensor, scale: float) -> torch.Tensor:
        """scale · normalise(image [N, D]) · normalise(text [C, D])ᵀ computed in Jittor -> [N, C]."""
        img = image_features.detach().float().cpu().numpy()
        txt = text_weights.detach().float().cpu().numpy()
        if len(img) == 0:
            return torch.zeros(0, len(txt))
        return torch.from_numpy(self._call("clip_logits", image=img, text=txt, scale=float(scale)))

    def head_logits(self, artifact_pkl: str | Path, features: torch.Tensor) -> torch.Tensor:
        """Logits [N, C] of an exported method (`kshot export --format jittor`) on L2-normalised features [N, D].

        Raises:
            JittorError: the artifact is unreadable, of an unsupported method, or does not fit the features.
        """
        path = Path(artifact_pkl).resolve()
        if not path.is_file():
            raise JittorError(f"{path}: no such artifact file")
        x = features.detach().float().cpu().contiguous().numpy()
        try:
            if len(x) == 0:  # one dummy row gives the class count without zero-sized Jittor ops
                out = self._call("head_logits", artifact=str(path), input=np.zeros((1, x.shape[1]), np.float32))[:0]
            else:
                out = self._call("head_logits", artifact=str(path), input=x)
        except JittorError as e:
            if "has no Jittor head" not in str(e):
                raise
            with_head = ", ".join(entry.name for entry in METHODS if entry.obj.jittor_head)
            raise JittorError(f"{e}; methods with a Jittor head: {with_head}") from None
        return torch.from_numpy(out).to(features.device)

    def describe(self) -> dict[str, Any]:
        """JSON-able facts about the session (interpreter, Jittor version, device, startup seconds)."""
        return {"python": self.python, "jittor": self.info.get("jittor"), "device": self.device,
                "startup_seconds": self.info.get("wall_seconds")}

    def __repr__(self) -> str:
        return f"JittorSession({json.dumps(self.describe())})"
