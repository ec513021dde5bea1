"""clip_lora on the shipped toy CLIP and toy-world images: it learns, saves only adapters + text classifier,
merges into the same model, refuses unreadable shots and CNN backbones, and resumes after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError, DataError
from kshot.features.featureset import FeatureSet
from kshot.methods import Task, create, load
from kshot.methods.clip_lora import load_adapters_into

ROOT = Path(__file__).resolve().parents[2]


def _world(tmp: Path, classes: int = 4, shots: int = 2):
    from kshot.data.sources import load_dataset
    from kshot.toyworld.export import export_imagefolder
    from kshot.toyworld.generator import World

    world = World()
    split = world.make_split(n_train=shots, n_val=0, n_test=6, seed=0)
    parts = {}
    for part in ("train", "test"):
        data = getattr(split, part)
        mask = data.labels < classes
        parts[part] = replace(data, images=data.images[mask], labels=data.labels[mask])
    split = replace(split, **parts)
    export_imagefolder(split, tmp, parts=("train", "test"))
    return load_dataset(tmp, layout="imagefolder", split="train"), load_dataset(tmp, layout="imagefolder",
                                                                                split="test")


@torch.no_grad()
def _features(bb, ds) -> torch.Tensor:
    from kshot.data.images import load_image

    x = torch.stack([bb.preprocess(load_image(ds.abspath(i))) for i in range(len(ds))])
    return F.normalize(bb.encode_image(x).float(), dim=-1)


def _task(bb, ds, seed: int = 0) -> Task:
    labels = torch.as_tensor(ds.labels)
    fs = FeatureSet(_features(bb, ds), labels, [it.path for it in ds.items])
    return Task(train=fs, classnames=ds.classnames, logit_scale=bb.logit_scale, backbone=bb,
                images={"train": ds}, seed=seed)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from kshot.backbones import load_backbone

    train, test = _world(tmp_path_factory.mktemp("toyworld"))
    return load_backbone("toy:clip"), train, test


def test_fit_lowers_the_loss_and_artifact_holds_only_adapters(toy, tmp_path) -> None:
    bb, train, test = toy
    m = create("clip_lora", iters=40, batch_size=8, lr=5e-4, progress=False).fit(_task(bb, train))
    h = m.history_
    assert sum(h[-5:]) / 5 < sum(h[:5]) / 5
    m.save(tmp_path / "run")
    keys = set(m.state_dict())
    assert keys - {"text_features"} and all(k.startswith("lora.") for k in keys - {"text_features"})
    size = (tmp_path / "run" / "state.safetensors").stat().st_size
    assert size < sum(p.numel() for p in bb.model.parameters()) * 4 / 10  # far below a full checkpoint
    loaded = load(tmp_path / "run").attach_backbone(bb)
    tuned = loaded.tuned_backbone()
    feats = _features(tuned, test)
    assert torch.equal(loaded.logits(feats), m.logits(feats))
    assert tuned.fingerprint != bb.fingerprint


def test_merged_backbone_equals_the_adapter_model(toy) -> None:
    import copy

    bb, train, test = toy
    m = create("clip_lora", iters=10, batch_size=8, lr=5e-4, progress=False).fit(_task(bb, train))
    adapted = copy.deepcopy(bb.model)
    load_adapters_into(adapted, m)
    adapted.eval()
    merged = m.tuned_backbone(bb)
    from kshot.data.images import load_image

    x = torch.stack([bb.preprocess(load_image(test.abspath(i))) for i in range(len(test))])
    tok = bb.tokenize(["a photo of a red star."])
    with torch.no_grad():
        assert torch.allclose(adapted.encode_image(x), merged.model.encode_image(x), atol=1e-5)
        assert torch.allclose(adapted.encode_text(tok), merged.model.encode_text(tok), atol=1e-5)
        assert not torch.allclose(bb.model.encode_image(x), merged.model.encode_image(x), atol=1e-4)


def test_unreadable_shot_is_a_clear_error(toy, tmp_path) -> None:
    bb, train, _ = toy
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    item = replace(train.items[0], path="broken.png")
    ds = replace(train, root=bad, items=[item] + [replace(it, path=str(train.root / it.path)) for it in
                                                  train.items[1:]])
    task = _task(bb, train)
    task.images = {"train": ds}
    with pytest.raises(DataError, match="cannot be read: broken.png"):
        create("clip_lora", iters=2, progress=False).fit(task)


def test_backbone_without_attention_layers_is_refused(toy) -> None:
    from tests.helpers import tiny_backbone

    bb, train, _ = toy
    cnn = tiny_backbone(dim=128)
    cnn.tokenizer = bb.tokenizer
    cnn.model.encode_text = lambda t: torch.zeros(len(t), 128)  # a text tower, but no attention anywhere
    task = _task(bb, train)
    task.backbone = cnn
    with pytest.raises(ConfigError, match="attention layers"):
        create("clip_lora", iters=2, progress=False).fit(task)


_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from tests.methods.test_clip_lora import _world, _task
from kshot.backbones import load_backbone
from kshot.methods import create
from safetensors.torch import save_file
from pathlib import Path
train, _ = _world(Path({data!r}))
bb = load_backbone("toy:clip")
m = create("clip_lora", iters=16, batch_size=8, lr=5e-4, progress=False, checkpoint_every=4,
           checkpoint_dir={ckpt!r}).fit(_task(bb, train))
save_file(m.state_dict(), {out!r})
"""


def _run(tmp: Path, name: str, kill_after_step: int | None = None) -> dict:
    from safetensors.torch import load_file

    script = _SCRIPT.format(tests=str(ROOT), data=str(tmp / f"data-{name}"), ckpt=str(tmp / f"ck-{name}"),
                            out=str(tmp / f"{name}.safetensors"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    if kill_after_step is not None:
        proc = subprocess.Popen([sys.executable, "-c", script], env=env)
        index = tmp / f"ck-{name}" / "checkpoint.json"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if index.is_file() and '"step": ' in index.read_text() and int(
                    index.read_text().split('"step": ')[1].split(",")[0]) >= kill_after_step:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    return load_file(str(tmp / f"{name}.safetensors"))


def test_killed_run_resumes_to_the_same_adapters(tmp_path) -> None:
    whole = _run(tmp_path, "whole")
    resumed = _run(tmp_path, "killed", kill_after_step=4)
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_validation_accuracy_is_reported(toy, caplog) -> None:
    import logging

    bb, train, test = toy
    task = _task(bb, train)
    task.images = {"train": train, "val": test}
    with caplog.at_level(logging.INFO, logger="kshot.tuning.engine"):
        create("clip_lora", iters=4, batch_size=8, progress=False, val_every=2).fit(task)
    assert [r.getMessage() for r in caplog.records if "val acc" in r.getMessage()][-1].startswith("clip_lora step 4/4")
