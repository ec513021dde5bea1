"""Bad method names, `--set` values and protocol options are one-line kshot errors raised before any work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kshot.cli import app
from kshot.errors import ConfigError, DataError

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = tmp_path_factory.mktemp("toy")
    export_world(World(), "imagefolder", root / "folder", n_train=6, n_val=2, n_test=3, seed=0)
    return root / "folder"


def _error(args: list[str], kind: type = ConfigError) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and isinstance(result.exception, kind), result.output + repr(result.exception)
    msg = str(result.exception)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


FIT_CASES = [
    (["-m", "tip_adaptr"], r"unknown method 'tip_adaptr' (did you mean 'tip_adapter'?); registered:"),
    (["-m", "tip_adapter", "--set", "search=maybe"], "TipAdapterConfig.search must be true or false, got 'maybe'"),
    (["-m", "tip_adapter", "--set", "init_alpha=nan"], "TipAdapterConfig.init_alpha must be a finite number, got nan"),
    (["-m", "tip_adapter", "--set", "init_beta=inf"], "TipAdapterConfig.init_beta must be a finite number, got inf"),
    (["-m", "tip_adapter_f", "--set", "epochs=ten"], "TipAdapterFConfig.epochs must be an integer, got 'ten'"),
    (["-m", "tip_adapter_f", "--set", "lr=nan"], "TipAdapterFConfig.lr must be a finite number, got nan"),
    (["-m", "lpp", "--set", "lr_factor=fast"], "LPPConfig.lr_factor must be a number, got 'fast'"),
    (["-m", "tip_adapter", "--set", "search_steps=[0,20]"], "TipAdapterConfig.search_steps[0] must be >= 1, got 0"),
    (["-m", "tip_adapter", "--set", "init_alpha=-1"], "TipAdapterConfig.init_alpha must be >= 0, got -1.0"),
    (["-m", "tip_adapter", "--set", "lpp.iters=3"], "unknown section 'lpp'; valid sections: tip_adapter"),
]


@pytest.mark.parametrize("extra,expected", FIT_CASES, ids=[" ".join(c[0]) for c in FIT_CASES])
def test_fit_refuses(world, tmp_path, extra, expected):
    msg = _error(["fit", str(world), *extra, "-o", str(tmp_path / "art"), "--cache", str(tmp_path / "c")])
    assert expected in msg
    assert not (tmp_path / "art").exists()  # refused before anything is written


EVAL_CASES = [
    (["--methods", "tip_adaptr"], "unknown method 'tip_adaptr' (did you mean 'tip_adapter'?)"),
    (["--methods", "tip_adapter", "--set", "no_such_method.alpha=1"], "unknown section 'no_such_method'"),
    (["--methods", "tip_adapter,lpp", "--set", "init_alpha=1"], "use section.key=value"),
    (["--methods", "tip_adapter", "--set", "tip_adapter.init_alpha=nan"], "init_alpha must be a finite number"),
    (["--methods", "tip_adapter", "--shots", "two"], "--shots 'two': expected comma-separated ints"),
    (["--methods", "tip_adapter", "--seeds", "1,,x"], "--seeds '1,,x': expected comma-separated ints"),
    (["--methods", "tip_adapter", "--shots", "-1"], "--shots '-1': values must be >= 0"),
]


@pytest.mark.parametrize("extra,expected", EVAL_CASES, ids=[" ".join(c[0]) for c in EVAL_CASES])
def test_eval_refuses(world, tmp_path, extra, expected):
    msg = _error(["eval", str(world), *extra, "-o", str(tmp_path / "ev"), "--cache", str(tmp_path / "c")])
    assert expected in msg
    assert not (tmp_path / "c").exists()  # nothing extracted


def test_shots_file_must_match_k(world, tmp_path):
    from kshot.data.fewshot import sample_k_shot, write_shots_file
    from kshot.data.sources import load_dataset

    pool = load_dataset(world, split="train")
    one = tmp_path / "one.txt"
    write_shots_file(pool, sample_k_shot(pool.labels, 1, 0), one)
    msg = _error(["fit", str(world), "-m", "tip_adapter", "-k", "4", "--shots-file", str(one), "-o",
                  str(tmp_path / "art"), "--cache", str(tmp_path / "c")], DataError)
    assert "holds 1 shot(s) per class but -k/--shots is 4" in msg
