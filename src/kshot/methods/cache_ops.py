"""Cache logits with one-hot values as per-class segment sums (the arithmetic shared by the cache methods).

Every kshot cache method has values V [M, C] with one non-zero per row: entry m belongs to class y_m with weight
w_m (1 for Tip-Adapter, exp(γ·KL) for APE, a trained weight for APE-T). The cache term is then

    (exp(−β (1 − A)) V)_{n,c} = Σ_{m: y_m = c} w_m · exp(−β (1 − A_{n,m}))

a per-class segment sum over the [N, M] kernel: O(N·M) work instead of the dense matmul's O(N·M·C). Entries are
grouped by class once (`ClassBlocks`: a [C, k] index padded with a zero-weight column); when the entries are already
sorted by class with k per class (the usual balanced K-shot cache) the grouping is a free `view`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassBlocks:
    """Cache entries grouped by class.

    Attributes:
        index: [C, k] entry ids of class c in row c, padded with M (a zero-weight column); None when the entries are
            sorted by class with exactly k each (then entry c·k + j is the j-th of class c).
        num_entries: M.
        num_classes: C.
        k: entries per class after padding.
    """

    index: torch.Tensor | None
    num_entries: int
    num_classes: int
    k: int

    @classmethod
    def of(cls, labels: torch.Tensor, num_classes: int) -> "ClassBlocks":
        """Group entries with class `labels` [M] (int) into C blocks (stable: entry order kept inside a class)."""
        labels = labels.long()
        m = labels.numel()
        counts = torch.bincount(labels, minlength=num_classes)
        k = max(1, int(counts.max())) if m else 1
        if m == num_classes * k and bool((counts == k).all()) and bool((labels[1:] >= labels[:-1]).all()):
            return cls(None, m, num_classes, k)
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(m, device=labels.device) - starts[labels[order]]
        index = torch.full((num_classes, k), m, dtype=torch.long, device=labels.device)
        index[labels[order], slot] = order
        return cls(index, m, num_classes, k)

    def to(self, device: torch.device) -> "ClassBlocks":
        index = None if self.index is None else self.index.to(device)
        return ClassBlocks(index, self.num_entries, self.num_classes, self.k)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., M] -> [..., C, k] (padding slots hold 0)."""
        if self.index is None:
            return x.unflatten(-1, (self.num_classes, self.k))
        return torch.nn.functional.pad(x, (0, 1))[..., self.index]

    def weights(self, weight: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """Per-entry weights [..., M] -> [..., C, k] (0 at padding), or None for unit weights without padding."""
        if weight is None:
            if self.index is None:
                return None
            weight = torch.ones(self.num_entries, device=device)
        return self.gather(weight.to(device))

    def sum(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_{m: y_m = c} weight_m · x[..., m] -> [..., C] for x [..., M] (differentiable in x and weight)."""
        blocks = self.gather(x)  # padding slots are 0: no weight needed for them
        return blocks.sum(-1) if weight is None else (blocks * self.gather(weight.to(x.device))).sum(-1)


def kernel_sum(affinity: torch.Tensor, beta: float, blocks: ClassBlocks,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """exp(−β (1 − A)) · V as a segment sum: affinity [N, M], V one-hot by `blocks` with per-entry `weight` [M].

    Without autograd the affinity buffer is overwritten in place (β·(A − 1) equals −β·(1 − A) bit for bit).
    """
    return blocks.sum(kernel(affinity, beta), weight)


def kernel(affinity: torch.Tensor, beta: float) -> torch.Tensor:
    """exp(−β (1 − A)) [N, M]; without autograd in place (β·(A − 1) equals −β·(1 − A) bit for bit)."""
    if torch.is_grad_enabled() and affinity.requires_grad:
        return torch.exp(-beta * (1.0 - affinity))
    return affinity.sub_(1.0).mul_(beta).exp_()
