"""Run configs: shipped YAML files, presets, unknown keys, ratio bounds, overrides, config diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kshot.continual.config import (PRESETS, config_from_dict, config_hash, diff_configs, load_config, to_dict)
from kshot.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "continual"


@pytest.mark.parametrize("name", ["csf_vgg16_official.yaml", "csf_vgg16_seed001.yaml", "digits.yaml",
                                  "toyworld.yaml"])
def test_shipped_configs_load_and_round_trip(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert config_from_dict(to_dict(cfg)) == cfg


def test_presets_follow_their_sources() -> None:
    off, seed = load_config(CONFIGS / "csf_vgg16_official.yaml"), load_config(CONFIGS / "csf_vgg16_seed001.yaml")
    s = off.schedule
    assert (s.initial_prune, s.initial_retrain.epochs, s.prune_last) == (0.5, 10, False)
    assert (off.schedule.train.epochs, off.schedule.retrain.epochs, off.schedule.batch_size) == (20, 10, 32)
    assert (seed.schedule.initial_prune, seed.schedule.initial_retrain.epochs, seed.schedule.prune_last) == \
        (0.75, 0, True)
    assert [t.resize for t in off.tasks] == ["square", "square", "short_side"]
    assert off.schedule == PRESETS["official"]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = """
network: {arch: tiny_vgg, pretrained: false}
schedule: {preset: seed001}
tasks:
  - {name: a, source: digits, classes: [0, 1]}
"""


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.trian: unknown key"):
        load_config(_write(tmp_path, BASE.replace("classes: [0, 1]", "classes: [0, 1], trian: x")))
    with pytest.raises(ConfigError, match=r"schedule\.train\.epoch: unknown key"):
        load_config(_write(tmp_path, BASE), ["schedule.train.epoch=3"])


@pytest.mark.parametrize("where", ["schedule.prune", "schedule.initial_prune", "tasks.a.prune"])
@pytest.mark.parametrize("value", ["0", "1", "1.2", "-0.5"])
def test_pruning_ratios_outside_open_unit_interval_are_refused(tmp_path: Path, where: str, value: str) -> None:
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\)"):
        load_config(_write(tmp_path, BASE), [f"{where}={value}"])


def test_overrides_address_tasks_by_name_and_keep_preset_values(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE), ["tasks.a.image_size=16", "schedule.train.epochs=20"])
    assert cfg.tasks[0].image_size == 16
    assert cfg.schedule.train.epochs == 20 and cfg.schedule.train.lr == PRESETS["seed001"].train.lr
    assert cfg.schedule.weight_decay == PRESETS["seed001"].weight_decay


def test_initial_retraining_without_its_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="initial_task"):
        load_config(_write(tmp_path, BASE.replace("seed001", "official")))


def test_diff_names_changed_fields_and_ignores_runtime_ones(tmp_path: Path) -> None:
    a = load_config(_write(tmp_path, BASE))
    b = load_config(_write(tmp_path, BASE), ["schedule.prune=0.5", "device=cuda", "tasks.a.classes=[0, 2]"])
    changes = diff_configs(to_dict(a), to_dict(b))
    assert "schedule.prune: 0.75 -> 0.5" in changes
    assert any(c.startswith("tasks[0].classes") for c in changes)
    assert not any(c.startswith("device") for c in changes)
    assert config_hash(a) == config_hash(load_config(_write(tmp_path, BASE), ["device=cuda"]))
