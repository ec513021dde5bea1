"""`kshot align`: per-stage comparison numbers, verdict, Markdown, the command, and one real PyTorch↔Jittor run."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError
from kshot.interop import align as align_mod
from kshot.interop.align import compare, format_align_markdown, verdict
from kshot.interop.cli import align as align_cmd
from kshot.interop.cli import pick_indices
from tests.helpers import write_image_folder
from tests.jittor_backend.helpers import needs_jittor


def _report(**over: Any) -> dict[str, Any]:
    stages = [
        {"stage": "image features", "shape": [4, 8], "max_abs": 2e-6, "mean_abs": 1e-7, "max_rel": 5e-7,
         "torch_s": 0.01, "jittor_s": 0.5},
        {"stage": "text features", "shape": [3, 8], "max_abs": 1e-6, "mean_abs": 1e-7, "max_rel": 2e-7,
         "torch_s": 0.01, "jittor_s": 0.2},
        {"stage": "zero-shot logits", "shape": [4, 3], "max_abs": 1e-5, "mean_abs": 1e-6, "max_rel": 1e-7,
         "top1_agree": 1.0, "top5_agree": 1.0, "k": 3, "torch_s": 0.0, "jittor_s": 0.03},
    ]
    rep = {"backbone": "toy:clip", "stages": stages, "accuracy": [{"what": "zero-shot", "torch": 0.75,
                                                                   "jittor": 0.75}],
           "sizes": {"images": 4, "image_size": 32, "classes": 3, "prompts": 3, "embed_dim": 8, "parameters": 1234},
           "versions": {"python": "3.11", "torch": "2.x", "numpy": "2.x", "jittor": "1.3.11.0",
                        "jittor_python": "/venv/bin/python", "open_clip": "3.3"},
           "devices": {"torch": "cpu", "jittor": "cpu"}, "jittor_startup_s": 1.5, "rtol": 1e-4}
    rep.update(over)
    rep.update(verdict(rep))
    return rep


def test_compare_measures_differences_and_agreement():
    ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    other = ref.clone()
    other[1, 0] = 5.0  # row 1 now ranks class 0 first: top-1 disagrees, top-2 sets differ too
    row = compare(ref, other, topk=True)
    assert row["max_abs"] == 5.0 and row["mean_abs"] == pytest.approx(5.0 / 6)
    assert row["max_rel"] == pytest.approx(5.0 / 3.0)
    assert row["top1_agree"] == 0.5 and row["k"] == 3 and row["top5_agree"] == 1.0  # k = C = 3: same set
    assert "top1_agree" not in compare(ref, ref)
    with pytest.raises(ConfigError, match="cannot compare shapes"):
        compare(ref, ref[:1])


def test_verdict_passes_and_names_failing_stages():
    assert _report()["aligned"] and _report()["verdict"].startswith("aligned")
    rep = _report()
    rep["stages"][0]["max_rel"] = 3e-3
    rep["stages"][2]["top1_agree"] = 0.75
    v = verdict(rep)
    assert not v["aligned"] and "image features" in v["verdict"] and "zero-shot logits" in v["verdict"]
    assert "75.0 %" in v["verdict"]


def test_markdown_has_the_table_accuracy_setup_and_verdict():
    md = format_align_markdown(_report())
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| stage |"))
    assert lines[header + 2].startswith("| image features | 4×8 | 2.00e-06 |")
    assert "| zero-shot logits | 4×3 |" in md and "| 100.0 % | 100.0 % |" in md
    assert "| zero-shot | 75.0 % | 75.0 % |" in md
    assert "Jittor 1.3.11.0 on cpu" in md and "**Verdict: aligned" in md


def test_pick_indices_spreads_over_the_data():
    assert pick_indices(10, None).tolist() == list(range(10))
    assert pick_indices(10, 3).tolist() == [0, 4, 9]
    assert len(pick_indices(100, 7)) == 7
    with pytest.raises(ConfigError):
        pick_indices(10, 0)


def test_command_loads_data_and_writes_report(tmp_path, monkeypatch):
    data = write_image_folder(tmp_path / "data" / "test", {"red": [(200, 0, 0)] * 3, "blue": [(0, 0, 200)] * 3})
    seen: dict[str, Any] = {}

    def fake_report(bb, images, classnames, templates, artifact, **kw):
        seen.update(images=images, classnames=classnames, templates=templates, artifact=artifact, **kw)
        return _report()

    monkeypatch.setattr(align_mod, "align_report", fake_report)
    out, js = tmp_path / "r.md", tmp_path / "r.json"
    align_cmd(data.parent, backbone="toy:clip", classes=None, artifact=None, out=out, json_out=js, limit=4,
              layout="auto", split="test", templates=["a {} thing."], python=None, device="cpu")
    assert seen["images"].shape == (4, 3, 32, 32) and seen["classnames"] == ["blue", "red"]
    assert seen["templates"].templates == ["a {} thing."] and seen["artifact"] is None
    assert sorted(seen["labels"].tolist()) == [0, 0, 1, 1]
    assert "**Verdict: aligned" in out.read_text() and json.loads(js.read_text())["aligned"] is True


# ------------------------------------------------------------------------------------------ real Jittor run
def _toy_task(backbone) -> tuple[Any, torch.Tensor, torch.Tensor, list[str]]:
    from kshot.features.featureset import FeatureSet
    from kshot.methods.base import Task
    from kshot.text.classifier import build_text_classifier
    from kshot.toyworld.generator import World
    from kshot.toyworld.model import images_to_tensor

    world = World()
    ids = world.class_ids("Shapes")[:6]
    names = [world.classnames[i] for i in ids]
    shots = np.repeat(np.arange(len(ids)), 3)
    with torch.no_grad():
        train = F.normalize(backbone.encode_image(images_to_tensor(world.render([ids[i] for i in shots], seed=11),
                                                                   backbone.preprocess_cfg)), dim=-1)
    labels = torch.from_numpy(shots)
    task = Task(train=FeatureSet(train, labels, [f"{i}.png" for i in range(len(shots))]), classnames=names,
                text_weights=build_text_classifier(backbone, names), logit_scale=backbone.logit_scale)
    test_cls = np.tile(np.arange(len(ids)), 3)
    images = images_to_tensor(world.render([ids[i] for i in test_cls], seed=12), backbone.preprocess_cfg)
    return task, images, torch.from_numpy(test_cls), names


@needs_jittor
def test_toy_clip_aligns_end_to_end(tmp_path):
    from kshot.backbones import load_backbone
    from kshot.interop.export import method_to_jittor_dict, save_jittor_artifact
    from kshot.methods import create

    bb = load_backbone("toy:clip")
    task, images, labels, names = _toy_task(bb)
    tip_dir = create("tip_adapter").fit(task).save(tmp_path / "tip")  # a `kshot fit`-style folder
    lpp_pkl = save_jittor_artifact(method_to_jittor_dict(create("lpp").fit(task)), tmp_path / "lpp.pkl")
    rep = align_mod.align_report(bb, images, names, ["a photo of a {}.", "a {} shape."], [tip_dir, lpp_pkl],
                                 labels=labels)
    stages = {s["stage"]: s for s in rep["stages"]}
    assert set(stages) == {"image features", "text features", "zero-shot logits", "tip_adapter head",
                           "tip_adapter head (same features)", "lpp head", "lpp head (same features)"}
    assert stages["image features"]["max_abs"] < 1e-4 and stages["text features"]["max_abs"] < 1e-4
    assert stages["text features"]["shape"] == [2 * len(names), bb.embed_dim]
    for name in ("zero-shot logits", "tip_adapter head", "lpp head", "lpp head (same features)"):
        assert stages[name]["top1_agree"] == 1.0 and stages[name]["top5_agree"] == 1.0, name
    acc = {a["what"]: a for a in rep["accuracy"]}
    assert acc["zero-shot"]["torch"] == acc["zero-shot"]["jittor"] and set(acc) == {"zero-shot", "tip_adapter",
                                                                                      "lpp"}
    assert rep["aligned"] and rep["versions"]["jittor"] and rep["jittor_startup_s"] > 0
    md = format_align_markdown(rep)
    assert "| tip_adapter head (same features) |" in md and "**Verdict: aligned" in md
