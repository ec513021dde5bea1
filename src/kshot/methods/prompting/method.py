"""`PromptMethod`: the shared body of the prompt-learning methods (`coop`, `cocoop`, `atprompt`).

A subclass describes its prompts (`_design`: recipes of fixed/learned/class pieces, groups, initialisation) and its
schedule; this class fits them on cached image features with only the text tower in the loop, and implements the
method contract (DESIGN.md).

Backbone at load time. `kshot.methods.load(path)` restores the learned vectors, but the text tower is needed to turn
them into class features for *other* class names (`for_classes`, base-to-new), for CoCoOp's per-image prompts, and for
`kshot prompts explain`. Attach it with `method.attach_backbone(backbone)`; the artifact stores the backbone spec and
fingerprint (`method.backbone_spec`, a mismatching fingerprint is a `CheckpointError`), and
`kshot.methods.prompting.load_prompt_method(path)` loads and attaches in one call. CoOp/ATPrompt artifacts also store
the text features of the fitted classes, so their `logits()` work without a backbone; CoCoOp's raise a `ConfigError`
until one is attached.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kshot.config import param
from kshot.errors import CheckpointError, ConfigError, DataError, ExportError
from kshot.methods.base import CosineHead, Method, Task
from kshot.methods.checks import check_features, check_task
from kshot.methods.prompting.layout import Piece, build_layout, coop_pieces
from kshot.methods.prompting.learner import GroupSpec, PromptLearner, frozen, normal_vectors, word_vectors
from kshot.methods.prompting.tokens import Tokenizer, content_ids, specials
from kshot.methods.prompting.tower import TextTower
from kshot.methods.prompting.train import Schedule, coop_epochs, train_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptConfig:
    """Settings shared by the prompt learners (defaults: CoOp, `KaiyangZhou/CoOp: configs/trainers/CoOp/rn50.yaml`
    on Dassl's defaults; reference/methods.md §1).

    Attributes:
        n_ctx: learned context vectors M (CoOp 16). Ignored when `ctx_init` is set (M = its token count).
        ctx_init: words initialising the context ("a photo of a"); "" = N(0, init_std^2) (CoOp's default).
        class_token_position: 'end' | 'middle' | 'front' (CoOp's CLASS_TOKEN_POSITION).
        csc: class-specific contexts (CoOp's CSC); such prompts cannot be moved to new classes.
        init_std: std of random context initialisation (CoOp 0.02).
        epochs: None = by shots per class: 50 (1), 100 (2-4), 200 (8+) (CoOp's few-shot scripts).
        batch_size: images per step (CoOp 32).
        lr, momentum, weight_decay, warmup_epochs, warmup_lr: SGD + constant warm-up + cosine (CoOp/Dassl).
        amp: bf16 autocast on CUDA (CoOp trains CLIP in fp16); CPU always runs fp32.
    """

    n_ctx: int = param(16, ge=1)
    ctx_init: str = ""
    class_token_position: str = "end"
    csc: bool = False
    init_std: float = param(0.02, ge=0)
    epochs: int | None = param(None, ge=0)
    batch_size: int = param(32, ge=1)
    lr: float = param(0.002, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0)
    warmup_epochs: int = param(1, ge=0)
    warmup_lr: float = param(1e-5, ge=0)
    amp: bool = True


@dataclass
class Design:
    """What a method learns: prompt recipes, learned groups and each group's initialisation.

    Attributes:
        init: per group, ('words', token ids) or ('normal', std).
    """

    recipes: list[list[Piece]]
    groups: list[GroupSpec]
    init: dict[str, tuple[str, Any]] = field(default_factory=dict)


def context_block(cfg: PromptConfig, tokenizer: Tokenizer, *, conditional: bool = False
                  ) -> tuple[list[Piece], GroupSpec, tuple[str, Any]]:
    """CoOp's context block for a config: (pieces, the 'ctx' group, its initialisation)."""
    ids = content_ids(tokenizer, cfg.ctx_init, what="ctx_init") if cfg.ctx_init.strip() else []
    n_ctx = len(ids) if ids else int(cfg.n_ctx)
    if n_ctx < 0:
        raise ConfigError(f"n_ctx must be >= 0, got {n_ctx}")
    suffix = tuple(content_ids(tokenizer, ".", what="prompt suffix"))
    pieces = coop_pieces(n_ctx, cfg.class_token_position, suffix, "ctx", ids)
    group = GroupSpec("ctx", n_ctx, csc=bool(cfg.csc), conditional=conditional)
    return pieces, group, (("words", ids) if ids else ("normal", cfg.init_std))


class PromptMethod(Method):
    """Base of the prompt learners; subclasses implement `_design` (and may override `_prepare`, `_schedule`)."""

    needs_backbone: ClassVar[bool] = True
    supports_empty_classes: ClassVar[bool] = True  # a class without shots still gets its prompt (text-only)

    def __init__(self, config: Any | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.backbone_: Any = None
        self.tower_: TextTower | None = None
        self._learner: PromptLearner | None = None
        self.extra_meta_: dict[str, Any] = {}

    # ---- subclass hooks -------------------------------------------------------------------------------------
    def is_conditional(self) -> bool:
        """True when prompts depend on the image (CoCoOp's meta-net)."""
        return False

    def _prepare(self, task: Task, generator: torch.Generator) -> dict[str, Any]:
        """Fit-time choices stored in the artifact meta (e.g. ATPrompt's attributes)."""
        return {}

    def _design(self) -> Design:
        raise NotImplementedError

    def _loss(self, learner: PromptLearner, meta_net: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
              scale: float) -> torch.Tensor:
        """Mean training loss of a batch (features x [B, D], labels y [B]): cross-entropy (CoOp/CoCoOp/ATPrompt);
        KgCoOp adds its distance to the hand-crafted prompts."""
        return F.cross_entropy(self._batch_logits(learner, meta_net, x, scale), y)

    def _schedule(self, shots: int) -> Schedule:
        c = self.config
        return Schedule(epochs=c.epochs if c.epochs is not None else coop_epochs(shots), batch_size=c.batch_size,
                        lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, warmup_epochs=c.warmup_epochs,
                        warmup_lr=c.warmup_lr)

    # ---- backbone ---------------------------------------------------------------------------------------------
    @property
    def backbone_spec(self) -> str | None:
        """Spec string of the backbone the method was fitted with (from the artifact)."""
        return self.extra_meta_.get("backbone", {}).get("spec")

    def attach_backbone(self, backbone: Any, *, strict: bool = True) -> "PromptMethod":
        """Use `backbone`'s text tower (needed after `kshot.methods.load` for new class names, CoCoOp and explain).

        Raises:
            ConfigError: the backbone has no CLIP text tower.
            CheckpointError: with `strict`, its fingerprint differs from the one the method was fitted with.
        """
        if backbone is None or not getattr(backbone, "has_text", False):
            raise ConfigError(f"{self.name} needs a CLIP backbone with a text tower (task.backbone / attach_backbone)")
        want = self.extra_meta_.get("backbone", {}).get("fingerprint")
        if strict and want and backbone.fingerprint != want:
            raise CheckpointError(f"{self.name} was fitted on backbone {self.backbone_spec!r} (fingerprint {want}); "
                                  f"{backbone.spec!r} has fingerprint {backbone.fingerprint}")
        self.backbone_, self.tower_, self._learner = backbone, TextTower(backbone.model), None
        if getattr(self, "meta_net_", None) is not None:
            self.meta_net_.to(self.tower_.device)
        return self

    def _require_tower(self, what: str) -> TextTower:
        if self.tower_ is None:
            raise ConfigError(f"{self.name}: {what} needs the backbone's text tower; after kshot.methods.load(path) "
                              f"call method.attach_backbone(load_backbone({self.backbone_spec!r})) or use "
                              "kshot.methods.prompting.load_prompt_method(path)")
        return self.tower_

    def preflight(self, classnames: Sequence[str], backbone: Any = None, *, images: bool = False) -> None:
        """`Method.preflight`, then every class's prompt built against `backbone`'s tokenizer and context (the
        prompts `fit` would build; nothing is trained). The method's fitted state is left as it was."""
        super().preflight(classnames, backbone, images=images)
        saved = (self.backbone_, self.tower_, self._learner, self.__dict__.get("attributes_"))
        try:
            self.attach_backbone(backbone, strict=False)
            self._preflight_prepare()
            tok = self.backbone_.tokenizer
            design = self._design()
            build_layout(design.recipes, list(classnames), tok, specials(tok), {g.name: g.size for g in design.groups},
                         context_length=self.tower_.context_length, trim=self.tower_.can_trim)
        except (ConfigError, DataError) as e:
            raise type(e)(f"{self.name}: {e}") from None
        finally:
            self.backbone_, self.tower_, self._learner = saved[:3]
            if saved[3] is None:
                self.__dict__.pop("attributes_", None)
            else:
                self.attributes_ = saved[3]

    def _preflight_prepare(self) -> None:
        """Set what `_prepare` would set that `_design` reads, without training (ATPrompt: the longest attributes
        `fit` may choose)."""

    # ---- building ---------------------------------------------------------------------------------------------
    def _build_learner(self, classnames: list[str], init: dict[str, torch.Tensor]) -> PromptLearner:
        tower = self._require_tower("building prompts")
        tok = self.backbone_.tokenizer
        design = self._design()
        sizes = {g.name: g.size for g in design.groups}
        layout = build_layout(design.recipes, classnames, tok, specials(tok), sizes,
                              context_length=tower.context_length, trim=tower.can_trim)
        return PromptLearner(tower, layout, design.groups, init)

    def _initial_vectors(self, design: Design, num_classes: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        tower = self._require_tower("initialising prompts")
        out = {}
        for g in design.groups:
            kind, arg = design.init[g.name]
            shape = (num_classes, g.size, tower.width) if g.csc else (g.size, tower.width)
            if kind == "words":
                v = word_vectors(tower, list(arg))
                out[g.name] = v.expand(shape).clone() if g.csc else v
            else:
                out[g.name] = normal_vectors(shape, float(arg), generator)
        return out

    def _meta_net(self, dim: int, generator: torch.Generator) -> nn.Sequential:
        """CoCoOp's meta-net Linear(D, D//16)-ReLU-Linear(D//16, W), initialised like torch's default Linear
        (U(+-1/sqrt(fan_in)) for weights and biases) but from `generator`."""
        width = self._require_tower("the meta-net").width
        hidden = max(1, dim // 16)
        net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, width))
        with torch.no_grad():
            for layer in (net[0], net[2]):
                bound = 1.0 / math.sqrt(layer.in_features)
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
        return net.to(self.tower_.device)

    # ---- contract ---------------------------------------------------------------------------------------------
    def fit(self, task: Task) -> "PromptMethod":
        check_task(task, needs_shots=True, needs_text=False, supports_empty_classes=True, method=self.name)
        if task.backbone is None:
            raise ConfigError(f"{self.name} runs the text tower: the task needs its backbone (Task.backbone)")
        self.extra_meta_ = {}
        self.attach_backbone(task.backbone, strict=False)
        bb = task.backbone
        if task.train.dim != bb.embed_dim:
            raise DataError(f"{self.name}: features have dimension {task.train.dim} but backbone {bb.spec!r} embeds "
                            f"to {bb.embed_dim}")
        gen = torch.Generator().manual_seed(int(task.seed))
        extra = self._prepare(task, gen)
        design = self._design()
        classnames = list(task.classnames)
        learner = self._build_learner(classnames, self._initial_vectors(design, len(classnames), gen))
        meta_net = self._meta_net(bb.embed_dim, gen) if self.is_conditional() else None
        scale = float(task.logit_scale)
        shots = int(torch.bincount(task.train.labels).max())
        schedule = self._schedule(shots)

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self._loss(learner, meta_net, x, y, scale)

        params = list(learner.parameters()) + ([] if meta_net is None else list(meta_net.parameters()))
        with frozen(bb.model):
            history = train_loop(params, loss_fn, task.train, schedule, gen, self.tower_.device,
                                 amp=self.config.amp, name=self.name)
        self.vectors_ = learner.export()
        self.meta_net_ = meta_net
        self.classnames_, self.scale_, self.dim_ = classnames, scale, bb.embed_dim
        self.history_ = history
        self.extra_meta_ = {**extra, "backbone": {"spec": bb.spec, "fingerprint": bb.fingerprint},
                            "epochs": schedule.epochs, "steps": len(history),
                            "final_loss": history[-1] if history else None}
        self._learner = learner
        self.text_ = None if meta_net is not None else self._class_features()
        self.fitted_ = True
        return self

    def _batch_logits(self, learner: PromptLearner, meta_net: nn.Module | None, x: torch.Tensor,
                      scale: float) -> torch.Tensor:
        """Logits [B, C] of features x [B, D] (first recipe)."""
        if meta_net is None:
            text = F.normalize(learner()[0].float(), dim=-1)
            return scale * x.float() @ text.T
        text = F.normalize(learner(meta_net(x.float()))[:, 0].float(), dim=-1)  # [B, C, D]
        return scale * torch.einsum("bd,bcd->bc", x.float(), text)

    def _current_learner(self) -> PromptLearner:
        if self._learner is None:
            self._learner = self._build_learner(self.classnames_, self.vectors_)
        return self._learner

    @torch.no_grad()
    def _class_features(self) -> torch.Tensor:
        """L2-normalised text features [C, D] (float32, CPU) of the current class names."""
        return F.normalize(self._current_learner()()[0].float(), dim=-1).cpu()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        check_features(features, self.dim_)
        if self.text_ is not None:
            return self.scale_ * features.float() @ self.text_.to(features.device).T
        self._require_tower("CoCoOp-style logits (per-image prompts)")
        learner, dev = self._current_learner(), self.tower_.device
        out = []
        with torch.no_grad():
            for x in features.split(max(1, int(getattr(self.config, "eval_batch_size", 64)))):
                out.append(self._batch_logits(learner, self.meta_net_, x.to(dev), self.scale_).to(features.device))
        return torch.cat(out) if out else torch.zeros(0, len(self.classnames_), device=features.device)

    def exportable_head(self) -> nn.Module:
        """The learned prompts' class text features as a fixed head (the image encoder is the base one).

        Raises:
            ExportError: conditional prompts (CoCoOp's meta-net) change with every image: no fixed head.
        """
        self._check_fitted()
        if self.is_conditional() or self.text_ is None:
            raise ExportError(f"{self.name} conditions its prompts on each image (a meta-net runs the text tower per "
                              "image at inference), so it has no fixed head to export; CoOp/KgCoOp/ATPrompt on coop "
                              "do")
        return CosineHead(self.text_, self.scale_)

    def for_classes(self, classnames: list[str], text_weights: torch.Tensor | None = None) -> "PromptMethod":
        """The same learned prompts over other class names (base-to-new); needs the attached backbone (the
        new classes' `text_weights` are not needed: the prompts encode the names).

        Raises:
            ConfigError: class-specific contexts (one per fitted class) cannot be moved to other classes.
        """
        self._check_fitted()
        if any(v.ndim == 3 for v in self.vectors_.values()):
            raise ConfigError(f"{self.name} with class-specific contexts (csc=True) cannot classify other classes")
        self._require_tower("classifying new class names")
        new = type(self)(self.config)
        new.backbone_, new.tower_ = self.backbone_, self.tower_
        new.vectors_, new.meta_net_, new.extra_meta_ = self.vectors_, self.meta_net_, dict(self.extra_meta_)
        new._after_load()
        new.classnames_, new.scale_, new.dim_ = list(classnames), self.scale_, self.dim_
        new.history_ = getattr(self, "history_", [])
        new.text_ = None if self.meta_net_ is not None else new._class_features()
        new.fitted_ = True
        return new

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"vectors.{k}": v for k, v in self.vectors_.items()}
        if self.meta_net_ is not None:
            state.update({f"meta_net.{k}": v.detach().cpu() for k, v in self.meta_net_.state_dict().items()})
        if self.text_ is not None:
            state["text_features"] = self.text_
        return state

    def fitted_meta(self) -> dict[str, Any]:
        return {**self.extra_meta_, "classnames": self.classnames_, "scale": self.scale_, "dim": self.dim_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.vectors_ = {k[len("vectors."):]: v for k, v in state.items() if k.startswith("vectors.")}
        mn = {k[len("meta_net."):]: v for k, v in state.items() if k.startswith("meta_net.")}
        self.classnames_, self.scale_, self.dim_ = list(meta["classnames"]), float(meta["scale"]), int(meta["dim"])
        self.extra_meta_ = {k: v for k, v in meta.items() if k not in ("classnames", "scale", "dim")}
        self.text_ = state.get("text_features")
        self.meta_net_ = None
        if mn:
            hidden, dim = mn["0.weight"].shape
            width = mn["2.weight"].shape[0]
            self.meta_net_ = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, width))
            self.meta_net_.load_state_dict(mn)
        self.history_ = []
        self._after_load()

    def _after_load(self) -> None:
        """Restore subclass state from `extra_meta_` (e.g. ATPrompt's attributes)."""
