"""Adding a method touches nothing outside its module: a throw-away method registered here runs through `kshot fit`,
`kshot eval --protocol fewshot`, a pipeline stage, FittedRun save/load and `kshot predict`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from kshot.cli import app
from kshot.config import param
from kshot.errors import ConfigError
from kshot.experiment import FittedRun
from kshot.methods import METHODS, Method, Task, create

NAME = "throwaway_centroid"
runner = CliRunner()


@dataclass(frozen=True)
class CentroidConfig:
    mix: float = param(0.5, ge=0, le=1)


class Centroid(Method):
    """logits = s · f (mix · W + (1 − mix) · M)ᵀ with M the normalised class means of the shots (text-only rows for
    classes without shots)."""

    name = NAME
    config_cls = CentroidConfig
    supports_empty_classes: ClassVar[bool] = True

    def fit(self, task: Task) -> "Centroid":
        tw = task.text_weights.float()
        means = tw.clone()
        for c in task.train.labels.unique().tolist():
            means[c] = F.normalize(task.train.features[task.train.labels == c].float().mean(0), dim=-1)
        self.weights_ = F.normalize(self.config.mix * tw + (1 - self.config.mix) * means, dim=-1)
        self.scale_ = float(task.logit_scale)
        self.fitted_ = True
        return self

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self.scale_ * features.float() @ self.weights_.to(features.device).T

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights_}

    def load_state_dict(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.weights_, self.scale_ = state["weights"], float(meta["scale"])

    def fitted_meta(self) -> dict[str, Any]:
        return {"scale": self.scale_}


@pytest.fixture(scope="module")
def registered():
    METHODS.add(NAME, Centroid, "test-only: class means mixed with text weights")
    yield
    METHODS._entries.pop(NAME)  # noqa: SLF001 (a test-only registration)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = tmp_path_factory.mktemp("toy")
    export_world(World(), "challenge", root / "challenge", n_train=6, n_val=0, n_test=2, seed=0)
    export_world(World(), "imagefolder", root / "folder", n_train=6, n_val=2, n_test=3, seed=0)
    return root


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_throwaway_method_runs_everywhere(registered, world, tmp_path):
    cache = ["--cache", str(tmp_path / "cache")]
    ch, art = world / "challenge", tmp_path / "art"
    _ok(runner.invoke(app, ["fit", str(ch), "-m", NAME, "-k", "2", "--set", "mix=0.25", "-o", str(art), *cache]))
    run = FittedRun.load(art)
    assert run.method.name == NAME and run.method.config.mix == 0.25 and run.info["shots"] == 2
    assert len((art / "shots.txt").read_text().splitlines()) == 2 * 72
    _ok(runner.invoke(app, ["predict", str(ch), "--split", "testA", "-a", str(art), "-o", str(tmp_path / "p.csv"),
                            *cache]))
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 80 * 2

    _ok(runner.invoke(app, ["eval", str(world / "folder"), "--methods", NAME, "--shots", "1", "--seeds", "1",
                            "--set", f"{NAME}.mix=0.75", "-o", str(tmp_path / "ev"), *cache]))
    recs = [json.loads(x) for x in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    assert [(r["method"], r["config"]["mix"]) for r in recs] == [(NAME, 0.75)] and 0 <= recs[0]["top1"] <= 1


def test_throwaway_method_as_a_pipeline_stage(registered, world, tmp_path):
    from kshot.pipelines.configfile import config_from_dict
    from kshot.pipelines.runner import RunOptions, run_challenge

    doc = {"name": "throwaway", "backbones": {"clip": "toy:clip"}, "estimate_per_class": 1,
           "stages": {"c": {"type": "method", "method": NAME, "backbone": "clip", "params": {"mix": 0.5}}},
           "output": "c"}
    res = run_challenge(config_from_dict(doc), world / "challenge",
                        RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c", force=True))
    assert (tmp_path / "o" / "result.txt").is_file() and res.report["stages"]


def test_throwaway_config_ranges_and_name_errors(registered):
    with pytest.raises(ConfigError, match=r"CentroidConfig\.mix must be >= 0 and <= 1, got 2\.0"):
        create(NAME, mix=2.0)
    with pytest.raises(ConfigError, match=rf"did you mean '{NAME}'"):
        create(NAME[:-1])
