"""A method stage that trains the image encoder (clip_lora) leaves a tuned backbone later stages use: the shipped
`clip_lora_tip` config (the 2024 winning recipe) on the toy world's challenge export, with a few iterations."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from kshot.data.images import load_image
from kshot.errors import ConfigError
from kshot.eval.result_file import read_result_txt
from kshot.features.cache import FeatureStore
from kshot.features.extract import ExtractConfig
from kshot.pipelines.configfile import config_from_dict, load_config
from kshot.pipelines.runner import RunOptions, build_stage, load_data, run_challenge
from kshot.pipelines.workspace import Workspace

FAST = {"stages.lora.params": {"iters": 4, "batch_size": 16, "progress": False}, "cv_folds": 2,
        "estimate_per_class": 1}


def test_later_stages_read_the_tuned_backbone(toy_root, small_clip, tmp_path) -> None:
    cfg = load_config("clip_lora_tip", FAST)
    data, _ = load_data(cfg, toy_root, RunOptions(out=tmp_path))
    store = FeatureStore(tmp_path / "cache", extract=ExtractConfig(progress=False, device="cpu"))
    ws = Workspace(cfg, data, store, torch.device("cpu"), loaded={"vit": small_clip})
    before = {k: v.clone() for k, v in small_clip.model.state_dict().items()}
    stages = {}
    for name, st in cfg.stages.items():
        stages[name] = build_stage(name, st)
        stages[name].fit(ws, stages)
    lora = stages["lora"].method
    tuned = ws.backbone("lora")
    assert tuned.fingerprint != small_clip.fingerprint and tuned.spec.endswith("+lora")
    assert all(torch.equal(v, small_clip.model.state_dict()[k]) for k, v in before.items())  # base untouched
    assert lora.meta_["iters"] == 4 and len(lora.history_) == 4
    # tip's cache keys are the tuned encoder's features of the shots, not the base encoder's
    shots = ws.shot_features("lora")
    pool = data.pool.subset(data.shots)
    x = torch.stack([small_clip.preprocess(load_image(pool.abspath(i))) for i in range(len(pool))])
    with torch.no_grad():
        want = F.normalize(tuned.model.encode_image(x).float(), dim=-1)
        base = F.normalize(small_clip.model.encode_image(x).float(), dim=-1)
    assert torch.allclose(shots.features, want, atol=1e-5) and not torch.allclose(shots.features, base, atol=1e-4)
    # zero-shot of the tuned CLIP covers every class; its text classifier is the tuned text tower's
    assert len(stages["zs"].classes) == 32 and len(stages["tip"].classes) == 24
    seen = torch.as_tensor(stages["tip"].classes)
    assert torch.allclose(ws.text_weights("lora", None)[seen], lora.text_, atol=1e-5)
    assert stages["lora"].scores("test").shape == (160, 24)


def test_shipped_recipe_runs_end_to_end_and_declares_its_parameters(toy_root, small_clip, tmp_path) -> None:
    out = tmp_path / "run"
    res = run_challenge(load_config("clip_lora_tip", FAST), toy_root,
                        RunOptions(out=out, cache_dir=tmp_path / "cache", backbones={"vit": small_clip},
                                   test_labels=toy_root / "test_labels.txt", force=True))
    parsed = read_result_txt(out / "result.txt", num_classes=32, test_dir=toy_root / "TestSetA")
    assert len(parsed.filenames) == 160
    rep = json.loads(res.report_path.read_text())
    assert [s["name"] for s in rep["stages"]] == ["features:vit", "lora", "zs", "tip", "system"]
    p = rep["parameters"]
    comps = {c["component"].split(" (")[0]: c for c in p["components"]}
    total = sum(t.numel() for t in small_clip.model.state_dict().values())
    assert [c for c in comps if c.startswith("backbone")] == ["backbone vit"]  # the tuned copy is not counted again
    assert comps["backbone vit"]["loaded"] == total
    lora = json.loads((out / "artifacts" / "lora" / "method.json").read_text())
    assert comps["stage lora"]["trainable"] == lora["meta"]["adapter_params"] > 0
    assert p["text_uses"] == {"lora": 2}  # the tuned tower's classifiers: all classes (zs), seen ones (lora, tip)
    assert p["loaded_total"] == total + sum(c["loaded"] for n, c in comps.items() if n.startswith("stage"))
    assert rep["stages"][1]["tuned_backbone"].endswith("+lora")


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["stages"]["tip"].update(backbone="zs"), "tuned backbone of an earlier stage: ['lora']"),
    (lambda d: d["stages"]["zs"].update(backbone="tip"), "unknown backbone alias 'tip'"),
    (lambda d: d["stages"]["lora"].update(augment="flip", views=2), "cached views do not apply"),
    (lambda d: d["backbones"].update(lora="toy:clip"), "share the name of backbone 'lora'"),
])
def test_bad_tuned_backbone_references_are_named(mutate, needle) -> None:
    import yaml

    from kshot.pipelines.configfile import find_config

    doc = yaml.safe_load(find_config("clip_lora_tip").read_text())
    mutate(doc)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        config_from_dict(doc)
