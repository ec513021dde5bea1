"""ATPrompt: attribute-anchored textual prompts (Li et al., "Advancing Textual Prompt Learning with Anchored
Attributes", ICCV 2025; `zhengli97/ATPrompt: trainers/coop_atp.py`, `trainers/cocoop_atp.py`).

The prompt of class c is [SOS][a¹×m][ATTR₁][a²×m][ATTR₂]…[c×n][CLASS_c][.][EOS]: each ATTRᵢ is the frozen
word embedding of an attribute word ("shape", "color"), each aⁱ block is learned (init N(0, 0.01²)), and the class
soft tokens c are CoOp's context (init N(0, 0.02²)). With `base='cocoop'` the CoCoOp meta-net bias is added to the
class soft tokens only (as in `cocoop_atp.py`).

Attributes: `attributes` if given; else the differentiable search (`kshot.methods.prompting.search`) over `candidates`
on the task's train/val shots; else the paper's choice for `dataset` (`kshot.data.benchmarks.BENCHMARKS`); else
ImageNet's ("color", "shape"). Defaults follow `docs/ATPrompt.md`: CoOp+ATP uses NCTX=2 (m = n = 2), 100 epochs and
otherwise CoOp's `vit_b16` schedule (SGD lr 0.002, batch 32, 1 warm-up epoch + cosine); CoCoOp+ATP 10 epochs, batch 1.
The last epoch is kept. Like CoOp, image features come from the cache (see `kshot.methods.coop`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from kshot.config import param
from kshot.errors import ConfigError
from kshot.methods.base import METHODS, Task
from kshot.data.benchmarks import get_benchmark
from kshot.methods.prompting.layout import attribute_pieces
from kshot.methods.prompting.learner import GroupSpec
from kshot.methods.prompting.method import Design, PromptConfig, PromptMethod, context_block
from kshot.methods.prompting.search import SearchConfig, search_attributes
from kshot.methods.prompting.tokens import content_ids
from kshot.methods.prompting.train import Schedule

log = logging.getLogger(__name__)

#: ImageNet's searched attributes (ATPrompt Table 1), used when nothing else names them.
FALLBACK_ATTRIBUTES: tuple[str, ...] = ("color", "shape")


@dataclass(frozen=True)
class ATPromptConfig(PromptConfig):
    """ATPrompt's settings; shared fields are documented on `PromptConfig`.

    Attributes:
        n_ctx: class soft tokens n (official CoOp+ATP: 2; DTD 4).
        n_att: soft tokens m before each attribute; None = n_ctx (the official scripts set N_ATTi = NCTX).
        attr_init_std: std of the attribute soft tokens (official 0.01).
        attributes: attribute words to use; () = search `candidates`, or the paper's choice for `dataset`.
        candidates: words to search over when `attributes` is empty (e.g. 5 LLM-proposed nouns).
        dataset: benchmark name whose published attributes to use (Caltech101 -> shape, size; ...).
        base: 'coop' or 'cocoop' (meta-net bias on the class soft tokens).
        epochs: None = 100 (coop) / 10 (cocoop); batch_size: None = 32 (coop) / 1 (cocoop).
        search_epochs, search_max_size: attribute-search schedule (official 40 epochs; see
        kshot.methods.prompting.search).
        eval_batch_size: images encoded together in `logits()` for base='cocoop'.
    """

    n_ctx: int = param(2, ge=1)
    n_att: int | None = param(None, ge=1)
    attr_init_std: float = param(0.01, ge=0)
    attributes: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    dataset: str = ""
    base: str = "coop"
    epochs: int | None = param(None, ge=0)
    batch_size: int | None = param(None, ge=1)  # type: ignore[assignment]
    search_epochs: int = param(40, ge=0)
    search_max_size: int = param(3, ge=1)
    eval_batch_size: int = param(64, ge=1)


@METHODS.register("atprompt", "ATPrompt: CoOp/CoCoOp prompts anchored on attribute words (needs the backbone)")
class ATPrompt(PromptMethod):
    name = "atprompt"
    config_cls = ATPromptConfig
    #: `kshot.methods.prompting.presets` schedules apply to this method.
    follows_prompt_presets = True

    def is_conditional(self) -> bool:
        if self.config.base not in ("coop", "cocoop"):
            raise ConfigError(f"atprompt base must be 'coop' or 'cocoop', got {self.config.base!r}")
        return self.config.base == "cocoop"

    def _schedule(self, shots: int) -> Schedule:
        c, co = self.config, self.is_conditional()
        return Schedule(epochs=c.epochs if c.epochs is not None else (10 if co else 100),
                        batch_size=c.batch_size if c.batch_size is not None else (1 if co else 32), lr=c.lr,
                        momentum=c.momentum, weight_decay=c.weight_decay, warmup_epochs=c.warmup_epochs,
                        warmup_lr=c.warmup_lr)

    def _preflight_prepare(self) -> None:
        c = self.config
        if c.attributes or not c.candidates:
            self.attributes_ = self._fixed_attributes()[0]
            return
        tok = self.backbone_.tokenizer  # the search may pick any combination: check the longest one
        longest = sorted(c.candidates, key=lambda a: len(content_ids(tok, a, what="attribute word")), reverse=True)
        self.attributes_ = tuple(" ".join(a.split()) for a in longest[: c.search_max_size])

    def _fixed_attributes(self) -> tuple[tuple[str, ...], str]:
        """(attributes, source) when no search runs: the configured words, the paper's for `dataset`, or ImageNet's."""
        c = self.config
        if c.attributes:
            return tuple(" ".join(a.split()) for a in c.attributes), "config"
        if c.dataset:
            return tuple(get_benchmark(c.dataset).attributes), f"paper ({get_benchmark(c.dataset).name})"
        return FALLBACK_ATTRIBUTES, "fallback (ImageNet's)"

    def _prepare(self, task: Task, generator: torch.Generator) -> dict[str, Any]:
        c = self.config
        extra: dict[str, Any] = {}
        if c.attributes:
            attrs, source = tuple(c.attributes), "config"
        elif c.candidates:
            cfg = SearchConfig(max_size=c.search_max_size, epochs=c.search_epochs, amp=c.amp)
            res = search_attributes(task.backbone, task.classnames, task.train, task.val, c.candidates, cfg,
                                    seed=int(task.seed), logit_scale=task.logit_scale)
            attrs, source = res.chosen, "search"
            extra["search"] = res.to_dict()
        elif c.dataset:
            attrs, source = get_benchmark(c.dataset).attributes, f"paper ({get_benchmark(c.dataset).name})"
        else:
            attrs, source = FALLBACK_ATTRIBUTES, "fallback (ImageNet's)"
            log.info("atprompt: no attributes, candidates or dataset given; using %s", attrs)
        self.attributes_ = tuple(" ".join(a.split()) for a in attrs)
        if not self.attributes_ or any(not a for a in self.attributes_):
            raise ConfigError(f"atprompt needs non-empty attribute words, got {list(attrs)}")
        return {**extra, "attributes": list(self.attributes_), "attribute_source": source}

    def _after_load(self) -> None:
        self.attributes_ = tuple(self.extra_meta_.get("attributes", ()))

    def _design(self) -> Design:
        c, tok = self.config, self.backbone_.tokenizer
        pieces, ctx_group, ctx_init = context_block(c, tok, conditional=self.is_conditional())
        n_att = ctx_group.size if c.n_att is None else int(c.n_att)
        if n_att < 0:
            raise ConfigError(f"n_att must be >= 0, got {n_att}")
        attr_ids = [content_ids(tok, a, what="attribute word") for a in self.attributes_]
        fixed = 2 + sum(n_att + len(i) for i in attr_ids) + ctx_group.size + 1  # sot, eot, attrs, ctx, '.'
        limit = self.tower_.context_length
        if fixed >= limit:
            raise ConfigError(f"attributes {list(self.attributes_)} with {n_att} soft tokens each and {ctx_group.size} "
                              f"class tokens need {fixed} of the text encoder's {limit} tokens before any class name")
        names = [f"attr{i}" for i in range(len(attr_ids))]
        groups = [GroupSpec(n, n_att) for n in names] + [ctx_group]
        init = {n: ("normal", c.attr_init_std) for n in names} | {"ctx": ctx_init}
        return Design(recipes=[attribute_pieces(attr_ids, n_att, names) + pieces], groups=groups, init=init)
