"""The one config module: declared field ranges, `from_dict`, the `--set section.key=value` grammar, YAML, hashes.

Every config in kshot is a dataclass. A field may declare its allowed values next to its default::

    alpha: float = param(1.17, ge=0)          # a float >= 0, finite
    steps: tuple[int, int] = param((200, 20), ge=1)   # each item an int >= 1
    policy: str = param("mean", choices=("mean", "concat"))

`validate(config)` checks every field against its type hint (bool, int, float, str, tuples of fixed or any length,
Optional, nested dataclasses) and its declared range; every float must be finite unless the field says
`finite=False`. Errors are `ConfigError`s naming the field, the value and what is allowed. `from_dict` builds a
dataclass from parsed YAML/JSON, rejecting unknown keys with the list of valid ones.

One override grammar serves every command: `section.key=value` (values parsed as YAML), with a bare `key=value`
allowed where a command has a single section (`parse_sets`); nested documents take `a.b.c=value` paths
(`apply_overrides`, list items addressed by index or by their `name`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kshot.errors import ConfigError

_RANGE_KEYS = ("ge", "gt", "le", "lt")


def param(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, choices: Iterable[Any] | None = None,
          finite: bool = True, nonempty: bool | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its allowed values declared in `metadata` (read by `validate`).

    Args:
        default: the field's default (kept exactly as the method's official value).
        ge, gt, le, lt: bounds for a number, or for every item of a tuple of numbers.
        choices: the allowed values (strings, usually).
        finite: floats must be finite (the default); False lets NaN/±inf through.
        nonempty: tuples must have at least one item (default: unless the default itself is empty).
        default_factory: as in `dataclasses.field`.
    """
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "finite": finite,
            "choices": tuple(choices) if choices is not None else None}
    if nonempty is not None or default != ():
        meta["nonempty"] = True if nonempty is None else nonempty
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _describe_range(meta: Mapping[str, Any]) -> str:
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{ops[k]} {meta[k]}" for k in _RANGE_KEYS if meta.get(k) is not None]
    return " and ".join(parts)


def check_value(tp: Any, value: Any, where: str, meta: Mapping[str, Any] | None = None) -> Any:
    """`value` converted to type hint `tp` (int -> float, list -> tuple) and checked against `meta`'s range.

    Raises:
        ConfigError: naming `where`, the value and the allowed type or range.
    """
    meta = meta or {}
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return check_value(a, value, where, meta)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return validate(value, where)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
            if not value and meta.get("nonempty", True):
                raise ConfigError(f"{where} must not be empty")
        else:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} values, got {len(value)}: {list(value)!r}")
            item_types = list(args)
        return tuple(check_value(t, v, f"{where}[{i}]", meta) for i, (t, v) in enumerate(zip(item_types, value)))
    if origin in (list, dict) or tp in (list, dict):
        expect = origin or tp
        if not isinstance(value, expect):
            raise ConfigError(f"{where} must be a {expect.__name__}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return _check_range(value, where, meta)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if meta.get("finite", True) and not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return _check_range(value, where, meta)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return _check_choices(value, where, meta)
    return value


def _check_range(value: float, where: str, meta: Mapping[str, Any]) -> float:
    ok = all(meta.get(k) is None or test(value, meta[k]) for k, test in (
        ("ge", lambda v, b: v >= b), ("gt", lambda v, b: v > b), ("le", lambda v, b: v <= b),
        ("lt", lambda v, b: v < b)))
    if not ok:
        raise ConfigError(f"{where} must be {_describe_range(meta)}, got {value!r}")
    return _check_choices(value, where, meta)


def _check_choices(value: Any, where: str, meta: Mapping[str, Any]) -> Any:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _meta(f: dataclasses.Field) -> Mapping[str, Any]:
    """A field's declared range; a tuple field whose default is empty may stay empty."""
    meta = dict(f.metadata)
    if "nonempty" not in meta and f.default == ():
        meta["nonempty"] = False
    return meta


def validate(config: Any, where: str | None = None) -> Any:
    """A copy of dataclass `config` with every field type-checked, converted and range-checked.

    Raises:
        ConfigError: naming the field (`Class.field`), the value and the allowed type or range.
    """
    cls = type(config)
    where = where or cls.__name__
    hints = _hints(cls)
    changed = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        checked = check_value(hints.get(f.name, Any), value, f"{where}.{f.name}", _meta(f))
        if type(checked) is not type(value) or checked != value:
            changed[f.name] = checked
    return dataclasses.replace(config, **changed) if changed else config


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_keys(cls: type, keys: Iterable[str], where: str) -> None:
    """Raise a ConfigError naming the first key of `keys` that `cls` has no field for, and the valid ones."""
    names = field_names(cls)
    for key in keys:
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (no field {key!r} in {cls.__name__}); valid keys: "
                              f"{', '.join(names) or '(none)'}")


