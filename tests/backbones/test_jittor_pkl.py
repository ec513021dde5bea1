"""Safe Jittor .pkl reading (three payload shapes, trailer, hostile pickles) and the jt.save-compatible writer."""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kshot.backbones.jittor_pkl import (
    MAGIC,
    loads_weights,
    read_jittor_artifact,
    read_jittor_pkl,
    save_jittor_pkl,
    strip_trailer,
)
from kshot.errors import CheckpointError

from .conftest import fake_jittor, jittor_bytes


def _reference() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "visual.proj": rng.standard_normal((4, 3)).astype(np.float32),
        "logit_scale": np.array(4.6052, dtype=np.float32),
        "ids": np.arange(5, dtype=np.int64),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_dict_of_torch_tensors_jclip_style(tmp_path: Path) -> None:
    ref = _reference()
    state = collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in ref.items())
    out = read_jittor_pkl(_write(tmp_path / "jclip.pkl", jittor_bytes(pickle.dumps(state, protocol=4))))
    assert list(out) == list(ref)
    for k, v in ref.items():
        assert isinstance(out[k], np.ndarray) and out[k].dtype == v.dtype and np.array_equal(out[k], v), k


def test_torch_tensor_views_dtypes_and_parameters() -> None:
    base = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    state = {
        "rows": base[2:5],  # storage offset 8 into a shared 40-element storage
        "transposed": base.t(),  # non-contiguous strides
        "half": torch.linspace(-1, 1, 7).half(),
        "bf16": torch.tensor([1.5, -2.25, 3.0]).bfloat16(),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.full((2, 2), 0.5)),
    }
    out = loads_weights(pickle.dumps(state, protocol=4))
    for k, t in state.items():
        expected = t.detach().float().numpy() if k == "bf16" else t.detach().numpy()
        assert out[k].shape == expected.shape and np.array_equal(out[k], expected), k
    assert out["half"].dtype == np.float16 and out["flags"].dtype == np.bool_


def test_dict_of_jittor_vars(tmp_path: Path) -> None:
    ref = _reference()
    with fake_jittor() as Var:
        payload = pickle.dumps({k: Var(v) for k, v in ref.items()}, protocol=4)
    assert b"jittor" in payload and b"Var" in payload
    out = read_jittor_pkl(_write(tmp_path / "vars.pkl", jittor_bytes(payload)))
    assert all(np.array_equal(out[k], v) for k, v in ref.items())


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_dict_of_fp16_numpy_without_trailer(tmp_path: Path, protocol: int) -> None:
    ref = {k: v.astype(np.float16) for k, v in _reference().items() if v.dtype == np.float32}
    ref["fortran"] = np.asfortranarray(np.arange(6, dtype=np.float16).reshape(2, 3))
    out = read_jittor_pkl(_write(tmp_path / "fp16.pkl", pickle.dumps(ref, protocol=protocol)))
    for k, v in ref.items():
        assert out[k].dtype == np.float16 and np.array_equal(out[k], v), k


def test_state_dict_wrapper_is_unwrapped() -> None:
    out = loads_weights(pickle.dumps({"state_dict": {"w": np.ones(2, np.float32)}}))
    assert list(out) == ["w"]


