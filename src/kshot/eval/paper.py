"""The paper table: per-dataset mean ± std over seeds, the across-dataset average, and the published number.

Rows are (method, shots); columns the datasets, then the average (mean of the per-dataset means, only when every
dataset has the cell), then the published average for that method/backbone/shots (`published_fewshot.json`, each
row citing its source) and our average minus it. Written as Markdown, CSV, JSON and LaTeX.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kshot.data.paths import atomic_write_text

_PUBLISHED = Path(__file__).with_name("published_fewshot.json")


@dataclass
class Row:
    """One (method, shots) row; accuracies in percent, `cells[dataset] = (mean, std, n_seeds)`."""

    method: str
    shots: int
    cells: dict[str, tuple[float, float, int]]
    average: float | None
    published: float | None
    source: str | None

    @property
    def diff(self) -> float | None:
        return None if self.average is None or self.published is None else self.average - self.published


def backbone_key(spec: str) -> str:
    """'open_clip:ViT-B-16@openai' -> 'ViT-B-16@openai' (the published file's spelling); other specs unchanged."""
    return spec.split(":", 1)[1] if spec.startswith("open_clip:") else spec


def published(method: str, backbone: str, shots: int, path: Path = _PUBLISHED) -> tuple[float, str] | None:
    """(published 11-dataset mean in %, its source) for a method/backbone spec/shots, or None."""
    for r in json.loads(path.read_text())["rows"]:
        if r["method"] == method and r["backbone"] == backbone_key(backbone) and str(shots) in r["shots"]:
            return float(r["shots"][str(shots)]), r["source"]
    return None


def paper_rows(records: Sequence[dict[str, Any]], datasets: Sequence[str], backbone: str,
               compare: bool = True, average_of: Sequence[str] | None = None) -> list[Row]:
    """Aggregate protocol records of `datasets` (names as in the records) into table rows.

    Args:
        compare: add the published average (only meaningful when `datasets` are CoOp's 11).
        average_of: the datasets the average is over (default: all; domain generalisation: the targets).
    """
    over = list(datasets if average_of is None else average_of)
    vals: dict[tuple[str, int], dict[str, list[float]]] = {}
    for r in records:
        if r["dataset"] in datasets:
            vals.setdefault((r["method"], r["shots"]), {}).setdefault(r["dataset"], []).append(100 * r["top1"])
    rows = []
    for (method, shots), by_ds in sorted(vals.items()):
        cells = {d: (float(np.mean(v)), float(np.std(v)), len(v)) for d, v in by_ds.items()}
        avg = float(np.mean([cells[d][0] for d in over])) if all(d in cells for d in over) else None
        pub = published(method, backbone, shots) if compare else None
        rows.append(Row(method, shots, cells, avg, pub[0] if pub else None, pub[1] if pub else None))
    return rows


def _fmt(cell: tuple[float, float, int] | None, pm: str = " ± ") -> str:
    if cell is None:
        return "–"
    mean, std, n = cell
    return f"{mean:.2f}" + (f"{pm}{std:.2f}" if n > 1 else "")


def _num(v: float | None, sign: bool = False) -> str:
    return "–" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")


def markdown(rows: Sequence[Row], datasets: Sequence[str], notes: Sequence[str] = ()) -> str:
    """The table as Markdown (top-1 %, mean ± std over seeds), then its sources and `notes` (one line each)."""
    head = ["method", "shots", *datasets, "average", "published", "Δ"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [_fmt(r.cells.get(d)) for d in datasets]
        lines.append(f"| {r.method} | {r.shots} | " + " | ".join(
            [*cells, _num(r.average), _num(r.published), _num(r.diff, sign=True)]) + " |")
    sources = sorted({r.source for r in rows if r.source})
    return "\n".join(lines + [""] + [f"published: {s}" for s in sources] + list(notes)) + "\n"


def latex(rows: Sequence[Row], datasets: Sequence[str]) -> str:
    """The table as a LaTeX tabular (booktabs)."""
    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%")

    cols = "l" + "r" * (len(datasets) + 4)
    head = " & ".join(["Method", "K", *(esc(d) for d in datasets), "Avg.", "Publ.", r"$\Delta$"])
    body = [" & ".join([esc(r.method), str(r.shots), *(_fmt(r.cells.get(d), r" $\pm$ ") for d in datasets),
                        _num(r.average), _num(r.published), _num(r.diff, sign=True)]).replace("–", "--") + r" \\"
            for r in rows]
    return "\n".join([rf"\begin{{tabular}}{{{cols}}}", r"\toprule", head + r" \\", r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}"]) + "\n"


def to_csv(rows: Sequence[Row], datasets: Sequence[str]) -> str:
    """One line per (method, shots): per-dataset mean and std, average, published, difference."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "shots", *(f"{d}{s}" for d in datasets for s in ("", "_std")), "average", "published",
                "diff"])
    for r in rows:
        per = [x for d in datasets for x in ((f"{r.cells[d][0]:.4f}", f"{r.cells[d][1]:.4f}") if d in r.cells
                                             else ("", ""))]
        w.writerow([r.method, r.shots, *per, *("" if v is None else f"{v:.4f}" for v in (r.average, r.published,
                                                                                           r.diff))])
    return buf.getvalue()


def write_tables(rows: Sequence[Row], datasets: Sequence[str], out: Path, stem: str = "table",
                 notes: Sequence[str] = ()) -> list[Path]:
    """Write <stem>.md, .csv, .json and .tex into `out` (atomically; `notes` under the Markdown table, in the JSON
    and as LaTeX comments); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"datasets": list(datasets), "rows": [asdict(r) | {"diff": r.diff} for r in rows], "notes": list(notes)}
    files = {f"{stem}.md": markdown(rows, datasets, notes), f"{stem}.csv": to_csv(rows, datasets),
             f"{stem}.json": json.dumps(payload, indent=2) + "\n",
             f"{stem}.tex": latex(rows, datasets) + "".join(f"% {n}\n" for n in notes)}
    for name, text in files.items():
        atomic_write_text(out / name, text)
    return [out / n for n in files]
