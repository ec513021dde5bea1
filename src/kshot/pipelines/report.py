"""The run report of `kshot challenge`: per stage time, peak memory, estimated accuracy per domain, routes, and the
declared parameter count; written as `report.json` and `report.md`.

Accuracy on the *estimate* split comes from unused pool images (never the shots): it estimates top-1/top-5 before
submitting and is labelled as such. A stage that scores only some classes is measured on the rows whose true class it
scores (e.g. the dog specialist on dog images: its accuracy given perfect routing). A cascade also reports its ranking
after each step, so the effect of each route (e.g. the specialist within its domain) can be read off.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kshot.eval.metrics import summarize, topk_ids
from kshot.outputs import atomic_write_text
from kshot.pipelines.params import human


def peak_host_mb() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


@contextmanager
def measure(record: dict[str, Any], prefix: str) -> Iterator[None]:
    """Time a block and note peak GPU memory during it and the process's peak host memory after it."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        yield
    finally:
        if cuda:
            torch.cuda.synchronize()
            record[f"{prefix}_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        record[f"{prefix}_s"] = round(time.perf_counter() - start, 3)
        record["peak_host_mb"] = peak_host_mb()


def global_top5(scores: torch.Tensor, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-5 global ids of a stage's scores [n, k] over `classes`; rows are padded with the other ids (in id order)
    when k < 5."""
    from kshot.pipelines.cascade import rerank

    full = rerank(torch.zeros(scores.shape[0], num_classes), scores, classes)
    return topk_ids(full, 5).numpy()


def _summary(ids: np.ndarray, labels: np.ndarray, num_classes: int, domains: list[str] | None) -> dict[str, Any]:
    s = summarize(ids, labels, num_classes, domains=domains)
    s.pop("confusions", None)
    return s


def stage_metrics(stage: Any, data: Any, split: str) -> dict[str, Any] | None:
    """Top-1/top-5 (+ per domain) of one stage on the rows of `split` whose label it scores; None without labels."""
    labels = data.labels(split)
    if labels is None or len(labels) == 0:
        return None
    rows = np.flatnonzero(np.isin(labels, stage.classes))
    if len(rows) == 0:
        return None
    full = len(rows) == len(labels)
    scores = stage.scores(split) if full else stage.scores(split, rows)
    ids = global_top5(scores, stage.classes, data.num_classes)
    doms = data.domains(split)
    return _summary(ids, labels[rows], data.num_classes, None if doms is None else [doms[i] for i in rows])


def trace_metrics(stage: Any, data: Any, split: str) -> list[dict[str, Any]] | None:
    """Metrics of a cascade's ranking after each step (needs a full-split run first)."""
    labels = data.labels(split)
    trace = getattr(stage, "traces", {}).get(split)
    if labels is None or not trace:
        return None
    names = ["first: " + stage.first.name] + [f"+ {st.name} (when {w})" for _, w, st in stage.steps]
    return [{"after": n, **_summary(ids, labels, data.num_classes, data.domains(split))}
            for n, ids in zip(names, trace)]


def _by(route: dict[str, Any]) -> str:
    """' by <router>' for steps not routed by the current top-1."""
    by = route.get("route_by", "top1")
    return "" if by == "top1" else f" by {by}"


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    """A human-readable report."""
    r = report
    lines = [f"# kshot challenge: {r['pipeline']}", ""]
    rule = r["rule"]
    lines += [(f"- data: {r['data']['num_classes']} classes ({r['data']['seen_classes']} with shots, "
               f"{r['data']['unseen_classes']} without), {r['data']['shots']} shots, {r['data']['test_images']} test "
               f"images, {r['data']['estimate_images']} pool images for the estimate"),
              f"- rule: {'respected' if rule['compliant'] else '**NOT respected**'} — {rule['detail']}",
              f"- total time {r['total_s']:.1f} s, peak host memory {r['peak_host_mb']:.0f} MiB"
              + (f", peak GPU memory {r['peak_gpu_mb']:.0f} MiB" if r.get("peak_gpu_mb") is not None else ""),
              ""]
    if r.get("result_txt"):
        lines += [f"Submission: `{r['result_txt']}`" + (f" (+ `{r['result_zip']}`)" if r.get("result_zip") else ""),
                  ""]
    if r.get("refused"):
        lines += [f"**Submission refused**: {r['refused']}", ""]
    lines += ["## Stages", "", "| stage | kind | classes | fit s | predict s | peak GPU MiB | tuning |",
              "|---|---|---:|---:|---:|---:|---|"]
    for s in r["stages"]:
        lines.append(f"| {s['name']} | {s['kind']} | {s.get('n_classes', '')} | {s.get('fit_s', 0):.2f} | "
                     f"{s.get('predict_s', 0):.2f} | {s.get('fit_peak_gpu_mb', '–')} | {s.get('tuning', '')} |")
    for split, title in (("estimate", "Estimated accuracy (unused pool images; an estimate, not the leaderboard)"),
                         ("test", "Test accuracy (hidden labels given)")):
        rows = [(s["name"], s["metrics"][split]) for s in r["stages"] if s.get("metrics", {}).get(split)]
        if not rows:
            continue
        domains = sorted({d for _, m in rows for d in m.get("per_domain", {})})
        lines += ["", f"## {title}", "", "| stage | n | top-1 | top-5 | " + " | ".join(f"{d} top-1" for d in domains)
                  + " |", "|---|---:|---:|---:|" + "---:|" * len(domains)]
        for name, m in rows:
            pd = m.get("per_domain", {})
            lines.append(f"| {name} | {m['n']} | {_pct(m['top1'])} | {_pct(m['top5'])} | "
                         + " | ".join(_pct(pd[d]["top1"]) if d in pd else "–" for d in domains) + " |")
        for s in r["stages"]:
            for t in s.get("trace", {}).get(split, []) or []:
                pd = t.get("per_domain", {})
                lines.append(f"| {s['name']} after {t['after']} | {t['n']} | {_pct(t['top1'])} | {_pct(t['top5'])} | "
                             + " | ".join(_pct(pd[d]["top1"]) if d in pd else "–" for d in domains) + " |")
    routes = [(s["name"], s["routes"]) for s in r["stages"] if s.get("routes")]
    if routes:
        lines += ["", "## Routes (images per step)", ""]
        for name, by_split in routes:
            for split, steps in by_split.items():
                lines.append(f"- {name} on {split}: " + ", ".join(
                    f"{x['stage']} ({x['when']}{_by(x)}): {x['rows']}" for x in steps))
    for s in r["stages"]:
        for pr in s.get("probes", []):
            cv = ", ".join(f"{v} {100 * a:.1f}%" for v, a in pr["cv_accuracy"].items()) or "none"
            lines.append(f"- {s['name']} domain probe on {pr['backbone']} ({', '.join(pr['domains'])}): features "
                         f"{pr['view']}, C={pr['C']:.3g}; within-shot cross-validation accuracy: {cv}")
    p = r["parameters"]
    lines += ["", "## Declared parameters", "", "| component | loaded | trainable |", "|---|---:|---:|"]
    for c in p["components"]:
        lines.append(f"| {c['component']} | {human(c['loaded'])} | {human(c['trainable'])} |")
    lines += ["", (f"Total: **{human(p['loaded_total'])}** counting each model once (loaded); "
                   f"**{human(p['by_use_total'])}** counting the text tower once per text classifier encoded "
                   "(by use, seed 004's second count)."), ""]
    if r.get("skipped_images"):
        lines += ["## Unreadable images", ""] + [f"- {p}: {why}" for p, why in r["skipped_images"][:50]] + [""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write report.json and report.md into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "report.json", out / "report.md"
    atomic_write_text(js, json.dumps(report, indent=2, default=_default))
    atomic_write_text(md, render_markdown(report))
    return js, md


def _default(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return str(x)


__all__ = ["global_top5", "measure", "peak_host_mb", "render_markdown", "stage_metrics",
           "trace_metrics", "write_report"]
