"""The training-free heads of kshot's methods in Jittor: logits from L2-normalised image features and an export.

Runs inside the Jittor worker. Each head evaluates the same formula as the method's torch `logits` (the method
modules cite the papers) on the arrays of its `method/1` export (`kshot.jittor_backend.artifact`):

- zeroshot: weights W [C, D]; meta scale s -> s · f Wᵀ;
- linear (linear_probe): weight W [C, D], bias b [C] -> f Wᵀ + b;
- lpp: weight W, text T [C, D], bias b, alpha α [C] -> f Wᵀ + b + α ⊙ (f Tᵀ);
- tip (tip_adapter, tip_adapter_f): text_weights W [C, D], keys K [M, D], key_labels L [M]; meta alpha, beta, scale,
  num_classes -> s · f Wᵀ + α · exp(−β (1 − f Kᵀ)) · onehot(L);
- ape: text_weights W, keys_sel K [M, Q], key_labels L, channels [Q], kl [M]; meta alpha, beta, gamma, scale,
  num_classes -> s · f Wᵀ + α · exp(−β (1 − f' Kᵀ)) · (onehot(L) ⊙ exp(γ · kl)),
  f' = normalise(f[:, channels]).

The head is the one the method class declares (`Method.jittor_head`, written into the export's meta); an export
without one raises a CheckpointError naming the heads.
"""

from __future__ import annotations

from collections.abc import Callable

import jittor as jt
import numpy as np

from kshot.errors import CheckpointError
from kshot.jittor_backend.artifact import MethodArtifact

#: Head formulas (a method declares its own with the class attribute `Method.jittor_head`, which the export writes
#: into the artifact's meta as `jittor_head`) -> the arrays and meta values each needs.
HEADS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "zeroshot": (("weights",), ("scale",)),
    "linear": (("weight", "bias"), ()),
    "lpp": (("weight", "bias", "alpha", "text"), ()),
    "tip": (("text_weights", "keys", "key_labels"), ("alpha", "beta", "scale", "num_classes")),
    "ape": (("text_weights", "keys_sel", "key_labels", "channels", "kl"),
            ("alpha", "beta", "gamma", "scale", "num_classes")),
}


def _f32(a: np.ndarray) -> jt.Var:
    return jt.array(np.ascontiguousarray(a, dtype=np.float32))


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = labels.astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CheckpointError(f"cache labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return np.eye(num_classes, dtype=np.float32)[labels]


def _normalize(x: jt.Var) -> jt.Var:
    norm = jt.sqrt((x * x).sum(dim=-1, keepdims=True))
    return x / jt.maximum(norm, 1e-12)


def _cache_kernel(affinity: jt.Var, beta: float) -> jt.Var:
    return (-beta * (1.0 - affinity)).exp()


class JittorHead:
    """Logits of one exported method, computed in Jittor.

    Args:
        art: the parsed export (`read_method_artifact`).

    Raises:
        CheckpointError: unsupported method, or arrays/meta values the method needs are missing.
    """

    def __init__(self, art: MethodArtifact):
        self.kind = str(art.meta.get("jittor_head") or "")
        if self.kind not in HEADS:
            raise CheckpointError(f"method {art.method!r} has no Jittor head (its class declares none; heads: "
                                  f"{', '.join(HEADS)}; prompt-learning and transductive methods need their torch "
                                  "code)")
        arrays, meta = HEADS[self.kind]
        missing = [f"array {k!r}" for k in arrays if k not in art.arrays]
        missing += [f"meta {k!r}" for k in meta if art.meta.get(k) is None]
        if missing:
            raise CheckpointError(f"{art.method} export is missing {', '.join(missing)}")
        self.method = art.method
        self.dim = int(art.arrays[arrays[0]].shape[-1])
        self._fn = self._build(art)

    def _build(self, art: MethodArtifact) -> Callable[[jt.Var], jt.Var]:
        a, m = art.arrays, art.meta
        if self.kind == "zeroshot":
            w, s = _f32(a["weights"]), float(m["scale"])
            return lambda f: s * jt.matmul(f, w.transpose(1, 0))
        if self.kind == "linear":
            w, b = _f32(a["weight"]), _f32(a["bias"])
            return lambda f: jt.matmul(f, w.transpose(1, 0)) + b
        if self.kind == "lpp":
            w, b, alpha, t = _f32(a["weight"]), _f32(a["bias"]), _f32(a["alpha"]), _f32(a["text"])
            return lambda f: jt.matmul(f, w.transpose(1, 0)) + b + alpha * jt.matmul(f, t.transpose(1, 0))
        text, s = _f32(a["text_weights"]), float(m["scale"])
        alpha, beta, c = float(m["alpha"]), float(m["beta"]), int(m["num_classes"])
        values = _one_hot(a["key_labels"], c)
        if self.kind == "tip":
            keys, vals = _f32(a["keys"]), _f32(values)

            def tip(f: jt.Var) -> jt.Var:
                cache = jt.matmul(_cache_kernel(jt.matmul(f, keys.transpose(1, 0)), beta), vals)
                return s * jt.matmul(f, text.transpose(1, 0)) + alpha * cache
            return tip
        keys = _f32(a["keys_sel"])
        channels = jt.array(a["channels"].astype(np.int32).reshape(-1))
        vals = _f32(values) * (float(m["gamma"]) * _f32(a["kl"].reshape(-1, 1))).exp()

        def ape(f: jt.Var) -> jt.Var:
            fp = _normalize(f[:, channels])
            cache = jt.matmul(_cache_kernel(jt.matmul(fp, keys.transpose(1, 0)), beta), vals)
            return s * jt.matmul(f, text.transpose(1, 0)) + alpha * cache
        return ape

    def logits(self, features: np.ndarray) -> np.ndarray:
        """features float32 [N, D] (L2-normalised) -> logits float32 [N, C]."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"{self.method}: features must be [N, {self.dim}], got {list(features.shape)}")
        with jt.no_grad():
            return self._fn(_f32(features)).numpy()
