"""Domain generalisation: ImageNet's drawn shots -> its four variants, from fixture archives in their real structure
(prepare -> check -> `kshot bench --protocol dg`), and the column mapping of a target with a subset of the classes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kshot.cli import app
from kshot.data import catalog
from kshot.data.benchmarks import load_benchmark
from kshot.eval.dg import DGInputs, Target, columns_for, run_dg_cell
from kshot.errors import DataError
from kshot.experiment import draw_selection, drawn_indices
from kshot.features.cache import FeatureStore
from kshot.features.featureset import FeatureSet
from tests.data.coop_archives import PER_CLASS, imagenet_variants, write_archives

runner = CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return " ".join(result.output.split())


def _fs(classes: list[int], labels: list[int]) -> FeatureSet:
    x = torch.eye(3)[classes] + 0.05
    return FeatureSet(x / x.norm(dim=1, keepdim=True), torch.tensor(labels), [f"{i}.jpg" for i in range(len(labels))])


def test_a_subset_target_is_scored_on_its_own_columns():
    labels = np.repeat(np.arange(3), 8)
    used = drawn_indices(labels, [1, 2], [1, 2])
    for k in (1, 2):
        for s in (1, 2):
            sel = draw_selection(labels, k, s)
            assert set(sel.shots) | set(sel.val) <= set(used)  # every draw is among the encoded images
    assert len(used) < len(labels)
    pool = _fs(labels[used].tolist(), labels[used].tolist())
    # target classes 0, 1 are source classes 2, 0: its images look like source classes 2, 0, 0
    sub = Target("sub", _fs([2, 0, 0], [0, 1, 1]), columns_for(["c", "a"], ["a", "b", "c"], "sub"))
    inputs = DGInputs("src", "toy", labels, used, pool, ["a", "b", "c"], torch.eye(3),
                      [Target("src", _fs([0, 1, 2], [0, 1, 2]), np.arange(3)), sub])
    for method in ("zeroshot", "tip_adapter"):
        rec = run_dg_cell(inputs, method, 1, 1, {})
        assert rec["targets"] == {"src": 1.0, "sub": 1.0} and rec["top1"] == 1.0
    with pytest.raises(DataError, match="1 class.*not source classes, e.g. z"):
        columns_for(["a", "z"], ["a", "b", "c"], "other")


def test_bench_dg_from_the_official_archives(tmp_path, monkeypatch):
    dl, data = tmp_path / "dl", tmp_path / "DATA"
    n = write_archives("ImageNet", dl, tmp_path / "s")
    variants = imagenet_variants(dl, tmp_path / "s2")
    sizes = {"ImageNetV2": 6, "ImageNetSketch": 3 * PER_CLASS, "ImageNetA": 2 * PER_CLASS, "ImageNetR": 2 * PER_CLASS}
    monkeypatch.setitem(catalog.CATALOG, "ImageNet", dataclasses.replace(catalog.CATALOG["ImageNet"], classes=n,
                                                                         counts=(n * PER_CLASS, None, 6)))
    for v, c in variants.items():
        monkeypatch.setitem(catalog.CATALOG, v, dataclasses.replace(catalog.CATALOG[v], classes=c,
                                                                    counts=(0, None, sizes[v])))
    names = "imagenet,imagenetv2,imagenet-sketch,imagenet-a,imagenet-r"
    _ok(runner.invoke(app, ["data", "prepare", names, "--root", str(data), "--from", str(dl)]))
    assert "ok" in _ok(runner.invoke(app, ["data", "check", names, "--root", str(data)]))

    encoded = []
    get = FeatureStore.get

    def spy(self, backbone, dataset, *a, **kw):
        encoded.append((dataset.name, len(dataset)))
        return get(self, backbone, dataset, *a, **kw)

    monkeypatch.setattr(FeatureStore, "get", spy)
    out = tmp_path / "out"
    args = ["bench", "--protocol", "dg", "--datasets", "imagenet", "--root", str(data), "--methods",
            "zeroshot,tip_adapter", "--shots", "1", "--seeds", "1,2", "-o", str(out), "--cache", str(tmp_path / "c")]
    text = _ok(runner.invoke(app, args))
    assert "average: over the targets" in text
    pool = load_benchmark(data / "imagenet", "train")
    drawn = len(drawn_indices(pool.labels, [1], [1, 2]))
    assert encoded[0] == ("ImageNet", drawn) and drawn < len(pool)  # only the drawn shots, not the whole pool
    assert sorted(encoded[1:]) == sorted([("ImageNet", 6)] + list(sizes.items()))
    table = json.loads((out / "table_dg.json").read_text())
    targets = ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
    assert table["datasets"] == ["ImageNet", *targets]
    assert [(r["method"], r["shots"]) for r in table["rows"]] == [("tip_adapter", 1), ("zeroshot", 1)]
    for r in table["rows"]:
        assert set(r["cells"]) == set(table["datasets"]) and all(c[2] == 2 for c in r["cells"].values())
        assert r["average"] == pytest.approx(np.mean([r["cells"][t][0] for t in targets]))
    zs = table["rows"][1]
    assert all(c[1] == 0.0 for c in zs["cells"].values())  # zero-shot ignores the draw: no spread over seeds
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and {r["protocol"] for r in recs} == {"dg"} and set(recs[0]["targets"]) == {
        "ImageNet", *targets}
    _ok(runner.invoke(app, args))  # resumable: nothing re-run
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    for name in ("table_dg.md", "table_dg.csv", "table_dg.tex", "dg_curves.png"):
        assert (out / name).stat().st_size > 0
    text = _ok(runner.invoke(app, ["predict", str(data / "imagenet-sketch"), "-o", str(tmp_path / "p.csv"),
                                   "--cache", str(tmp_path / "c")]))
    assert f"wrote {sizes['ImageNetSketch']} predictions" in text and "top1" in text


def test_bench_dg_refuses_before_any_work(tmp_path):
    for extra, expected in ((["--datasets", "toy"], "--protocol dg needs a source and target datasets"),
                            (["--datasets", "toy,toy", "--methods", "tda"], "tda adapt(s) to the test images")):
        r = runner.invoke(app, ["bench", "--protocol", "dg", *extra, "-o", str(tmp_path / "o")])
        assert r.exit_code != 0 and expected in str(r.exception), r.output + repr(r.exception)
        assert not (tmp_path / "o").exists()


def test_dg_source_cell_equals_the_fewshot_cell_and_a_copy_scores_alike(tmp_path, monkeypatch):
    """On the toy world: the DG source column is the few-shot protocol's number, and a target holding the same test
    images (another folder) gets the same accuracy."""
    import shutil

    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    export_world(World(), "imagefolder", tmp_path / "toy", n_train=4, n_val=1, n_test=2, seed=0)
    shutil.copytree(tmp_path / "toy", tmp_path / "toycopy")
    common = ["--methods", "tip_adapter", "--shots", "2", "--seeds", "1", "--cache", str(tmp_path / "c")]
    _ok(runner.invoke(app, ["bench", "--datasets", str(tmp_path / "toy"), "-o", str(tmp_path / "fs"), *common]))
    _ok(runner.invoke(app, ["bench", "--protocol", "dg", "--datasets", f"{tmp_path / 'toy'},{tmp_path / 'toycopy'}",
                            "-o", str(tmp_path / "dg"), *common]))
    (fs,) = [json.loads(x) for x in (tmp_path / "fs" / "results.jsonl").read_text().splitlines()]
    (dg,) = [json.loads(x) for x in (tmp_path / "dg" / "results.jsonl").read_text().splitlines()]
    assert dg["targets"] == {"toy": fs["top1"], "toycopy": fs["top1"]} and 0.05 < fs["top1"]  # above chance (1/80)
    r = runner.invoke(app, ["bench", "--protocol", "dg", "--datasets", f"{tmp_path / 'toy'},{tmp_path / 'toy'}",
                            "-o", str(tmp_path / "dup"), *common])
    assert isinstance(r.exception, DataError) and "both called 'toy'" in str(r.exception)
