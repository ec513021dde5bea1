"""kshot.config: declared ranges, type checks, the one --set grammar; every registered method's config refuses bad
values with a ConfigError naming the field."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest

import kshot.methods  # noqa: F401  (registers every method)
from kshot.config import apply_overrides, check_value, config_hash, from_dict, param, parse_sets, parse_value, validate
from kshot.errors import ConfigError
from kshot.methods import METHODS, create
from kshot.registry import Registry


def _bad_values(tp: typing.Any, f: dataclasses.Field) -> list[typing.Any]:
    """Values a field of type `tp` must refuse (wrong type, non-finite, out of the declared range, empty)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _bad_values(inner[0], f) if len(inner) == 1 else []
    meta = f.metadata
    low = next((meta[k] for k in ("ge", "gt") if meta.get(k) is not None), None)
    out: list[typing.Any] = []
    if tp is bool:
        out += ["maybe", 1, None]
    elif tp is int:
        out += ["ten", 1.5, True, [1]]
        if low is not None:
            out.append(int(math.floor(low)) - 1)
    elif tp is float:
        out += ["fast", math.nan, math.inf, -math.inf, True]
        if low is not None:
            out.append(low - 1.0 if meta.get("ge") is not None else low)
    elif tp is str:
        out += [1.0, ["a"]]
    elif origin is tuple:
        args = typing.get_args(tp)
        out += ["1,2", 3]
        if args and args[-1] is Ellipsis and f.default != ():
            out.append(())
        elif args and args[-1] is not Ellipsis:
            out.append(tuple(f.default)[:-1])
        item = args[0]
        if item in (int, float):
            bad_item = [math.nan] if item is float else ["x"]
            if low is not None:
                bad_item.append(low - 1)
            for b in bad_item:
                value = list(f.default) or [1]
                value[0] = b
                out.append(value)
    return out


CASES = [(e.name, f.name, bad) for e in METHODS for f in dataclasses.fields(e.obj.config_cls)
         for bad in _bad_values(typing.get_type_hints(e.obj.config_cls)[f.name], f)]


def test_cases_cover_every_method_with_fields():
    with_fields = {e.name for e in METHODS if dataclasses.fields(e.obj.config_cls)}
    assert with_fields and with_fields <= {c[0] for c in CASES}


@pytest.mark.parametrize("method,field,bad", CASES, ids=[f"{m}.{f}={b!r}" for m, f, b in CASES])
def test_every_method_config_refuses_bad_values(method, field, bad):
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        create(method, **{field: bad})


@pytest.mark.parametrize("name", METHODS.names())
def test_defaults_validate_unchanged(name):
    cfg = METHODS.get(name).config_cls()
    assert validate(cfg) == cfg
    assert dataclasses.asdict(create(name).config) == dataclasses.asdict(cfg)


def test_error_names_field_value_and_range():
    with pytest.raises(ConfigError, match=r"TipAdapterConfig\.search_steps\[0\] must be >= 1, got 0"):
        create("tip_adapter", search_steps=[0, 20])
    with pytest.raises(ConfigError, match=r"init_alpha must be a finite number, got nan"):
        create("tip_adapter", init_alpha=parse_value("nan"))
    with pytest.raises(ConfigError, match=r"search must be true or false, got 'maybe'"):
        create("tip_adapter", search=parse_value("maybe"))


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"TipAdapterConfig\.alpah: unknown key \(no field 'alpah' in "
                                          r"TipAdapterConfig\); valid keys: init_beta, init_alpha"):
        create("tip_adapter", alpah=1)


def test_conversions_keep_types():
    cfg = create("tip_adapter", init_alpha=2, search_scale=[7, 3]).config
    assert type(cfg.init_alpha) is float and cfg.search_scale == (7.0, 3.0)
    assert check_value(int, 4.0, "k") == 4 and type(check_value(int, 4.0, "k")) is int


@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = param(0.1, gt=0)
    raw: float = param(math.nan, finite=False)


