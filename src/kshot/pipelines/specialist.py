"""The specialist stage: an image model fine-tuned on the shots of one domain, re-ranking within it.

Seed 004 (Daheilou/jittor-few-shot-clip-B, `train_dog.py`) fine-tunes ImageNet-1k ConvNeXt-V2-B on the 130 Thu-dog
classes' shots: a new 130-way head, AdamW(lr 1e-3) on the head only, cosine schedule (period 15 epochs, floor 1e-5)
stepped per epoch, 31 epochs, batch 32, resize 320 + random crop 280 + flip; the last epoch is kept. Here
(`SpecialistConfig` holds the values):

- The encoder is a timm model (`timm:convnextv2_base.fcmae_ft_in1k` for seed 004, or `@/path/file` for Meta's
  released weights) or a CLIP backbone's image tower (the offline replica uses the toy CLIP's). It is a deep copy:
  the pipeline's shared backbones are never modified.
- The head sees L2-normalised encoder outputs, so the fine-tuned encoder can go through the feature cache
  (`FeatureStore`) at prediction time like any backbone (no test-time augmentation, so runs are reproducible).
- Augmentation: RandomResizedCrop at the model's input size + flip, each draw seeded by (seed, epoch, image) — the
  same images in the same order give the same model.
- Epoch count by cross-validation within the shots: for each of `cv_folds` folds the model is trained from the same
  start on the other folds and scored on the held-out one after every epoch (and before training when the head is
  not random); the epoch with the highest summed held-out accuracy (first maximum) is kept, and the final model is
  trained on all shots under the same schedule and stopped there. With `cv_folds` < 2 the last epoch is kept. When
  the choice is 0 epochs the encoder is left as loaded (and shares the backbone's cached features).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kshot.backbones.base import Backbone, hash_state_dict, make_fingerprint
from kshot.errors import ConfigError, DataError
from kshot.pipelines.config import SpecialistConfig
from kshot.pipelines.crossval import effective_folds, shot_folds
from kshot.pipelines.groups import resolve_group
from kshot.pipelines.stages import Stage
from kshot.pipelines.workspace import Workspace, image_encoder

log = logging.getLogger(__name__)

DEFAULT_COSINE_SCALE = 30.0  # cosine-head temperature for image-only models (kshot's choice)


class Head(nn.Module):
    """Classifier on L2-normalised features: linear (W f + b) or cosine (s · normalize(W) f)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, kind: str, scale: float):
        super().__init__()
        self.weight = nn.Parameter(weight.clone().float())
        self.bias = nn.Parameter(bias.clone().float())
        self.kind, self.scale = kind, float(scale)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        f = F.normalize(feats.float(), dim=-1)
        if self.kind == "cosine":
            return self.scale * f @ F.normalize(self.weight, dim=-1).T
        return f @ self.weight.T + self.bias


