"""Reports built from a finished run: Markdown content, the bit-identity line, plots that are real images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from kshot.continual.report import bit_identical, epoch_records, load_results, write_report
from kshot.errors import KshotError


def test_report_from_a_packnet_run(vgg_run) -> None:
    _, out, state, _ = vgg_run
    path = write_report(out)
    text = path.read_text()
    assert "bit-identical after later tasks: **yes**" in text
    assert f"{state.summary()['average_accuracy']:.2f}" in text
    assert "`features.0`" in text  # capacity table, one row per prunable layer
    for png in ("heatmap.png", "capacity.png", "curves_packnet.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_bit_identity_check_detects_a_changed_digest() -> None:
    assert bit_identical([["a"], ["a", "b"], ["a", "b", "c"]])
    assert not bit_identical([["a"], ["x", "b"], ["x", "b", "c"]])


def test_epoch_records_keep_the_last_copy_of_a_rerun_epoch(tmp_path) -> None:
    rows = [{"kind": "epoch", "task_index": 0, "phase": "train", "epoch": e, "loss": loss}
            for e, loss in [(1, 3.0), (2, 2.0), (1, 1.0)]]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken")
    recs = epoch_records(tmp_path / "log.jsonl")
    assert sorted((r["epoch"], r["loss"]) for r in recs) == [(1, 1.0), (2, 2.0)]


def test_report_of_an_empty_folder_is_an_error(tmp_path) -> None:
    with pytest.raises(KshotError, match="no finished run"):
        load_results(tmp_path)
