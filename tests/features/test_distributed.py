"""Sharded extraction: ranks split the parts, meet, rank 0 joins; crash resume; part metadata; `kshot extract` flags."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from kshot.data.dataset import Dataset, Item
from kshot.errors import CacheError, ConfigError
from kshot.features import AugmentPolicy, ExtractConfig, FeatureStore
from kshot.features import cache as cache_mod
from kshot.features.distributed import Shard, rank_device, shard_from_env
from tests.helpers import tiny_backbone, write_image_folder

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _dataset(tmp_path: Path, per_class: int = 5) -> Dataset:
    colours = {"red": [(200, 20, 20)] * per_class, "blue": [(20, 20, 200)] * per_class}
    root = write_image_folder(tmp_path / "imgs", colours)
    items = [Item(f"{c}/{i}.png", label) for label, c in enumerate(colours) for i in range(per_class)]
    return Dataset(root, items, list(colours), name="colours")


def _store(root: Path, chunk: int = 3) -> FeatureStore:
    return FeatureStore(root, chunk=chunk, extract=ExtractConfig(batch_size=4, num_workers=0, progress=False))


@pytest.fixture
def calls(monkeypatch):
    """Record the item ranges passed to extract_features (one list per call), thread-safely."""
    seen: list[list[int]] = []
    lock = threading.Lock()
    real = cache_mod.extract_features

    def spy(*a, **k):
        with lock:
            seen.append(list(a[2]))
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "extract_features", spy)
    return seen


def test_shard_owns_parts_round_robin():
    owned = [[p for p in range(7) if Shard(r, 3).owns(p)] for r in range(3)]
    assert owned == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(ConfigError):
        Shard(rank=2, world=2)


def test_dead_rank_leaves_named_missing_parts_and_rerun_computes_only_those(tmp_path, calls):
    ds, bb = _dataset(tmp_path), tiny_backbone()  # 10 items, chunk 3 -> parts 0..3
    store = _store(tmp_path / "cache")
    with pytest.raises(CacheError, match=r"part-base-00001\.safetensors \(rank 1\).*part-base-00003"):
        store.get(bb, ds, shard=Shard(rank=0, world=2, timeout=0))  # rank 1 never ran: don't wait
    assert calls == [[0, 1, 2], [6, 7, 8]] and store.last_computed == ["part-base-00000.safetensors",
                                                                      "part-base-00002.safetensors"]
    entry = store.entry_dir(bb, ds)
    assert not (entry / "manifest.json").exists()
    calls.clear()
    fs = store.get(bb, ds)  # the re-run (one process) computes only rank 1's parts
    assert calls == [[3, 4, 5], [9]]
    fresh = _store(tmp_path / "fresh", chunk=4).get(bb, ds)
    torch.testing.assert_close(fs.features, fresh.features)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["parts"] == {"part-base-00000.safetensors": 0, "part-base-00001.safetensors": 0,
                                 "part-base-00002.safetensors": 0, "part-base-00003.safetensors": 0}
    assert not list(entry.glob("part-*"))


def test_two_ranks_meet_through_the_folder_and_return_the_same_features(tmp_path, calls):
    ds, bb = _dataset(tmp_path), tiny_backbone()
    ds.abspath(4).write_bytes(b"not an image")  # rank 1's part 1 meets it; rank 0 must still report it
    pol = AugmentPolicy("tip", views=1, seed=3)  # parts: base 0-3, view-0 4-7
    out: dict[int, object] = {}

    def rank(r: int) -> None:
        try:
            out[r] = _store(tmp_path / "cache").get(bb, ds, pol, shard=Shard(r, 2, timeout=60, poll=0.05))
        except BaseException as e:  # surfaced below
            out[r] = e

    # rank 1 in a thread; rank 0 starts once rank 1's parts are on disk (augment views seed torch's global RNG,
    # which two threads must not do at once; separate processes, as torchrun runs them, have no such issue)
    one = threading.Thread(target=rank, args=(1,))
    one.start()
    entry = _store(tmp_path / "cache").entry_dir(bb, ds, pol)
    deadline = time.monotonic() + 60
    while len(list(entry.glob("part-*.safetensors"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert one.is_alive()  # rank 1 waits for rank 0
    rank(0)
    one.join(timeout=60)
    fs0, fs1 = out[0], out[1]
    assert not isinstance(fs0, BaseException) and not isinstance(fs1, BaseException), out
    assert sorted(map(tuple, calls)) == sorted(map(tuple, [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]] * 2))
    ref = _store(tmp_path / "single", chunk=10).get(bb, ds, pol)
    for fs in (fs0, fs1):
        torch.testing.assert_close(fs.features, ref.features)
        torch.testing.assert_close(fs.aug_features, ref.aug_features)
        assert [p for p, _ in fs.skipped] == ["red/4.png"] and len(fs) == 9
    manifest = json.loads((_store(tmp_path / "cache").entry_dir(bb, ds, pol) / "manifest.json").read_text())
    assert sorted(manifest["parts"].values()) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert manifest["parts"]["part-0-00000.safetensors"] == 0 and manifest["parts"]["part-0-00001.safetensors"] == 1


def _forge(path: Path, how: str) -> None:
    if how == "torn":
        path.write_bytes(path.read_bytes()[:40])
        return
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    if how == "fingerprint":  # written by another model version
        meta["fingerprint"] = "0123456789abcdef"
    elif how == "format":
        meta["format"] = "1"
    elif how == "range":  # written with another chunk size
        meta["stop"] = str(int(meta["stop"]) - 1)
        tensors["features"] = tensors["features"][:-1]
    tensors["features"] = torch.randn_like(tensors["features"])  # would poison the join if it were trusted
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("how", ["fingerprint", "format", "range", "torn"])
def test_part_with_mismatched_metadata_is_recomputed_with_a_warning(tmp_path, calls, caplog, how):
    ds, bb = _dataset(tmp_path), tiny_backbone()
    store = _store(tmp_path / "cache")
    with pytest.raises(CacheError):
        store.get(bb, ds, shard=Shard(0, 2, timeout=0))  # leaves parts 0 and 2 on disk
    part = store.entry_dir(bb, ds) / "part-base-00002.safetensors"
    _forge(part, how)
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="kshot.features.cache"):
        fs = store.get(bb, ds)
    assert [6, 7, 8] in calls and [0, 1, 2] not in calls
    assert any("part-base-00002.safetensors" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(fs.features, _store(tmp_path / "fresh").get(bb, ds).features)


def test_poll_waits_for_a_slow_rank(tmp_path):
    shard = Shard(0, 2, timeout=5, poll=0.01)
    t0, state = time.monotonic(), {"n": 0}

    def missing():
        state["n"] += 1
        return [] if state["n"] >= 3 else ["part-x"]

    shard.wait_until(missing, "parts")
    assert state["n"] == 3 and time.monotonic() - t0 < 2
    with pytest.raises(CacheError, match="after waiting 0.05 s: part-x"):
        Shard(0, 2, timeout=0.05, poll=0.01).wait_until(lambda: ["part-x"], "parts")


def test_shard_from_env(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(v, raising=False)
    assert shard_from_env() is None
    with pytest.raises(ConfigError, match="RANK, WORLD_SIZE, LOCAL_RANK are not set.*torchrun"):
        shard_from_env(required=True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert shard_from_env() == Shard(3, 4, 1)
    assert rank_device(Shard(3, 4, 1), "cpu") == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ConfigError, match="WORLD_SIZE='four'"):
        shard_from_env()


# ---- kshot extract flags ----------------------------------------------------------------------------------------


@pytest.fixture
def cli_spy(monkeypatch):
    """Run `kshot extract` on the tiny backbone; record the FeatureStore and ExtractConfig each call used."""
    import kshot.cli as cli
    import kshot.features as features

    present = {f.name for f in dataclasses.fields(ExtractConfig)}
    extra = [(n, t, dataclasses.field(default=d)) for n, t, d in
             (("decode", str, "auto"), ("image_cache", object, None), ("compile", bool, False), ("prefetch", int, 4))
             if n not in present]  # until the extractor grows them, so the wiring is tested either way
    cfg_cls = dataclasses.make_dataclass("SpyExtractConfig", extra, bases=(ExtractConfig,),
                                         frozen=ExtractConfig.__dataclass_params__.frozen)
    monkeypatch.setattr(features, "ExtractConfig", cfg_cls)
    monkeypatch.setattr(cli, "_load_backbone", lambda spec, device: tiny_backbone())
    seen: list[FeatureStore] = []
    real_get = FeatureStore.get

    def get(self, *a, **k):
        seen.append(self)
        return real_get(self, *a, **k)

    monkeypatch.setattr(FeatureStore, "get", get)
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(v, raising=False)
    return seen


def test_cli_flags_reach_the_store(tmp_path, cli_spy):
    from kshot.cli import app

    ds = _dataset(tmp_path)
    args = ["extract", str(ds.root), "--layout", "imagefolder", "--cache", str(tmp_path / "c"), "--device", "cpu",
            "--workers", "0"]
    r = runner.invoke(app, [*args, "--chunk", "4", "--decode", "pil", "--image-cache", str(tmp_path / "img"),
                            "--compile"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    store = cli_spy[-1]
    assert store.chunk == 4 and store.last_parts == 3 and len(store.last_computed) == 3
    cfg = store.extract
    assert (cfg.decode, cfg.image_cache, cfg.compile) == ("pil", tmp_path / "img", True)
    r = runner.invoke(app, [*args, "--no-compile"])
    assert r.exit_code == 0 and "reused 10 x 16" in r.output
    assert cli_spy[-1].extract.compile is False and cli_spy[-1].chunk == cache_mod.DEFAULT_CHUNK


@pytest.mark.parametrize("flags, message", [
    (["--decode", "nvdec"], "'nvdec' is not one of auto, gpu, cpu, pil"),
    (["--chunk", "0"], "--chunk"),
    (["--distributed"], "RANK, WORLD_SIZE, LOCAL_RANK are not set"),
])
def test_cli_rejects_bad_flags(tmp_path, cli_spy, flags, message):
    from kshot.cli import app

    ds = _dataset(tmp_path)
    r = runner.invoke(app, ["extract", str(ds.root), "--cache", str(tmp_path / "c"), "--device", "cpu", *flags])
    assert r.exit_code != 0 and not cli_spy
    assert message in r.output + str(r.exception)


def test_cli_without_extractor_support_names_the_setting(tmp_path, monkeypatch):
    import kshot.cli as cli

    @dataclasses.dataclass
    class Bare:  # an extractor config without the new settings
        batch_size: int = 128
        num_workers: int | None = None
        device: str | None = None
        progress: bool = True

    import kshot.features as features

    monkeypatch.setattr(features, "ExtractConfig", Bare)
    with pytest.raises(ConfigError, match="no setting decode"):
        cli._store(tmp_path, "cpu", decode="gpu")


# ---- a real torchrun ---------------------------------------------------------------------------------------------


def _torchrun() -> list[str] | None:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.is_file():
        return [str(exe)]
    if shutil.which("torchrun"):
        return [shutil.which("torchrun")]  # type: ignore[list-item]
    return None


@pytest.mark.skipif(_torchrun() is None or not torch.distributed.is_available()
                    or not torch.distributed.is_gloo_available(),
                    reason="needs torchrun and torch.distributed with the gloo backend")
def test_torchrun_two_ranks_on_cpu(tmp_path):
    """`torchrun --nproc-per-node 2 -m kshot extract` (gloo): each rank computes its parts, rank 0 joins them."""
    ds = _dataset(tmp_path, per_class=10)  # 20 images, chunk 4 -> 5 parts: rank 0 gets 0, 2, 4; rank 1 gets 1, 3
    cache = tmp_path / "cache"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "kshot", "extract", str(ds.root),
           "--layout", "imagefolder", "--backbone", "toy:clip", "--device", "cpu", "--cache", str(cache),
           "--chunk", "4", "--workers", "0"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "rank 0/2: computed 3 of 5 parts" in out and "rank 1/2: computed 2 of 5 parts" in out
    assert "cached 20 x" in out
    from kshot.backbones import load_backbone
    from kshot.data.sources import load_dataset
    from kshot.features import extract_features

    bb, ds = load_backbone("toy:clip", device="cpu"), load_dataset(ds.root, layout="imagefolder", split="train")
    store = _store(cache / "features")  # --cache DIR keeps features in DIR/features, as KSHOT_CACHE=DIR (docs/cli.md)
    fs = store.get(bb, ds)
    assert store.last_hit
    manifest = json.loads((store.entry_dir(bb, ds) / "manifest.json").read_text())
    assert manifest["parts"] == {f"part-base-{c:05d}.safetensors": c % 2 for c in range(5)}
    ref = extract_features(bb, ds, None, ExtractConfig(num_workers=0, progress=False))
    torch.testing.assert_close(fs.features, ref.features, atol=1e-5, rtol=0)
