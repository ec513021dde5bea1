"""`kshot predict --onnx`: classify images with an exported ONNX graph through onnxruntime (CPU).

The model's `preprocess.json` and `labels.json` are read from its folder; a model whose SHA-256 differs from the one
recorded there is refused (the sidecars belong to another export). Images are decoded and resized/cropped to uint8 by
`kshot.features.decode.load_crop` with the recorded geometry, as kshot's own extraction does on the CPU.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kshot.deploy.graph import INPUT, LABELS_FILE, PREPROCESS_FILE, sha256_file
from kshot.errors import ConfigError, DataError, ExportError
from kshot.features.tensor_transforms import Geometry

log = logging.getLogger(__name__)


@dataclass
class OnnxClassifier:
    """An exported ONNX classifier with its class names and input geometry.

    Attributes:
        session: the onnxruntime InferenceSession.
        classnames: C names in logit order.
        geometry: resize/crop producing the graph's uint8 [N, 3, S, S] input.
    """

    session: Any
    classnames: list[str]
    geometry: Geometry

    @staticmethod
    def session_for(path: str | Path, threads: int | None = None) -> Any:
        """An onnxruntime CPU session for `path`; an ExportError when onnxruntime is missing or the file is bad."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("running an ONNX model needs onnxruntime: pip install 'kshot[deploy]'") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, NoSuchFile, ...)
            raise ExportError(f"{path}: onnxruntime cannot load it ({str(e).strip().splitlines()[0]})") from None

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> "OnnxClassifier":
        """Load `path` and the `labels.json` / `preprocess.json` written beside it by `kshot export`."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such ONNX file")
        pre_path, labels_path = path.with_name(PREPROCESS_FILE), path.with_name(LABELS_FILE)
        for side in (pre_path, labels_path):
            if not side.is_file():
                raise ConfigError(f"{side}: missing (kshot export writes it beside the model)")
        try:
            pre, labels = json.loads(pre_path.read_text()), json.loads(labels_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path.parent}: unreadable export sidecar ({e})") from None
        if pre.get("model") != path.name or pre.get("sha256") != sha256_file(path):
            raise ConfigError(f"{pre_path} describes {pre.get('model')!r} with another checksum than {path.name}; "
                              "re-export, or keep each export in its own folder")
        if pre.get("format") != "onnx":
            raise ConfigError(f"{path} is a {pre.get('format')} export; --onnx needs an ONNX one")
        classnames = [labels[str(i)] for i in range(len(labels))]
        return cls(cls.session_for(path, threads), classnames, Geometry(**pre["geometry"]))

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """uint8 [N, 3, S, S] crops -> float32 logits [N, C]."""
        return self.session.run(None, {INPUT: np.ascontiguousarray(images.numpy())})[0]

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 64
                      ) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """Logits [N', C] of the readable files among `paths`, and (path, reason) of those skipped.

        A file that cannot be decoded is skipped with the reason (as feature extraction does), not fatal.
        """
        from kshot.features.decode import load_crop

        rows, skipped, batch = [], [], []
        for p in paths:
            try:
                batch.append(load_crop(p, self.geometry))
            except DataError as e:
                skipped.append((str(p), str(e)))
                continue
            if len(batch) == batch_size:
                rows.append(self.logits(torch.stack(batch)))
                batch = []
        if batch:
            rows.append(self.logits(torch.stack(batch)))
        out = np.concatenate(rows) if rows else np.zeros((0, len(self.classnames)), np.float32)
        return out, skipped


def predict_dataset(model: str | Path, dataset: Any, report: Any = log.info
                    ) -> tuple[Any, torch.Tensor, list[str]]:
    """(FeatureSet of the classified items — labels and paths, no features —, logits [N, C], the model's C class
    names) for `kshot predict`, which scores a labelled dataset against those names (matched by name)."""
    from kshot.features.featureset import FeatureSet

    clf = OnnxClassifier.load(model)
    logits, skipped = clf.predict_files([dataset.abspath(i) for i in range(len(dataset))])
    bad = {p for p, _ in skipped}
    keep = [i for i in range(len(dataset)) if str(dataset.abspath(i)) not in bad]
    for p, reason in skipped:
        report(f"skipped {p}: {reason}")
    labels = torch.tensor([-1 if dataset.items[i].label is None else dataset.items[i].label for i in keep])
    fs = FeatureSet(torch.zeros(len(keep), 0), labels.long(), [dataset.items[i].path for i in keep], skipped=skipped)
    return fs, torch.from_numpy(logits), list(clf.classnames)
