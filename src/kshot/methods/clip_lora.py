"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW 2024).

Rank-r LoRA adapters on q, k and v of every attention layer of both towers (`kshot.tuning.lora`), trained with
cross-entropy on s · cos(f(x), g(t_c)) where f, g are the adapted encoders, x an augmented shot and t_c the prompt
"a photo of a {class}." (the text tower runs every step, with gradients). Defaults from
`MaxZanella/CLIP-LoRA @ 358f0d73 : run_utils.py, lora.py, main.py`: r=2, alpha=1 (scaling alpha/sqrt(r)),
dropout 0.25, AdamW lr 2e-4 wd 1e-2, cosine to 1e-6, 500 × shots iterations, batch 32; s is the model's logit
scale; the last iterate is kept (their VALIDATION=False).

The artifact holds only the adapters and the text classifier (the tuned text tower's class features). Its
`logits(features)` expect features of the *tuned* image encoder: `tuned_backbone(base)` returns the merged backbone
(own fingerprint, so its features are cached apart), and `kshot lora merge` writes the same weights as a plain
checkpoint.

Departures: bf16 autocast on CUDA by default (theirs fp16 + GradScaler; `amp='fp16'` available), seeded per-sample
crops (theirs: a shuffled DataLoader with global seeding).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from kshot.backbones.base import Backbone, hash_state_dict, make_fingerprint
from kshot.data.images import load_image
from kshot.errors import CheckpointError, ConfigError, DataError
from kshot.methods.base import METHODS, CosineHead, Method, Task
from kshot.methods.checks import check_features, check_task
from kshot.tuning.engine import EngineConfig, check_shot_files, train_encoders
from kshot.tuning.lora import (adapter_state, attention_paths, inject_lora, load_adapter_state, lora_parameters,
                               merged_state_dict)



@dataclass(frozen=True)
class ClipLoraConfig:
    """CLIP-LoRA's settings (official defaults, `run_utils.py`).

    Attributes:
        rank, alpha, dropout: LoRA r (2), alpha (1), adapter-input dropout (0.25).
        towers: 'visual' and/or 'text' (official `--encoder both`).
        iters_per_shot: iterations = this × shots per class (500); iters overrides the total when set.
        batch_size, lr, weight_decay: 32, 2e-4, 1e-2.
        crop_scale: RandomResizedCrop area range of the shots (official (0.08, 1)).
        template: prompt of every class (CoOp's per-dataset template in the official code; kshot's default one).
        amp: 'bf16' | 'fp16' | 'off' on CUDA; grad_checkpointing: recompute activations; fused: one q/k/v matmul.
        checkpoint_every, checkpoint_dir: resumable checkpoints; num_workers: decoding processes.
        progress: progress bar; val_every: validation accuracy every N steps (0: at the end), when
            `Task.images['val']` has images (display only: the last iterate is kept, as the official code).
        eval_batch_size: images per forward pass when encoding validation images.
    """

    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    towers: tuple[str, ...] = ("visual", "text")
    iters_per_shot: int = 500
    iters: int | None = None
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-2
    crop_scale: tuple[float, float] = (0.08, 1.0)
    template: str = "a photo of a {}."
    amp: str = "bf16"
    grad_checkpointing: bool = False
    fused: bool = True
    checkpoint_every: int = 0
    checkpoint_dir: str = ""
    num_workers: int = 0
    progress: bool = True
    val_every: int = 0
    eval_batch_size: int = 64


@METHODS.register("clip_lora", "CLIP-LoRA: LoRA on q/k/v of both CLIP towers, trained on the shot images")
class ClipLora(Method):
    name = "clip_lora"
    config_cls = ClipLoraConfig
    needs_backbone: ClassVar[bool] = True
    trains_encoders: ClassVar[tuple[str, ...]] = ("image", "text")
    quick_overrides: ClassVar[dict[str, Any]] = {"iters": 60, "batch_size": 16, "lr": 5e-3,
                                                 "crop_scale": (0.5, 1.0)}
    cv_tunes: ClassVar[bool | None] = False  # the last iterate is kept: nothing is chosen on validation data

    def fit(self, task: Task) -> "ClipLora":
        c = self.config
        check_task(task, needs_shots=True, needs_text=False, method=self.name)
        bb = task.backbone
        if bb is None or not bb.has_text:
            raise ConfigError(f"{self.name} trains both CLIP towers: the task needs a CLIP backbone (Task.backbone)")
        if not set(c.towers) <= {"visual", "text"} or not c.towers:
            raise ConfigError(f"{self.name}: towers must be a subset of ('visual', 'text'), got {c.towers!r}")
        images = (task.images or {}).get("train")
        if images is None or len(images) != len(task.train):
            raise ConfigError(f"{self.name} trains on the shot images: Task.images['train'] must hold the "
                              f"{len(task.train)} shot files (aligned with task.train)")
        check_shot_files(images, self.name)
        model = copy.deepcopy(bb.model)
        paths = attention_paths(model, tuple(c.towers))
        gen = torch.Generator().manual_seed(int(task.seed))
        layers = inject_lora(model, paths, rank=c.rank, alpha=c.alpha, dropout=c.dropout, generator=gen,
                             fused=c.fused)
        params = lora_parameters(layers)
        trainable = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        device = bb.device
        tokens = bb.tokenize([c.template.format(n) for n in task.classnames]).to(device)
        scale = float(task.logit_scale)
        shots = int(torch.bincount(task.train.labels).max())
        engine = EngineConfig(iters=c.iters if c.iters is not None else c.iters_per_shot * shots,
                              batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay, amp=c.amp,
                              crop_scale=tuple(c.crop_scale),
                              grad_checkpointing=c.grad_checkpointing, checkpoint_every=c.checkpoint_every,
                              checkpoint_dir=c.checkpoint_dir, num_workers=c.num_workers, seed=int(task.seed),
                              progress=c.progress)

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            img = F.normalize(model.encode_image(x).float(), dim=-1)
            txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
            return F.cross_entropy(scale * img @ txt.T, y, reduction="none")

        val_fn = self._val_fn(model, tokens, scale, (task.images or {}).get("val"), bb.preprocess, device)
        history = train_encoders(params, loss_fn, images, task.train.labels, bb.preprocess,
                                 bb.preprocess_cfg.image_size, engine, device, model=model, val_fn=val_fn,
                                 val_every=c.val_every, name=self.name)
        model.eval()
        with torch.no_grad():
            self.text_ = F.normalize(model.encode_text(tokens).float(), dim=-1).cpu()
        self.adapters_ = adapter_state(layers)
        self.classnames_, self.scale_, self.dim_ = list(task.classnames), scale, int(self.text_.shape[1])
        self.scaling_ = c.alpha / c.rank ** 0.5
        self.history_ = history
        n_adapter = sum(p.numel() for p in params)
        self.meta_ = {"backbone": {"spec": bb.spec, "fingerprint": bb.fingerprint}, "iters": engine.iters,
                      "final_loss": history[-1] if history else None, "layers": len(paths),
                      "adapter_params": n_adapter, "trainable_params": n_adapter}
        self.base_ = None
        self.fitted_ = True
        return self

    def _val_fn(self, model: torch.nn.Module, tokens: torch.Tensor, scale: float, val: Any, preprocess: Any,
                device: torch.device) -> Callable[[], float] | None:
        """Top-1 accuracy on the validation images (plain preprocessing), for the progress bar; None without any."""
        if val is None or len(val) == 0 or not val.has_labels:
            return None
        labels = torch.as_tensor(val.labels)
        step = int(self.config.eval_batch_size)

        def accuracy() -> float:
            txt = F.normalize(model.encode_text(tokens).float(), dim=-1)
            hits = 0
            for start in range(0, len(val), step):
                idx = range(start, min(start + step, len(val)))
                x = torch.stack([preprocess(load_image(val.abspath(i))) for i in idx]).to(device)
                img = F.normalize(model.encode_image(x).float(), dim=-1)
                hits += int(((scale * img @ txt.T).argmax(1).cpu() == labels[list(idx)]).sum())
            return hits / len(val)

        return accuracy

    # ---- the tuned encoder --------------------------------------------------------------------------------------
    def attach_backbone(self, backbone: Backbone, *, strict: bool = True) -> "ClipLora":
        """Remember the base backbone (its fingerprint must be the fitted one with `strict`)."""
        want = self.meta_.get("backbone", {}).get("fingerprint")
        if strict and want and backbone.fingerprint != want:
            raise CheckpointError(f"{self.name} was fitted on backbone fingerprint {want}; {backbone.spec!r} has "
                                  f"{backbone.fingerprint}")
        self.base_ = backbone
        return self

    def merged_state(self, base: Backbone) -> dict[str, torch.Tensor]:
        """The base model's state dict with the adapters merged in (open_clip names, base dtypes)."""
        self._check_fitted()
        return merged_state_dict(base.model.state_dict(), self.adapters_, self.scaling_)

    def tuned_backbone(self, base: Backbone | None = None) -> Backbone:
        """A copy of `base` (default: the attached one) with merged weights and its own fingerprint."""
        base = base or self.base_
        if base is None:
            raise ConfigError(f"{self.name}: attach_backbone(base) first, or pass the base backbone")
        model = copy.deepcopy(base.model)
        model.load_state_dict(self.merged_state(base))
        fp = make_fingerprint(f"{base.arch}+lora", hash_state_dict(model.state_dict()), base.preprocess_cfg)
        return replace(base, spec=f"{base.spec}+lora", model=model.eval(), fingerprint=fp)

    # ---- contract -----------------------------------------------------------------------------------------------
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, D] of the tuned image encoder (L2-normalised) -> scale · cos with the tuned text classifier."""
        self._check_fitted()
        check_features(features, self.dim_)
        return self.scale_ * features.float() @ self.text_.to(features.device).T

    def exportable_head(self) -> torch.nn.Module:
        """The tuned text classifier as a fixed head; `kshot export` puts it behind `tuned_backbone(base)`."""
        self._check_fitted()
        return CosineHead(self.text_, self.scale_)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"lora.{k}": v for k, v in self.adapters_.items()}, "text_features": self.text_}

    def fitted_meta(self) -> dict[str, Any]:
        return {**self.meta_, "classnames": self.classnames_, "scale": self.scale_, "scaling": self.scaling_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if "text_features" not in state:
            raise CheckpointError(f"{self.name} artifact has no text_features")
        self.adapters_ = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        self.text_ = state["text_features"].float()
        self.classnames_, self.scale_ = list(meta["classnames"]), float(meta["scale"])
        self.scaling_, self.dim_ = float(meta["scaling"]), int(self.text_.shape[1])
        self.meta_ = {k: v for k, v in meta.items() if k not in ("classnames", "scale", "scaling")}
        self.history_, self.base_ = [], None
        if len(self.classnames_) != self.text_.shape[0]:
            raise DataError(f"{self.name} artifact: {len(self.classnames_)} class names for "
                            f"{self.text_.shape[0]} text features")


def load_adapters_into(model: torch.nn.Module, method: ClipLora) -> None:
    """Inject `method`'s adapters into `model` (in place, dropout off) — the unmerged model, for comparisons."""
    paths = sorted({k.rsplit(".", 1)[0] for k in method.adapters_})
    rank = next(iter(method.adapters_.values())).shape[0]
    layers = inject_lora(model, paths, rank=rank, alpha=method.scaling_ * rank ** 0.5, dropout=0.0)
    load_adapter_state(layers, method.adapters_)
