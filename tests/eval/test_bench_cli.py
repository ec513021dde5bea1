"""`kshot bench`: the README's "Reproduce a paper table" toy commands, run as written (resumable, < 60 s)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from kshot.cli import app

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
