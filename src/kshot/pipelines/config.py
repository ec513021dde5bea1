"""Challenge pipelines as configuration: frozen dataclasses (read from YAML/TOML by `kshot.pipelines.configfile`).

A pipeline names its backbones, default prompts and an ordered mapping of stages; `output` names the stage whose
ranking becomes `result.txt`. Stage kinds (key `type`):

| type | what it does | fields |
|---|---|---|
| `method` | a registered method on one backbone's cached features, over a class group | `MethodStageConfig` |
| `ensemble` | weighted sum of member stages' logits (seed 004: 0.6 ViT + 0.4 RN101) | `EnsembleStageConfig` |
| `cascade` | a first ranking; steps re-rank rows whose top-1 (or probed domain) is in a group | `CascadeStageConfig` |
| `specialist` | an image model fine-tuned on one group's shots (seed 004: dogs) | `SpecialistConfig` |

A stage may only refer to stages defined before it (so there are no cycles). Class groups are strings parsed by
`kshot.pipelines.groups` ("all", "seen", "unseen", "domain:Thu-dog", "ids:244-373").

A `method` stage whose method trains the image encoder (`Method.trains_encoders` holds 'image': `clip_lora`) fits on
the shot images and leaves a *tuned backbone*: a later method stage may name that stage as its `backbone`, so its
features and text classifier come from the tuned encoders (the 2024 winning recipe: CLIP-LoRA, then a Tip-Adapter
cache on the tuned features; `configs/pipelines/clip_lora_tip.yaml`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kshot.errors import ConfigError
from kshot.methods import METHODS, create
from kshot.pipelines.groups import parse_group
from kshot.text.templates import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

#: Folder of the shipped pipeline configs (package data; `configs/` at the repository root links here).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "pipelines"
SHOT_PICKS = ("seeded", "first")
NORMALIZERS = ("none", "softmax", "log_softmax")


@dataclass(frozen=True)
class PromptConfig:
    """How a stage's text classifier is prompted.

    Attributes:
        templates: templates for every class (`{}` = class name). Default CLIP's "a photo of a {}.".
        domains: domain -> templates, overriding `templates` for classes of that domain.
        challenge_domains: start `domains` from `kshot.text.CHALLENGE_DOMAIN_TEMPLATES` (seed 002's per-domain
            sentences); explicit `domains` entries win.
        file: a prompt JSON file or a folder of `<Domain>_prompt.json` files (`kshot.text.load_prompt_file`),
            relative to the config file; its per-domain and per-class prompts override the fields above.
    """

    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    domains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    challenge_domains: bool = False
    file: str | None = None

    def key(self) -> str:
        """A stable identity (used to share text classifiers between stages)."""
        doms = sorted((k, tuple(v)) for k, v in self.domains.items())
        return repr((tuple(self.templates), doms, self.challenge_domains, self.file))


@dataclass(frozen=True)
class MethodStageConfig:
    """A registered method on one backbone.

    Attributes:
        method: registry name (`kshot methods`).
        backbone: alias from the pipeline's `backbones`, or the name of an earlier stage whose method trains the
            image encoder (its tuned backbone).
        classes: class group the method scores (e.g. "seen" for a probe that needs shots, "all" for InMaP).
        params: config overrides of the method (its config dataclass names the fields).
        prompts: text prompts; None = the pipeline's `prompts`.
        augment: augmentation policy of the shots' cached views ("none", "tip", "seed002").
        views: number of augmented views (0 with "none").
        seed: fit seed; None = the pipeline seed.
        crossval: choose the method's validation-tuned hyper-parameters by cross-validation within the shots
            (`kshot.pipelines.crossval`); False = the method's documented defaults.
    """

    method: str
    backbone: str
    classes: str = "all"
    params: Mapping[str, Any] = field(default_factory=dict)
    prompts: PromptConfig | None = None
    augment: str = "none"
    views: int = 0
    seed: int | None = None
    crossval: bool = True


@dataclass(frozen=True)
class EnsembleMember:
    """One member of an ensemble: a stage name and its weight."""

    stage: str
    weight: float = 1.0


@dataclass(frozen=True)
class EnsembleStageConfig:
    """Weighted sum of member logits: Σ w_i · g(logits_i) over `classes` (every member must score them).

    Attributes:
        members: the stages and weights (seed 004: LP++ ViT-B/32 0.6, RN101 0.4).
        classes: class group; None = the first member's classes.
        normalize: g: "none" (raw logits, as seed 004), "softmax" or "log_softmax" per member.
    """

    members: tuple[EnsembleMember, ...]
    classes: str | None = None
    normalize: str = "none"


ROUTE_BY = ("top1", "domain_probe")


@dataclass(frozen=True)
class Route:
    """A cascade step: the rows `route_by` assigns to the group `when` are re-ranked by `stage`.

    Attributes:
        when: class group of the step.
        stage: the stage that re-ranks the caught rows.
        route_by: "top1" (default; seed 004): rows whose current top-1 class is in `when`. "domain_probe": rows
            whose domain, predicted by a linear probe fitted on the shots' domains (`kshot.pipelines.router`), is
            one of `when`'s domains; `when` must then be a single `domain:A[,B]` term.
        probe_backbone: backbone alias of the probe's features (domain_probe only); None = the pipeline's only one.
        probe_features: candidate feature views of the probe, the best chosen by cross-validation within the shots:
            "embedding" (the cached image features) and/or "tokens:<k>" (mean and std of the image tower's tokens
            after block k). Default ("embedding",).
    """

    when: str
    stage: str
    route_by: str = "top1"
    probe_backbone: str | None = None
    probe_features: tuple[str, ...] = ("embedding",)


@dataclass(frozen=True)
class CascadeStageConfig:
    """A router: `first` ranks every class; each step re-ranks the rows its `when` group catches.

    Re-ranked rows list the step stage's classes first (in its order), then the other classes in the previous order,
    so every row keeps a full ranking and top-5 always has 5 distinct ids.
    """

    first: str
    steps: tuple[Route, ...] = ()


@dataclass(frozen=True)
class SpecialistConfig:
    """An image model fine-tuned on the shots of one class group, scoring only that group.

    Defaults follow seed 004's `train_dog.py` (Daheilou/jittor-few-shot-clip-B) where it has a value: AdamW lr 1e-3
    on the new head only, cosine period 15 epochs down to 1e-5, 31 epochs, batch 32. kshot additions: the number of
    epochs kept is chosen by cross-validation within the shots (`cv_folds`), and the augmentation is
    RandomResizedCrop + flip at the model's input size (seed 004: resize 320, random crop 280, flip).

    Attributes:
        model: backbone alias of the pipeline or a backbone spec ("timm:convnextv2_base.fcmae_ft_in1k", a CLIP
            spec whose image tower is used).
        classes: the group it specialises in (e.g. "domain:Thu-dog").
        train: "head" (seed 004: encoder frozen) or "all" (encoder fine-tuned at `encoder_lr`).
        head: "linear" (seed 004) or "cosine" (scale · cos, temperature `head_scale`).
        head_init: "random" (seed 004's new nn.Linear), "prototype" (class means of the shots' features, weight
            imprinting, Qi et al. CVPR'18) or "text" (CLIP text classifier; needs a CLIP model).
        head_scale: cosine-head temperature; None = the model's logit scale for CLIP, else 30 (kshot's choice).
        epochs: training epochs (seed 004: 31).
        lr: head learning rate (seed 004: 1e-3). encoder_lr: with train="all" (kshot's choice 1e-5).
        eta_min, t_max: cosine schedule floor and period in epochs (seed 004: 1e-5 and 15; None = `epochs`).
        weight_decay: AdamW weight decay (PyTorch's default 0.01; seed 004 passed none).
        batch_size: images per step (seed 004: 32).
        crop_scale: RandomResizedCrop area range; flip: random horizontal flip.
        cv_folds: folds of the shots used to pick the epoch count (0 or 1 = keep the last epoch, as seed 004).
        seed: training seed; None = the pipeline seed.
    """

    model: str
    classes: str
    train: str = "head"
    head: str = "linear"
    head_init: str = "random"
    head_scale: float | None = None
    epochs: int = 31
    lr: float = 1e-3
    encoder_lr: float = 1e-5
    eta_min: float = 1e-5
    t_max: int | None = 15
    weight_decay: float = 0.01
    batch_size: int = 32
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    cv_folds: int = 2
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [(self.train in ("head", "all"), "train must be 'head' or 'all'"),
                  (self.head in ("linear", "cosine"), "head must be 'linear' or 'cosine'"),
                  (self.head_init in ("random", "prototype", "text"), "head_init must be random|prototype|text"),
                  (self.epochs >= 0, "epochs must be >= 0"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                   "crop_scale must be two numbers in (0, 1], low <= high"),
                  (self.cv_folds >= 0, "cv_folds must be >= 0"), (self.t_max is None or self.t_max >= 1,
                                                                  "t_max must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"specialist: {msg}")


StageConfig = MethodStageConfig | EnsembleStageConfig | CascadeStageConfig | SpecialistConfig
STAGE_TYPES: dict[str, type] = {"method": MethodStageConfig, "ensemble": EnsembleStageConfig,
                                "cascade": CascadeStageConfig, "specialist": SpecialistConfig}


@dataclass(frozen=True)
class PipelineConfig:
    """A whole challenge system.

    Attributes:
        name: short name (shown in reports).
        stages: ordered stage name -> stage config.
        output: the stage whose ranking is submitted.
        backbones: alias -> backbone spec (`kshot.backbones.load_backbone`).
        description: one line for `kshot challenge configs`.
        shots: images per class (the challenge rule: 4).
        seed: shot sampling and fitting seed.
        shot_pick: "seeded" (per-class seeded draw, `kshot.data.fewshot.sample_k_shot`) or "first" (the first K of
            each label in train.txt order, as the official baseline_ft.py).
        allow_fewer: let a class with fewer pool images than `shots` use what it has instead of failing.
        cv_folds: folds within the shots for hyper-parameter choice (4 = leave one shot per class out).
        estimate_per_class: unused pool images per class used only to *estimate* accuracy before submitting.
        prompts: default prompts of the stages that need text.
        degenerate_top5_share: refuse to submit when this share of test images has the same top-5 (the symptom
            of JCLIP issue #2, a non-converged solver); needs --force to override.
        degenerate_top1_share: likewise when one class is top-1 for this share of the images (with >= 10 classes).
        source: the file the config was read from (relative paths resolve against its folder).
    """

    name: str
    stages: Mapping[str, StageConfig]
    output: str
    backbones: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    shots: int = 4
    seed: int = 1
    shot_pick: str = "seeded"
    allow_fewer: bool = False
    cv_folds: int = 4
    estimate_per_class: int = 10
    prompts: PromptConfig = field(default_factory=PromptConfig)
    degenerate_top5_share: float = 0.9
    degenerate_top1_share: float = 0.5
    source: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    def resolve_path(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.base_dir() / path


EMBEDDING = "embedding"
_TOKENS = re.compile(r"^tokens:(\d+)$")


def parse_view(spec: str, where: str = "probe_features") -> int | None:
    """A probe feature view: None for "embedding", the block index k for "tokens:k". ConfigError otherwise."""
    if spec == EMBEDDING:
        return None
    m = _TOKENS.match(str(spec).strip())
    if not m:
        raise ConfigError(f"{where}: unknown probe feature view {spec!r}; use 'embedding' or 'tokens:<block>' "
                          "(e.g. tokens:0)")
    return int(m.group(1))


def validate(cfg: PipelineConfig) -> None:
    """Cross-field checks: references, group syntax, value ranges. Raises ConfigError naming the field."""
    where = f"pipeline {cfg.name!r}" + (f" ({cfg.source})" if cfg.source else "")
    if cfg.shots < 1:
        raise ConfigError(f"{where}: shots must be >= 1, got {cfg.shots}")
    if cfg.shot_pick not in SHOT_PICKS:
        raise ConfigError(f"{where}: shot_pick must be one of {SHOT_PICKS}, got {cfg.shot_pick!r}")
    if cfg.cv_folds < 0 or cfg.estimate_per_class < 0:
        raise ConfigError(f"{where}: cv_folds and estimate_per_class must be >= 0")
    if not cfg.stages:
        raise ConfigError(f"{where}: no stages")
    defined: list[str] = []
    for name, st in cfg.stages.items():
        here = f"{where}, stage {name!r}"
        refs: list[str] = []
        if isinstance(st, MethodStageConfig):
            if st.backbone not in cfg.backbones:
                tuners = [n for n in defined if tunes_image_encoder(cfg.stages[n])]
                if st.backbone not in tuners:
                    raise ConfigError(f"{here}: unknown backbone alias {st.backbone!r}; defined: {list(cfg.backbones)}"
                                      + (f", or the tuned backbone of an earlier stage: {tuners}" if tuners else ""))
            parse_group(st.classes, here)
            _validate_method(st, here)
            if (st.augment == "none") != (st.views == 0):
                raise ConfigError(f"{here}: augment 'none' takes views: 0, any other policy views >= 1")
            if tunes_image_encoder(st) and name in cfg.backbones:
                raise ConfigError(f"{here}: its tuned backbone would share the name of backbone {name!r}; rename "
                                  "the stage")
            if METHODS.get(st.method).trains_encoders and st.views:
                raise ConfigError(f"{here}: {st.method} trains on the shot images (its own augmentation); "
                                  "cached views do not apply (augment: none, views: 0)")
        elif isinstance(st, EnsembleStageConfig):
            if not st.members:
                raise ConfigError(f"{here}: an ensemble needs members")
            if st.normalize not in NORMALIZERS:
                raise ConfigError(f"{here}: normalize must be one of {NORMALIZERS}, got {st.normalize!r}")
            if st.classes is not None:
                parse_group(st.classes, here)
            refs = [m.stage for m in st.members]
        elif isinstance(st, CascadeStageConfig):
            refs = [st.first] + [r.stage for r in st.steps]
            for i, r in enumerate(st.steps):
                _validate_route(cfg, r, f"{here}, step {i} ({r.when!r} -> {r.stage!r})")
        elif isinstance(st, SpecialistConfig):
            parse_group(st.classes, here)
        for r in refs:
            if r not in defined:
                hint = "it is defined later; stages may only use earlier ones" if r in cfg.stages else "no such stage"
                raise ConfigError(f"{here}: refers to stage {r!r}: {hint}")
        defined.append(name)
    if cfg.output not in cfg.stages:
        raise ConfigError(f"{where}: output {cfg.output!r} is not a stage; stages: {list(cfg.stages)}")


def tunes_image_encoder(st: StageConfig) -> bool:
    """True for a method stage whose method trains the image encoder (later stages may use its tuned backbone)."""
    return (isinstance(st, MethodStageConfig) and st.method in METHODS
            and "image" in METHODS.get(st.method).trains_encoders)


def root_backbone(cfg: PipelineConfig, alias: str) -> str:
    """The `backbones` alias a stage's backbone derives from (itself for a pipeline backbone; for a tuned
    backbone, the alias the tuning stage started from)."""
    seen = set()
    while alias not in cfg.backbones and alias in cfg.stages and alias not in seen:
        seen.add(alias)
        st = cfg.stages[alias]
        alias = st.backbone if isinstance(st, MethodStageConfig) else alias
    return alias


def _validate_method(st: MethodStageConfig, where: str) -> None:
    """The stage's method name and parameters, checked before anything is extracted (a typo costs no extraction)."""
    try:
        create(st.method, **dict(st.params))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _validate_route(cfg: PipelineConfig, r: Route, where: str) -> None:
    terms = parse_group(r.when, where)
    if r.route_by not in ROUTE_BY:
        raise ConfigError(f"{where}: unknown route_by {r.route_by!r}; choose one of {ROUTE_BY}")
    if r.route_by == "top1":
        if r.probe_backbone is not None or tuple(r.probe_features) != ("embedding",):
            raise ConfigError(f"{where}: probe_backbone / probe_features only apply with route_by: domain_probe")
        return
    if len(terms) != 1 or terms[0][0] or terms[0][1] != "domain":
        raise ConfigError(f"{where}: route_by 'domain_probe' needs `when` to be one 'domain:<Name>[,<Name>]' term, "
                          f"got {r.when!r}")
    if r.probe_backbone is None:
        if len(cfg.backbones) != 1:
            raise ConfigError(f"{where}: route_by 'domain_probe' needs probe_backbone (one of {list(cfg.backbones)})")
    elif r.probe_backbone not in cfg.backbones:
        raise ConfigError(f"{where}: unknown probe_backbone {r.probe_backbone!r}; defined: {list(cfg.backbones)}")
    if not r.probe_features:
        raise ConfigError(f"{where}: probe_features needs at least one view")
    for v in r.probe_features:
        parse_view(v, where)
