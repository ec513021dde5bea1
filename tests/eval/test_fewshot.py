"""The few-shot runner on a pool that holds only the drawn images gives the records of the whole pool."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from kshot.eval.fewshot import FewShotInputs, run_cell
from kshot.experiment import drawn_indices
from kshot.features.featureset import FeatureSet


def _fs(labels: torch.Tensor, seed: int, tag: str) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(len(labels), 8, generator=g) + 2 * torch.eye(4, 8)[labels], dim=-1)
    return FeatureSet(feats, labels, [f"{tag}/{i}.jpg" for i in range(len(labels))])


def test_drawn_only_pool_gives_the_same_cells_as_the_whole_pool():
    pool = _fs(torch.arange(4).repeat_interleave(12), 0, "pool")
    full = FewShotInputs("syn", "bb", pool, _fs(torch.arange(4).repeat(5), 1, "test"), [f"c{i}" for i in range(4)],
                         F.normalize(torch.eye(4, 8), dim=-1))
    drawn = drawn_indices(pool.labels.numpy(), [1, 2, 4], [1, 2])
    assert 0 < len(drawn) < len(pool)
    compact = dataclasses.replace(full, pool=pool.subset(drawn), drawn=drawn, pool_labels=pool.labels.numpy())
    for method in ("tip_adapter", "lpp"):
        for k, seed in ((1, 1), (4, 2)):
            a, la = run_cell(full, method, k, seed, {})
            b, lb = run_cell(compact, method, k, seed, {})
            assert torch.allclose(la, lb) and a["top1"] == b["top1"] and a["meta"] == b["meta"]
            sel = compact.draw(k, seed)
            assert compact.pool.paths[int(sel.shots[0])] in {pool.paths[i] for i in drawn}