def test_trailer_mismatch_is_rejected(tmp_path: Path) -> None:
    blob = bytearray(jittor_bytes(pickle.dumps(_reference(), protocol=4)))
    blob[40] ^= 0xFF  # flip a payload byte; the stored digest no longer matches
    with pytest.raises(CheckpointError, match="SHA-1"):
        read_jittor_pkl(_write(tmp_path / "bad.pkl", bytes(blob)))


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    blob = jittor_bytes(pickle.dumps(_reference(), protocol=4))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_jittor_pkl(_write(tmp_path / "cut.pkl", blob[: len(blob) // 2]))
    with pytest.raises(CheckpointError, match="truncated"):
        strip_trailer(MAGIC[-8:], "tiny.pkl")  # magic but no room for the digest


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such"):
        read_jittor_pkl(tmp_path / "absent.pkl")
    with pytest.raises(CheckpointError, match="empty"):
        read_jittor_pkl(_write(tmp_path / "empty.pkl", b""))


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_os_system_reducer_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _Hostile(marker)}, protocol=4)
    with pytest.raises(CheckpointError, match=r"refused to unpickle global (posix|os|nt)\.system"):
        read_jittor_pkl(_write(tmp_path / "evil.pkl", jittor_bytes(payload)))
    assert not marker.exists()


def test_eval_and_arbitrary_class_are_refused() -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (eval, ("1+1",))

    with pytest.raises(CheckpointError, match="builtins.eval"):
        loads_weights(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="refused to unpickle global collections.Counter"):
        loads_weights(pickle.dumps(collections.Counter(a=1)))


def test_sklearn_model_pickle_is_refused(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=50).fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    with pytest.raises(CheckpointError, match="sklearn"):
        read_jittor_pkl(_write(tmp_path / "best_model.pkl", pickle.dumps(clf)))


def test_joblib_dump_is_refused(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "best_model.pkl"
    joblib.dump({"w": np.ones(3)}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle global joblib"):
        read_jittor_pkl(path)


@pytest.mark.parametrize(
    "obj, message",
    [
        ([np.ones(2)], "found a pickled list"),
        ({"w": np.ones(2), "epoch": 3}, "'epoch' is a int"),
        ({"w": np.array(["a", "b"])}, "not a plain numeric type"),
        ({3: np.ones(2)}, "must be strings"),
    ],
)
def test_non_array_payloads_are_rejected(obj: object, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        loads_weights(pickle.dumps(obj))


def test_object_arrays_are_refused() -> None:
    with pytest.raises(CheckpointError, match="not a plain numeric type"):
        loads_weights(pickle.dumps({"w": np.array([1, "x"], dtype=object)}))


def test_tensor_rebuild_needs_a_real_storage_and_valid_geometry() -> None:
    class FakeTensor:
        def __init__(self, storage: object, size: tuple[int, ...]):
            self.storage, self.size = storage, size

        def __reduce__(self) -> tuple[object, ...]:
            args = (self.storage, 0, self.size, (1,), False, collections.OrderedDict())
            return (torch._utils._rebuild_tensor_v2, args)

    with pytest.raises(CheckpointError, match="without a torch storage"):
        loads_weights(pickle.dumps({"w": FakeTensor("not a storage", (2,))}, protocol=4))
    storage = torch.ones(2).untyped_storage()
    typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
    with pytest.raises(CheckpointError, match="reaches element"):  # 5 elements out of a 2-element storage
        loads_weights(pickle.dumps({"w": FakeTensor(typed, (5,))}, protocol=4))


def test_writer_round_trip_and_plain_pickle_compatibility(tmp_path: Path) -> None:
    state = {
        **_reference(),
        "half": np.linspace(0, 1, 5, dtype=np.float16),
        "bool": np.array([True, False]),
        "big_endian": np.arange(3, dtype=">i4"),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    }
    path = save_jittor_pkl(state, tmp_path / "out" / "ViT-B-32.pkl")
    raw = path.read_bytes()
    payload, digest, magic = raw[:-28], raw[-28:-8], raw[-8:]
    assert magic == MAGIC and hashlib.sha1(payload).digest() == digest
    assert b"numpy.core.multiarray" in payload  # numpy-1.x readers (typical Jittor installs) can resolve it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plain = pickle.loads(payload)  # what jt.load does after checking the trailer
    ours = read_jittor_pkl(path)
    for k, v in state.items():
        assert plain[k].shape == v.shape and np.array_equal(plain[k], v), k
        assert ours[k].dtype == v.dtype.newbyteorder("=") and np.array_equal(ours[k], v), k
    assert [p.name for p in path.parent.iterdir()] == ["ViT-B-32.pkl"]  # no temporary files left


def test_writer_rejects_non_arrays(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a list; only numeric numpy arrays"):
        save_jittor_pkl({"w": [1.0, 2.0]}, tmp_path / "x.pkl")  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="is not a str"):
        save_jittor_pkl({3: np.zeros(2)}, tmp_path / "x.pkl")  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="not a plain numeric type"):
        save_jittor_pkl({"w": np.array(["a"])}, tmp_path / "x.pkl")
    assert not (tmp_path / "x.pkl").exists()


def test_artifact_scalars_round_trip_and_weights_reader_refuses_them(tmp_path: Path) -> None:
    doc = {"kshot_format": "method/1", "alpha": 1.5, "k": 7, "flag": True, "w": np.arange(6, dtype=np.float32)}
    path = save_jittor_pkl(doc, tmp_path / "a.pkl")
    back = read_jittor_artifact(path)
    assert back["kshot_format"] == "method/1" and back["alpha"] == 1.5 and back["k"] == 7 and back["flag"] is True
    np.testing.assert_array_equal(back["w"], doc["w"])
    assert pickle.loads(strip_trailer(path.read_bytes()))["alpha"] == 1.5  # what jt.load does
    with pytest.raises(CheckpointError, match="entry 'kshot_format' is a str, not an array"):
        read_jittor_pkl(path)
