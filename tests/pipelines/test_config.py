"""Pipeline configs: shipped files parse, unknown keys and bad references are named, overrides and TOML work."""

from __future__ import annotations

import pytest

from kshot.errors import ConfigError
from kshot.pipelines.config import CascadeStageConfig, EnsembleStageConfig, MethodStageConfig, SpecialistConfig
from kshot.pipelines.configfile import apply_overrides, config_from_dict, config_to_dict, load_config, shipped_configs


def _doc(**extra):
    doc = {"name": "t", "backbones": {"clip": "toy:clip"},
           "stages": {"zs": {"type": "method", "method": "zeroshot", "backbone": "clip"}}, "output": "zs"}
    doc.update(extra)
    return doc


def test_every_shipped_config_parses_and_round_trips() -> None:
    names = {p.stem for p in shipped_configs()}
    assert {"seed004_clip_b", "track1", "seed002_tip_adapter", "baseline_zeroshot", "baseline_logreg",
            "toy_cascade"} <= names
    for path in shipped_configs():
        cfg = load_config(path)
        again = config_from_dict(config_to_dict(cfg), source=cfg.source)
        assert again == cfg, path.name


def test_seed004_structure_matches_the_seed() -> None:
    cfg = load_config("seed004_clip_b")
    system = cfg.stages["system"]
    assert isinstance(system, CascadeStageConfig) and system.first == "inmap"
    assert [(r.when, r.stage) for r in system.steps] == [("seen", "lpp"), ("domain:Thu-dog", "dog")]
    lpp = cfg.stages["lpp"]
    assert isinstance(lpp, EnsembleStageConfig)
    assert [(m.stage, m.weight) for m in lpp.members] == [("lpp_vit", 0.6), ("lpp_rn", 0.4)]
    dog = cfg.stages["dog"]
    assert isinstance(dog, SpecialistConfig) and dog.train == "head" and dog.epochs == 31
    assert isinstance(cfg.stages["inmap_vit"], MethodStageConfig) and cfg.stages["inmap_vit"].classes == "all"


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["stages"]["zs"].update(alpha=1), "'alpha'"),
    (lambda d: d.update(shotz=4), "'shotz'"),
    (lambda d: d["stages"]["zs"].update(backbone="vit"), "unknown backbone alias 'vit'"),
    (lambda d: d["stages"]["zs"].update(type="magic"), "unknown type 'magic'"),
    (lambda d: d.update(output="nope"), "output 'nope'"),
    (lambda d: d["stages"]["zs"].update(classes="domain:"), "empty domain"),
    (lambda d: d["stages"]["zs"].update(classes="everything"), "bad class group term"),
    (lambda d: d["stages"]["zs"].pop("method"), "missing required key(s) ['method']"),
    (lambda d: d.update(shot_pick="random"), "shot_pick"),
])
def test_bad_configs_name_the_problem(mutate, needle) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(ConfigError) as e:
        config_from_dict(doc, source="my.yaml")
    assert needle in str(e.value)


def test_stages_may_only_use_earlier_stages() -> None:
    doc = _doc()
    doc["stages"] = {"mix": {"type": "ensemble", "members": [{"stage": "zs"}]},
                     "zs": {"type": "method", "method": "zeroshot", "backbone": "clip"}}
    doc["output"] = "mix"
    with pytest.raises(ConfigError, match="defined later"):
        config_from_dict(doc)


def test_overrides_reach_nested_fields_and_parse_values() -> None:
    doc = apply_overrides(_doc(), ["stages.zs.classes=domain:Creatures", "shots=2", "backbones.clip=/w/x.pkl",
                                   "stages.zs.params={a: 1}"])
    assert doc["stages"]["zs"]["classes"] == "domain:Creatures" and doc["shots"] == 2
    assert doc["backbones"]["clip"] == "/w/x.pkl" and doc["stages"]["zs"]["params"] == {"a": 1}
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(_doc(), ["shots"])
    cfg = load_config("toy_cascade", ["stages.creature_net.epochs=2"])
    assert cfg.stages["creature_net"].epochs == 2


def test_toml_config_and_relative_prompt_paths(tmp_path) -> None:
    (tmp_path / "p.toml").write_text(
        'name = "tomly"\noutput = "zs"\n[backbones]\nclip = "toy:clip"\n[prompts]\nfile = "prompts"\n'
        '[stages.zs]\ntype = "method"\nmethod = "zeroshot"\nbackbone = "clip"\n')
    cfg = load_config(tmp_path / "p.toml")
    assert cfg.name == "tomly" and cfg.resolve_path(cfg.prompts.file) == tmp_path / "prompts"


def test_unknown_shipped_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="seed004_clip_b"):
        load_config("no_such_pipeline")


def test_method_names_and_params_are_checked_before_any_work() -> None:
    from kshot.pipelines.configfile import config_from_dict

    def doc(method: str, params: dict) -> dict:
        return {"name": "x", "backbones": {"clip": "toy:clip"},
                "stages": {"s": {"type": "method", "method": method, "backbone": "clip", "params": params}},
                "output": "s"}

    with pytest.raises(ConfigError, match=r"stage 's': unknown method 'tip_adaptr' \(did you mean 'tip_adapter'"):
        config_from_dict(doc("tip_adaptr", {}))
    with pytest.raises(ConfigError, match=r"stage 's': TipAdapterConfig\.init_alpha must be a finite number"):
        config_from_dict(doc("tip_adapter", {"init_alpha": float("nan")}))
