"""Per-class segment sums against the dense one-hot matmul they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kshot.methods.cache_ops import ClassBlocks, kernel_sum
from kshot.methods.search import cache_kernel


@pytest.mark.parametrize("layout", ["sorted_balanced", "shuffled", "unbalanced_with_empty"])
def test_kernel_sum_equals_dense_one_hot_matmul(layout):
    g = torch.Generator().manual_seed(0)
    c = 5
    labels = {"sorted_balanced": torch.arange(c).repeat_interleave(3),
              "shuffled": torch.arange(c).repeat_interleave(3)[torch.randperm(15, generator=g)],
              "unbalanced_with_empty": torch.tensor([0, 0, 0, 0, 2, 3, 3, 1, 0])}[layout]
    blocks = ClassBlocks.of(labels, c)
    assert (blocks.index is None) == (layout == "sorted_balanced")
    affinity = torch.rand(7, len(labels), generator=g)
    weight = torch.rand(len(labels), generator=g) + 0.5
    dense = cache_kernel(affinity, 2.5) @ (F.one_hot(labels, c).float() * weight[:, None])
    torch.testing.assert_close(kernel_sum(affinity.clone(), 2.5, blocks, weight), dense, rtol=1e-6, atol=1e-6)
    plain = cache_kernel(affinity, 2.5) @ F.one_hot(labels, c).float()
    torch.testing.assert_close(kernel_sum(affinity.clone(), 2.5, blocks), plain, rtol=1e-6, atol=1e-6)


def test_kernel_sum_gradients_match_dense():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([2, 0, 1, 0, 2, 2])
    keys = torch.randn(6, 4, generator=g).requires_grad_(True)
    weight = torch.rand(6, generator=g).requires_grad_(True)
    x = torch.randn(3, 4, generator=g)
    kernel_sum(x @ keys.T, 1.5, ClassBlocks.of(labels, 3), weight).square().sum().backward()
    grads = keys.grad.clone(), weight.grad.clone()
    keys.grad = weight.grad = None
    (cache_kernel(x @ keys.T, 1.5) @ (F.one_hot(labels, 3).float() * weight[:, None])).square().sum().backward()
    torch.testing.assert_close(grads[0], keys.grad)
    torch.testing.assert_close(grads[1], weight.grad)
