"""Format sniffing and reading of every checkpoint kind, and precise errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kshot.backbones.checkpoint import read_state_dict, sniff_format
from kshot.errors import CheckpointError

from .conftest import FORMATS

EXPECTED_KIND = {
    "state_dict.pt": "torch_zip",
    "model.safetensors": "safetensors",
    "torchscript.pt": "torchscript",
    "jclip_torch.pkl": "jittor_pkl",
    "jittor_vars.pkl": "jittor_pkl",
    "fp16_numpy.pkl": "jittor_pkl",
    "kshot_export.pkl": "jittor_pkl",
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_same_weights(fmt: str, vit_files: dict[str, Path], vit_model: torch.nn.Module) -> None:
    assert sniff_format(vit_files[fmt]) == EXPECTED_KIND[fmt]
    state = read_state_dict(vit_files[fmt])
    if fmt == "torchscript.pt":  # OpenAI layout: fp16 weights plus integer metadata entries
        assert state["visual.proj"].dtype == torch.float16 and int(state["input_resolution"]) == 64
    for name, ref in vit_model.state_dict().items():
        if name == "attn_mask":
            continue
        assert name in state, name
        assert torch.equal(state[name].float(), ref), name


def test_content_not_suffix_decides(vit_files: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(vit_files["model.safetensors"].read_bytes())
    assert sniff_format(renamed) == "safetensors"
    assert "visual.proj" in read_state_dict(renamed)


def test_wrapped_and_dataparallel_checkpoints_are_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "train.pt"
    torch.save({"state_dict": {"module.w": torch.ones(2), "module.b": torch.zeros(1)}}, path)
    assert set(read_state_dict(path)) == {"w", "b"}


class Pickled:
    """A non-tensor object inside a torch checkpoint (weights_only loading must refuse it)."""


def test_torch_file_with_python_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.pt"
    torch.save({"w": torch.ones(2), "extra": Pickled()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)


def test_non_tensor_entries_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.ones(2), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        read_state_dict(path)


@pytest.mark.parametrize("fmt", ["state_dict.pt", "model.safetensors", "torchscript.pt", "jclip_torch.pkl"])
def test_truncated_checkpoints_fail_clearly(fmt: str, vit_files: dict[str, Path], tmp_path: Path) -> None:
    data = vit_files[fmt].read_bytes()
    cut = tmp_path / f"cut_{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated|corrupt|damaged"):
        read_state_dict(cut)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.pt", b"this is a text file, not weights\n", "not a recognised checkpoint format"),
        ("image.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a recognised checkpoint format"),
        ("empty.safetensors", b"", "empty"),
        ("broken.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00[bad", "damaged .safetensors"),
    ],
)
def test_wrong_file_types(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_state_dict(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        read_state_dict(tmp_path)


def test_fp16_jittor_pkl_is_widened_with_a_note(vit_files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="kshot.backbones.checkpoint"):
        state = read_state_dict(vit_files["fp16_numpy.pkl"])
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert any("are fp16; they are widened" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="kshot.backbones.checkpoint"):
        read_state_dict(vit_files["jclip_torch.pkl"])  # fp32: no note
    assert not any("fp16" in r.getMessage() for r in caplog.records)
