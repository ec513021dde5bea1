"""`kshot -q` turns off every progress bar even though tqdm was imported before the flag was parsed."""

from __future__ import annotations

import io
import re
from pathlib import Path

import tqdm.auto  # noqa: F401  (imported first on purpose: TQDM_DISABLE set later does not reach tqdm itself)

from kshot import progress

SRC = Path(__file__).resolve().parents[1] / "src" / "kshot"


def _drawn(**kw) -> str:
    out = io.StringIO()
    for _ in progress.bar(range(3), file=out, mininterval=0, **kw):
        pass
    return out.getvalue()


def test_quiet_disables_bars_made_after_tqdm_import(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert "3/3" in _drawn()
    progress.set_quiet(True)
    try:
        assert _drawn() == "" and _drawn(auto=False) == ""
        assert progress.is_quiet()
    finally:
        progress.set_quiet(False)
    assert "3/3" in _drawn() and not progress.is_quiet()


def test_user_tqdm_disable_is_kept(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    progress.set_quiet(False)
    assert _drawn() == ""


def test_no_module_makes_its_own_tqdm_bar():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "progress.py"
                 and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(encoding="utf-8"), re.M)]
    assert not offenders, f"make bars with kshot.progress.bar so `-q` reaches them: {offenders}"


def test_cli_quiet_flag_sets_the_switch(monkeypatch):
    from typer.testing import CliRunner

    from kshot.cli import app

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    try:
        CliRunner().invoke(app, ["-q", "methods"])
        assert progress.is_quiet()
    finally:
        progress.set_quiet(False)
