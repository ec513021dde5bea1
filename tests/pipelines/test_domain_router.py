"""The cascade's domain router (`route_by: domain_probe`): fitted on the shots only, config errors, and catching a
domain that top-1 routing misses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kshot.errors import ConfigError
from kshot.features.featureset import FeatureSet
from kshot.pipelines.cascade import CascadeStage
from kshot.pipelines.config import CascadeStageConfig, Route
from kshot.pipelines.configfile import config_from_dict, load_config
from kshot.pipelines.groups import ClassInfo
from kshot.pipelines.router import DomainProbe, parse_view, token_view

from .test_cascade import FixedStage

# 6 seen classes: 0-2 in domain A, 3-5 in domain B (class c and c + 3 share a "shape"), class 6 (domain C) unseen.
DOMAINS = ["A", "A", "A", "B", "B", "B", "C"]
SEEN = [True] * 6 + [False]


def _features(labels: np.ndarray, seed: int) -> torch.Tensor:
    """Shape (dims 0-2) dominates; domain B adds a small offset on dim 3; noise on dims 4-7. L2-normalised [n, 8]."""
    g = torch.Generator().manual_seed(seed)
    x = 0.05 * torch.randn(len(labels), 8, generator=g)
    for i, y in enumerate(labels.tolist()):
        x[i, y % 3] += 1.0
        x[i, 3] += 0.3 if DOMAINS[y] == "B" else 0.0
    return torch.nn.functional.normalize(x, dim=-1)


class FakeWorkspace:
    """What the cascade and the probe read: class info, shot and split features of one backbone alias 'bb'."""

    def __init__(self, test_labels: np.ndarray, shots_per_class: int = 4, cv_folds: int = 4, test_seed: int = 1):
        shot_labels = np.repeat(np.arange(6), shots_per_class)
        self.shots = FeatureSet(_features(shot_labels, 0), torch.as_tensor(shot_labels),
                                [f"s{i}" for i in range(len(shot_labels))])
        self.test = FeatureSet(_features(test_labels, test_seed), torch.full((len(test_labels),), -1),
                               [f"t{i}" for i in range(len(test_labels))])
        info = ClassInfo(num_classes=7, domains=DOMAINS, seen=np.asarray(SEEN))
        self.data = SimpleNamespace(info=info, num_classes=7, pool=SimpleNamespace(labels=shot_labels),
                                    shots=np.arange(len(shot_labels)), num_rows=lambda split: len(test_labels))
        self.config = SimpleNamespace(cv_folds=cv_folds, seed=0, backbones={"bb": "fake:spec"})
        self.hidden_test_labels = test_labels  # never handed to the workspace's readers

    def shot_features(self, alias, policy=None):
        assert alias == "bb"
        return self.shots

    def split_features(self, alias, split):
        assert alias == "bb" and split == "test"
        return self.test


def _cascade(ws: FakeWorkspace, route: Route) -> tuple[CascadeStage, FixedStage]:
    """First stage: a classifier that only knows domain A (top-1 always an A class); step: a domain-B specialist
    that ranks the true B class first."""
    labels = ws.hidden_test_labels
    n = len(labels)
    first_scores = torch.zeros(n, 7)
    first_scores[torch.arange(n), torch.as_tensor(labels % 3)] = 5.0  # shape right, domain always A
    spec_scores = torch.zeros(n, 3)
    b = (labels >= 3) & (labels <= 5)
    spec_scores[torch.as_tensor(np.flatnonzero(b)), torch.as_tensor(labels[b] - 3)] = 1.0
    first = FixedStage("first", np.arange(7), first_scores)
    spec = FixedStage("spec", [3, 4, 5], spec_scores)
    stages = {"first": first, "spec": spec}
    for st in stages.values():
        st.fit(ws, stages)
    cas = CascadeStage("sys", CascadeStageConfig("first", (route,)))
    cas.fit(ws, stages)
    return cas, spec


def _test_labels(n_per_class: int = 10) -> np.ndarray:
    return np.repeat(np.arange(7), n_per_class)  # includes the unseen class 6


def test_top1_routing_misses_domain_b_but_the_domain_probe_catches_it() -> None:
    labels = _test_labels()
    ws = FakeWorkspace(labels)
    top1, spec1 = _cascade(ws, Route("domain:B", "spec"))
    assert (top1.scores("test").argmax(1).numpy() < 3).all()
    assert top1.record["routes"]["test"][1]["rows"] == 0 and spec1.asked == []
    probe, spec2 = _cascade(ws, Route("domain:B", "spec", route_by="domain_probe"))
    pred = probe.scores("test").argmax(1).numpy()
    b = (labels >= 3) & (labels <= 5)
    assert (pred[b] == labels[b]).mean() >= 0.9  # B rows now reach the specialist and get their class
    assert (pred[labels < 3] == labels[labels < 3]).mean() >= 0.9  # A rows mostly stay with the first stage
    route = probe.record["routes"]["test"][1]
    assert route["route_by"] == "domain_probe" and route["rows"] == len(spec2.asked[0])
    rec = probe.record["probes"][0]
    assert rec["domains"] == ["A", "B"] and rec["cv_folds"] == 4 and rec["steps"] == [0]
    assert rec["view"] == "embedding" and rec["shots_per_domain"] == {"A": 12, "B": 12}
    assert probe.param_counts()["fitted"] == 2 * 8 + 2


def test_the_probe_is_fitted_on_the_shots_only_and_routes_each_row_by_its_own_features() -> None:
    labels = _test_labels()
    ws = FakeWorkspace(labels)
    p1 = DomainProbe("bb", ("embedding",), "t").fit(ws)
    other = FakeWorkspace(np.zeros_like(labels), test_seed=7)  # other test images and hidden labels, same shots
    p2 = DomainProbe("bb", ("embedding",), "t").fit(other)
    for k, v in p1.method.state_dict().items():
        assert torch.equal(v, p2.method.state_dict()[k])
    assert p1.record["C"] == p2.record["C"]
    perm = np.random.default_rng(0).permutation(len(labels))
    shuffled = FakeWorkspace(labels)
    shuffled.test = ws.test.subset(perm)
    p3 = DomainProbe("bb", ("embedding",), "t").fit(shuffled)
    assert np.array_equal(p3.predict("test"), p1.predict("test")[perm])
    rows = np.array([5, 40, 2])
    assert np.array_equal(p1.predict("test", rows), p1.predict("test")[rows])


def test_without_enough_shots_for_cross_validation_the_first_view_and_default_c_are_used() -> None:
    ws = FakeWorkspace(_test_labels(), shots_per_class=1)
    p = DomainProbe("bb", ("embedding",), "t").fit(ws)
    assert p.record["cv_folds"] == 0 and p.record["C"] == 1.0 and "no cross-validation" in p.record["tuning"]


def test_default_routing_is_top1_and_unchanged() -> None:
    assert Route("seen", "x").route_by == "top1"
    cfg = load_config("seed004_clip_b")
    assert all(r.route_by == "top1" for r in cfg.stages["system"].steps)
    labels = _test_labels()
    ws = FakeWorkspace(labels)
    ws.config = SimpleNamespace(cv_folds=4, seed=0, backbones={})  # a top-1 step never builds a probe
    implicit, _ = _cascade(ws, Route("ids:0-2", "spec"))
    explicit, _ = _cascade(ws, Route("ids:0-2", "spec", route_by="top1"))
    assert torch.equal(implicit.scores("test"), explicit.scores("test"))
    assert "probes" not in implicit.record and implicit.param_counts()["fitted"] == 0


def _doc(step: dict, backbones: dict | None = None) -> dict:
    return {"name": "r", "backbones": backbones or {"clip": "toy:clip"},
            "stages": {"zs": {"type": "method", "method": "zeroshot", "backbone": "clip"},
                       "sys": {"type": "cascade", "first": "zs", "steps": [{"stage": "zs", **step}]}},
            "output": "sys"}


@pytest.mark.parametrize("step, match", [
    ({"when": "domain:A", "route_by": "domain_prob"}, "unknown route_by 'domain_prob'"),
    ({"when": "seen", "route_by": "domain_probe"}, "needs `when` to be one 'domain:<Name>"),
    ({"when": "seen&domain:A", "route_by": "domain_probe"}, "needs `when` to be one 'domain:<Name>"),
    ({"when": "domain:A", "route_by": "domain_probe", "probe_features": ["tokens:x"]}, "unknown probe feature view"),
    ({"when": "domain:A", "route_by": "domain_probe", "probe_backbone": "vit"}, "unknown probe_backbone 'vit'"),
    ({"when": "domain:A", "probe_features": ["tokens:0"]}, "only apply with route_by: domain_probe"),
])
def test_config_errors_name_the_bad_value(step, match) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict(_doc(step))


def test_several_backbones_need_a_probe_backbone() -> None:
    with pytest.raises(ConfigError, match="needs probe_backbone"):
        config_from_dict(_doc({"when": "domain:A", "route_by": "domain_probe"}, {"clip": "a", "rn": "b"}))
    cfg = config_from_dict(_doc({"when": "domain:A", "route_by": "domain_probe", "probe_backbone": "rn",
                                 "probe_features": "tokens:2"}, {"clip": "a", "rn": "b"}))
    assert cfg.stages["sys"].steps[0].probe_features == ("tokens:2",)
    assert parse_view("embedding") is None and parse_view("tokens:2") == 2


def test_a_domain_that_does_not_exist_or_has_no_shots_is_a_config_error() -> None:
    ws = FakeWorkspace(_test_labels())
    with pytest.raises(ConfigError, match="no class in domain 'dogs'"):
        _cascade(ws, Route("domain:Dogs", "spec", route_by="domain_probe"))
    with pytest.raises(ConfigError, match=r"domain\(s\) \['c'\] have no shots"):
        _cascade(ws, Route("domain:C", "spec", route_by="domain_probe"))


def test_token_view_gives_mean_and_std_of_a_blocks_tokens(small_clip) -> None:
    view = token_view(small_clip, 0)
    width = small_clip.model.visual.transformer.width
    assert view.embed_dim == 2 * width and view.fingerprint != small_clip.fingerprint
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = view.encode_image(x)
        fmap = small_clip.model.visual.forward_intermediates(x, indices=[0], intermediates_only=True)
    flat = fmap["image_intermediates"][0].flatten(2)
    assert torch.allclose(out[:, :width], flat.mean(2), atol=1e-5)
    assert torch.allclose(out[:, width:], flat.std(2, unbiased=False), atol=1e-5)
    with pytest.raises(ConfigError, match="tokens:5"):
        token_view(small_clip, 5)


def test_probe_on_the_toy_export_chooses_a_view_and_routes_creatures(toy_root, trained_clip, tmp_path) -> None:
    from kshot.features.cache import FeatureStore
    from kshot.pipelines.runner import RunOptions, load_data
    from kshot.pipelines.workspace import Workspace

    cfg = replace(load_config("toy_cascade"), estimate_per_class=0)
    opts = RunOptions(out=tmp_path, test_labels=Path(toy_root) / "test_labels.txt")
    data, _ = load_data(cfg, Path(toy_root), opts)
    ws = Workspace(cfg, data, FeatureStore(tmp_path / "cache"), torch.device("cpu"), loaded={"clip": trained_clip})
    probe = DomainProbe("clip", ("embedding", "tokens:0"), "t").fit(ws)
    assert set(probe.record["cv_accuracy"]) == {"embedding", "tokens:0"}
    assert probe.record["cv_accuracy"][probe.view] == max(probe.record["cv_accuracy"].values())
    doms = np.asarray(data.domains("test"))
    routed = probe.member("test", None, {"creatures"})
    assert routed[doms == "Creatures"].mean() >= 0.6  # recall of the route (labels used only to check)
