"""The paper table: aggregation over seeds and datasets, the published column, the four formats."""

from __future__ import annotations

import csv
import io
import json

import pytest

from kshot.data.catalog import COOP11
from kshot.eval.paper import backbone_key, latex, markdown, paper_rows, published, to_csv, write_tables


def _recs(datasets, method="tip_adapter_f", shots=1, accs=((0.5, 0.7),)):
    return [{"dataset": d, "method": method, "shots": shots, "seed": s, "top1": a}
            for d, by_seed in zip(datasets, accs) for s, a in enumerate(by_seed, 1)]


def test_mean_std_per_dataset_and_average_only_when_complete():
    rows = paper_rows(_recs(["A", "B"], accs=((0.5, 0.7), (0.9, 0.9))), ["A", "B"], "toy:clip")
    (r,) = rows
    assert r.cells["A"] == pytest.approx((60.0, 10.0, 2)) and r.cells["B"] == pytest.approx((90.0, 0.0, 2))
    assert r.average == pytest.approx(75.0) and r.published is None and r.diff is None
    (r,) = paper_rows(_recs(["A"]), ["A", "B"], "toy:clip")
    assert r.average is None  # B has no cell: no average


def test_published_column_and_difference_on_the_eleven():
    accs = tuple((0.70,) for _ in COOP11)
    (r,) = paper_rows(_recs(COOP11, accs=accs), list(COOP11), "open_clip:ViT-B-16@openai")
    assert r.published == 70.6 and r.diff == pytest.approx(70.0 - 70.6) and "methods.md" in r.source
    assert published("lpp", "open_clip:ViT-B-16@openai", 16)[0] == 80.3
    assert published("lpp", "open_clip:ViT-B-32@openai", 16) is None
    assert backbone_key("open_clip:RN50@openai") == "RN50@openai"
    (r,) = paper_rows(_recs(COOP11, accs=accs), list(COOP11), "open_clip:ViT-B-16@openai", compare=False)
    assert r.published is None


def test_formats_agree(tmp_path):
    rows = paper_rows(_recs(["A", "B"], accs=((0.5, 0.7), (0.9, 0.9))), ["A", "B"], "toy:clip")
    md = markdown(rows, ["A", "B"])
    assert "| tip_adapter_f | 1 | 60.00 ± 10.00 | 90.00 ± 0.00 | 75.00 | – | – |" in md
    assert r"60.00 $\pm$ 10.00" in latex(rows, ["A", "B"]) and r"tip\_adapter\_f" in latex(rows, ["A", "B"])
    (line,) = list(csv.DictReader(io.StringIO(to_csv(rows, ["A", "B"]))))
    assert float(line["A"]) == 60.0 and float(line["A_std"]) == 10.0 and float(line["average"]) == 75.0
    paths = write_tables(rows, ["A", "B"], tmp_path)
    assert [p.name for p in paths] == ["table.md", "table.csv", "table.json", "table.tex"]
    assert json.loads((tmp_path / "table.json").read_text())["rows"][0]["average"] == 75.0
