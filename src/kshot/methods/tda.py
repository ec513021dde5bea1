"""TDA: training-free dynamic adapter over the test stream (Karmanov et al., "Efficient Test-Time Adaptation of
Vision-Language Models", CVPR 2024).

Images arrive one at a time. Each image first updates a positive and a negative cache with itself, then is scored::

    z      = base logits of f (zero-shot s · f Tᵀ; see "shots" below)
    H      = entropy(softmax z) / log₂ C                    (natural-log entropy over log₂ C, as the code does)
    pos    : per predicted class, the `pos_capacity` lowest-entropy images (keys f, value one-hot(pred))
    neg    : the same with capacity `neg_capacity`, only for images with H in (0.2, 0.5); value 1[p ∈ (0.03, 1)]
    logits = z + α⁺ · exp(−β⁺(1 − f K⁺ᵀ)) V⁺ − α⁻ · exp(−β⁻(1 − f K⁻ᵀ)) V⁻

Facts from `kdiAAA/TDA @ e697fb0c`: `tda_runner.py` (`update_cache`: append while below capacity, else replace the
last (worst) entry when the new entropy is strictly lower, then sort by entropy; `compute_cache_logits`;
`run_test_tda`: caches updated before each image's logits), `utils.py` (`get_clip_logits`, `get_entropy`),
`configs/imagenet.yaml` (positive: capacity 3, α 2.0, β 5.0; negative: capacity 2, α 0.117, β 1.0, entropy band
(0.2, 0.5), mask (0.03, 1.0)). Per-dataset values are in `configs/<dataset>.yaml`; pass them as overrides.

kshot's stream and vectorisation:
- The stream is `task.unlabeled` in a seeded shuffle (`task.seed`; without a stream, as in `kshot fit`, the caches
  stay empty and a warning says so), recorded in the fitted meta (its seed and a
  fingerprint of the stream features) and part of the result: TDA's accuracy depends on the order.
- The cache membership is simulated once with scalars (entropies and predictions are computed for the whole
  stream at once). Each entry is active for an interval of stream times [t_in, t_out); the logits of the image at
  stream time t sum over the entries active at t. They are computed in time blocks against the entries active
  anywhere in the block (at most the cache capacity plus the block), which equals the per-image loop.
- `logits(features)` on the fitted stream (same fingerprint) returns those online logits, in the caller's row
  order; on any other features it scores them against the caches as they are at the end of the stream (no update).
- One view per image (the official ImageNet loader averages the 10 % most confident of 64 AugMix views; kshot
  caches one feature per test image).
- Shots: TDA has none. When the task has labelled shots, kshot adds them as a fixed Tip-Adapter cache to the base
  logits, z = s · f Tᵀ + α_s · exp(−β_s(1 − f Kₛᵀ)) Lₛ, with (β_s, α_s) searched on `task.val` by Tip-Adapter's
  search (or Tip's defaults); with zero shots z is the zero-shot logits and TDA is the official one.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kshot.errors import CheckpointError
from kshot.methods import refit
from kshot.methods.base import METHODS, Method, Task
from kshot.methods.checks import check_features, check_task, check_val_covers
from kshot.methods.search import cache_kernel
from kshot.methods.tip_adapter import TipAdapterConfig, build_cache, in_row_chunks, one_hot, search_tip, tip_logits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TDAConfig:
    """TDA hyper-parameters (defaults: `kdiAAA/TDA @ e697fb0c : configs/imagenet.yaml`).

    Attributes:
        pos_capacity, pos_alpha, pos_beta: positive cache (3, 2.0, 5.0).
        neg_capacity, neg_alpha, neg_beta: negative cache (2, 0.117, 1.0).
        neg_entropy: (lower, upper) normalised-entropy band admitting an image to the negative cache (0.2, 0.5).
        neg_mask: (lower, upper) probability band that sets a negative value to 1 (0.03, 1.0).
        shuffle: shuffle the stream with `task.seed` (False: the given order).
        shot_alpha, shot_beta: Tip-Adapter cache of the labelled shots without a validation split (Tip's 1.17, 1).
        search_shots: search (β_s, α_s) on `task.val` with Tip-Adapter's grid ranges (β < 7, α < 3).
        shot_search_steps: (β, α) grid sizes of that search; coarser than Tip's (200, 20) because the shot cache
            is a kshot addition and the search dominates the fit at ImageNet size.
        block: stream images per block in the vectorised computation (memory knob; results do not depend on it).
    """

    pos_capacity: int = 3
    pos_alpha: float = 2.0
    pos_beta: float = 5.0
    neg_capacity: int = 2
    neg_alpha: float = 0.117
    neg_beta: float = 1.0
    neg_entropy: tuple[float, float] = (0.2, 0.5)
    neg_mask: tuple[float, float] = (0.03, 1.0)
    shuffle: bool = True
    shot_alpha: float = 1.17
    shot_beta: float = 1.0
    search_shots: bool = True
    shot_search_steps: tuple[int, int] = (20, 10)
    block: int = 1024


def simulate_cache(pred: list[int], loss: list[float], admit: list[bool], capacity: int
                   ) -> tuple[list[int], list[int], list[int]]:
    """Replay `update_cache` over the stream; returns (stream time of each entry's image, t_in, t_out) lists.

    An entry enters at the time of its own image (the cache is updated before scoring) and leaves when replaced
    (t_out = that time) or never (t_out = stream length).
    """
    n = len(pred)
    cache: dict[int, list[tuple[float, int]]] = {}  # class -> [(loss, entry id)], sorted by loss
    src, t_in, t_out = [], [], []
    for t in range(n):
        if not admit[t]:
            continue
        c, item = pred[t], (loss[t], len(src))
        entries = cache.get(c)
        if entries is None:
            cache[c] = [item]
        elif len(entries) < capacity:
            entries.append(item)
        elif loss[t] < entries[-1][0]:
            t_out[entries[-1][1]] = t
            entries[-1] = item
        else:
            continue
        if entries is not None:
            entries.sort(key=lambda e: e[0])
        src.append(t)
        t_in.append(t)
        t_out.append(n)
    return src, t_in, t_out


def stream_cache_logits(feats: torch.Tensor, times: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        t_in: torch.Tensor, t_out: torch.Tensor, beta: float, block: int) -> torch.Tensor:
    """Σ over entries active at each row's time of exp(−β(1 − f kᵀ)) v.

    Args:
        feats: [N, D] rows; times: [N] stream time of each row, sorted ascending; keys [E, D], values [E, C];
            t_in, t_out: [E] activity interval of each entry.

    Returns:
        [N, C].
    """
    out = feats.new_zeros(len(feats), values.shape[1])
    for s in range(0, len(feats), block):
        f, t = feats[s:s + block], times[s:s + block]
        live = (t_in <= t[-1]) & (t_out > t[0])  # entries active somewhere in this block
        if not bool(live.any()):
            continue
        k, v, a, b = keys[live], values[live], t_in[live], t_out[live]
        active = (a[None] <= t[:, None]) & (b[None] > t[:, None])  # [B, E']
        out[s:s + block] = (cache_kernel(f @ k.T, beta) * active) @ v
    return out


def features_fingerprint(features: torch.Tensor) -> str:
    """sha256 of the float32 bytes of features [N, D] (identifies the fitted stream)."""
    return hashlib.sha256(features.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


@METHODS.register("tda", "TDA (transductive): positive/negative caches built over the seeded test stream, "
                         "zero-shot (+ shot cache) base (CVPR'24)")
class TDA(Method):
    """TDA on cached features (module docstring: algorithm, stream, vectorisation, shots)."""

    name = "tda"
    config_cls = TDAConfig
    transductive: ClassVar[bool] = True
    supports_empty_classes: ClassVar[bool] = True
    cv_tunes: ClassVar[bool | None] = True

    @classmethod
    def refit_overrides(cls, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cross-validated refit: the folds' median shot-cache (α_s, β_s), search off."""
        return {"shot_alpha": refit.median(metas, "shot_alpha"), "shot_beta": refit.median(metas, "shot_beta"),
                "search_shots": False}

    def fit(self, task: Task) -> "TDA":
        cfg = self.config
        check_task(task, needs_shots=False, needs_text=True, supports_empty_classes=True, method=self.name)
        check_val_covers(task, self.name)
        if task.unlabeled is None or len(task.unlabeled) == 0:
            log.warning("tda: no test stream (task.unlabeled): the caches stay empty, logits are the base logits; "
                        "`kshot eval` and pipeline stages pass the test features as the stream")
            x = task.text_weights.new_zeros(0, task.text_weights.shape[1]).float().to(task.train.features.device)
        else:
            x = task.unlabeled.features.float()
        dev = x.device
        self.text_ = task.text_weights.float().to(dev)
        self.scale_ = float(task.logit_scale)
        self._fit_shot_cache(task)
        n = len(x)
        self.seed_ = int(task.seed)
        gen = torch.Generator().manual_seed(self.seed_)
        self.order_ = torch.randperm(n, generator=gen) if cfg.shuffle else torch.arange(n)
        stream = x[self.order_.to(dev)]
        z = self._base_logits(stream)
        self._stream_base = z  # reused by `logits` on the fitted stream in this process (not saved)
        logp = torch.log_softmax(z, dim=1)
        loss = -(logp.exp() * logp).sum(dim=1)  # natural-log entropy, as `softmax_entropy`
        prob, pred = logp.exp(), z.argmax(dim=1)
        h = (loss / math.log2(z.shape[1])).tolist()
        pred_l, loss_l = pred.tolist(), loss.tolist()
        lo, hi = cfg.neg_entropy
        caches = {}
        for kind, admit, capacity in (("pos", [True] * n, cfg.pos_capacity),
                                      ("neg", [lo < e < hi for e in h], cfg.neg_capacity)):
            src, t_in, t_out = simulate_cache(pred_l, loss_l, admit, capacity)
            src_t = torch.tensor(src, dtype=torch.long, device=dev)
            if kind == "pos":
                values = one_hot(pred[src_t], z.shape[1])
            else:
                p = prob[src_t]
                values = ((p > cfg.neg_mask[0]) & (p < cfg.neg_mask[1])).float()
            caches[kind] = (stream[src_t], values, torch.tensor(t_in, dtype=torch.long, device=dev),
                           torch.tensor(t_out, dtype=torch.long, device=dev))
        self.caches_ = caches
        self.stream_len_ = n
        self.fingerprint_ = features_fingerprint(x)
        log.info("tda: stream of %d images; %d positive and %d negative cache entries over the stream", n,
                 len(caches["pos"][0]), len(caches["neg"][0]))
        self.fitted_ = True
        return self

    def _fit_shot_cache(self, task: Task) -> None:
        cfg = self.config
        self.shot_alpha_, self.shot_beta_ = cfg.shot_alpha, cfg.shot_beta
        dev = self.text_.device
        if len(task.train) == 0:
            self.shot_keys_ = self.text_.new_zeros(0, self.text_.shape[1])
            self.shot_labels_ = torch.zeros(0, dtype=torch.long, device=dev)
            return
        keys, labels = build_cache(task.train)
        self.shot_keys_, self.shot_labels_ = keys.float().to(dev), labels.to(dev)
        tip_cfg = TipAdapterConfig(init_beta=cfg.shot_beta, init_alpha=cfg.shot_alpha, search=cfg.search_shots,
                                   search_steps=tuple(cfg.shot_search_steps))
        values = one_hot(self.shot_labels_, task.num_classes)
        found = search_tip(tip_cfg, task, self.text_, lambda f: f @ self.shot_keys_.T, values)
        if found:
            self.shot_alpha_, self.shot_beta_ = found.alpha, found.beta

    def _base_logits(self, f: torch.Tensor) -> torch.Tensor:
        text = self.text_.to(f.device)
        if len(self.shot_keys_) == 0:
            return self.scale_ * f @ text.T
        values = one_hot(self.shot_labels_.to(f.device), text.shape[0])
        keys = self.shot_keys_.to(f.device)
        return in_row_chunks(lambda r: tip_logits(r, text, keys, values, self.shot_alpha_, self.shot_beta_,
                                                  self.scale_), f)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.text_.shape[1])
        f = features.float()
        dev = f.device
        on_stream = len(f) == self.stream_len_ and features_fingerprint(f) == self.fingerprint_
        order = self.order_.to(dev) if on_stream else torch.arange(len(f), device=dev)
        rows = f[order]
        # other features see the caches as the last stream image saw them (stream time n − 1)
        times = torch.arange(len(f), device=dev) if on_stream else torch.full((len(f),), self.stream_len_ - 1,
                                                                              device=dev)
        cfg = self.config
        cached = getattr(self, "_stream_base", None)
        out = cached.to(dev).clone() if on_stream and cached is not None else self._base_logits(rows)
        for kind, sign, alpha, beta in (("pos", 1.0, cfg.pos_alpha, cfg.pos_beta),
                                        ("neg", -1.0, cfg.neg_alpha, cfg.neg_beta)):
            keys, values, t_in, t_out = (t.to(dev) for t in self.caches_[kind])
            if len(keys):
                out += sign * alpha * stream_cache_logits(rows, times, keys, values, t_in, t_out, beta,
                                                          max(1, cfg.block))
        result = torch.empty_like(out)
        result[order] = out
        return result

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"text_weights": self.text_, "order": self.order_, "shot_keys": self.shot_keys_,
                 "shot_labels": self.shot_labels_}
        for kind, (keys, values, t_in, t_out) in self.caches_.items():
            state.update({f"{kind}_keys": keys, f"{kind}_values": values, f"{kind}_t_in": t_in,
                          f"{kind}_t_out": t_out})
        return state

    def fitted_meta(self) -> dict[str, Any]:
        return {"scale": self.scale_, "stream_len": self.stream_len_, "stream_fingerprint": self.fingerprint_,
                "stream_seed": self.seed_, "shuffled": self.config.shuffle, "shot_alpha": self.shot_alpha_,
                "shot_beta": self.shot_beta_, "num_shots": int(len(self.shot_keys_)),
                "pos_entries": int(len(self.caches_["pos"][0])), "neg_entries": int(len(self.caches_["neg"][0]))}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        try:
            self.text_, self.order_ = state["text_weights"].float(), state["order"].long()
            self.shot_keys_, self.shot_labels_ = state["shot_keys"].float(), state["shot_labels"].long()
            self.caches_ = {k: (state[f"{k}_keys"].float(), state[f"{k}_values"].float(), state[f"{k}_t_in"].long(),
                                state[f"{k}_t_out"].long()) for k in ("pos", "neg")}
            self.scale_, self.stream_len_ = float(meta["scale"]), int(meta["stream_len"])
            self.fingerprint_ = str(meta["stream_fingerprint"])
            self.seed_ = meta.get("stream_seed")
            self.shot_alpha_, self.shot_beta_ = float(meta["shot_alpha"]), float(meta["shot_beta"])
        except KeyError as e:
            raise CheckpointError(f"{self.name} artifact is missing {e}") from None
