"""`kshot export --format onnx|torchscript`: a fitted run as one graph uint8 [N, 3, S, S] -> logits [N, C].

Beside the model file go `labels.json` (class id -> name, in logit order) and `preprocess.json` (the resize/crop the
caller does before the graph, the input contract, and the model file's SHA-256 so a predictor can tell the two belong
together). Every export is checked before it is kept: the written file is run (onnxruntime / `torch.jit.load`) on
seeded random images at a batch size other than the traced one and must match the eager graph to 1e-3; a failed
check is an `ExportError` and leaves no file behind.

Both formats are recorded by tracing (`torch.jit.trace`; ONNX through torch's TorchScript-based exporter,
`dynamo=False`): a method head is whatever `Method.logits` computes, and its shape checks and row chunking are Python
code that `torch.export` refuses to specialise, while the tracer records the branch a small batch takes (one
matrix product, valid for any N). PyTorch's fused multi-head-attention fast path has no ONNX symbol, so it is turned
off while tracing; the traced graph computes the same attention with plain ops.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from kshot.backbones.base import Backbone
from kshot.deploy.graph import (INPUT, LABELS_FILE, OUTPUT, PREPROCESS_FILE, ImageClassifier, build_graph,
                                example_images, sha256_file)
from kshot.deploy.onnx_predict import OnnxClassifier
from kshot.errors import ConfigError, ExportError
from kshot.features.tensor_transforms import Geometry
from kshot.safe_load import load_own_torchscript

log = logging.getLogger(__name__)

DEPLOY_FORMATS = ("onnx", "torchscript")
OPSET = 17
TRACE_BATCH, CHECK_BATCH = 2, 3
CHECK_TOL = 1e-3


@dataclass(frozen=True)
class DeployExport:
    """What `export_deploy` wrote: the model file, its sidecars, and the self-check's max abs difference."""

    path: Path
    labels: Path
    preprocess: Path
    fmt: str
    num_classes: int
    check_diff: float


@contextlib.contextmanager
def _plain_attention() -> Iterator[None]:
    """Disable torch's fused MHA fast path (no ONNX symbol for `_native_multi_head_attention`) while tracing."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def _trace_onnx(graph: ImageClassifier, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it to serialise)
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'kshot[deploy]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes (see module docstring)
        torch.onnx.export(graph, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False)


def _trace_torchscript(graph: ImageClassifier, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, example, check_trace=False)  # checked below at another batch size
    torch.jit.save(traced, str(path))


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """Logits [N, C] of an exported file on uint8 images [N, 3, S, S] (onnxruntime CPU or `torch.jit.load`)."""
    if fmt == "onnx":
        return OnnxClassifier.session_for(path).run(None, {INPUT: images.numpy()})[0]
    with torch.no_grad():
        return load_own_torchscript(path)(images).numpy()


def preprocess_doc(backbone: Backbone, model_file: Path, fmt: str, num_classes: int) -> dict[str, Any]:
    """The `preprocess.json` of an export: what to do to an image before the graph, and the graph's contract."""
    geom = Geometry.of_backbone(backbone)
    cfg = backbone.preprocess_cfg
    return {
        "model": model_file.name,
        "sha256": sha256_file(model_file),
        "format": fmt,
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["N", 3, geom.size, geom.size], "layout": "RGB, NCHW"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["N", num_classes]},
        "geometry": geom.key(),
        "normalisation_in_graph": {"mean": list(cfg.mean), "std": list(cfg.std)},
        "backbone": backbone.spec,
        "fingerprint": backbone.fingerprint,
        "note": _note(geom),
    }


def _note(geom: Geometry) -> str:
    if geom.resize_mode == "longest":
        how = f"resize the longer side to {geom.size} px and pad the other centred with black"
    else:
        side = "both sides" if geom.resize_mode == "squash" else "the shorter side"
        target = int(geom.size / geom.crop_pct) if geom.crop_pct < 1 else geom.size
        how = f"resize {side} to {target} px, then center-crop {geom.size}x{geom.size}"
    return (f"Decode to RGB, {how} ({geom.interpolation}, antialiased), keep uint8 and stack as [N, 3, {geom.size}, "
            f"{geom.size}]; the graph divides by 255 and normalises. kshot.features.decode.load_crop does exactly "
            "this.")


def export_deploy(run_dir: str | Path, out: str | Path, fmt: str, backbone: Backbone, method: Any) -> DeployExport:
    """Trace `method` on `backbone` into `out` (+ labels.json, preprocess.json beside it) and check it.

    Args:
        run_dir: the `kshot fit` folder (for its class names, task.json).
        out: model file to write (.onnx / .pt).
        fmt: 'onnx' | 'torchscript'.
        backbone: the backbone the run was fitted on (fingerprint already checked by the caller).
        method: the loaded fitted method.

    Raises:
        ConfigError: unknown format. ExportError: the method is not exportable, or the check failed.
    """
    if fmt not in DEPLOY_FORMATS:
        raise ConfigError(f"unknown deploy format {fmt!r}; supported: {', '.join(DEPLOY_FORMATS)}")
    classnames = json.loads((Path(run_dir) / "task.json").read_text())["classnames"]
    graph = build_graph(backbone, method)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    example, check = example_images(TRACE_BATCH, graph.image_size), example_images(CHECK_BATCH, graph.image_size, 1)
    try:
        with torch.no_grad(), _plain_attention():
            expected = graph(check).numpy()
            (_trace_onnx if fmt == "onnx" else _trace_torchscript)(graph, example, tmp)
        got = run_exported(tmp, fmt, check)
        if got.shape != expected.shape:
            raise ExportError(f"{method.name}: the exported graph returns {got.shape} for {expected.shape} logits")
        if len(classnames) != expected.shape[1]:
            raise ExportError(f"{run_dir}: task.json lists {len(classnames)} classes but the head gives "
                              f"{expected.shape[1]}")
        diff = float(np.abs(got - expected).max())
        if not diff <= CHECK_TOL:
            raise ExportError(f"{method.name}: the exported {fmt} graph differs from kshot's logits by {diff:.3g} "
                              f"(> {CHECK_TOL}); its head does not trace (override exportable_head)")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    labels, pre = out.with_name(LABELS_FILE), out.with_name(PREPROCESS_FILE)
    _write_json(labels, {str(i): name for i, name in enumerate(classnames)})
    _write_json(pre, preprocess_doc(backbone, out, fmt, len(classnames)))
    log.info("exported %s (%s, %d classes; self-check max abs diff %.2g)", out, fmt, len(classnames), diff)
    return DeployExport(out, labels, pre, fmt, len(classnames), diff)
