import pytest
import torch

from kshot.errors import CheckpointError, ConfigError
from kshot.features.featureset import FeatureSet
from kshot.methods import METHODS, Task, create, load
from kshot.registry import Registry


def test_registry_rejects_duplicates_and_names_known():
    r: Registry[int] = Registry("thing")
    r.add("a", 1, "first")
    with pytest.raises(KeyError, match="already"):
        r.add("a", 2)
    with pytest.raises(KeyError, match="registered: a"):
        r.get("b")


def test_create_rejects_unknown_override():
    with pytest.raises(ConfigError, match="no field"):
        create("zeroshot", alpha=1.0)
    with pytest.raises(KeyError, match="unknown method"):
        create("nope")


def _task():
    g = torch.Generator().manual_seed(0)
    w = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    empty = FeatureSet(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), [])
    return Task(train=empty, classnames=["a", "b", "c"], text_weights=w, logit_scale=50.0)


def test_zeroshot_logits_and_round_trip(tmp_path):
    task = _task()
    m = create("zeroshot").fit(task)
    x = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    torch.testing.assert_close(m.logits(x), 50.0 * x @ task.text_weights.T)
    m2 = load(m.save(tmp_path / "zs"))
    torch.testing.assert_close(m2.logits(x), m.logits(x))


def test_load_rejects_bad_artifacts(tmp_path):
    with pytest.raises(CheckpointError, match="no method.json"):
        load(tmp_path)
    m = create("zeroshot").fit(_task())
    m.save(tmp_path / "a")
    (tmp_path / "a" / "state.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        load(tmp_path / "a")


def test_logits_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="fit"):
        create("zeroshot").logits(torch.zeros(1, 8))


def test_every_method_is_documented():
    for e in METHODS:
        assert e.description, e.name
        assert e.obj.__doc__ or e.obj.__module__