def from_dict(cls: type, data: Mapping[str, Any], where: str | None = None) -> Any:
    """Build (and validate) dataclass `cls` from a mapping; unknown or missing keys are ConfigErrors."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    check_keys(cls, data, where)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    hints = _hints(cls)
    meta = {f.name: _meta(f) for f in dataclasses.fields(cls)}
    kwargs = {k: check_value(hints.get(k, Any), v, f"{where}.{k}", meta[k]) for k, v in data.items()}
    try:
        return validate(cls(**kwargs), where)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def replace(config: Any, overrides: Mapping[str, Any], where: str | None = None) -> Any:
    """A validated copy of `config` with `overrides` (unknown keys are a ConfigError naming the valid ones)."""
    where = where or type(config).__name__
    check_keys(type(config), overrides, where)
    hints = _hints(type(config))
    meta = {f.name: _meta(f) for f in dataclasses.fields(config)}
    kwargs = {k: check_value(hints.get(k, Any), v, f"{where}.{k}", meta[k]) for k, v in overrides.items()}
    return validate(dataclasses.replace(config, **kwargs), where)


def to_dict(config: Any) -> Any:
    """JSON-able nested dict of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def config_hash(doc: Any, length: int = 12) -> str:
    """Hex digest of a config (dataclass or JSON-able document), stable across key order."""
    blob = json.dumps(to_dict(doc), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# ---------------------------------------------------------------- the one override grammar


def parse_list(text: str, option: str, kind: type = int, minimum: float | None = 0) -> list:
    """A comma-separated command-line list: '1,2,4' -> [1, 2, 4] (`kind` int, float or str).

    Raises:
        ConfigError: naming `option`, for an empty list, an empty item, a value that is not a `kind`, or a number
            below `minimum` (None: no bound).
    """
    items = [t.strip() for t in str(text).split(",")]
    example = {int: "1,2,4", float: "0.1,0.5"}.get(kind, "a,b")
    try:
        values = [kind(t) for t in items if t]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated {kind.__name__}s (e.g. {example})") from None
    if not values or len(values) != len(items):
        raise ConfigError(f"{option} {text!r}: expected comma-separated {kind.__name__}s (e.g. {example})")
    if kind in (int, float) and minimum is not None and any(v < minimum for v in values):
        raise ConfigError(f"{option} {text!r}: values must be >= {minimum}")
    return values


def parse_value(text: str) -> Any:
    """A `--set` value: JSON where it parses (`1e-3`, `true`, `[7, 3]`), then any float form (`nan`, `inf`), then
    YAML (`[a, b]`, `yes`); anything else stays a string (and then fails the field's type check by name)."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_pair(pair: str) -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', parsed value)."""
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {pair!r}: expected key=value or key.path=value (e.g. tip_adapter.init_alpha=1)")
    return key.strip(), parse_value(raw)


def parse_sets(pairs: Iterable[str], sections: Iterable[str], default: str | None = None
               ) -> dict[str, dict[str, Any]]:
    """`section.key=value` overrides -> {section: {key: value}}; a bare `key=value` goes to `default`.

    Args:
        pairs: the `--set` arguments.
        sections: the valid section names (e.g. the methods of the run); any other is a ConfigError.
        default: the section of a bare key (None: bare keys are refused).
    """
    valid = list(dict.fromkeys(sections))
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, value = split_pair(pair)
        section, dot, field = key.partition(".")
        if not dot:
            if default is None:
                raise ConfigError(f"--set {pair!r}: use section.key=value with a section among "
                                  f"{', '.join(valid) or '(none)'}")
            section, field = default, key
        elif section not in valid:
            if default is not None and section == "method":
                section = default
            else:
                raise ConfigError(f"--set {pair!r}: unknown section {section!r}; valid sections: "
                                  f"{', '.join(valid) or '(none)'}")
        out.setdefault(section, {})[field] = value
    return out


def apply_overrides(doc: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a nested document with each `a.b.c=value` applied; list items by index or by their `name`."""
    out = copy.deepcopy(dict(doc)) if doc else {}
    pairs = overrides.items() if isinstance(overrides, Mapping) else [split_pair(p) for p in overrides]
    for key, value in pairs:
        if isinstance(value, str):
            value = parse_value(value)
        node: Any = out
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = _list_index(node, part, key)
                if last:
                    node[idx] = value
                node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])} is not a mapping or list")
    return out


def _list_index(node: list[Any], part: str, key: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for i, v in enumerate(node):
        if isinstance(v, dict) and v.get("name") == part:
            return i
    raise ConfigError(f"override {key!r}: no list item {part!r}")


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping read with the safe loader (no tags run code); errors name the file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level of a {what} must be a mapping")
    return doc
