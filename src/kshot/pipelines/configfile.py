"""Reading pipeline configs: YAML/TOML files (or shipped names) -> `PipelineConfig`, `--set` overrides, and back to a
plain dict. Unknown keys are a `ConfigError` naming the key, the stage and the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kshot.config import apply_overrides as shared_apply_overrides
from kshot.config import load_yaml
from kshot.errors import ConfigError
from kshot.pipelines.config import (
    CONFIG_DIR,
    STAGE_TYPES,
    EnsembleMember,
    PipelineConfig,
    PromptConfig,
    Route,
    StageConfig,
)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and missing required ones."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing} for {cls.__name__}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(cls, key, value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _convert(cls: type, key: str, value: Any, where: str) -> Any:
    """Field-specific conversion of parsed YAML/TOML values into the dataclass field types."""
    if key == "prompts" and value is not None:
        return parse_prompts(value, where)
    if key == "members":
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {{stage, weight}}")
        return tuple(_from_dict(EnsembleMember, m if isinstance(m, Mapping) else {"stage": m}, f"{where}[{i}]")
                     for i, m in enumerate(value))
    if key == "steps":
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {{when, stage}}")
        return tuple(_from_dict(Route, r, f"{where}[{i}]") for i, r in enumerate(value))
    if key == "params":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of method config overrides")
        return dict(value)
    if key in ("templates", "crop_scale", "probe_features") and isinstance(value, list):
        return tuple(value)
    if key == "probe_features" and isinstance(value, str):
        return (value,)
    if key == "domains" and isinstance(value, Mapping):
        return {k: tuple([v] if isinstance(v, str) else v) for k, v in value.items()}
    expected = {f.name: f.type for f in dataclasses.fields(cls)}.get(key, "")
    if "int" in str(expected) and "float" not in str(expected) and isinstance(value, float) and value.is_integer():
        return int(value)
    if "float" in str(expected) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_prompts(value: Any, where: str) -> PromptConfig:
    """A prompts entry: a template string, a list of templates, or a PromptConfig mapping."""
    if isinstance(value, str):
        value = {"templates": [value]}
    elif isinstance(value, list):
        value = {"templates": value}
    return _from_dict(PromptConfig, value, where)


def parse_stage(name: str, data: Any, where: str) -> StageConfig:
    if not isinstance(data, Mapping) or "type" not in data:
        raise ConfigError(f"{where}: stage {name!r} needs a 'type' ({', '.join(STAGE_TYPES)})")
    kind = data["type"]
    if kind not in STAGE_TYPES:
        raise ConfigError(f"{where}: stage {name!r} has unknown type {kind!r}; choose one of {', '.join(STAGE_TYPES)}")
    body = {k: v for k, v in data.items() if k != "type"}
    return _from_dict(STAGE_TYPES[kind], body, f"{where}: stage {name!r}")


def config_from_dict(data: Mapping[str, Any], source: str | None = None) -> PipelineConfig:
    """Build a PipelineConfig from a parsed mapping (YAML/TOML document)."""
    where = source or "pipeline config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the top level must be a mapping")
    body = dict(data)
    stages_raw = body.pop("stages", None)
    if not isinstance(stages_raw, Mapping) or not stages_raw:
        raise ConfigError(f"{where}: 'stages' must be a non-empty mapping of name -> stage")
    stages = {str(n): parse_stage(str(n), s, where) for n, s in stages_raw.items()}
    backbones = body.pop("backbones", {}) or {}
    if not isinstance(backbones, Mapping) or not all(isinstance(v, str) for v in backbones.values()):
        raise ConfigError(f"{where}: 'backbones' must map aliases to spec strings")
    fields = {f.name for f in dataclasses.fields(PipelineConfig)} - {"stages", "backbones", "source"}
    unknown = sorted(set(body) - fields)
    if unknown:
        known = sorted(fields | {"stages", "backbones"})
        raise ConfigError(f"{where}: unknown top-level key(s) {unknown}; known: {known}")
    if "name" not in body:
        body["name"] = Path(source).stem if source else "pipeline"
    kwargs = {k: _convert(PipelineConfig, k, v, f"{where}: {k}") for k, v in body.items()}
    try:
        return PipelineConfig(stages=stages, backbones=dict(backbones), source=source, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def read_document(path: Path) -> dict[str, Any]:
    """Parse a .yaml/.yml or .toml file into a dict."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"pipeline config not found: {path}") from None
    if suffix in (".yaml", ".yml"):
        return load_yaml(path, "pipeline config")
    if suffix == ".toml":
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
    else:
        raise ConfigError(f"{path}: pipeline configs are .yaml, .yml or .toml files")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return doc


def apply_overrides(doc: dict[str, Any], overrides: list[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a copy of a document (`kshot.config.apply_overrides`, the one grammar).

    Example: `stages.dog.classes=domain:Creatures`, `backbones.vit=toy:clip`, `shots=2`.
    """
    return shared_apply_overrides(doc, overrides)


def find_config(name_or_path: str | Path) -> Path:
    """A config file: an existing path, or the name of a shipped config (`configs/pipelines/<name>.yaml`)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    for suffix in (".yaml", ".yml", ".toml"):
        cand = CONFIG_DIR / f"{name_or_path}{suffix}"
        if cand.is_file():
            return cand
    known = ", ".join(sorted(c.stem for c in shipped_configs())) or "(none found)"
    raise ConfigError(f"pipeline config {str(name_or_path)!r} is neither a file nor a shipped config; shipped: {known}")


def shipped_configs() -> list[Path]:
    """The shipped pipeline configs, sorted by name."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p for p in CONFIG_DIR.iterdir() if p.suffix in (".yaml", ".yml", ".toml"))


def load_config(name_or_path: str | Path, overrides: list[str] | Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline config (file path or shipped name) and apply overrides."""
    path = find_config(name_or_path)
    doc = read_document(path)
    if overrides:
        doc = apply_overrides(doc, overrides)
    return config_from_dict(doc, source=str(path))


def config_to_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """A plain, YAML-able dict of a config (stages carry their `type` again)."""
    kinds = {v: k for k, v in STAGE_TYPES.items()}

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, Mapping):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    out = {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in ("stages", "source")}
    out["stages"] = {n: {"type": kinds[type(s)], **plain(s)} for n, s in cfg.stages.items()}
    return out
