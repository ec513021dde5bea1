"""Reading exported method artifacts safely (the worker's reader; no Jittor needed)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest

from kshot.backbones.jittor_pkl import MAGIC
from kshot.errors import CheckpointError
from kshot.interop.export import method_to_jittor_dict, save_jittor_artifact
from kshot.jittor_backend.artifact import parse_method_artifact, read_method_artifact, read_pickle_dict
from kshot.methods import create
from tests.methods.conftest_cachemethods import make_task


def _jt_save(obj: object, path) -> None:
    payload = pickle.dumps(obj, protocol=4)
    path.write_bytes(payload + hashlib.sha1(payload).digest() + MAGIC)


def test_exported_tip_adapter_reads_back(tmp_path):
    task, _ = make_task(c=4, k=2, d=8)
    method = create("tip_adapter").fit(task)
    save_jittor_artifact(method_to_jittor_dict(method), tmp_path / "tip.pkl")
    art = read_method_artifact(tmp_path / "tip.pkl")
    assert art.method == "tip_adapter" and art.meta["alpha"] == method.alpha_
    assert art.config["init_beta"] == method.config.init_beta
    state = method.state_dict()
    assert set(art.arrays) == set(state)
    assert all(np.array_equal(art.arrays[k], state[k].numpy()) for k in state)


def test_plain_pickle_of_numpy_arrays_is_accepted(tmp_path):
    doc = {"kshot_format": "method/1", "method": "linear_probe", "config": "{}", "meta": json.dumps({"C": 1.0}),
           "weight": np.ones((3, 4), np.float32), "bias": np.zeros(3, np.float32)}
    (tmp_path / "lp.pkl").write_bytes(pickle.dumps(doc, protocol=2))
    art = read_method_artifact(tmp_path / "lp.pkl")
    assert art.arrays["weight"].shape == (3, 4) and art.meta == {"C": 1.0}


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_code_in_a_pickle_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    _jt_save({"kshot_format": "method/1", "x": _Evil(str(target))}, tmp_path / "evil.pkl")
    with pytest.raises(CheckpointError, match=r"refused to unpickle global posix\.mkdir"):
        read_pickle_dict(tmp_path / "evil.pkl")
    assert not target.exists()


def test_corrupt_trailer_and_garbage_are_reported(tmp_path):
    _jt_save({"a": np.ones(2)}, tmp_path / "ok.pkl")
    blob = bytearray((tmp_path / "ok.pkl").read_bytes())
    blob[5] ^= 0xFF
    (tmp_path / "bad.pkl").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-1"):
        read_pickle_dict(tmp_path / "bad.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a readable pickle"):
        read_pickle_dict(tmp_path / "junk.pkl")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_pickle_dict(tmp_path / "missing.pkl")


def test_weights_file_is_not_a_method_artifact():
    with pytest.raises(CheckpointError, match="kshot_format is None.*weights file"):
        parse_method_artifact({"visual.proj": np.zeros((2, 2))}, "ViT-B-32.pkl")
    with pytest.raises(CheckpointError, match="'meta' is not valid JSON"):
        parse_method_artifact({"kshot_format": "method/1", "method": "lpp", "config": "{}", "meta": "{oops"})
    with pytest.raises(CheckpointError, match="entry 'x' is a int"):
        parse_method_artifact({"kshot_format": "method/1", "method": "lpp", "config": "{}", "meta": "{}", "x": 3})
