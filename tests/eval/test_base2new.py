"""The base-to-new protocol: class split, records, resumability, tables and plots, disk runner, bad input."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kshot.errors import DataError
from kshot.eval import base2new as b2n
from kshot.eval.fewshot import ResultStore
from kshot.features.featureset import FeatureSet
from kshot.methods.base import METHODS
from tests.methods.prompting.conftest import make_toy_backbone

NAMES = ["red star", "blue circle", "green square", "yellow heart", "white ring"]  # base = first 3, new = last 2


def _inputs(k_pool=6, n_test=4, seed=0):
    bb = make_toy_backbone()
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(5, bb.embed_dim, generator=g), dim=-1)

    def draw(n):
        labels = torch.arange(5).repeat_interleave(n)
        return FeatureSet(F.normalize(means[labels] + 0.2 * torch.randn(len(labels), bb.embed_dim, generator=g), -1),
                          labels, [f"{i}.png" for i in range(len(labels))])

    text = F.normalize(means + 0.3 * torch.randn(5, bb.embed_dim, generator=g), dim=-1)
    return b2n.Base2NewInputs.from_features("syn", bb, draw(k_pool), draw(n_test), NAMES, text, bb.logit_scale)


def test_split_selection_and_harmonic_mean():
    base, new = b2n.split_classes(5)
    assert base.tolist() == [0, 1, 2] and new.tolist() == [3, 4]
    labels = torch.arange(5).repeat_interleave(6).numpy()
    shots, val = b2n.draw_selection(labels, base, 2, seed=1)
    assert set(labels[shots].tolist()) == {0, 1, 2} and len(shots) == 6 and not set(shots) & set(val)
    assert len(val) == 6  # min(K, 4) = 2 per base class
    assert b2n.harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.48 / 1.4)
    assert b2n.harmonic_mean(0.8, None) is None and b2n.harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(DataError, match="at least 2 classes"):
        b2n.split_classes(1)


def test_protocol_records_resume_and_reports(tmp_path, monkeypatch):
    inputs = _inputs()
    proto = b2n.Base2NewProtocol(["zeroshot", "coop", "tip_adapter"], shots=(2,), seeds=(1, 2),
                                 overrides={"coop": {"epochs": 2, "n_ctx": 2}})
    store = ResultStore(tmp_path / "r.jsonl")
    recs = b2n.run_protocol(inputs, proto, store)
    assert len(recs) == 6
    zs = [r for r in recs if r["method"] == "zeroshot"][0]
    assert zs["num_base"] == 3 and zs["num_new"] == 2 and zs["n_test_new"] == 8
    assert zs["hm"] == pytest.approx(b2n.harmonic_mean(zs["base_acc"], zs["new_acc"]))
    # zero-shot on new classes = argmax over the new classes' text weights only
    test_new = b2n.restrict(inputs.test, torch.tensor([3, 4]).numpy())
    expect = (test_new.features @ inputs.text_weights[3:].T).argmax(1).eq(test_new.labels).float().mean()
    assert zs["new_acc"] == pytest.approx(float(expect))
    assert all(r["new_acc"] is None for r in recs if r["method"] == "tip_adapter")  # cannot move to new names
    assert all(r["new_acc"] is not None for r in recs if r["method"] == "coop")

    calls = []
    monkeypatch.setattr(b2n, "create", lambda *a, **k: calls.append(a) or METHODS.get(a[0])(**k))
    again = b2n.run_protocol(inputs, proto, ResultStore(tmp_path / "r.jsonl"))
    assert len(again) == 6 and not calls  # resumed: nothing refitted

    agg = b2n.aggregate(recs)["syn"]
    coop_base = [r["base_acc"] for r in recs if r["method"] == "coop"]
    assert agg["coop"]["base"][0] == pytest.approx(sum(coop_base) / 2)
    table = b2n.markdown_table(recs)
    assert "| syn | tip_adapter |" in table and "| – | – |" in table
    two = recs + [dict(r, dataset="other", base_acc=1.0) for r in recs]
    avg = b2n.aggregate(two)["Average"]["zeroshot"]
    assert avg["base"][0] == pytest.approx((agg["zeroshot"]["base"][0] + 1.0) / 2)  # mean of per-dataset means
    assert avg["hm"] == pytest.approx(b2n.harmonic_mean(avg["base"][0], avg["new"][0]))
    png = b2n.plot_bars(two, tmp_path / "bars.png", "test")
    with Image.open(png) as im:
        assert im.size[0] > im.size[1] > 100


def test_bad_splits():
    inputs = _inputs()
    no_new = inputs.test.subset(torch.nonzero(inputs.test.labels < 3).flatten())
    with pytest.raises(DataError, match="no images of the new classes"):
        b2n.run_cell(b2n.Base2NewInputs.from_features("syn", inputs.backbone, inputs.test, no_new, NAMES,
                                                      inputs.text_weights), "zeroshot", 1, 1, {})
    pool = inputs.test.subset(torch.nonzero(inputs.test.labels != 1).flatten())
    with pytest.raises(DataError, match="no images of 1 base classes"):
        b2n.run_cell(b2n.Base2NewInputs.from_features("syn", inputs.backbone, pool, inputs.test, NAMES,
                                                      inputs.text_weights), "zeroshot", 1, 1, {})


def test_run_base2new_from_disk(tmp_path):
    from kshot.methods.prompting.cli import run_base2new
    from kshot.toyworld.export import export_coop
    from kshot.toyworld.generator import World, WorldSpec

    split = World(WorldSpec(n_creatures=4)).make_split("Creatures", n_train=4, n_val=1, n_test=2)
    export_coop(split, tmp_path / "toy")
    kw = dict(methods=["zeroshot", "coop"], backbone=make_toy_backbone(), shots=2, seeds=(1,),
              overrides={"coop": {"epochs": 1, "n_ctx": 2}}, out=tmp_path / "out", cache=tmp_path / "cache",
              device="cpu")
    res = run_base2new(tmp_path / "toy", **kw)
    assert {r["method"] for r in res["records"]} == {"zeroshot", "coop"} and res["dataset"] == "Toy"
    assert (tmp_path / "out" / "Toy_base2new.md").read_text() == res["table"]
    assert len(run_base2new(tmp_path / "toy", **kw)["records"]) == 2  # resumed from results_base2new.jsonl
    with pytest.raises(DataError, match="unknown CoOp benchmark"):
        run_base2new(tmp_path / "toy", preset="seed000", **kw)


def _toy_world_inputs(domain: str, n_train: int = 8, n_test: int = 10):
    from kshot.backbones import load_backbone
    from kshot.errors import KshotError
    from kshot.text.classifier import build_text_classifier
    from kshot.text.templates import PromptSpec
    from kshot.toyworld.generator import World
    from kshot.toyworld.model import images_to_tensor

    try:
        bb = load_backbone("toy:clip")
    except KshotError:
        pytest.skip("the shipped toy CLIP checkpoint is not available")
    split = World().make_split(domain, n_train=n_train, n_val=0, n_test=n_test, seed=0)

    def encode(part):
        with torch.no_grad():
            x = F.normalize(bb.encode_image(images_to_tensor(part.images, bb.preprocess_cfg)).float(), dim=-1)
        return FeatureSet(x, torch.as_tensor(part.labels), [str(i) for i in range(len(x))])

    names = list(split.classnames)
    text = build_text_classifier(bb, names, PromptSpec(templates=["a photo of a {}."]))
    return b2n.Base2NewInputs.from_features(f"toy-{domain}", bb, encode(split.train), encode(split.test), names, text,
                                            bb.logit_scale)


def test_toy_world_prompt_learning_beats_zero_shot_on_base_classes(tmp_path, capsys):
    """Toy world, 'Creatures' domain (16 classes with made-up names; base = first 8), K=4, seed 1.

    Why not the 'Shapes' domain: the shipped toy CLIP scores 99.2% zero-shot on its base half, and CoOp/ATPrompt
    reach 99.6% (measured, seeds 1-3): nothing to beat. Creature names never occur in the captions, so zero-shot is at
    chance and the prompts must learn from the shots. lr 0.02 instead of CoOp's 0.002 because 160 steps replace
    CoOp's thousands. Measured with these settings (2026-11, toy CLIP of 11:19, seeds 1 / 2 / 3):
      base: zero-shot 12.5; CoOp 51.3 / 41.3 / 31.3 (41.3 ± 8.2); ATPrompt 42.5 / 70.0 / 46.3 (52.9 ± 12.2)
      new (reported, not asserted): zero-shot 8.8; CoOp 1.3 / 15.0 / 31.3 (15.8 ± 12.3); ATPrompt 15.0 / 25.0 / 20.0
      (20.0 ± 4.1) -- chance is 12.5, the new names are unknown words, so "new" here says little.
    """
    inputs = _toy_world_inputs("Creatures")
    fast = {"epochs": 40, "lr": 0.02, "batch_size": 8}
    proto = b2n.Base2NewProtocol(["zeroshot", "coop", "atprompt"], shots=(4,), seeds=(1,), overrides={
        "coop": {**fast, "n_ctx": 4}, "atprompt": {**fast, "attributes": ("shape", "color")}})
    recs = {r["method"]: r for r in b2n.run_protocol(inputs, proto, ResultStore(tmp_path / "r.jsonl"))}
    zs = recs["zeroshot"]["base_acc"]
    assert recs["coop"]["base_acc"] > zs + 0.15
    assert recs["atprompt"]["base_acc"] > zs + 0.15
    with capsys.disabled():
        print("\n" + b2n.markdown_table(list(recs.values())))


def test_run_base2new_from_disk_with_image_trained_prompts(tmp_path):
    """MaPLe/PromptSRC train on the pool images and are scored on their own prompted encoder's test features."""
    from kshot.methods.prompting.cli import run_base2new
    from kshot.toyworld.export import export_coop
    from kshot.toyworld.generator import World, WorldSpec

    split = World(WorldSpec(n_creatures=4)).make_split("Creatures", n_train=4, n_val=1, n_test=2)
    export_coop(split, tmp_path / "toy")
    fast = {"epochs": 1, "depth": 1}
    res = run_base2new(tmp_path / "toy", methods=["kgcoop", "maple", "promptsrc"], backbone=make_toy_backbone(),
                       shots=2, seeds=(1,), overrides={"kgcoop": {"epochs": 1}, "maple": fast,
                                                       "promptsrc": {**fast, "depth_vision": 1}},
                       out=tmp_path / "out", cache=tmp_path / "cache", device="cpu")
    recs = {r["method"]: r for r in res["records"]}
    assert set(recs) == {"kgcoop", "maple", "promptsrc"}
    assert all(r["new_acc"] is not None and r["n_test_new"] > 0 for r in recs.values())
