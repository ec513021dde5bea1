"""ATPrompt's differentiable attribute search (Li et al., ICCV 2025, §3.3; `zhengli97/ATPrompt:
trainers/attributecompute.py`, `scripts/attribute_compute/main.sh`).

Every combination k of the candidate attribute words gets its own ATPrompt prompt (own attribute and class soft
tokens); the logits are mixed as Σ_k softmax(α)_k · logits_k. DARTS-style alternation: after each SGD step of the
prompts on a batch of training shots, α takes one Adam step (lr 0.02, betas (0.5, 0.999)) on a batch of validation
shots. The combination with the largest weight after the last epoch is chosen. All combinations are encoded in one
batched text-tower pass (one `PromptLearner` with R = number of combinations recipes).

Defaults (official search script): 4 attribute and 4 class soft tokens, 40 epochs, CoOp's SGD schedule.
Differences from the official code, on purpose:
- Combinations of every size in [min_size, max_size] (default 1..3) are searched. The released code keeps only
  combinations of >= 3 attributes (`if r > 2`), although most published choices have one or two attributes.
- α starts at 0 (uniform weights) instead of `torch.rand`; the val batches cycle through the whole validation split
  (the official loop re-creates the val iterator each step and so always reads its first batch).
- Without a validation split, α is updated on training batches (logged as a warning).
No hosted LLM is called: the candidate words come from the user (`read_candidates`).
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from kshot.errors import ConfigError, DataError
from kshot.features.featureset import FeatureSet
from kshot.methods.prompting.layout import attribute_pieces, build_layout, coop_pieces
from kshot.methods.prompting.learner import GroupSpec, PromptLearner, frozen, normal_vectors
from kshot.methods.prompting.tokens import content_ids, specials
from kshot.methods.prompting.tower import TextTower
from kshot.methods.prompting.train import Schedule, amp_context, epoch_batches, train_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """Attribute-search settings (defaults: `scripts/attribute_compute/main.sh` + CoOp's `vit_b16.yaml`).

    Attributes:
        min_size, max_size: sizes of the combinations searched (paper: at most 3 attributes).
        n_att, n_ctx: soft tokens before each attribute / before the class name (official 4 / 4).
        epochs, batch_size, lr: prompt SGD schedule (official 40 epochs, 32, 0.002; 1 warm-up epoch + cosine).
        alpha_lr, alpha_betas: Adam on the combination weights (official 0.02, (0.5, 0.999)).
        amp: bf16 autocast on CUDA.
    """

    min_size: int = 1
    max_size: int = 3
    n_att: int = 4
    n_ctx: int = 4
    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.002
    alpha_lr: float = 0.02
    alpha_betas: tuple[float, float] = (0.5, 0.999)
    amp: bool = True


@dataclass
class SearchResult:
    """Combinations, their final softmax weights and the chosen one (highest weight)."""

    combinations: list[tuple[str, ...]]
    weights: list[float]
    losses: list[float] = field(default_factory=list)

    @property
    def chosen(self) -> tuple[str, ...]:
        return self.combinations[max(range(len(self.weights)), key=self.weights.__getitem__)]

    def ranking(self) -> list[tuple[tuple[str, ...], float]]:
        """(combination, weight), highest weight first."""
        return sorted(zip(self.combinations, self.weights), key=lambda t: -t[1])

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": list(self.chosen), "combinations": [list(c) for c in self.combinations],
                "weights": [round(w, 6) for w in self.weights]}


def read_candidates(path: str | Path) -> list[str]:
    """Candidate attribute words from a text file: one per line and/or comma-separated; '#' starts a comment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read attribute candidates {path}: {e}") from None
    words: list[str] = []
    for line in text.splitlines():
        for w in re.split(r",", line.split("#", 1)[0]):
            w = " ".join(w.split())
            if w and w not in words:
                words.append(w)
    if not words:
        raise DataError(f"{path}: no candidate attribute words (one per line or comma-separated)")
    return words


def combinations(words: Sequence[str], min_size: int, max_size: int) -> list[tuple[str, ...]]:
    """All combinations of `words` with sizes in [min_size, max_size], smaller first, in word order."""
    if not 1 <= min_size <= max_size:
        raise ConfigError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    out: list[tuple[str, ...]] = []
    for r in range(min_size, min(max_size, len(words)) + 1):
        out += list(itertools.combinations(words, r))
    if not out:
        raise ConfigError(f"no combinations of sizes {min_size}..{max_size} from {len(words)} candidate words")
    return out


def search_attributes(backbone: Any, classnames: Sequence[str], train: FeatureSet, val: FeatureSet | None,
                      candidates: Sequence[str], cfg: SearchConfig = SearchConfig(), *, seed: int = 0,
                      logit_scale: float | None = None) -> SearchResult:
    """Run the differentiable attribute search on cached features of the (base) classes.

    Args:
        backbone: CLIP backbone (its text tower and tokenizer).
        classnames: C class names; `train.labels`/`val.labels` index them.
        train, val: labelled shots (val: for the α updates).
        candidates: candidate attribute words (e.g. five LLM-proposed nouns).
        logit_scale: CLIP temperature (default: the backbone's).

    Raises:
        DataError: a candidate tokenizes to nothing, or a prompt exceeds the text context.
    """
    words = list(dict.fromkeys(" ".join(w.split()) for w in candidates))
    if not words or any(not w for w in words):
        raise DataError("attribute search needs non-empty candidate words")
    combos = combinations(words, cfg.min_size, cfg.max_size)
    tower, tok = TextTower(backbone.model), backbone.tokenizer
    sp = specials(tok)
    ids = {w: content_ids(tok, w, what="attribute word") for w in words}
    suffix = tuple(content_ids(tok, ".", what="prompt suffix"))
    groups, recipes = [], []
    for k, combo in enumerate(combos):
        names = [f"c{k}_a{j}" for j in range(len(combo))]
        groups += [GroupSpec(n, cfg.n_att) for n in names] + [GroupSpec(f"c{k}_ctx", cfg.n_ctx)]
        recipes.append(attribute_pieces([ids[w] for w in combo], cfg.n_att, names)
                       + coop_pieces(cfg.n_ctx, "end", suffix, f"c{k}_ctx"))
    layout = build_layout(recipes, list(classnames), tok, sp, {g.name: g.size for g in groups},
                          context_length=tower.context_length, trim=tower.can_trim)
    gen = torch.Generator().manual_seed(int(seed))
    init = {g.name: normal_vectors((g.size, tower.width), 0.02 if g.name.endswith("ctx") else 0.01, gen)
            for g in groups}
    learner = PromptLearner(tower, layout, groups, init)
    device = tower.device
    scale = float(backbone.logit_scale if logit_scale is None else logit_scale)
    alpha = torch.zeros(len(combos), device=device, requires_grad=True)
    alpha_opt = torch.optim.Adam([alpha], lr=cfg.alpha_lr, betas=cfg.alpha_betas, weight_decay=0.0)
    if val is None or len(val) == 0:
        log.warning("attribute search without a validation split: alpha is updated on the training shots")
        val = train
    val_x, val_y = val.features.to(device), val.labels.to(device)
    val_batches: list[torch.Tensor] = []

    def mixed_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        text = F.normalize(learner().float(), dim=-1)  # [K, C, D]
        logits = scale * torch.einsum("bd,kcd->bkc", x.float(), text)
        mixed = (F.softmax(alpha, dim=0)[None, :, None] * logits).sum(dim=1)
        return F.cross_entropy(mixed, y)

    def alpha_step(_: int) -> None:
        if not val_batches:
            val_batches.extend(epoch_batches(len(val_x), cfg.batch_size, gen))
        idx = val_batches.pop().to(device)
        with amp_context(device, cfg.amp):
            loss = mixed_loss(val_x[idx], val_y[idx])
        alpha_opt.zero_grad(set_to_none=True)
        loss.backward()
        alpha_opt.step()

    schedule = Schedule(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
    with frozen(backbone.model):
        losses = train_loop(list(learner.parameters()), mixed_loss, train, schedule, gen, device, amp=cfg.amp,
                            after_step=alpha_step, name="attribute search")
    weights = F.softmax(alpha.detach().float(), dim=0).cpu().tolist()
    result = SearchResult(combos, weights, losses)
    log.info("attribute search: chose %s; top: %s", result.chosen, result.ranking()[:3])
    return result
