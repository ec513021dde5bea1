"""kshot.experiment: the CoOp shot/val rule, Task construction by capabilities, zero-shot on a class list, FittedRun,
and the resumable sweep store (test identity in the key, torn lines, duplicate cells)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.errors import CheckpointError, ConfigError
from kshot.eval.fewshot import FewShotInputs, FewShotProtocol, run_fewshot
from kshot.eval.report import markdown_table
from kshot.experiment import (
    FittedRun,
    ResultStore,
    build_task,
    data_identity,
    draw_selection,
    empty_features,
    zeroshot_on,
)
from kshot.features.featureset import FeatureSet
from kshot.methods import create


def _fs(n_per: int, c: int = 4, d: int = 8, seed: int = 0, tag: str = "x") -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(c).repeat_interleave(n_per)
    feats = F.normalize(torch.randn(len(labels), d, generator=g) + 2 * torch.eye(c, d)[labels], dim=-1)
    return FeatureSet(feats, labels, [f"{tag}/{i}.jpg" for i in range(len(labels))])


def _inputs(test: FeatureSet) -> FewShotInputs:
    return FewShotInputs("toy", "bb", _fs(8), test, [f"c{i}" for i in range(4)], F.normalize(torch.eye(4, 8), dim=-1))


@pytest.mark.parametrize("k,kv", [(0, 1), (1, 1), (2, 2), (4, 4), (16, 4)])
def test_validation_rule_is_min_max_k_1_4(k, kv):
    labels = np.repeat(np.arange(3), 30)
    sel = draw_selection(labels, k, seed=1)
    assert len(sel.shots) == 3 * k and len(sel.val) == 3 * kv and not set(sel.shots) & set(sel.val)


def test_build_task_reads_capabilities():
    test = _fs(2, seed=5)
    train = _fs(2)
    inmap, tip = create("inmap"), create("tip_adapter")
    assert build_task(inmap, train, ["a"] * 4, None, test=test, backbone="bb").unlabeled is test
    t = build_task(tip, train, ["a"] * 4, None, test=test, backbone="bb", val=empty_features(8))
    assert t.unlabeled is None and t.backbone is None and t.val is None


def test_zeroshot_on_class_list_and_for_classes():
    tw = F.normalize(torch.randn(3, 8), dim=-1)
    m = zeroshot_on(["a", "b", "c"], tw, 50.0)
    x = F.normalize(torch.randn(5, 8), dim=-1)
    assert torch.allclose(m.logits(x), 50.0 * x @ tw.T)
    moved = m.for_classes(["d", "e"], tw[:2])
    assert torch.allclose(moved.logits(x), 50.0 * x @ tw[:2].T)
    assert create("tip_adapter").for_classes(["d"], tw[:1]) is None
    with pytest.raises(ConfigError, match="needs a text tower"):
        zeroshot_on(["a"], None)


def test_fitted_run_roundtrip_and_backbone_check(tmp_path):
    m = zeroshot_on(["a", "b"], F.normalize(torch.randn(2, 8), dim=-1))
    FittedRun(m, {"backbone": "toy:clip", "fingerprint": "abc", "shots": 0}).save(tmp_path / "r")
    run = FittedRun.load(tmp_path / "r")
    assert run.info["shots"] == 0 and torch.equal(run.method.weights_, m.weights_)
    assert not list((tmp_path / "r").glob("*.tmp"))

    class BB:
        fingerprint = "xyz"

    with pytest.raises(CheckpointError, match="fitted on backbone abc but toy:clip now loads as xyz"):
        run.check_backbone(BB(), "r")
    (tmp_path / "r" / "task.json").unlink()
    with pytest.raises(CheckpointError, match="no task.json"):
        FittedRun.load(tmp_path / "r")


def test_cell_key_includes_the_test_data(tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    proto = FewShotProtocol(["tip_adapter"], (1,), (1,), {"tip_adapter": {"search": False}})
    a, b = _fs(3, seed=7, tag="testA"), _fs(3, seed=8, tag="testB")
    assert data_identity(a) != data_identity(b)
    first = run_fewshot(_inputs(a), proto, store)
    again = run_fewshot(_inputs(a), proto, ResultStore(tmp_path / "results.jsonl"))
    other = run_fewshot(_inputs(b), proto, ResultStore(tmp_path / "results.jsonl"))
    assert again == json.loads(json.dumps(first)) and other[0]["test"] == data_identity(b) != first[0]["test"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2


def test_torn_last_line_is_cut_off_and_duplicates_count_once(tmp_path):
    path = tmp_path / "results.jsonl"
    rec = {"dataset": "d", "backbone": "b", "test": "t", "method": "m", "config_hash": "h", "shots": 1, "seed": 1,
           "top1": 0.5, "top5": 1.0}
    dup = dict(rec, top1=0.7)
    path.write_text(json.dumps(rec) + "\n" + json.dumps(dup) + "\n" + '{"dataset": "d", "backb')
    store = ResultStore(path)
    assert store.records == [dup]  # the later record of one cell wins; it is counted once
    assert path.read_text() == json.dumps(rec) + "\n" + json.dumps(dup) + "\n"  # the torn tail is gone
    store.append(dict(rec, seed=2))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["seed"] for r in lines] == [1, 1, 2]
    table = markdown_table(ResultStore(path).records)
    assert "60.00 ± 10.00" in table  # mean ± std of seeds 1 (0.7) and 2 (0.5), not of three records
