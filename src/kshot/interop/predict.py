"""`kshot predict --backend jittor`: image features, zero-shot text weights and the method's head, all in Jittor.

Decoding and preprocessing stay in Python (PIL + the backbone's own transform, the same pixels for both backends);
everything after that runs in one Jittor worker session (`JittorSession`): the image tower on each batch, the text
tower for zero-shot classifiers, and the fitted head, which travels as a `kshot export --format jittor` file.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kshot.errors import DataError
from kshot.features.featureset import FeatureSet
from kshot.progress import bar as progress_bar

log = logging.getLogger(__name__)


class JittorTextTower:
    """Duck-types the parts of a `Backbone` that `kshot.text.classifier` uses, with the text tower in Jittor."""

    def __init__(self, backbone: Any, session: Any):
        self.backbone, self.session = backbone, session
        self.embed_dim = backbone.embed_dim
        self.device = torch.device("cpu")

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.backbone.tokenize(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.session.encode_text(tokens)


def jittor_features(session: Any, backbone: Any, dataset: Any, indices: Sequence[int] | None = None,
                    batch_size: int = 64, progress: bool = True) -> FeatureSet:
    """L2-normalised image features [N, D] of `dataset` from the Jittor image tower (unreadable images skipped and
    listed in `skipped`, as the PyTorch store does)."""
    from kshot.data.images import load_image

    indices = list(range(len(dataset))) if indices is None else list(indices)
    feats: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    bar = progress_bar(total=len(indices), desc="jittor encode", unit="img", disable=not progress, leave=False)
    for start in range(0, len(indices), batch_size):
        batch, ids = [], []
        for i in indices[start : start + batch_size]:
            try:
                batch.append(backbone.preprocess(load_image(dataset.abspath(i))))
                ids.append(i)
            except DataError as e:
                skipped.append((dataset.items[i].path, str(e)))
        if batch:
            feats.append(F.normalize(session.encode_image(torch.stack(batch)).float(), dim=-1))
            kept.extend(ids)
        bar.update(len(indices[start : start + batch_size]))
    bar.close()
    x = torch.cat(feats) if feats else torch.zeros(0, backbone.embed_dim)
    all_labels, all_domains = dataset.labels, dataset.domains
    labels = torch.as_tensor(all_labels[kept], dtype=torch.long)
    domains = [all_domains[i] for i in kept] if all_domains is not None else None
    return FeatureSet(x, labels, [dataset.items[i].path for i in kept], domains=domains, skipped=skipped)


def predict_jittor(backbone: Any, dataset: Any, method: Any = None, *, classnames: Sequence[str] | None = None,
                   text_spec: Any = None, class_domains: Sequence[str] | None = None, python: str | None = None,
                   device: str = "cpu", batch_size: int = 64) -> tuple[FeatureSet, torch.Tensor]:
    """(features, logits [N, C]) of `dataset`, computed in Jittor.

    Args:
        method: a fitted kshot method (its head is exported and run in Jittor); None = zero-shot over `classnames`
            with text weights from the Jittor text tower and `text_spec` (a PromptSpec or templates).
        python, device: the Jittor interpreter and device (see `JittorSession`).

    Raises:
        JittorError: no usable Jittor, or a method whose head has no Jittor implementation (the message names the
            supported ones).
    """
    from kshot.interop.export import method_to_jittor_dict, save_jittor_artifact
    from kshot.jittor_backend.client import JittorSession
    from kshot.experiment import zeroshot_on
    from kshot.text.classifier import build_text_classifier

    with tempfile.TemporaryDirectory(prefix="kshot-jittor-predict-") as tmp, \
            JittorSession(backbone, python=python, device=device, batch_size=batch_size) as session:
        if method is None:
            if not classnames:
                raise DataError("zero-shot prediction needs class names")
            tw = build_text_classifier(JittorTextTower(backbone, session), list(classnames), text_spec, class_domains)
            method = zeroshot_on(list(classnames), tw, backbone.logit_scale)
        pkl = save_jittor_artifact(method_to_jittor_dict(method), Path(tmp) / f"{method.name}.pkl")
        fs = jittor_features(session, backbone, dataset, batch_size=batch_size)
        logits = session.head_logits(pkl, fs.features)
        log.info("jittor session: %s; seconds per op %s", session.info, session.timings)
    return fs, logits
