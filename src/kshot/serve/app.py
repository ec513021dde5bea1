"""The FastAPI application of `kshot serve`: the page, and a JSON API documented at /docs (OpenAPI at /openapi.json).

Endpoints: `GET /backbones` (specs a fit may name), `GET /datasets` (dataset folders under the data roots), `POST /upload` (a dataset zip, unpacked safely
under the upload root), `GET /shots` (the shots a fit would use: the gallery), `GET /thumb` (a thumbnail of an image
of a dataset), `GET /methods` (methods the app can fit), `GET /runs` (fitted runs), `GET /runs/{name}` (a run's
scores, per-class recall and mistakes), `GET /runs/{name}/confusion.png`, `POST /fit` (start a fit in a worker;
returns a job), `GET /jobs/{id}` (its progress and scores), `POST /predict?run=NAME&k=5` (image bytes as a
multipart `file` -> top-k). Every user mistake is a 400 (404 for an unknown run or job) with `{"detail": "<one
line>"}`. Handlers that compute are plain functions (FastAPI runs them in its thread pool), so neither a fit nor a
prediction blocks the event loop.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from kshot.backbones.base import Backbone
from kshot.errors import ConfigError, DataError, KshotError
from kshot.methods import METHODS
from kshot.serve.runs import FitRunner, LoadedRun, check_drop, draw_shots, load_run
from kshot.serve.safety import ZipLimits, dataset_name, file_inside, inside, read_image, safe_unzip


@dataclass
class ServeConfig:
    """Settings of the web app.

    Attributes:
        roots: data roots; only folders under them are read.
        runs_dir: where fits are written and runs are listed from.
        cache: feature cache folder.
        backbone: backbone spec of fits that name none (offered first).
        more_backbones: other backbone specs the page offers for fits (`GET /backbones`); no other spec is loaded.
        max_upload_bytes: largest accepted image upload.
        max_pixels: largest accepted image (width x height).
        preload: extra run folders to list (`kshot serve -a runs/x`).
        uploads: where uploaded dataset zips are unpacked (a data root too); default `<runs_dir>/../uploads`.
        max_zip_bytes: largest accepted zip upload.
        zip_limits: what an unpacked zip may hold (bytes, expansion ratio, members).
        fit_workers: fits that run at once (more queue).
    """

    roots: list[Path]
    runs_dir: Path
    cache: Path
    backbone: str = "toy:clip"
    max_upload_bytes: int = 8 * 2**20
    max_pixels: int = 4096 * 4096
    preload: list[Path] = field(default_factory=list)
    uploads: Path | None = None
    max_zip_bytes: int = 512 * 2**20
    zip_limits: ZipLimits = ZipLimits()
    fit_workers: int = 2
    more_backbones: list[str] = field(default_factory=list)


class FitRequest(BaseModel):
    dataset: str = Field(description="dataset folder relative to a data root")
    method: str = "tip_adapter"
    shots: int = Field(4, ge=1, le=256)
    seed: int = Field(1, ge=0)
    drop: list[str] = Field(default_factory=list, description="shot paths (from GET /shots) to leave out")
    backbone: str | None = Field(None, description="one of GET /backbones (default: the first)")


def _fittable() -> list[dict[str, str]]:
    """Methods that fit on cached features alone (what the worker does): not transductive, no encoder training."""
    return [{"name": e.name, "description": e.description} for e in METHODS
            if not e.obj.needs_backbone and not e.obj.transductive and not e.obj.trains_encoders]


def create_app(cfg: ServeConfig) -> FastAPI:
    """The app for `cfg` (roots resolved; runs_dir and the upload root created)."""
    cfg.runs_dir.mkdir(parents=True, exist_ok=True)
    cfg.uploads = Path(cfg.uploads or cfg.runs_dir.resolve().parent / "uploads").resolve()
    cfg.uploads.mkdir(parents=True, exist_ok=True)
    cfg.roots = [Path(r).resolve() for r in cfg.roots]
    if cfg.uploads not in cfg.roots:
        cfg.roots.append(cfg.uploads)
    backbones: dict[str, Backbone] = {}
    runner = FitRunner(cfg.runs_dir, cfg.cache, backbones, workers=cfg.fit_workers)
    loaded: dict[str, LoadedRun] = {}
    app = FastAPI(title="kshot", description="Fit few-shot classifiers and classify images.")
    max_body = max(cfg.max_zip_bytes, cfg.max_upload_bytes) + 2**20  # + multipart framing

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next: Any) -> Any:
        """A declared body over every upload limit is refused before it is read (the handlers check the rest)."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body:
            return JSONResponse({"detail": f"request body of {length} bytes exceeds the limit of {max_body}"}, 400)
        return await call_next(request)

    def bad(e: Exception) -> HTTPException:
        return HTTPException(400, str(e))

    def run_dirs() -> dict[str, Path]:
        found = {p.name: p for p in sorted(cfg.runs_dir.iterdir()) if (p / "method.json").is_file()
                 and not p.name.startswith(".")}
        found.update({p.name: p for p in cfg.preload})
        return found

    def run_dir(name: str) -> Path:
        dirs = run_dirs()
        if name not in dirs:
            raise HTTPException(404, f"no run {name!r}")
        return dirs[name]

    def metrics_of(p: Path) -> dict[str, Any]:
        return json.loads((p / "metrics.json").read_text()) if (p / "metrics.json").is_file() else {}

    def dataset_dir(name: str) -> Path:
        try:
            return inside(cfg.roots, name)
        except KshotError as e:
            raise bad(e) from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("kshot.serve").joinpath("page.html").read_text()

    @app.get("/datasets")
    def datasets() -> list[str]:
        """Folders one level under each data root holding a train/ split (ImageFolder or challenge layout)."""
        out = []
        for root in cfg.roots:
            out += [p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
                    and ((p / "train").is_dir() or (p / "train.txt").is_file()) and p.name not in out]
        return out

    @app.post("/upload")
    def upload(file: UploadFile = File(..., description="a zip of an ImageFolder (train/, test/) or challenge "
                                       "dataset, optionally inside one top folder"),
               name: str = Form("", description="dataset name (default: the zip's file name)")) -> dict[str, Any]:
        """Unpack a dataset zip under the upload root; refuses traversal, links, zip bombs and oversized uploads."""
        from kshot.data.sources import load_dataset

        data = file.file.read(cfg.max_zip_bytes + 1)
        try:
            if len(data) > cfg.max_zip_bytes:
                raise DataError(f"upload exceeds the limit of {cfg.max_zip_bytes} bytes")
            stem = name or re.sub(r"[^A-Za-z0-9_.-]", "_", Path(file.filename or "upload").stem)
            dest = safe_unzip(data, cfg.uploads / dataset_name(stem), cfg.zip_limits)
        except KshotError as e:
            raise bad(e) from None
        try:
            pool = load_dataset(dest, split="train")
        except KshotError as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise bad(DataError(f"the zip is not a dataset with a train split ({e})")) from None
        return {"dataset": dest.name, "classes": len(pool.classnames), "train_images": len(pool)}

    @app.get("/shots")
    def shots(dataset: str, shots: int = Query(4, ge=1, le=256), seed: int = Query(1, ge=0)) -> dict[str, Any]:
        """The shots a fit with these settings uses (paths relative to the dataset folder, by class)."""
        try:
            return {"dataset": dataset, "shots": shots, "seed": seed,
                    "items": draw_shots(dataset_dir(dataset), shots, seed)}
        except KshotError as e:
            raise bad(e) from None

    @app.get("/thumb", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def thumb(dataset: str, path: str, size: int = Query(96, ge=16, le=512)) -> Response:
        """A PNG thumbnail (longer side `size` px) of one image of a dataset."""
        try:
            file = file_inside(dataset_dir(dataset), path)
            img = read_image(file.read_bytes(), cfg.max_upload_bytes, cfg.max_pixels)
        except KshotError as e:
            raise bad(e) from None
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return Response(buf.getvalue(), media_type="image/png")

    offered = list(dict.fromkeys([cfg.backbone, *cfg.more_backbones]))

    @app.get("/backbones")
    def backbone_list() -> list[str]:
        """Backbone specs a fit may name (the server's `--backbone` first)."""
        return offered

    @app.get("/methods")
    def methods() -> list[dict[str, str]]:
        """Methods the app can fit (on cached features: not transductive, no encoder training)."""
        return _fittable()

    @app.get("/runs")
    def runs() -> list[dict[str, Any]]:
        """Fitted runs: name, method, shots, number of classes and scores when known."""
        out = []
        for name, p in run_dirs().items():
            info = json.loads((p / "task.json").read_text())
            metrics = metrics_of(p)
            out.append({"name": name, "method": info["method"], "shots": info["shots"],
                        "classes": len(info["classnames"]), "test_top1": metrics.get("test_top1")})
        return out

    @app.get("/runs/{name}")
    def run_report(name: str) -> dict[str, Any]:
        """A run's task (method, shots, classes) and scores: top-1, per-class recall, mistakes with their top-5."""
        p = run_dir(name)
        info = json.loads((p / "task.json").read_text())
        return {"name": name, "method": info["method"], "shots": info["shots"], "classnames": info["classnames"],
                "metrics": metrics_of(p)}

    @app.get("/runs/{name}/confusion.png", response_class=FileResponse)
    def confusion(name: str) -> FileResponse:
        """The run's test confusion matrix (row-normalised) as a picture."""
        p = run_dir(name) / "confusion.png"
        if not p.is_file():
            raise HTTPException(404, f"run {name!r} has no confusion matrix (no labelled test split)")
        return FileResponse(p, media_type="image/png")

    @app.post("/fit")
    def fit(req: FitRequest) -> dict[str, Any]:
        """Start a fit of `method` on `shots` per class of a dataset (minus `drop`); poll `GET /jobs/{id}`."""
        spec = req.backbone or cfg.backbone
        try:
            if spec not in offered:
                raise ConfigError(f"backbone {spec!r} is not offered here; choose one of {', '.join(offered)}")
            data = inside(cfg.roots, req.dataset)
            check_drop(data, req.shots, req.seed, req.drop)
            job = runner.submit(data, req.method, req.shots, req.seed, spec, drop=req.drop, dataset=req.dataset)
        except KshotError as e:
            raise bad(e) from None
        return asdict(job)

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        if job_id not in runner.jobs:
            raise HTTPException(404, f"no job {job_id!r}")
        return asdict(runner.jobs[job_id])

    @app.post("/predict")
    def predict(file: UploadFile = File(...), run: str = Query(..., description="run name from GET /runs"),
                k: int = Query(5, ge=1, le=100)) -> dict[str, Any]:
        """Classify one uploaded image with a run: the top-k class names with probabilities."""
        from kshot.features.tensor_transforms import Geometry, pil_to_uint8, resize_crop

        path = run_dir(run)
        data = file.file.read(cfg.max_upload_bytes + 1)
        try:
            img = read_image(data, cfg.max_upload_bytes, cfg.max_pixels)
            lr = loaded.get(run) or loaded.setdefault(run, load_run(path, backbones))
        except KshotError as e:
            raise bad(e) from None
        crop = resize_crop(pil_to_uint8(img), Geometry.of_backbone(lr.backbone))
        top = lr.top_k(crop[None], k)[0]
        return {"run": run, "file": file.filename, "top": [{"class": c, "prob": p} for c, p in top]}

    return app
