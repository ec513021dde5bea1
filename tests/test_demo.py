"""`kshot demo` end to end (the README's main command), once per CI run, with behavioural assertions.

Measured on the shipped toy:clip (seed 1; `kshot demo`, 2026-11-26), opaque group (16 classes, chance 6.25 %):
zero-shot 5.00; linear_probe 45.5 / 62.0 / 77.5 / 93.75 / 98.25 at 1/2/4/8/16 shots; tip_adapter 8.0 ... 56.0.
Named group (56 classes): zero-shot 93.43; every method 93.4–96.8 at 16 shots.
"""

import json

import pytest
from typer.testing import CliRunner

from kshot.cli import app


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out / "report"), "--cache", str(out / "cache")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out / "report", json.loads((out / "report" / "summary.json").read_text())


def _top1(records, method, shots):
    return next(r["top1"] for r in records if r["method"] == method and r["shots"] == shots)


def test_demo_writes_report_plots_and_valid_submission(demo):
    out, _ = demo
    from kshot.eval.result_file import read_result_txt

    report = (out / "report.md").read_text()
    assert "| tip_adapter |" in report and "Challenge replica" in report
    for png in ("fewshot_curves_named.png", "fewshot_curves_opaque.png", "confusion.png"):
        assert (out / png).stat().st_size > 5000
    rf = read_result_txt(out / "result.txt", num_classes=80)
    assert len(rf.filenames) == 80 * 25 and (out / "result.zip").is_file()


def test_opaque_names_zero_shot_near_chance_and_shots_carry_accuracy(demo):
    _, summary = demo
    g = summary["groups"]["opaque"]
    zs = g["zeroshot"]["top1"]
    assert zs < 0.15  # measured 0.05, chance 0.0625
    lp = [_top1(g["records"], "linear_probe", k) for k in (1, 4, 16)]
    assert lp[0] < lp[1] < lp[2]  # measured 0.455 < 0.775 < 0.9825
    assert lp[2] >= zs + 0.15
    for method in {r["method"] for r in g["records"]}:
        assert _top1(g["records"], method, 16) > zs + 0.15, method  # lowest measured: inmap 0.295
    for k in (1, 2, 4, 8, 16):
        assert _top1(g["records"], "tip_adapter", k) >= zs  # measured 0.08 .. 0.56


def test_named_classes_zero_shot_strong_and_not_hurt(demo):
    _, summary = demo
    g = summary["groups"]["named"]
    zs = g["zeroshot"]["top1"]
    assert zs > 0.85  # measured 0.934 (56 classes incl. 8 held-out combinations)
    for k in (1, 2, 4, 8, 16):
        assert _top1(g["records"], "tip_adapter", k) >= zs - 0.01  # prototype: within ±1 point
    assert _top1(g["records"], "inmap", 16) > zs  # measured 0.966 vs 0.934 on the unlabelled test images


@pytest.mark.parametrize("method", ["gda", "proker", "zs_lp", "clap", "tda"])
def test_frontier_methods_grow_with_shots_and_keep_named_accuracy(demo, method):
    """Measured (seed 1): opaque 1/4/16-shot gda 50.8/93.3/98.5, proker 7.5/17.0/34.0, zs_lp 46.5/79.8/98.8,
    clap 47.0/76.3/98.3, tda 9.0/16.0/55.5; named 16-shot 94.8 (tda) .. 97.0 (clap) vs zero-shot 93.4."""
    _, summary = demo
    opaque, named = summary["groups"]["opaque"], summary["groups"]["named"]
    acc = [_top1(opaque["records"], method, k) for k in (1, 4, 16)]
    assert opaque["zeroshot"]["top1"] < acc[0] < acc[1] < acc[2], acc
    assert _top1(named["records"], method, 16) >= named["zeroshot"]["top1"] - 0.01


def test_demo_ends_with_a_serve_command_that_opens_its_run(demo):
    """The printed (and reported) `kshot serve` command lists the demo's run and the toy world, and the run
    classifies one of the replica's test images."""
    import re
    import shlex
    from pathlib import Path

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from kshot.serve import ServeConfig, create_app

    out, _ = demo
    cmd = re.search(r"## Look at it\n\n`(kshot serve [^`]+)`", (out / "report.md").read_text()).group(1)
    args = shlex.split(cmd)
    root, runs = Path(args[args.index("--root") + 1]), Path(args[args.index("--runs") + 1])
    assert runs == out / "runs" and (runs / "lpp-4shot" / "method.json").is_file()
    with TestClient(create_app(ServeConfig([root], runs, out.parent / "cache" / "features"))) as client:
        assert [r["name"] for r in client.get("/runs").json()] == ["lpp-4shot"]
        assert "demo-v1" in client.get("/datasets").json()
        image = sorted((root / "demo-v1" / "TestSetA").iterdir())[0]
        r = client.post("/predict", params={"run": "lpp-4shot"}, files={"file": (image.name, image.read_bytes())})
        assert r.status_code == 200 and len(r.json()["top"]) == 5, r.text


def test_demo_fits_the_image_trained_methods_on_their_tuned_encoders(demo):
    from kshot.demo import image_trained_methods

    out, summary = demo
    recs = summary["image_trained"]
    assert [r["method"] for r in recs] == image_trained_methods()
    assert all(0.0 <= r["top1"] <= 1.0 and r["overrides"] for r in recs)
    assert "Methods that train through the image encoder" in (out / "report.md").read_text()


def test_image_trained_methods_are_chosen_by_capability():
    from kshot.demo import image_trained_methods
    from kshot.methods import METHODS

    names = image_trained_methods()
    assert {"clip_lora", "maple", "promptsrc", "atprompt_maple", "atprompt_promptsrc"} <= set(names)
    assert not {"coop", "kgcoop", "tip_adapter", "zeroshot", "auto"} & set(names)
    assert all("image" in METHODS.get(n).trains_encoders and METHODS.get(n).quick_overrides for n in names)


def test_image_trained_section_on_a_class_subset(tmp_path):
    """Two of four toy classes, relabelled 0/1; MaPLe with its quick settings, scored on its own tuned encoder."""
    from rich.console import Console

    from kshot.backbones import load_backbone
    from kshot.demo import image_trained_section, restrict_dataset
    from kshot.experiment import prompt_spec_for, text_weights_for
    from kshot.features import FeatureStore
    from tests.methods.test_clip_lora import _world

    train, test = _world(tmp_path / "data", shots=3)
    sub = restrict_dataset(test, [1, 3], "two")
    assert sub.classnames == [test.classnames[1], test.classnames[3]] and sorted(set(sub.labels)) == [0, 1]
    assert len(sub) == 12
    bb = load_backbone("toy:clip")
    tw = text_weights_for(bb, train, prompt_spec_for(train))
    recs = image_trained_section(train, test, bb, FeatureStore(tmp_path / "cache"), tw, [1, 3], 1, Console(),
                                 shots=2, methods=["maple"])
    assert len(recs) == 1 and recs[0]["method"] == "maple" and recs[0]["overrides"]["depth"] == 3
    assert round(12 * recs[0]["top1"]) == pytest.approx(12 * recs[0]["top1"])  # a fraction of the 12 test images
