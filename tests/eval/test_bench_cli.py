"""`kshot bench`: the README's "Reproduce a paper table" toy commands, run as written (resumable, < 60 s)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kshot.cli import app
from kshot.errors import DataError, KshotError

README = Path(__file__).resolve().parents[2] / "README.md"


def _toy_commands(tag: str = "paper-table-toy") -> list[list[str]]:
    text = README.read_text()
    block = re.search(rf"<!-- {tag} -->\n```bash\n(.*?)```", text, re.S)
    assert block, "README lost its paper-table-toy block"
    return [shlex.split(line)[1:] for line in block.group(1).splitlines() if line.startswith("kshot ")]


def test_readme_paper_table_commands_run_on_the_toy_world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KSHOT_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    commands = _toy_commands()
    assert len(commands) == 2
    for args in commands:
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output + repr(r.exception)
    out = tmp_path / "runs" / "paper-toy"
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 2  # methods x shots x seeds, the second run re-ran nothing
    table = json.loads((out / "table.json").read_text())
    assert table["datasets"] == ["toy"] and len(table["rows"]) == 4
    assert all(r["average"] is not None and r["published"] is None for r in table["rows"])
    for name in ("table.md", "table.csv", "table.tex", "toy_curves.png"):
        assert (out / name).stat().st_size > 0


def test_readme_base2new_table_command_runs_on_the_toy_world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KSHOT_CACHE", str(tmp_path / "cache"))
    (args,) = _toy_commands("paper-table-toy-base2new")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    table = (tmp_path / "runs" / "paper-toy-b2n" / "table_base2new.md").read_text()
    assert "| base | new | HM |" in table and "| toy | zeroshot |" in table and "| toy | coop |" in table


BENCH_CASES = [
    (["--datasets", "toy", "--shots", "1,x"], "--shots '1,x': expected comma-separated ints"),
    (["--datasets", "toy", "--shots", "-2"], "--shots '-2': values must be >= 0"),
    (["--datasets", "toy", "--seeds", "1,,2"], "--seeds '1,,2': expected comma-separated ints"),
    (["--datasets", "toy", "--methods", "tip_adaptr"], "unknown method 'tip_adaptr' (did you mean 'tip_adapter'?)"),
    (["--datasets", "toy", "--methods", "tip_adapter,"], "--methods 'tip_adapter,': expected comma-separated strs"),
    (["--datasets", "toy", "--methods", "tip_adapter", "--set", "init_alpha=nan"], "init_alpha must be a finite"),
    (["--datasets", "toy", "--methods", "tip_adapter,lpp", "--set", "coop.n_ctx=2"], "unknown section 'coop'"),
    (["--datasets", "toy", "--methods", "clip_lora"], "clip_lora train(s) the image encoder on the shot images"),
    (["--datasets", "toy", "--protocol", "b2n"], "unknown protocol 'b2n'"),
    (["--datasets", "toy,,nowhere"], "--datasets 'toy,,nowhere': expected comma-separated strs"),
    (["--datasets", "toy,nowhere"], "dataset folder(s) not found: nowhere"),
    (["--datasets", "coop11"], "--datasets coop11 needs --root DATA"),
]


@pytest.mark.parametrize("extra,expected", BENCH_CASES, ids=[" ".join(c[0]) for c in BENCH_CASES])
def test_bench_refuses_bad_options_before_any_work(tmp_path, monkeypatch, extra, expected):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["bench", *extra, "-o", str(tmp_path / "out"), "--cache", str(tmp_path / "c")])
    assert r.exit_code != 0 and isinstance(r.exception, KshotError), r.output + repr(r.exception)
    msg = str(r.exception)
    assert expected in msg and "\n" not in msg
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()  # no toy export, no features


def test_bench_coop11_names_the_missing_folders(tmp_path):
    (tmp_path / "DATA" / "dtd").mkdir(parents=True)
    r = CliRunner().invoke(app, ["bench", "--datasets", "coop11", "--root", str(tmp_path / "DATA"),
                                 "-o", str(tmp_path / "out")])
    assert isinstance(r.exception, DataError)
    msg = str(r.exception)
    assert "imagenet" in msg and "fgvc_aircraft" in msg and "/dtd" not in msg and "kshot data prepare" in msg


def test_two_commands_from_the_official_archives_give_the_paper_table(tmp_path, monkeypatch):
    """`kshot data prepare coop11 --from DIR` then `kshot bench --datasets coop11` (fewshot and base2new), on fixture
    archives of all eleven datasets in their real structure (README "Reproduce a paper table")."""
    import dataclasses

    from kshot.data import catalog
    from kshot.data.catalog import COOP11
    from tests.data.coop_archives import PER_CLASS, write_archives

    dl, data = tmp_path / "dl", tmp_path / "DATA"
    for name in COOP11:
        n = write_archives(name, dl, tmp_path / "scratch" / name)
        e = catalog.CATALOG[name]
        counts = (PER_CLASS * n, None, 6) if name == "ImageNet" else (6, 3, 6) if name == "FGVCAircraft" else e.counts
        monkeypatch.setitem(catalog.CATALOG, name, dataclasses.replace(e, classes=n, counts=counts))
    runner = CliRunner()
    r = runner.invoke(app, ["data", "prepare", "coop11", "--root", str(data), "--from", str(dl)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    from kshot.features.cache import FeatureStore

    encoded, get = {}, FeatureStore.get

    def spy(self, backbone, dataset, *a, **kw):
        encoded.setdefault(dataset.name, []).append(len(dataset))
        return get(self, backbone, dataset, *a, **kw)

    monkeypatch.setattr(FeatureStore, "get", spy)
    out, cache = tmp_path / "paper", ["--cache", str(tmp_path / "c")]
    r = runner.invoke(app, ["bench", "--datasets", "coop11", "--root", str(data), "--methods", "tip_adapter,zeroshot",
                            "--shots", "1", "--seeds", "1,2", "-o", str(out), *cache])
    assert r.exit_code == 0, r.output + repr(r.exception)
    table = json.loads((out / "table.json").read_text())
    assert table["datasets"] == list(COOP11)  # every CoOp dataset in the few-shot protocol, FGVCAircraft, ImageNet too
    assert len(table["rows"]) == 2 and all(r["average"] is not None for r in table["rows"])
    assert all(c[2] == 2 for r in table["rows"] for c in r["cells"].values())  # two seeds per cell
    assert "| method | shots | ImageNet | Caltech101 |" in (out / "table.md").read_text()
    # the fixtures bring no split_zhou_*.json: those nine splits are seeded, and the table says so
    (note,) = table["notes"]
    assert "seeded split, not CoOp's" in note and "DescribableTextures" in note and "FGVCAircraft" not in note
    assert note in (out / "table.md").read_text() and f"% {note}" in (out / "table.tex").read_text()
    # ImageNet's pool is not encoded whole: only its drawn shots and validation images (1 shot + 1 val, 2 seeds)
    assert encoded["ImageNet"][0] <= 3 * 4 < 3 * PER_CLASS
    r = runner.invoke(app, ["bench", "--protocol", "base2new", "--datasets", "coop11", "--root", str(data),
                            "--methods", "zeroshot", "--shots", "1", "--seeds", "1", "-o", str(tmp_path / "b2n"),
                            *cache])
    assert r.exit_code == 0, r.output + repr(r.exception)
    b2n = (tmp_path / "b2n" / "table_base2new.md").read_text()
    assert all(f"| {n} | zeroshot |" in b2n for n in COOP11)