def cosine_lr(base: float, eta_min: float, epoch: int, period: int) -> float:
    """Closed-form cosine annealing (PyTorch's CosineAnnealingLR formula, periodic past `period`)."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / period)) / 2


def _draw_seed(*parts: int) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class _Trainer:
    """Fine-tunes a (deep-copied) encoder and a head on a fixed list of PIL images."""

    def __init__(self, cfg: SpecialistConfig, backbone: Backbone, images: list[Any], labels: np.ndarray,
                 num_classes: int, text: torch.Tensor | None, device: torch.device, seed: int):
        from torchvision.transforms import v2 as T

        self.cfg, self.bb, self.images, self.device, self.seed = cfg, backbone, images, device, seed
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.k = num_classes
        self.text = text
        size = backbone.preprocess_cfg.image_size
        steps = [T.RandomResizedCrop(size, scale=tuple(cfg.crop_scale), interpolation=T.InterpolationMode.BICUBIC)]
        if cfg.flip:
            steps.append(T.RandomHorizontalFlip(0.5))
        self.augment = T.Compose(steps)
        self.base = image_encoder(backbone)
        self.plain = torch.stack([backbone.preprocess(im) for im in images])
        self.scale = cfg.head_scale if cfg.head_scale is not None else (
            float(backbone.logit_scale) if backbone.has_text else DEFAULT_COSINE_SCALE)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _encode(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return encoder(x.to(self.device)).float()

    @torch.no_grad()
    def _features(self, encoder: nn.Module, rows: np.ndarray) -> torch.Tensor:
        encoder.eval()
        out = [self._encode(encoder, self.plain[rows[i:i + 64]]) for i in range(0, len(rows), 64)]
        return F.normalize(torch.cat(out), dim=-1)

    def new_head(self, encoder: nn.Module, rows: np.ndarray) -> Head:
        cfg = self.cfg
        if cfg.head_init == "text":
            if self.text is None:
                raise ConfigError("specialist: head_init 'text' needs a CLIP model with a text tower")
            weight = self.text.float().clone()
        elif cfg.head_init == "prototype":
            feats = self._features(encoder, rows)
            sums = torch.zeros(self.k, feats.shape[1], device=feats.device).index_add_(
                0, self.labels[rows].to(feats.device), feats)
            weight = F.normalize(sums, dim=-1)
        else:
            dim = self._features(encoder, rows[:1]).shape[1]
            gen = torch.Generator().manual_seed(_draw_seed(self.seed, 1))
            bound = 1 / math.sqrt(dim)  # nn.Linear's default init, from a seeded generator
            weight = (torch.rand(self.k, dim, generator=gen) * 2 - 1) * bound
            bias = (torch.rand(self.k, generator=gen) * 2 - 1) * bound
            return Head(weight, bias, cfg.head, self.scale).to(self.device)
        if cfg.head == "linear":
            weight = weight * self.scale  # logits on the same scale as a cosine head at init
        return Head(weight.cpu(), torch.zeros(self.k), cfg.head, self.scale).to(self.device)

    def _batch(self, rows: np.ndarray, epoch: int) -> torch.Tensor:
        out = []
        for r in rows.tolist():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_draw_seed(self.seed, epoch, r))
                out.append(self.bb.preprocess(self.augment(self.images[r])))
        return torch.stack(out)

    def run(self, train_rows: np.ndarray, eval_rows: np.ndarray | None, stop: int | None = None
            ) -> tuple[nn.Module, Head, list[int]]:
        """Train on `train_rows` for `stop` epochs (default cfg.epochs) of the cfg.epochs schedule.

        Returns:
            (encoder, head, correct held-out predictions after 0, 1, ... epochs) — the list is empty without
            `eval_rows`.
        """
        cfg = self.cfg
        encoder = copy.deepcopy(self.base).to(self.device)
        for p in encoder.parameters():
            p.requires_grad_(cfg.train == "all")
        head = self.new_head(encoder, train_rows)
        groups = [{"params": list(head.parameters()), "lr": cfg.lr, "base": cfg.lr}]
        if cfg.train == "all":
            groups.append({"params": [p for p in encoder.parameters()], "lr": cfg.encoder_lr,
                           "base": cfg.encoder_lr})
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        period = cfg.t_max or max(1, cfg.epochs)
        curve = [self._correct(encoder, head, eval_rows)] if eval_rows is not None else []
        labels = self.labels.to(self.device)
        for epoch in range(cfg.epochs if stop is None else stop):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(g["base"], min(cfg.eta_min, g["base"]), epoch, period)
            encoder.train(cfg.train == "all")
            gen = torch.Generator().manual_seed(_draw_seed(self.seed, epoch, -1))
            order = train_rows[torch.randperm(len(train_rows), generator=gen).numpy()]
            for start in range(0, len(order), cfg.batch_size):
                rows = order[start:start + cfg.batch_size]
                x = self._batch(rows, epoch)
                with torch.set_grad_enabled(cfg.train == "all"):
                    feats = self._encode(encoder, x)
                loss = F.cross_entropy(head(feats), labels[torch.as_tensor(rows)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if eval_rows is not None:
                curve.append(self._correct(encoder, head, eval_rows))
        encoder.eval()
        return encoder, head, curve

    @torch.no_grad()
    def _correct(self, encoder: nn.Module, head: Head, rows: np.ndarray) -> int:
        pred = head(self._features(encoder, rows)).argmax(dim=1).cpu()
        return int(pred.eq(self.labels[rows]).sum())


class SpecialistStage(Stage):
    """See the module docstring and `SpecialistConfig`."""

    kind = "specialist"

    def __init__(self, name: str, cfg: SpecialistConfig):
        super().__init__(name)
        self.cfg = cfg

    def fit(self, ws: Workspace, stages: Mapping[str, Stage]) -> None:
        from kshot.data.images import load_image

        cfg, data = self.cfg, ws.data
        self.bind(ws)
        self.classes = resolve_group(cfg.classes, data.info, f"stage {self.name!r}")
        pos = np.full(data.num_classes, -1, dtype=np.int64)
        pos[self.classes] = np.arange(len(self.classes))
        shot_labels = data.pool.labels[data.shots]
        mine = data.shots[pos[shot_labels] >= 0]
        labels = pos[data.pool.labels[mine]]
        empty = sorted(set(range(len(self.classes))) - set(labels.tolist()))
        if empty:
            names = [data.classnames[int(self.classes[i])] for i in empty[:10]]
            raise DataError(f"stage {self.name!r}: the specialist needs shots for every class of {cfg.classes!r}; "
                            f"{len(empty)} have none: {names}")
        bb = ws.backbone(cfg.model)
        text = None
        if cfg.head_init == "text":
            alias = cfg.model if cfg.model in ws.config.backbones else None
            if alias is None or ws.text_weights(alias, None) is None:
                raise ConfigError(f"stage {self.name!r}: head_init 'text' needs `model` to be a CLIP backbone alias")
            text = ws.text_weights(alias, None)[torch.as_tensor(self.classes)]
        images = [load_image(data.pool.abspath(int(i))) for i in mine]
        seed = ws.config.seed if cfg.seed is None else cfg.seed
        trainer = _Trainer(cfg, bb, images, labels, len(self.classes), text, ws.device, seed)
        start = time.perf_counter()
        folds = effective_folds(labels, cfg.cv_folds)
        stop, curve = cfg.epochs, None
        if folds >= 2 and cfg.epochs > 0:
            total = np.zeros(cfg.epochs + 1)
            for val_rows in shot_folds(labels, folds, seed):
                train_rows = np.setdiff1d(np.arange(len(labels)), val_rows)
                total += np.asarray(trainer.run(train_rows, val_rows)[2], dtype=float)
            if cfg.head_init == "random":
                total[0] = -1.0  # an untrained random head is never the answer
            stop = int(np.argmax(total))
            curve = (total / len(labels)).round(4).tolist()
        self.encoder, self.head, _ = trainer.run(np.arange(len(labels)), None, stop=stop)
        self.train_s = time.perf_counter() - start
        self.tuned = cfg.train == "all" and stop > 0
        if not self.tuned:
            self.encoder_bb = bb  # unchanged encoder: share the cached features of the original backbone
        else:
            self.encoder_bb = Backbone(
                spec=f"specialist:{self.name}", arch=f"specialist:{bb.arch}", model=self.encoder,
                preprocess=bb.preprocess, preprocess_cfg=bb.preprocess_cfg, tokenizer=None,
                embed_dim=int(bb.embed_dim), logit_scale=1.0,
                fingerprint=make_fingerprint(f"specialist:{bb.arch}", hash_state_dict(self.encoder.state_dict()),
                                             bb.preprocess_cfg))
        self.n_encoder = sum(p.numel() for p in image_encoder(bb).parameters())
        self.record.update(model=bb.spec, n_classes=len(self.classes), n_shots=len(labels),
                           train=cfg.train, head=cfg.head, head_init=cfg.head_init, cv_folds=folds,
                           epochs_kept=stop, cv_curve=curve, train_s=round(self.train_s, 3),
                           tuning=(f"epochs chosen by {folds}-fold cross-validation within the shots" if curve
                                   else "last epoch kept (no cross-validation)"))

    def _scores(self, split: str, rows: np.ndarray | None) -> torch.Tensor:
        ws = self._ws
        rows = np.arange(ws.data.num_rows(split)) if rows is None else rows
        if len(rows) == 0:
            return torch.zeros(0, len(self.classes))
        feats = ws.encode_rows(self.encoder_bb, split, rows, f"{self.name}/{split}").features
        with torch.no_grad():
            return self.head(feats.to(ws.device)).float().cpu()

    def param_counts(self) -> dict[str, int]:
        head = sum(p.numel() for p in self.head.parameters())
        tuned = int(self.n_encoder) if self.tuned else 0
        return {"fitted": int(head), "finetuned_encoder": tuned, "trainable": int(head) + tuned}
