"""`kshot data list | prepare | check` and `kshot eval` on prepared CoOp folders (FGVCAircraft, ImageNet: no split
file), through the real CLI, ending in a 1-shot fit on the toy backbone."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from typer.testing import CliRunner

from kshot.cli import app
from kshot.data import catalog
from kshot.errors import DataError
from tests.data.coop_archives import write_archives

runner = CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return " ".join(result.output.split())  # rich wraps long lines


def test_list_names_every_dataset_and_what_it_needs():
    out = _ok(runner.invoke(app, ["data", "list"], env={"COLUMNS": "250"}))
    for e in catalog.CATALOG.values():
        assert e.name in out and e.folder in out
    assert "4,128 / 1,649 / 2,465" in out and "ILSVRC2012_img_val.tar" in out
    assert "StanfordCars: the original ai.stanford.edu link is dead" in out


@pytest.mark.parametrize("name,counts", [("FGVCAircraft", (6, 3, 6)), ("ImageNet", (15, None, 6)),
                                         ("DescribableTextures", None)])
def test_prepare_check_eval_one_shot(name, counts, tmp_path, monkeypatch):
    e = catalog.CATALOG[name]
    classes = write_archives(name, tmp_path / "dl", tmp_path / "s")
    monkeypatch.setitem(catalog.CATALOG, name, dataclasses.replace(e, classes=classes, counts=counts or e.counts))
    data = tmp_path / "DATA"
    out = _ok(runner.invoke(app, ["data", "prepare", name, "--root", str(data), "--from", str(tmp_path / "dl")]))
    assert f"prepared in {data / e.folder}" in out
    assert "ok" in _ok(runner.invoke(app, ["data", "check", name, "--root", str(data)]))
    _ok(runner.invoke(app, ["eval", str(data / e.folder), "--methods", "tip_adapter", "--shots", "1", "--seeds", "1",
                            "-o", str(tmp_path / "ev"), "--cache", str(tmp_path / "cache")]))
    rec = json.loads((tmp_path / "ev" / "results.jsonl").read_text().splitlines()[0])
    assert rec["dataset"] == name and 0.0 <= rec["top1"] <= 1.0
    # fit and extract read the folder through the same definition (no split file for these two)
    _ok(runner.invoke(app, ["fit", str(data / e.folder), "-m", "tip_adapter", "-k", "1", "-o", str(tmp_path / "fit"),
                            "--cache", str(tmp_path / "cache")]))
    _ok(runner.invoke(app, ["extract", str(data / e.folder), "--split", "test", "--cache", str(tmp_path / "cache")]))
    # predict classifies the folder's test split (images under its image dir) and scores it with its labels
    n_test = json.loads((data / e.folder / "kshot_manifest.json").read_text())["counts"]["test"]
    for how in (["-a", str(tmp_path / "fit")], []):
        out = _ok(runner.invoke(app, ["predict", str(data / e.folder), *how, "-o", str(tmp_path / "p.csv"),
                                      "--cache", str(tmp_path / "cache")]))
        assert f"wrote {n_test} predictions" in out and "top1" in out


def test_check_failure_exits_with_the_problem(tmp_path, monkeypatch):
    e = catalog.CATALOG["EuroSAT"]
    monkeypatch.setitem(catalog.CATALOG, "EuroSAT", dataclasses.replace(e, classes=3))
    write_archives("EuroSAT", tmp_path / "dl", tmp_path / "s")
    data = tmp_path / "DATA"
    _ok(runner.invoke(app, ["data", "prepare", "eurosat", "--root", str(data), "--from", str(tmp_path / "dl")]))
    shutil.rmtree(data / "eurosat" / "2750" / "Forest")
    r = runner.invoke(app, ["data", "check", "eurosat", "--root", str(data)])
    assert isinstance(r.exception, DataError) and "check failed for EuroSAT" in str(r.exception)
    assert "missing, under Forest" in " ".join(r.output.split())
    r = runner.invoke(app, ["eval", str(data), "--methods", "tip_adapter", "--shots", "1", "--seeds", "1"])
    assert isinstance(r.exception, DataError) and "folder of datasets" in str(r.exception)


def test_eval_takes_several_comma_separated_datasets(tmp_path):
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    for name, seed in (("pets", 0), ("sat", 1)):
        export_world(World(), "imagefolder", tmp_path / name, n_train=2, n_val=1, n_test=2, seed=seed)
    both = f"{tmp_path / 'pets'},{tmp_path / 'sat'}"
    _ok(runner.invoke(app, ["eval", both, "--methods", "tip_adapter", "--shots", "1", "--seeds", "1",
                            "-o", str(tmp_path / "ev"), "--cache", str(tmp_path / "cache")]))
    recs = [json.loads(x) for x in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["dataset"] for r in recs) == ["pets", "sat"]
    assert (tmp_path / "ev" / "pets_table.md").is_file() and (tmp_path / "ev" / "sat_table.md").is_file()
    r = runner.invoke(app, ["eval", f"{tmp_path / 'pets'},{tmp_path / 'nope'}", "--methods", "tip_adapter"])
    assert isinstance(r.exception, DataError) and "nope" in str(r.exception) and "comma-separated" in str(r.exception)