@dataclasses.dataclass(frozen=True)
class _Outer:
    name: str = param("a", choices=("a", "b"))
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    steps: tuple[int, ...] = param((1,), ge=1)


def test_from_dict_nested_and_choices():
    cfg = from_dict(_Outer, {"inner": {"lr": 1}, "steps": [2, 3]})
    assert cfg.inner.lr == 1.0 and cfg.steps == (2, 3) and math.isnan(cfg.inner.raw)
    with pytest.raises(ConfigError, match=r"_Outer\.inner\.lr must be > 0, got -1"):
        from_dict(_Outer, {"inner": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"_Outer\.name must be one of \['a', 'b'\], got 'c'"):
        from_dict(_Outer, {"name": "c"})
    with pytest.raises(ConfigError, match=r"_Outer\.steps must not be empty"):
        from_dict(_Outer, {"steps": []})
    with pytest.raises(ConfigError, match=r"_Outer\.nme: unknown key"):
        from_dict(_Outer, {"nme": "a"})


def test_parse_sets_one_grammar():
    sets = parse_sets(["tip_adapter.init_alpha=2", "lpp.iters=10", "tip_adapter.search=false"], ["tip_adapter", "lpp"])
    assert sets == {"tip_adapter": {"init_alpha": 2, "search": False}, "lpp": {"iters": 10}}
    assert parse_sets(["alpha=1", "method.beta=[1, 2]"], ["tip_adapter"], default="tip_adapter") == {
        "tip_adapter": {"alpha": 1, "beta": [1, 2]}}
    with pytest.raises(ConfigError, match=r"unknown section 'no_such_method'; valid sections: tip_adapter"):
        parse_sets(["no_such_method.alpha=1"], ["tip_adapter"])
    with pytest.raises(ConfigError, match=r"use section\.key=value"):
        parse_sets(["alpha=1"], ["tip_adapter", "lpp"])
    with pytest.raises(ConfigError, match=r"expected key=value or key\.path=value"):
        parse_sets(["alpha"], ["tip_adapter"], default="tip_adapter")
    assert math.isinf(parse_value("-inf")) and parse_value("ten") == "ten" and parse_value("1e-3") == 1e-3


def test_apply_overrides_paths_and_list_names():
    doc = {"tasks": [{"name": "cubs", "epochs": 1}], "shots": 4}
    out = apply_overrides(doc, ["tasks.cubs.epochs=3", "shots=2", "new.key=x"])
    assert out == {"tasks": [{"name": "cubs", "epochs": 3}], "shots": 2, "new": {"key": "x"}}
    assert doc["shots"] == 4
    with pytest.raises(ConfigError, match="no list item 'dogs'"):
        apply_overrides(doc, ["tasks.dogs.epochs=3"])


def test_config_hash_stable_and_sensitive():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash(create("tip_adapter").config) != config_hash(create("tip_adapter", init_alpha=2.0).config)


def test_registry_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown method 'tip_adaptr' \(did you mean 'tip_adapter'\?\); "
                                          r"registered: .*zeroshot"):
        create("tip_adaptr")
    reg: Registry[int] = Registry("widget")
    with pytest.raises(KeyError):  # still a KeyError for callers that catch one
        reg.get("x")


def test_parse_list_reads_and_refuses_in_one_line():
    from kshot.config import parse_list

    assert parse_list(" 1, 2,4 ", "--shots") == [1, 2, 4]
    assert parse_list("tip_adapter,lpp", "--methods", str) == ["tip_adapter", "lpp"]
    assert parse_list("-1.5", "--x", float, minimum=None) == [-1.5]
    for text, kind, expected in (("1,,2", int, "--o '1,,2': expected comma-separated ints"),
                                 ("", str, "expected comma-separated strs"), ("two", int, "ints (e.g. 1,2,4)"),
                                 ("3,-1", int, "--o '3,-1': values must be >= 0")):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse_list(text, "--o", kind)
