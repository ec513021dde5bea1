"""`DeepPromptMethod`: the shared body of the deep vision-language prompt learners (`maple`, `promptsrc`).

Both towers get learned tokens in their first `depth` layers: the text prompt's context tokens (block 0) and, before
each block i = 1..depth-1, a fresh set replacing them (`TextTower.encode(deep=...)`); the image sequence gets n tokens
appended after the patches, replaced the same way (`ImageTower`). The frozen CLIP runs forward/backward on the shot
images, so training goes through the image-side engine (`kshot.tuning.engine.train_encoders`: streamed seeded crops,
SGD + Dassl's warm-up/cosine schedule here, bf16 autocast on CUDA, optional gradient checkpointing).

A subclass creates its trainable parameters (`_build`) and says how they become text/visual prompts (`_prompts`) and
the loss (`_loss`). After training the *effective* prompts are exported — the text context groups, the deeper text
prompts and the visual prompts of every layer (MaPLe's coupling layers already applied) — so the artifact needs
no subclass-specific module to classify, move to other class names (`for_classes`) or build the tuned encoder; it
also keeps every trainable tensor of the last step (`trainable.*`), from which `init=<run folder>` continues training.

Features: like CLIP-LoRA (`trains_encoders = ('image', 'text')`), `logits(features)` takes features of the *prompted*
image encoder, `tuned_backbone(base)` (a `Backbone` with its own fingerprint, so its features are cached apart);
`kshot predict` does this itself.

ATPrompt on deep prompts (`attributes`): the text prompt becomes ATPrompt's [a×m][ATTR₁]…[ctx×n][CLASS][.] and the
deep text prompts replace the class soft tokens ctx (as `zhengli97/ATPrompt`'s MaPLe/PromptSRC variants do: the
attribute tokens are learned at the input layer only).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kshot.backbones.base import Backbone, make_fingerprint
from kshot.config import param
from kshot.errors import CheckpointError, ConfigError, DataError
from kshot.methods.base import CosineHead, Method, Task, load
from kshot.methods.checks import check_features, check_task
from kshot.methods.prompting.layout import CLASS, Learned, Piece, attribute_pieces, build_layout
from kshot.methods.prompting.learner import GroupSpec, PromptLearner, frozen, normal_vectors, word_vectors
from kshot.methods.prompting.tokens import content_ids, specials
from kshot.methods.prompting.tower import TextTower
from kshot.methods.prompting.vision import ImageTower
from kshot.tuning.engine import EngineConfig, check_shot_files, steps_per_epoch, train_encoders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeepPromptConfig:
    """Settings shared by the deep prompt learners (subclasses set the official defaults).

    Attributes:
        n_ctx: text context tokens per layer.
        ctx_init: words initialising the first-layer text context (the first n_ctx tokens; the remaining words stay
            fixed in the prompt, as the official code's "a photo of a" with n_ctx 2); "" = N(0, 0.02²).
        depth: layers of the text tower that get prompts (1 = the input only).
        epochs, batch_size, lr, momentum, weight_decay, warmup_epochs, warmup_lr: SGD + Dassl schedule.
        crop_scale: RandomResizedCrop area range of the shots (Dassl's random_resized_crop).
        amp: 'bf16' | 'fp16' | 'off' on CUDA; grad_checkpointing: recompute block activations in backward.
        num_workers: decoding processes; progress: progress bar.
        init: a `kshot fit` run folder (artifact) of the same method and backbone whose trainable tensors (its last
            step, before PromptSRC's aggregation) start this fit (continue training it; "" = the initialisation
            above).
        checkpoint_every, checkpoint_dir: a resumable training checkpoint every N steps into this folder (0 / "" =
            none); a fit with the same folder resumes from its last one (`DeepPromptMethod.extra_state` included).
        attributes: ATPrompt attribute words (empty = plain prompts); n_att: soft tokens before each (None = n_ctx);
            attr_init_std: their init std (ATPrompt 0.01).
    """

    n_ctx: int = param(2, ge=1)
    ctx_init: str = "a photo of a"
    depth: int = param(9, ge=1)
    epochs: int = param(5, ge=0)
    batch_size: int = param(4, ge=1)
    lr: float = param(0.0035, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0)
    warmup_epochs: int = param(1, ge=0)
    warmup_lr: float = param(1e-5, ge=0)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    amp: str = "bf16"
    grad_checkpointing: bool = False
    num_workers: int = param(0, ge=0)
    progress: bool = False
    init: str = ""
    checkpoint_every: int = param(0, ge=0)
    checkpoint_dir: str = ""
    attributes: tuple[str, ...] = ()
    n_att: int | None = param(None, ge=1)
    attr_init_std: float = param(0.01, ge=0)


class PromptedCLIP(nn.Module):
    """A frozen CLIP whose `encode_image` runs with fixed visual prompts (the tuned encoder of a deep method);
    `encode_text` is the base model's."""

    def __init__(self, clip: nn.Module, visual: Sequence[torch.Tensor]):
        super().__init__()
        self.clip = clip
        self.visual_prompts = nn.ParameterList([nn.Parameter(v.detach().clone(), requires_grad=False)
                                                for v in visual])
        self._tower = ImageTower(clip)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        f = self._tower.encode(images, list(self.visual_prompts))
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)


class DeepPromptMethod(Method):
    """Base of MaPLe/PromptSRC; subclasses implement `_build`, `_prompts` and may override `_loss`/`_after_epoch`."""

    needs_backbone: ClassVar[bool] = True
    supports_empty_classes: ClassVar[bool] = True
    trains_encoders: ClassVar[tuple[str, ...]] = ("image", "text")
    quick_overrides: ClassVar[dict[str, Any]] = {"depth": 3, "epochs": 5, "batch_size": 8, "lr": 0.02,
                                                 "crop_scale": (0.5, 1.0)}

    def __init__(self, config: Any | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.backbone_: Any = None
        self.meta_: dict[str, Any] = {}
        self.trainable_: dict[str, torch.Tensor] = {}

    # ---- subclass hooks -------------------------------------------------------------------------------------
    def vision_depth(self) -> int:
        """Layers of the image tower that get prompts."""
        return int(self.config.depth)

    def vision_ctx(self) -> int:
        return int(self.config.n_ctx)

    def _build(self, tower: TextTower, image: ImageTower, generator: torch.Generator) -> nn.Module:
        """The trainable parameters (a module; its parameters are all optimised)."""
        raise NotImplementedError

    def _prompts(self, params: nn.Module, ctx: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(deeper text prompts [depth-1 × [n_ctx, Wt]], visual prompts [vision_depth × [n_v, Wv]]) from the
        trainable module and the first-layer text context ctx [n_ctx, Wt]."""
        raise NotImplementedError

    def _prepare(self, task: Task) -> None:
        """Fit-time state needed by `_loss` (PromptSRC's frozen-model features)."""

    def attributes(self) -> tuple[str, ...]:
        """ATPrompt attribute words of the text prompt (empty: plain MaPLe/PromptSRC prompts)."""
        return tuple(self.config.attributes)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, text: torch.Tensor, image: torch.Tensor,
              images: torch.Tensor) -> torch.Tensor:
        """Per-sample losses [B] from logits [B, C], labels, normalised text [C, D] / image [B, D] features and the
        input images; default cross-entropy (MaPLe)."""
        return F.cross_entropy(logits, y, reduction="none")

    def _after_epoch(self, epoch: int, exported: dict[str, torch.Tensor]) -> None:
        """Called after each epoch (1-based) with the current exported prompts (PromptSRC's aggregation)."""

    def _final(self, exported: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The prompts to keep (default: the last iterate)."""
        return exported

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Running training state beyond the trainable tensors (PromptSRC's prompt aggregate), saved with the
        engine's resumable checkpoints; default none."""
        return {}

    def load_extra(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `extra_state()` from a checkpoint when a fit resumes (`state` may be empty)."""

    # ---- validation of the design against the model ----------------------------------------------------------
    def _check_model(self, backbone: Any) -> tuple[TextTower, ImageTower]:
        if backbone is None or not getattr(backbone, "has_text", False):
            raise ConfigError(f"{self.name} prompts both CLIP towers: it needs a CLIP backbone with a text tower "
                              f"({getattr(backbone, 'spec', None)!r} has none)")
        tower, image = TextTower(backbone.model), ImageTower(backbone.model)
        c = self.config
        for what, depth, layers in (("text", int(c.depth), tower.num_layers),
                                    ("vision", self.vision_depth(), image.num_layers)):
            if depth < 1 or depth > layers:
                raise ConfigError(f"{self.name}: {what} prompt depth {depth} is beyond the {what} tower's {layers} "
                                  f"layers of {backbone.spec!r} (allowed 1..{layers})")
        return tower, image

    def preflight(self, classnames: Sequence[str], backbone: Any = None, *, images: bool = False) -> None:
        """`Method.preflight`, then the prompt depths against the towers and every class's text prompt against the
        backbone's context (nothing is trained)."""
        super().preflight(classnames, backbone, images=images)
        tower, _ = self._check_model(backbone)
        tok = backbone.tokenizer
        try:
            pieces, groups, _ = self._text_design(tower, tok)
            build_layout([pieces], list(classnames), tok, specials(tok), {g.name: g.size for g in groups},
                         context_length=tower.context_length, trim=tower.can_trim)
        except (ConfigError, DataError) as e:
            raise type(e)(f"{self.name}: {e}" if not str(e).startswith(self.name) else str(e)) from None

    # ---- text prompts ---------------------------------------------------------------------------------------
    def _text_design(self, tower: TextTower, tokenizer: Any) -> tuple[list[Piece], list[GroupSpec], dict[str, Any]]:
        """Recipe pieces, groups and their init: [ATTR block][ctx × n][rest of ctx_init][CLASS][.]."""
        c = self.config
        init_ids = content_ids(tokenizer, c.ctx_init, what="ctx_init") if c.ctx_init.strip() else []
        n = int(c.n_ctx)
        words = init_ids[:n] if init_ids and n <= len(init_ids) else []
        rest = tuple(init_ids[n:]) if words else ()
        suffix = tuple(content_ids(tokenizer, ".", what="prompt suffix"))
        pieces: list[Piece] = [Learned("ctx", n, 0, tuple(words))] + ([rest] if rest else []) + [CLASS, suffix]
        groups = [GroupSpec("ctx", n)]
        init: dict[str, Any] = {"ctx": ("words", words) if words else ("normal", 0.02)}
        attrs = tuple(" ".join(a.split()) for a in self.attributes())
        if attrs:
            if any(not a for a in attrs):
                raise ConfigError(f"{self.name}: attribute words must be non-empty, got {list(self.attributes())}")
            n_att = n if c.n_att is None else int(c.n_att)
            ids = [content_ids(tokenizer, a, what="attribute word") for a in attrs]
            names = [f"attr{i}" for i in range(len(ids))]
            pieces = attribute_pieces(ids, n_att, names) + pieces
            groups = [GroupSpec(g, n_att) for g in names] + groups
            init |= {g: ("normal", float(c.attr_init_std)) for g in names}
        fixed = 2 + sum(g.size for g in groups) + len(rest) + len(suffix)
        if fixed >= tower.context_length:
            raise ConfigError(f"{self.name}: the prompt's {fixed} fixed and learned tokens leave no room for a class "
                              f"name in the text encoder's {tower.context_length} tokens")
        return pieces, groups, init

    def _learner(self, tower: TextTower, classnames: list[str], vectors: dict[str, torch.Tensor]) -> PromptLearner:
        tok = self.backbone_.tokenizer
        pieces, groups, _ = self._text_design(tower, tok)
        layout = build_layout([pieces], classnames, tok, specials(tok), {g.name: g.size for g in groups},
                              context_length=tower.context_length, trim=tower.can_trim)
        learner = PromptLearner(tower, layout, groups, vectors)
        ctx_at = torch.nonzero((layout.slot[0] >= layout.offsets["ctx"])
                               & (layout.slot[0] < layout.offsets["ctx"] + int(self.config.n_ctx))).flatten()
        self.deep_start_ = int(ctx_at[0])
        return learner

    def _initial_vectors(self, tower: TextTower, generator: torch.Generator) -> dict[str, torch.Tensor]:
        _, groups, init = self._text_design(tower, self.backbone_.tokenizer)
        out = {}
        for g in groups:
            kind, arg = init[g.name]
            out[g.name] = word_vectors(tower, list(arg)) if kind == "words" else normal_vectors(
                (g.size, tower.width), float(arg), generator)
        return out

    # ---- contract ---------------------------------------------------------------------------------------------
    def fit(self, task: Task) -> "DeepPromptMethod":
        c = self.config
        check_task(task, needs_shots=True, needs_text=False, supports_empty_classes=True, method=self.name)
        bb = task.backbone
        tower, image = self._check_model(bb)
        images = (task.images or {}).get("train")
        if images is None or len(images) != len(task.train):
            raise ConfigError(f"{self.name} trains through the image encoder: Task.images['train'] must hold the "
                              f"{len(task.train)} shot files (aligned with task.train)")
        self.backbone_ = bb
        classnames = list(task.classnames)
        gen = torch.Generator().manual_seed(int(task.seed))
        learner = self._learner(tower, classnames, self._initial_vectors(tower, gen))  # validates the class names
        check_shot_files(images, self.name)
        params_module = self._build(tower, image, gen).to(bb.device)
        if c.init:
            self._start_from(c.init, learner, params_module)
        self._prepare(task)
        scale = float(task.logit_scale)
        n = len(images)
        engine = EngineConfig(iters=int(c.epochs) * steps_per_epoch(n, int(c.batch_size)),
                              batch_size=int(c.batch_size), lr=float(c.lr), weight_decay=float(c.weight_decay),
                              optimizer="sgd", momentum=float(c.momentum), schedule="dassl",
                              warmup_epochs=int(c.warmup_epochs), warmup_lr=float(c.warmup_lr),
                              crop_scale=tuple(c.crop_scale), amp=c.amp, grad_checkpointing=c.grad_checkpointing,
                              num_workers=int(c.num_workers), seed=int(task.seed), progress=c.progress,
                              checkpoint_every=int(c.checkpoint_every), checkpoint_dir=c.checkpoint_dir)

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.batch_loss(learner, params_module, image, x, y, scale)

        def after_step(step: int, epoch_end: bool) -> None:
            if epoch_end:
                self._after_epoch((step + 1) // steps_per_epoch(n, engine.batch_size),
                                  self._export(learner, params_module))

        params = list(learner.parameters()) + list(params_module.parameters())
        with frozen(bb.model):
            history = train_encoders(params, loss_fn, images, task.train.labels, bb.preprocess,
                                     bb.preprocess_cfg.image_size, engine, bb.device, model=bb.model,
                                     name=self.name, after_step=after_step, extra_state=self.extra_state,
                                     load_extra=self.load_extra)
        bb.model.eval()
        self.prompts_ = self._final(self._export(learner, params_module))
        self.trainable_ = {k: t.detach().float().cpu().clone() for k, t in _trainable(learner, params_module).items()}
        self.classnames_, self.scale_, self.dim_ = classnames, scale, int(bb.embed_dim)
        self.history_ = history
        self.meta_ = {"backbone": {"spec": bb.spec, "fingerprint": bb.fingerprint}, "epochs": int(c.epochs),
                      "steps": len(history), "final_loss": history[-1] if history else None,
                      "deep_start": self.deep_start_, "attributes": list(self.attributes())}
        self.text_ = self._class_features(classnames)
        self.fitted_ = True
        return self

    def _start_from(self, run: str, learner: PromptLearner, params_module: nn.Module) -> None:
        """Copy the trainable tensors of the fitted artifact `run` into this fit's (`init`)."""
        src = load(run)
        if src.name != self.name:
            raise ConfigError(f"{self.name}: init={run!r} holds a {src.name} artifact; it must be a {self.name} run")
        want = src.meta_.get("backbone", {}).get("fingerprint")
        if want and want != self.backbone_.fingerprint:
            raise CheckpointError(f"{self.name}: init={run!r} was fitted on backbone {src.backbone_spec!r}; this fit "
                                  f"uses {self.backbone_.spec!r} (another fingerprint)")
        have, mine = src.trainable_, _trainable(learner, params_module)
        if not have:
            raise CheckpointError(f"{self.name}: init={run!r} holds no trainable tensors (saved by an older kshot); "
                                  "refit it")
        if set(have) != set(mine):
            raise ConfigError(f"{self.name}: init={run!r} has trainable tensors {sorted(have)}, this configuration "
                              f"{sorted(mine)} (depth, n_ctx or attributes differ)")
        for k, p in mine.items():
            if have[k].shape != p.shape:
                raise ConfigError(f"{self.name}: init={run!r}: tensor {k} has shape {tuple(have[k].shape)}, this "
                                  f"configuration {tuple(p.shape)}")
        with torch.no_grad():
            for k, p in mine.items():
                p.copy_(have[k].to(p))

    def batch_loss(self, learner: PromptLearner, params_module: nn.Module, image: ImageTower, x: torch.Tensor,
                   y: torch.Tensor, scale: float) -> torch.Tensor:
        """Per-sample training losses [B] of preprocessed images x [B, 3, S, S] with labels y [B]."""
        deep_text, visual = self._prompts(params_module, learner.vectors["ctx"])
        text = F.normalize(_upcast(learner(deep=deep_text, deep_start=self.deep_start_)[0]), dim=-1)
        img = F.normalize(_upcast(image.encode(x, visual)), dim=-1)
        return self._loss(scale * img @ text.T, y, text, img, x)

    def _export(self, learner: PromptLearner, params_module: nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            deep_text, visual = self._prompts(params_module, learner.vectors["ctx"])
            out = {f"vectors.{k}": v.clone() for k, v in learner.export().items()}
            out |= {f"text_deep.{i}": t.detach().float().cpu().clone() for i, t in enumerate(deep_text)}
            out |= {f"visual.{i}": t.detach().float().cpu().clone() for i, t in enumerate(visual)}
        return out

    def _split(self) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        p = self.prompts_
        vec = {k[len("vectors."):]: v for k, v in p.items() if k.startswith("vectors.")}
        deep = [p[f"text_deep.{i}"] for i in range(sum(k.startswith("text_deep.") for k in p))]
        vis = [p[f"visual.{i}"] for i in range(sum(k.startswith("visual.") for k in p))]
        return vec, deep, vis

    @torch.no_grad()
    def _class_features(self, classnames: list[str]) -> torch.Tensor:
        """L2-normalised text features [C, D] (float32, CPU) of `classnames` with the learned prompts."""
        if self.backbone_ is None:
            raise ConfigError(f"{self.name}: new class names need the backbone; after kshot.methods.load(path) call "
                              f"method.attach_backbone(load_backbone({self.backbone_spec!r}))")
        tower = TextTower(self.backbone_.model)
        vec, deep, _ = self._split()
        learner = self._learner(tower, classnames, vec)
        dev = tower.device
        out = learner(deep=[d.to(dev) for d in deep], deep_start=self.deep_start_)[0]
        return F.normalize(out.float(), dim=-1).cpu()

    @property
    def backbone_spec(self) -> str | None:
        return self.meta_.get("backbone", {}).get("spec")

    # ---- interpretation (`kshot.methods.prompting.interpret.explain`) -----------------------------------------
    @property
    def vectors_(self) -> dict[str, torch.Tensor]:
        """Learned text vectors: the input-layer groups (ctx, ATPrompt's attr*) and the deeper text prompts as
        'text_layer{i}' (they replace the context in block i's input: residual-stream vectors, so their nearest
        token embeddings are only indicative)."""
        vec, deep, _ = self._split()
        return {**vec, **{f"text_layer{i + 1}": d for i, d in enumerate(deep)}}

    @property
    def extra_meta_(self) -> dict[str, Any]:
        return self.meta_

    def _require_tower(self, what: str) -> TextTower:
        if self.backbone_ is None:
            raise ConfigError(f"{self.name}: {what} needs the backbone's text tower; call method.attach_backbone(...)"
                              " or use kshot.methods.prompting.load_prompt_method(path)")
        return TextTower(self.backbone_.model)

    def attach_backbone(self, backbone: Any, *, strict: bool = True) -> "DeepPromptMethod":
        """Use `backbone` (needed after `load` for `for_classes` and `tuned_backbone()`); fingerprint-checked."""
        self._check_model(backbone)
        want = self.meta_.get("backbone", {}).get("fingerprint")
        if strict and want and backbone.fingerprint != want:
            raise CheckpointError(f"{self.name} was fitted on backbone {self.backbone_spec!r} (fingerprint {want}); "
                                  f"{backbone.spec!r} has fingerprint {backbone.fingerprint}")
        self.backbone_ = backbone
        return self

    def tuned_backbone(self, base: Backbone | None = None) -> Backbone:
        """`base` (default: the attached backbone) whose image encoder runs with the learned visual prompts; its own
        fingerprint (base fingerprint + prompts), so its features are cached apart."""
        self._check_fitted()
        base = base or self.backbone_
        if base is None:
            raise ConfigError(f"{self.name}: attach_backbone(base) first, or pass the base backbone")
        _, _, vis = self._split()
        model = PromptedCLIP(base.model, [v.to(base.device) for v in vis]).eval()
        digest = hashlib.sha256(b"".join(v.float().numpy().tobytes() for v in vis)).hexdigest()[:16]
        fp = make_fingerprint(f"{base.arch}+{self.name}", f"{base.fingerprint}:{digest}", base.preprocess_cfg)
        return replace(base, spec=f"{base.spec}+{self.name}", model=model, fingerprint=fp)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, D] of `tuned_backbone(base)` (L2-normalised) -> scale · cos with the prompted text features."""
        self._check_fitted()
        check_features(features, self.dim_)
        return self.scale_ * features.float() @ self.text_.to(features.device).T

    def exportable_head(self) -> nn.Module:
        """The prompted text features as a fixed head; `kshot export` puts it behind `tuned_backbone(base)` (the
        image encoder with the learned visual prompts)."""
        self._check_fitted()
        return CosineHead(self.text_, self.scale_)

    def for_classes(self, classnames: list[str], text_weights: torch.Tensor | None = None) -> "DeepPromptMethod":
        """The same prompts over other class names (base-to-new); needs the attached backbone."""
        self._check_fitted()
        new = type(self)(self.config)
        new.backbone_, new.prompts_, new.meta_ = self.backbone_, self.prompts_, dict(self.meta_)
        new.trainable_ = self.trainable_
        new.deep_start_, new.history_ = self.deep_start_, getattr(self, "history_", [])
        new.classnames_, new.scale_, new.dim_ = list(classnames), self.scale_, self.dim_
        new.text_ = new._class_features(list(classnames))
        new.fitted_ = True
        return new

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The kept prompts, every trainable tensor of the last step (`trainable.<name>`: what `init` continues
        from; MaPLe's coupling layers included) and the class text features."""
        return {**self.prompts_, **{f"trainable.{k}": v for k, v in self.trainable_.items()},
                "text_features": self.text_}

    def fitted_meta(self) -> dict[str, Any]:
        return {**self.meta_, "classnames": self.classnames_, "scale": self.scale_, "dim": self.dim_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if "text_features" not in state:
            raise CheckpointError(f"{self.name} artifact has no text_features")
        self.text_ = state["text_features"].float()
        self.prompts_ = {k: v for k, v in state.items() if k != "text_features" and not k.startswith("trainable.")}
        self.trainable_ = {k[len("trainable."):]: v for k, v in state.items() if k.startswith("trainable.")}
        self.classnames_, self.scale_, self.dim_ = list(meta["classnames"]), float(meta["scale"]), int(meta["dim"])
        self.meta_ = {k: v for k, v in meta.items() if k not in ("classnames", "scale", "dim")}
        self.deep_start_ = int(self.meta_.get("deep_start", 1))
        self.history_, self.backbone_ = [], None
        if len(self.classnames_) != self.text_.shape[0]:
            raise DataError(f"{self.name} artifact: {len(self.classnames_)} class names for "
                            f"{self.text_.shape[0]} text features")


def _trainable(learner: PromptLearner, params_module: nn.Module) -> dict[str, nn.Parameter]:
    """Every trainable tensor of a deep-prompt fit by name: `learner.<group>` (input-layer text vectors) and
    `params.<name>` (the subclass's module: deeper prompts, MaPLe's coupling layers)."""
    return ({f"learner.{k}": p for k, p in learner.vectors.items()}
            | {f"params.{k}": p for k, p in params_module.named_parameters()})


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Half/bf16 (autocast) features to float32 for the loss; float64 stays float64 (exact parity tests)."""
    return t if t.dtype == torch.float64 else t.float()
