"""Predictions on disk: one row per image (path, top-k ids best first, their scores, their class names, the run)
as CSV, JSON or Parquet."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kshot.errors import DataError
from kshot.eval.metrics import topk_ids
from kshot.outputs import atomic_write, atomic_write_text


FORMATS = ("csv", "json", "parquet")


@dataclass
class Predictions:
    """paths [N], ids int64 [N, k] best first, scores float32 [N, k] (softmax probabilities); `classnames` (all
    classes, indexed by id) names the ids on disk; `run` says where they came from (a `kshot fit` folder, or
    ``zeroshot:<backbone>``)."""

    paths: list[str]
    ids: np.ndarray
    scores: np.ndarray
    classnames: list[str] | None = None
    run: str = ""

    @classmethod
    def from_logits(cls, paths: Sequence[str], logits: torch.Tensor, k: int = 5, *,
                    classnames: Sequence[str] | None = None, run: str = "") -> "Predictions":
        ids = topk_ids(logits, k)
        probs = logits.float().softmax(dim=1).gather(1, ids)
        return cls(list(paths), ids.cpu().numpy(), probs.cpu().numpy(),
                   list(classnames) if classnames else None, run)

    def names(self) -> list[list[str]]:
        """The class name of every id [N][k] ("" without a class list)."""
        cn = self.classnames
        return [[cn[i] if cn and 0 <= i < len(cn) else "" for i in row] for row in self.ids.tolist()]

    def rows(self) -> list[dict]:
        """One dict per image: path, top-k labels (names), ids and scores, the run."""
        return [{"path": p, "labels": n, "ids": i, "scores": [round(float(x), 6) for x in s], "run": self.run}
                for p, n, i, s in zip(self.paths, self.names(), self.ids.tolist(), self.scores.tolist())]

    def write(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write as `fmt` (csv | json | parquet; default: from the suffix of `path`, csv when it has none)."""
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".") or "csv").lower()
        if fmt not in FORMATS:
            raise DataError(f"unknown predictions format {fmt!r} (from {path.name}); use one of {', '.join(FORMATS)}"
                            " (-o NAME.csv|.json|.parquet or --format)")
        if fmt == "csv":
            return self.write_csv(path)
        if fmt == "json":
            return atomic_write_text(path, json.dumps({"run": self.run, "classnames": self.classnames,
                                                       "predictions": self.rows()}, indent=1))
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError("--format parquet needs pyarrow: pip install pyarrow (or write .csv / .json)") from None
        return atomic_write(path, lambda tmp: pq.write_table(pa.Table.from_pylist(self.rows()), tmp))

    def write_csv(self, path: str | Path) -> Path:
        k = self.ids.shape[1]

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["path", *[f"id{i + 1}" for i in range(k)], *[f"score{i + 1}" for i in range(k)],
                            *[f"label{i + 1}" for i in range(k)], "run"])
                for p, ids, sc, names in zip(self.paths, self.ids, self.scores, self.names()):
                    w.writerow([p, *ids.tolist(), *[f"{s:.6f}" for s in sc.tolist()], *names, self.run])

        return atomic_write(path, write)

    @classmethod
    def read(cls, path: str | Path) -> "Predictions":
        """Read a CSV or JSON written by `write` (told apart by content), class names and run included."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise DataError(f"predictions file not found: {path}") from None
        if not text.lstrip().startswith("{"):
            return cls.read_csv(path)
        try:
            data = json.loads(text)
            rows = data["predictions"]
            ids = np.asarray([r["ids"] for r in rows], dtype=np.int64)
            scores = np.asarray([r["scores"] for r in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}: not a kshot predictions JSON") from None
        k = ids.shape[1] if ids.ndim == 2 else 0
        return cls([r["path"] for r in rows], ids.reshape(-1, k), scores.reshape(-1, k), data.get("classnames"),
                   data.get("run", ""))

    @classmethod
    def read_csv(cls, path: str | Path) -> "Predictions":
        path = Path(path)
        try:
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
        except FileNotFoundError:
            raise DataError(f"predictions file not found: {path}") from None
        if not rows or rows[0][0] != "path":
            raise DataError(f"{path}: not a kshot predictions CSV (header must start with 'path')")
        head = rows[0]
        id_cols = [j for j, h in enumerate(head) if re.fullmatch(r"id\d+", h)]
        sc_cols = [j for j, h in enumerate(head) if re.fullmatch(r"score\d+", h)]
        name_cols = [j for j, h in enumerate(head) if re.fullmatch(r"label\d+", h)]
        run_col = head.index("run") if "run" in head else None
        k = len(id_cols)
        paths, ids, scores, runs = [], [], [], set()
        names: dict[int, str] = {}
        for n, row in enumerate(rows[1:], 2):
            if len(row) != len(head) or len(sc_cols) != k:
                raise DataError(f"{path}:{n}: expected {len(head)} columns, got {len(row)}")
            try:
                ids.append([int(row[j]) for j in id_cols])
                scores.append([float(row[j]) for j in sc_cols])
            except ValueError:
                raise DataError(f"{path}:{n}: non-numeric id or score") from None
            for i, j in zip(ids[-1], name_cols):
                if row[j]:
                    names[i] = row[j]
            if run_col is not None:
                runs.add(row[run_col])
            paths.append(row[0])
        classnames = [names.get(i, "") for i in range(max(names) + 1)] if names else None
        return cls(paths, np.asarray(ids, dtype=np.int64).reshape(-1, k), np.asarray(scores, np.float32).reshape(-1, k),
                   classnames, runs.pop() if len(runs) == 1 else "")


def read_labels(path: str | Path, classnames: Sequence[str] | None) -> dict[str, int]:
    """`<image path> <label>` lines -> {path: class id}; a label is a class id or a class name (of `classnames`,
    spaces and underscores alike: the name may then contain spaces). The images need not exist on this machine."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise DataError(f"labels file not found: {path}") from None
    key = {_norm(n): i for i, n in enumerate(classnames or [])}
    out: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if len(line.split()) == 1 and "," in line:  # "path,label"
            line = " ".join(line.rsplit(",", 1))
        tokens = line.split()
        if len(tokens) < 2:
            raise DataError(f"{path}:{n}: expected '<image path> <label>', got {line!r}")
        found = None
        for j in range(len(tokens) - 1, 0, -1):  # the longest trailing words naming a class (names may have spaces)
            label = " ".join(tokens[j:])
            if (j == len(tokens) - 1 and label.isdigit()) or _norm(label) in key:
                found = (line.rsplit(maxsplit=len(tokens) - j)[0], label)
        if found is None:
            label = tokens[-1]
            if classnames:
                raise DataError(f"{path}:{n}: unknown class {label!r}; the predictions' classes: "
                                f"{', '.join(list(classnames)[:10])}{' ...' if len(classnames) > 10 else ''}")
            raise DataError(f"{path}:{n}: label {label!r} is not a class id and the predictions carry no class "
                            "names; use ids, or predictions written by `kshot predict` (label columns)")
        img, label = found[0].replace("\\", "/"), found[1]
        out[img] = int(label) if label.isdigit() and _norm(label) not in key else key[_norm(label)]
    return out


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())
