"""Zero-shot text classifier weights: class names × prompts → one L2-normalised row per class.

Ensembles follow CLIP: encode every prompt, L2-normalise each, average per class, renormalise
(the shape of open_clip's `build_zero_shot_classifier`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kshot.backbones.base import Backbone
from kshot.text.templates import PromptSpec


@torch.no_grad()
def encode_texts(backbone: Backbone, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """texts -> L2-normalised float32 [N, D] on CPU."""
    device = backbone.device
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = backbone.tokenize(list(texts[i : i + batch_size])).to(device)
        out.append(F.normalize(backbone.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0, backbone.embed_dim)


def build_text_classifier(
    backbone: Backbone,
    classnames: Sequence[str],
    prompts: PromptSpec | Sequence[str] | None = None,
    class_domains: Sequence[str] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Text weights [C, D], float32, rows L2-normalised.

    Args:
        backbone: a CLIP-like backbone (has a text tower).
        classnames: C clean class names.
        prompts: a PromptSpec, a list of templates (ensembled), or None for "a photo of a {}.".
        class_domains: optional domain per class, used by PromptSpec.per_domain.
    """
    spec = prompts if isinstance(prompts, PromptSpec) else PromptSpec(templates=list(prompts or PromptSpec().templates))
    sentences: list[str] = []
    owner: list[int] = []
    for c, name in enumerate(classnames):
        domain = class_domains[c] if class_domains is not None else None
        for s in spec.prompts_for(name, domain):
            sentences.append(s)
            owner.append(c)
    emb = encode_texts(backbone, sentences, batch_size)
    index = torch.tensor(owner)
    sums = torch.zeros(len(classnames), emb.shape[1]).index_add_(0, index, emb)
    return F.normalize(sums, dim=-1)
