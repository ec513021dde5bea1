"""The FastAPI application of `kshot serve`: the page, and a JSON API documented at /docs (OpenAPI at /openapi.json).

Endpoints: `GET /datasets` (dataset folders under the data roots), `GET /runs` (fitted runs), `POST /fit` (start a
fit in the worker; returns a job), `GET /jobs/{id}` (its progress and scores), `POST /predict?run=NAME&k=5` (image
bytes as a multipart `file` -> top-k). Every user mistake is a 400 (404 for an unknown run or job) with
`{"detail": "<one line>"}`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from kshot.backbones.base import Backbone
from kshot.errors import KshotError
from kshot.serve.runs import FitRunner, LoadedRun, load_run
from kshot.serve.safety import inside, read_image


@dataclass
class ServeConfig:
    """Settings of the web app.

    Attributes:
        roots: data roots; only folders under them are read.
        runs_dir: where fits are written and runs are listed from.
        cache: feature cache folder.
        backbone: backbone spec offered for fits.
        max_upload_bytes: largest accepted upload.
        max_pixels: largest accepted image (width x height).
        preload: extra run folders to list (`kshot serve -a runs/x`).
    """

    roots: list[Path]
    runs_dir: Path
    cache: Path
    backbone: str = "toy:clip"
    max_upload_bytes: int = 8 * 2**20
    max_pixels: int = 4096 * 4096
    preload: list[Path] = field(default_factory=list)


class FitRequest(BaseModel):
    dataset: str = Field(description="dataset folder relative to a data root")
    method: str = "tip_adapter"
    shots: int = Field(4, ge=1, le=256)
    seed: int = Field(1, ge=0)


def create_app(cfg: ServeConfig) -> FastAPI:
    """The app for `cfg` (roots resolved; runs_dir created)."""
    cfg.roots = [Path(r).resolve() for r in cfg.roots]
    cfg.runs_dir.mkdir(parents=True, exist_ok=True)
    backbones: dict[str, Backbone] = {}
    runner = FitRunner(cfg.runs_dir, cfg.cache, backbones)
    loaded: dict[str, LoadedRun] = {}
    app = FastAPI(title="kshot", description="Fit few-shot classifiers and classify images.")

    def bad(e: Exception) -> HTTPException:
        return HTTPException(400, str(e))

    def run_dirs() -> dict[str, Path]:
        found = {p.name: p for p in sorted(cfg.runs_dir.iterdir()) if (p / "method.json").is_file()
                 and not p.name.startswith(".")}
        found.update({p.name: p for p in cfg.preload})
        return found

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("kshot.serve").joinpath("page.html").read_text()

    @app.get("/datasets")
    def datasets() -> list[str]:
        """Folders one level under each data root holding a train/ split (ImageFolder or challenge layout)."""
        out = []
        for root in cfg.roots:
            out += [p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
                    and ((p / "train").is_dir() or (p / "train.txt").is_file())]
        return out

    @app.get("/runs")
    def runs() -> list[dict[str, Any]]:
        """Fitted runs: name, method, shots, number of classes and scores when known."""
        out = []
        for name, p in run_dirs().items():
            info = json.loads((p / "task.json").read_text())
            metrics = json.loads((p / "metrics.json").read_text()) if (p / "metrics.json").is_file() else {}
            out.append({"name": name, "method": info["method"], "shots": info["shots"],
                        "classes": len(info["classnames"]), "test_top1": metrics.get("test_top1")})
        return out

    @app.post("/fit")
    def fit(req: FitRequest) -> dict[str, Any]:
        """Start a fit of `method` on `shots` per class of a dataset; poll `GET /jobs/{id}`."""
        try:
            job = runner.submit(inside(cfg.roots, req.dataset), req.method, req.shots, req.seed, cfg.backbone)
        except KshotError as e:
            raise bad(e) from None
        return asdict(job)

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        if job_id not in runner.jobs:
            raise HTTPException(404, f"no job {job_id!r}")
        return asdict(runner.jobs[job_id])

    @app.post("/predict")
    async def predict(file: UploadFile = File(...), run: str = Query(..., description="run name from GET /runs"),
                      k: int = Query(5, ge=1, le=100)) -> dict[str, Any]:
        """Classify one uploaded image with a run: the top-k class names with probabilities."""
        from kshot.features.tensor_transforms import Geometry, pil_to_uint8, resize_crop

        dirs = run_dirs()
        if run not in dirs:
            raise HTTPException(404, f"no run {run!r}")
        data = await file.read(cfg.max_upload_bytes + 1)
        try:
            img = read_image(data, cfg.max_upload_bytes, cfg.max_pixels)
            lr = loaded.get(run) or loaded.setdefault(run, load_run(dirs[run], backbones))
        except KshotError as e:
            raise bad(e) from None
        crop = resize_crop(pil_to_uint8(img), Geometry.of_backbone(lr.backbone))
        top = lr.top_k(crop[None], k)[0]
        return {"run": run, "file": file.filename, "top": [{"class": c, "prob": p} for c, p in top]}

    return app
