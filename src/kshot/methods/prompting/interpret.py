"""Prompt interpretation: the vocabulary words nearest to each learned vector in token-embedding space.

As CoOp's `interpret_prompt.py` (and the ATPrompt seed's `interpret_prompts/`): Euclidean distance between a learned
context vector and every row of the frozen token-embedding table, smallest first. Learned vectors usually sit far
from any word, so the distances are part of the answer. For ATPrompt the chosen attributes (and the search weights,
when the attributes were searched) are reported too. For the deep methods (MaPLe, PromptSRC) the deeper text prompts
are reported per layer ('text_layer{i}'); they live in the residual stream, so their nearest words are indicative only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kshot.methods.prompting.tokens import token_strings


def nearest_words(vectors: torch.Tensor, embedding: torch.Tensor, tokenizer: Any, k: int = 5
                  ) -> list[list[tuple[str, float]]]:
    """For each vector [M, W], the k nearest token strings of `embedding` [V, W] with their distances."""
    d = torch.cdist(vectors.float().cpu(), embedding.detach().float().cpu())
    dist, idx = d.topk(min(k, d.shape[1]), dim=1, largest=False)
    return [list(zip(token_strings(tokenizer, row.tolist()), drow.tolist())) for row, drow in zip(idx, dist)]


def explain(method: Any, k: int = 5) -> dict[str, Any]:
    """Nearest words of every learned vector of a fitted prompt method with an attached backbone.

    Returns:
        {'method', 'backbone', 'groups': {group: [[(word, distance), ...] per vector]}, 'attributes', 'search'};
        class-specific groups are reported per class as 'group[classname]'.
    """
    tower = method._require_tower("explain")
    emb, tok = tower.token_embedding, method.backbone_.tokenizer
    groups: dict[str, list[list[tuple[str, float]]]] = {}
    for name, v in method.vectors_.items():
        if v.ndim == 3:
            for c, cname in enumerate(method.classnames_):
                groups[f"{name}[{cname}]"] = nearest_words(v[c], emb, tok, k)
        else:
            groups[name] = nearest_words(v, emb, tok, k)
    meta = method.extra_meta_
    return {"method": method.name, "backbone": meta.get("backbone", {}).get("spec"), "groups": groups,
            "attributes": meta.get("attributes"), "search": meta.get("search")}


def format_explanation(expl: dict[str, Any]) -> str:
    """Plain-text report of `explain()`."""
    lines = [f"{expl['method']} on {expl['backbone']}"]
    if expl.get("attributes"):
        lines.append(f"attributes: {', '.join(expl['attributes'])}")
    if expl.get("search"):
        ranked = sorted(zip(expl["search"]["combinations"], expl["search"]["weights"]), key=lambda t: -t[1])
        lines.append("search weights: " + "; ".join(f"({', '.join(c)}) {w:.3f}" for c, w in ranked))
    for name, rows in expl["groups"].items():
        lines.append(f"[{name}]")
        for i, row in enumerate(rows):
            lines.append(f"  {i + 1:>2}: " + "  ".join(f"{w!r} {d:.3f}" for w, d in row))
    return "\n".join(lines)


def load_prompt_method(path: str | Path, backbone: Any = None, device: str | torch.device | None = None) -> Any:
    """`kshot.methods.load(path)` plus `attach_backbone`: the given backbone, or the one named in the artifact
    (loaded with `kshot.backbones.load_backbone`; a changed fingerprint is a CheckpointError)."""
    from kshot.methods import load

    method = load(path)
    if not getattr(method, "needs_backbone", False):
        return method
    if backbone is None:
        from kshot.backbones import load_backbone

        spec = method.backbone_spec
        if spec is None:
            from kshot.errors import CheckpointError

            raise CheckpointError(f"{path}: the artifact does not name its backbone; pass one")
        backbone = load_backbone(spec, device=device or "cpu")
    return method.attach_backbone(backbone)
