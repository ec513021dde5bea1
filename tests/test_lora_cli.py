"""`kshot fit -m clip_lora`, `kshot lora merge` and the merged checkpoint as `-b toy:clip@FILE` in other commands."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from typer.testing import CliRunner

from kshot.cli import app
from tests.methods.test_clip_lora import _features, _world


def _top1(path: Path) -> list[str]:
    with open(path) as f:
        return [row[1] for row in list(csv.reader(f))[1:]]


def test_fit_merge_and_use_the_merged_backbone(tmp_path: Path) -> None:
    from kshot.backbones import load_backbone
    from kshot.methods import load

    train, test = _world(tmp_path / "data")
    run = tmp_path / "run"
    r = CliRunner()
    common = ["--cache", str(tmp_path / "cache"), "--device", "cpu"]
    res = r.invoke(app, ["fit", str(tmp_path / "data"), "-m", "clip_lora", "-o", str(run), "-k", "2", "--layout",
                         "imagefolder", "--set", "iters=6", "--set", "batch_size=8", "--set", "lr=0.001",
                         "--set", "progress=false", *common])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["lora", "merge", str(run), "-o", str(tmp_path / "merged.safetensors")])
    assert res.exit_code == 0, res.output
    merged = load_backbone(f"toy:clip@{tmp_path / 'merged.safetensors'}")
    method = load(run).attach_backbone(load_backbone("toy:clip"))
    tuned = method.tuned_backbone()
    assert merged.fingerprint != load_backbone("toy:clip").fingerprint
    assert torch.allclose(_features(merged, test), _features(tuned, test), atol=1e-5)
    # the artifact predicts through the tuned encoder; the merged file works as a plain backbone elsewhere
    res = r.invoke(app, ["predict", str(tmp_path / "data"), "-a", str(run), "--layout", "imagefolder",
                         "-o", str(tmp_path / "a.csv"), *common])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["extract", str(tmp_path / "data"), "-b", f"toy:clip@{tmp_path / 'merged.safetensors'}",
                         "--layout", "imagefolder", "--split", "test", *common])
    assert res.exit_code == 0, res.output
    assert len(_top1(tmp_path / "a.csv")) == len(test)


def test_merge_of_a_non_lora_run_is_a_clear_error(tmp_path: Path) -> None:
    _world(tmp_path / "data")
    r = CliRunner()
    common = ["--cache", str(tmp_path / "cache"), "--device", "cpu"]
    res = r.invoke(app, ["fit", str(tmp_path / "data"), "-m", "zeroshot", "-o", str(tmp_path / "zs"), "-k", "1",
                         "--layout", "imagefolder", *common])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["lora", "merge", str(tmp_path / "zs"), "-o", str(tmp_path / "m.safetensors")])
    assert res.exit_code != 0 and "no LoRA adapters" in str(res.exception)


def _lora_fit_args(data: Path, out: Path, cache: Path) -> list[str]:
    return ["fit", str(data), "-m", "clip_lora", "-o", str(out), "-k", "2", "--layout", "imagefolder",
            "--set", "iters=4", "--set", "batch_size=8", "--set", "lr=0.001", "--set", "dropout=0.0",
            "--set", "progress=false", "--cache", str(cache), "--device", "cpu"]


def test_fit_under_torchrun_trains_as_ddp_and_rank0_writes_the_one_artifact(tmp_path: Path) -> None:
    """2 gloo ranks (CPU) = 1 process with the same global batch; rank 0 fills the fresh cache and saves."""
    import os
    import subprocess
    import sys

    from kshot.methods import load

    _world(tmp_path / "data")
    res = CliRunner().invoke(app, _lora_fit_args(tmp_path / "data", tmp_path / "one", tmp_path / "cache1"))
    assert res.exit_code == 0, res.output
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1", COLUMNS="500")  # no wrapped lines
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "kshot", "-v", *_lora_fit_args(tmp_path / "data", tmp_path / "ddp",
                                                                 tmp_path / "cache2")],
                          env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("gloo process group") == 2  # a real DDP run (without one both ranks would train alone)
    assert out.count("fitted clip_lora") == 1 and f"rank 1/2: trained; rank 0 writes {tmp_path / 'ddp'}" in out
    one, ddp = load(tmp_path / "one"), load(tmp_path / "ddp")
    assert one.adapters_.keys() == ddp.adapters_.keys()
    for k, v in one.adapters_.items():
        assert torch.allclose(v, ddp.adapters_[k], atol=1e-4), k
    assert abs(one.meta_["final_loss"] - ddp.meta_["final_loss"]) <= 1e-4
    assert any(v.abs().max() > 0 for k, v in ddp.adapters_.items())  # it trained (LoRA B starts at zero)
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "data"), "-a", str(tmp_path / "ddp"), "--layout",
                                   "imagefolder", "-o", str(tmp_path / "p.csv"), "--cache", str(tmp_path / "cache2"),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(_top1(tmp_path / "p.csv")) > 0


def test_fit_of_a_cached_feature_method_under_torchrun_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    res = CliRunner().invoke(app, ["fit", str(tmp_path), "-m", "lpp", "-o", str(tmp_path / "r")])
    assert res.exit_code != 0 and "without torchrun" in str(res.exception)
