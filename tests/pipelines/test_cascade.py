"""The cascade/router: rank composition and routing by the current top-1."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from kshot.eval.metrics import topk_ids
from kshot.pipelines.cascade import CascadeStage, rerank
from kshot.pipelines.config import CascadeStageConfig, EnsembleMember, EnsembleStageConfig, Route
from kshot.pipelines.groups import ClassInfo
from kshot.pipelines.stages import EnsembleStage, Stage


class FixedStage(Stage):
    """Returns preset scores; counts the rows it was asked about."""

    kind = "fixed"

    def __init__(self, name, classes, scores):
        super().__init__(name)
        self.classes, self._fixed, self.asked = np.asarray(classes), scores, []

    def fit(self, ws, stages):
        self.bind(ws)

    def _scores(self, split, rows):
        self.asked.append(None if rows is None else rows.tolist())
        return self._fixed if rows is None else self._fixed[torch.as_tensor(rows)]


def _ws(n_rows: int, c: int, seen, domains):
    info = ClassInfo(num_classes=c, domains=domains, seen=np.asarray(seen, dtype=bool))
    data = SimpleNamespace(num_classes=c, info=info, num_rows=lambda split: n_rows)
    return SimpleNamespace(data=data)


def test_rerank_puts_stage_classes_first_in_stage_order_then_the_rest_in_previous_order() -> None:
    g = torch.Generator().manual_seed(0)
    prev = torch.randn(7, 9, generator=g)
    classes = np.array([2, 5, 7])
    sc = torch.randn(7, 3, generator=g)
    out = rerank(prev, sc, classes)
    order = torch.sort(out, dim=1, descending=True, stable=True).indices.numpy()
    for i in range(7):
        head = classes[torch.argsort(sc[i], descending=True, stable=True).numpy()]
        assert order[i, :3].tolist() == head.tolist()
        rest = [c for c in torch.argsort(prev[i], descending=True, stable=True).tolist() if c not in classes]
        assert order[i, 3:].tolist() == rest
    assert len(set(out[0].tolist())) == 9  # a strict ranking: no ties


def test_small_stage_still_gives_five_distinct_ids() -> None:
    out = rerank(torch.zeros(4, 10), torch.randn(4, 2), np.array([8, 3]))
    ids = topk_ids(out, 5).numpy()
    assert all(len(set(r)) == 5 for r in ids.tolist()) and set(ids[:, :2].ravel()) <= {3, 8}


def test_cascade_routes_by_current_top1_and_reports_counts() -> None:
    # 4 classes: 0, 1 seen (domain A), 2 seen (domain B), 3 unseen. 5 images.
    ws = _ws(5, 4, [1, 1, 1, 0], ["A", "A", "B", "C"])
    first = FixedStage("first", [0, 1, 2, 3], torch.tensor([[9., 1, 0, 0], [0, 0, 0, 9], [0, 9, 0, 0],
                                                            [0, 0, 9, 0], [0, 0, 0, 9]]))
    seen = FixedStage("seen", [0, 1, 2], torch.tensor([[0., 0, 5], [9, 0, 0], [0, 0, 7], [1, 0, 0], [0, 2, 0]]))
    spec = FixedStage("spec_b", [2], torch.ones(5, 1))
    stages = {"first": first, "seen": seen, "spec_b": spec}
    for st in stages.values():
        st.fit(ws, stages)
    cas = CascadeStage("sys", CascadeStageConfig("first", (Route("seen", "seen"), Route("domain:B", "spec_b"))))
    cas.fit(ws, stages)
    top1 = cas.scores("test").argmax(1).tolist()
    # rows 1 and 4 have an unseen top-1 and keep it; rows 0, 2, 3 are re-ranked by 'seen'
    assert top1 == [2, 3, 2, 0, 3]
    assert seen.asked == [[0, 2, 3]]
    assert spec.asked == [[0, 2]]  # after 'seen', rows 0 and 2 have top-1 class 2 (domain B)
    assert [r["rows"] for r in cas.record["routes"]["test"]] == [5, 3, 2]
    assert len(cas.traces["test"]) == 3


def test_ensemble_is_the_weighted_sum_over_its_classes() -> None:
    ws = _ws(3, 3, [1, 1, 1], None)
    a = FixedStage("a", [0, 1, 2], torch.tensor([[1., 2, 3], [0, 0, 1], [2, 0, 0]]))
    b = FixedStage("b", [1, 2], torch.tensor([[5., 1], [0, 4], [1, 1]]))
    stages = {"a": a, "b": b}
    for st in stages.values():
        st.fit(ws, stages)
    members = (EnsembleMember("a", 0.6), EnsembleMember("b", 0.4))
    ens = EnsembleStage("e", EnsembleStageConfig(members, classes="ids:1-2"))
    ens.fit(ws, stages)
    expect = 0.6 * a._fixed[:, 1:] + 0.4 * b._fixed
    assert torch.allclose(ens.scores("test"), expect)
    soft = EnsembleStage("s", EnsembleStageConfig((EnsembleMember("b", 1.0),), normalize="softmax"))
    soft.fit(ws, stages)
    assert torch.allclose(soft.scores("test").sum(1), torch.ones(3))


def test_ensemble_refuses_members_missing_classes() -> None:
    import pytest

    from kshot.errors import ConfigError

    ws = _ws(2, 3, [1, 1, 1], None)
    a = FixedStage("a", [0, 1], torch.zeros(2, 2))
    b = FixedStage("b", [0, 1, 2], torch.zeros(2, 3))
    ens = EnsembleStage("e", EnsembleStageConfig((EnsembleMember("a"), EnsembleMember("b")), classes="all"))
    with pytest.raises(ConfigError, match="member 'a' does not score classes \\[2\\]"):
        ens.fit(ws, {"a": a, "b": b})
