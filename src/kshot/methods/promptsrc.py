"""PromptSRC: Prompting with Self-Regulating Constraints (Khattak et al., ICCV 2023; `muzairkhattak/PromptSRC:
trainers/promptsrc.py`).

Independent deep prompts in both towers (text: n_t tokens replacing the context in the first J_t layers; vision: n_v
tokens appended to the image sequence in the first J_v layers, as `kshot.methods.prompting.deep`), regulated towards
the frozen CLIP on every batch:

    L = CE(s·cos(f̃, g̃), y) + λ_t · L1(g̃, g) + λ_v · L1(f̃, f) + KL(softmax(s·f·gᵀ) ‖ softmax(s·f̃·g̃ᵀ))

f̃/g̃ the prompted, f/g the frozen (L2-normalised) image/text features; L1 is the mean absolute difference over all
elements, KL is `kl_div(log_softmax(prompted), log_softmax(frozen), reduction='sum', log_target=True) / numel`. After
each epoch e the prompts are added to a Gaussian-weighted aggregate, w_e ∝ N(e; μ, σ²) normalised over the epochs
(GPA); the aggregate is kept. Defaults from `configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml`:
N_CTX_TEXT = N_CTX_VISION = 4, PROMPT_DEPTH_TEXT = PROMPT_DEPTH_VISION = 9, CTX_INIT "a photo of a",
TEXT_LOSS_WEIGHT 25, IMAGE_LOSS_WEIGHT 10, GPA_MEAN 15, GPA_STD 1, 20 epochs, batch 4, SGD lr 0.0025, 1 warm-up
epoch at 1e-5 + cosine; deep prompts N(0, 0.02²). (The few-shot config `..._ep50_..._few_shot.yaml` trains longer.)

Frozen text features g: the task's text classifier (kshot's hand-crafted prompts for the dataset, template ensembles
included) when given, else the mean over `templates` of the frozen encoder's features (the official code averages
its ImageNet template list). Departures: as MaPLe (`kshot.methods.maple`). The running GPA aggregate is saved with the
engine's resumable checkpoints (`extra_state`), so a resumed fit equals the uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import param
from kshot.errors import DataError
from kshot.methods.base import METHODS, Task
from kshot.methods.prompting.deep import DeepPromptConfig, DeepPromptMethod
from kshot.methods.prompting.tower import TextTower
from kshot.methods.prompting.vision import ImageTower


@dataclass(frozen=True)
class PromptSRCConfig(DeepPromptConfig):
    """PromptSRC's settings (official `vit_b16_c2_ep20_batch4_4+4ctx`); shared fields on `DeepPromptConfig`.

    Attributes:
        n_ctx, depth: text prompt tokens (4) and layers (9); n_ctx_vision, depth_vision: the same for vision (4, 9).
        text_loss_weight, image_loss_weight: λ_t (25) and λ_v (10); logits_loss_weight: KL weight (1).
        gpa_mean, gpa_std: Gaussian prompt aggregation over epochs (15, 1); gpa False keeps the last epoch.
        templates: frozen text features when the task has no text classifier (mean over templates).
    """

    n_ctx: int = param(4, ge=1)
    n_ctx_vision: int = param(4, ge=1)
    depth_vision: int = param(9, ge=1)
    epochs: int = param(20, ge=0)
    lr: float = param(0.0025, gt=0)
    text_loss_weight: float = param(25.0, ge=0)
    image_loss_weight: float = param(10.0, ge=0)
    logits_loss_weight: float = param(1.0, ge=0)
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = param(1.0, gt=0)
    templates: tuple[str, ...] = ("a photo of a {}.",)


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """Normalised Gaussian weights of epochs 1..E (PromptSRC's `get_gauss` over range(1, E + 1))."""
    g = [math.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for e in range(1, epochs + 1)]
    total = sum(g)
    return [x / total for x in g] if total > 0 else [1.0 / max(epochs, 1)] * epochs


class SRCParams(nn.Module):
    """Deeper text prompts (J_t − 1) and visual prompts of every prompted vision layer (J_v)."""

    def __init__(self, depth: int, n_ctx: int, text_width: int, depth_v: int, n_v: int, vision_width: int,
                 generator: torch.Generator):
        super().__init__()
        self.deep_text = nn.ParameterList([nn.Parameter(torch.randn(n_ctx, text_width, generator=generator) * 0.02)
                                           for _ in range(depth - 1)])
        self.visual = nn.ParameterList([nn.Parameter(torch.randn(n_v, vision_width, generator=generator) * 0.02)
                                        for _ in range(depth_v)])


@METHODS.register("promptsrc", "PromptSRC: deep V+L prompts regulated to the frozen CLIP, Gaussian-aggregated")
class PromptSRC(DeepPromptMethod):
    name = "promptsrc"
    config_cls = PromptSRCConfig
    quick_overrides: ClassVar[dict[str, Any]] = {"depth": 3, "depth_vision": 4, "epochs": 5, "batch_size": 8,
                                                 "lr": 0.02, "gpa_mean": 4.0, "crop_scale": (0.5, 1.0)}

    def vision_depth(self) -> int:
        return int(self.config.depth_vision)

    def vision_ctx(self) -> int:
        return int(self.config.n_ctx_vision)

    def _build(self, tower: TextTower, image: ImageTower, generator: torch.Generator) -> nn.Module:
        c = self.config
        return SRCParams(int(c.depth), int(c.n_ctx), tower.width, int(c.depth_vision), int(c.n_ctx_vision),
                         image.width, generator)

    def _prompts(self, params: nn.Module, ctx: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return list(params.deep_text), list(params.visual)

    def _prepare(self, task: Task) -> None:
        c, bb = self.config, task.backbone
        if task.text_weights is not None:
            g = task.text_weights.float()
        else:
            if not c.templates or any("{}" not in t for t in c.templates):
                raise DataError(f"promptsrc templates must each contain {{}}, got {list(c.templates)}")
            with torch.no_grad():
                g = torch.stack([bb.encode_text(bb.tokenize([t.format(n) for n in task.classnames]).to(bb.device))
                                 .float() for t in c.templates], dim=1).mean(dim=1)
        if g.shape != (len(task.classnames), bb.embed_dim):
            raise DataError(f"promptsrc: frozen text features have shape {tuple(g.shape)}, expected "
                            f"({len(task.classnames)}, {bb.embed_dim})")
        self.frozen_text_ = F.normalize(g, dim=-1).to(bb.device)
        self.frozen_model_ = bb.model
        self.scale_ = float(task.logit_scale)
        self.gpa_w_ = gpa_weights(int(c.epochs), float(c.gpa_mean), float(c.gpa_std))
        self.gpa_sum_: dict[str, torch.Tensor] | None = None

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, text: torch.Tensor, image: torch.Tensor,
              images: torch.Tensor) -> torch.Tensor:
        c = self.config
        with torch.no_grad():
            zs_image = F.normalize(self.frozen_model_.encode_image(images).float(), dim=-1)
            zs_logits = self.scale_ * zs_image @ self.frozen_text_.T
        ce = F.cross_entropy(logits, y, reduction="none")
        l_text = F.l1_loss(text, self.frozen_text_, reduction="mean") * float(c.text_loss_weight)
        l_image = (image - zs_image).abs().mean(dim=1) * float(c.image_loss_weight)
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="none",
                      log_target=True).sum(dim=1) / logits.shape[1]
        return ce + l_text + l_image + float(c.logits_loss_weight) * kl

    def _after_epoch(self, epoch: int, exported: dict[str, torch.Tensor]) -> None:
        w = self.gpa_w_[epoch - 1] if epoch - 1 < len(self.gpa_w_) else 0.0
        if self.gpa_sum_ is None:
            self.gpa_sum_ = {k: v * w for k, v in exported.items()}
        else:
            self.gpa_sum_ = {k: self.gpa_sum_[k] + v * w for k, v in exported.items()}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The running GPA aggregate (`gpa.<prompt name>`), empty before the first epoch ends."""
        return {} if self.gpa_sum_ is None else {f"gpa.{k}": v for k, v in self.gpa_sum_.items()}

    def load_extra(self, state: dict[str, torch.Tensor]) -> None:
        gpa = {k[len("gpa."):]: v.float() for k, v in state.items() if k.startswith("gpa.")}
        self.gpa_sum_ = gpa or None

    def _final(self, exported: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.config.gpa or self.gpa_sum_ is None:
            return exported
        return self.gpa_sum_
