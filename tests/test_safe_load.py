"""No file kshot reads makes code run: TorchScript archives are read without `torch.jit.load`, torch files with
`weights_only=True`, and no other module of `src/` calls a loader that could unpickle code."""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from kshot.backbones.checkpoint import read_state_dict
from kshot.errors import CheckpointError
from kshot.safe_load import load_torch_file, read_torchscript_tensors

SRC = Path(__file__).resolve().parents[1] / "src" / "kshot"


class Payload(torch.nn.Module):
    """A TorchScript class whose `__setstate__` writes a file: `torch.jit.load` runs it while loading the archive."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> list[str]:
        return [self.marker]

    @torch.jit.export
    def __setstate__(self, state: list[str]) -> None:
        self.marker = state[0]
        torch.save(torch.ones(1), state[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Model(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.arange(4.0).half())
        self.payload = Payload(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _archive(tmp_path: Path) -> tuple[Path, Path, Model]:
    marker = tmp_path / "PWNED"
    model = Model(str(marker))
    path = tmp_path / "ViT-B-32.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(path))
    return path, marker, model


def test_torchscript_payload_does_not_run_and_tensors_load(tmp_path: Path) -> None:
    path, marker, model = _archive(tmp_path)
    state = read_state_dict(path)
    assert not marker.exists(), "the archive's __setstate__ ran"
    assert set(state) == {"proj.weight", "proj.bias", "scale"}
    assert torch.equal(state["proj.weight"], model.proj.weight.detach())
    assert torch.equal(state["scale"], model.scale) and state["scale"].dtype == torch.float16
    # the payload is live: torch.jit.load does run it (so the assertion above can fail)
    with warnings.catch_warnings(), pytest.raises(RuntimeError):
        warnings.simplefilter("ignore")
        torch.jit.load(str(path))
    assert marker.exists()


def _with_data_pkl(src: Path, dst: Path, data_pkl: bytes) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else zin.read(info))


def test_archive_naming_another_global_is_refused(tmp_path: Path) -> None:
    path, marker, _ = _archive(tmp_path)
    evil = b"\x80\x02cos\nsystem\nq\x00X\x0b\x00\x00\x00touch PWNEDq\x01\x85q\x02Rq\x03."
    bad = tmp_path / "evil.pt"
    _with_data_pkl(path, bad, evil)
    with pytest.raises(CheckpointError, match=r"refused.*os\.system"):
        read_torchscript_tensors(bad)
    assert not marker.exists() and not (Path.cwd() / "PWNED").exists()


def test_storage_too_small_for_its_tensor_is_an_error(tmp_path: Path) -> None:
    path, _, _ = _archive(tmp_path)
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if "/data/" in n]
    cut = tmp_path / "cut.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(cut, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info)[:2] if info.filename in names else zin.read(info))
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_torchscript_tensors(cut)


class Boom:
    def __reduce__(self):  # noqa: ANN204 - the classic pickle payload
        return (Path.touch, (Path(self.marker),))  # type: ignore[attr-defined]


def test_torch_file_with_pickled_code_is_refused_and_not_run(tmp_path: Path) -> None:
    boom = Boom()
    boom.marker = str(tmp_path / "PWNED")  # type: ignore[attr-defined]
    path = tmp_path / "resume.pt"
    torch.save({"step": 3, "x": boom}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_torch_file(path)
    assert not (tmp_path / "PWNED").exists()


def test_toyworld_resume_checkpoint_with_payload_is_refused(tmp_path: Path) -> None:
    from kshot.toyworld.model import ToyClipCfg
    from kshot.toyworld.pretrain import PretrainConfig, pretrain

    small = ToyClipCfg(vision_width=32, vision_layers=1, vision_head_width=16, text_width=32, text_layers=1,
                       text_heads=2, embed_dim=32)
    boom = Boom()
    boom.marker = str(tmp_path / "PWNED")  # type: ignore[attr-defined]
    (tmp_path / "ck").mkdir()
    torch.save({"step": 1, "model": {}, "opt": boom}, tmp_path / "ck" / "resume.pt")
    cfg = PretrainConfig(steps=2, batch_size=8, warmup=1, model=small, checkpoint_every=1,
                         checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(CheckpointError, match="weights_only"):
        pretrain(cfg, progress=False)
    assert not (tmp_path / "PWNED").exists()


def test_resume_checkpoint_round_trips_through_the_safe_loader(tmp_path: Path) -> None:
    buf = io.BytesIO()
    import numpy as np

    state = {"rng": np.random.default_rng(0).bit_generator.state, "losses": [1.5], "step": 2, "w": torch.ones(2)}
    torch.save(state, buf)
    (tmp_path / "r.pt").write_bytes(buf.getvalue())
    assert load_torch_file(tmp_path / "r.pt")["rng"] == state["rng"]


_UNSAFE = re.compile(r"\b(torch\.load|pickle\.loads?|jit\.load|joblib\.load|dill\.loads?)\(|allow_pickle=True|"
                     r"weights_only=False")


def test_no_other_module_loads_pickles_or_torchscript() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "safe_load.py" and path.parent == SRC:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _UNSAFE.search(code) and "`" not in code:
                offenders.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not offenders, "load through kshot.safe_load instead:\n" + "\n".join(offenders)
