"""The cascade/router stage: route each image by its current top-1 to the stage responsible for that group.

Seed 004 (Daheilou/jittor-few-shot-clip-B, test.py): InMaP ranks all 403 classes; an image whose top-1 is a seen class
is re-ranked by the LP++ ensemble over the 374 seen classes; if that top-1 is a Thu-dog class, the dog specialist
re-ranks it among the 130 dogs. As configuration::

    type: cascade
    first: inmap
    steps: [{when: seen, stage: lpp}, {when: "domain:Thu-dog", stage: dog}]

A step may route by a domain probe instead of the top-1 (`route_by: domain_probe`, `kshot.pipelines.router`): it
then catches the rows whose predicted domain is one of its `domain:` group's domains, whatever their current top-1.
Steps sharing a probe (same backbone and feature views) share one fit.

Scores here are rankings, not logits: a re-ranked row lists the step stage's classes first (in that stage's order),
then every other class in the previous order, encoded as integer-valued scores (2C + k − rank for the k step classes,
C − previous rank for the rest). Every row therefore keeps a full, strict ranking of all C classes, and top-5 always
holds 5 distinct ids even when a step stage has fewer than 5 classes. Ties inside a stage go to the lower class id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from kshot.errors import ConfigError
from kshot.pipelines.config import CascadeStageConfig
from kshot.pipelines.groups import parse_group, resolve_group
from kshot.pipelines.router import DomainProbe
from kshot.pipelines.stages import Stage
from kshot.pipelines.workspace import Workspace

log = logging.getLogger(__name__)


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Position of each column in its row's descending order (0 = best; ties -> lower column first). [n, k] int64."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    return ranks


def rerank(previous: torch.Tensor, scores: torch.Tensor, classes: np.ndarray) -> torch.Tensor:
    """Put `classes` first in the order of `scores`, the rest after them in the order of `previous`.

    Args:
        previous: [n, C] current scores over all classes (higher = better).
        scores: [n, k] the step stage's scores over `classes`.
        classes: k global ids.

    Returns:
        float64 [n, C] integer-valued ranking scores.
    """
    c = previous.shape[1]
    k = scores.shape[1]
    out = (c - _ranks(previous)).double()
    out[:, torch.as_tensor(classes)] = (2 * c + k - _ranks(scores)).double()
    return out


class CascadeStage(Stage):
    """See the module docstring and `CascadeStageConfig`."""

    kind = "cascade"

    def __init__(self, name: str, cfg: CascadeStageConfig):
        super().__init__(name)
        self.cfg = cfg
        self.traces: dict[str, list[np.ndarray]] = {}

    def fit(self, ws: Workspace, stages: Mapping[str, Stage]) -> None:
        self.bind(ws)
        c = ws.data.num_classes
        self.classes = np.arange(c, dtype=np.int64)
        self.first = stages[self.cfg.first]
        self.steps = [(resolve_group(r.when, ws.data.info, f"stage {self.name!r} route"), r.when, stages[r.stage])
                      for r in self.cfg.steps]
        self.probes: dict[tuple, DomainProbe] = {}
        self.routers: list[tuple[DomainProbe, set[str]] | None] = []
        for i, r in enumerate(self.cfg.steps):
            self.routers.append(None if r.route_by == "top1" else self._probe_route(ws, r, i))
        self.record.update(first=self.first.name, routes={},
                           steps=[{"when": r.when, "stage": st.name, "route_by": r.route_by}
                                  for r, (_, _, st) in zip(self.cfg.steps, self.steps)])
        if self.probes:
            self.record["probes"] = [{"steps": [i for i, rt in enumerate(self.routers) if rt and rt[0] is p],
                                      **p.record} for p in self.probes.values()]

    def _probe_route(self, ws: Workspace, r: Any, i: int) -> tuple[DomainProbe, set[str]]:
        """The (shared, fitted) domain probe of step i and the lower-cased domains it routes to the step."""
        where = f"stage {self.name!r}, step {i} ({r.when!r})"
        alias = r.probe_backbone or next(iter(ws.config.backbones))
        key = (alias, tuple(r.probe_features))
        if key not in self.probes:
            self.probes[key] = DomainProbe(alias, tuple(r.probe_features), where).fit(ws)
        probe = self.probes[key]
        wanted = {n.strip().lower() for n in parse_group(r.when, where)[0][2].split(",")}
        have = {d.lower() for d in probe.domains}
        missing = sorted(wanted - have)
        if missing:
            raise ConfigError(f"{where}: domain(s) {missing} have no shots, so a domain probe can never predict "
                              f"them; domains with shots: {probe.domains}")
        return probe, wanted

    def _scores(self, split: str, rows: np.ndarray | None) -> torch.Tensor:
        c = self._ws.data.num_classes
        n = self._ws.data.num_rows(split) if rows is None else len(rows)
        current = rerank(torch.zeros(n, c), self.first.scores(split, rows), self.first.classes)
        trace = [_top5(current)]
        routes: list[dict[str, Any]] = [{"stage": self.first.name, "when": "all", "rows": n}]
        for (group, when, stage), router in zip(self.steps, self.routers):
            if router is None:
                hit = np.flatnonzero(np.isin(current.argmax(dim=1).numpy(), group))
            else:
                hit = np.flatnonzero(router[0].member(split, rows, router[1]))
            routes.append({"stage": stage.name, "when": when, "rows": len(hit),
                           "route_by": "top1" if router is None else "domain_probe"})
            if len(hit):
                sub = hit if rows is None else rows[hit]
                current[torch.as_tensor(hit)] = rerank(current[torch.as_tensor(hit)], stage.scores(split, sub),
                                                       stage.classes)
            trace.append(_top5(current))
        if rows is None:
            self.traces[split] = trace
            self.record["routes"][split] = routes
            log.info("%s routes on %s: %s", self.name, split, ", ".join(f"{r['stage']}={r['rows']}" for r in routes))
        return current.float()

    def param_counts(self) -> dict[str, int]:
        return {"fitted": sum(p.param_count() for p in getattr(self, "probes", {}).values()), "trainable": 0}


def _top5(scores: torch.Tensor) -> np.ndarray:
    from kshot.eval.metrics import topk_ids

    return topk_ids(scores, 5).numpy()
