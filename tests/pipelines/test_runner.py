"""`run_challenge` end to end on the toy world's challenge export (32 classes, 8 of them without training images)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from kshot.backbones.base import Backbone
from kshot.errors import DataError
from kshot.eval.result_file import read_result_txt
from kshot.pipelines.configfile import config_from_dict, load_config
from kshot.pipelines.runner import RunOptions, degenerate_reason, run_challenge

from .conftest import fast_overrides


@pytest.fixture(scope="module")
def toy_run(toy_root, small_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    cache = tmp_path_factory.mktemp("cache")
    cfg = load_config("toy_cascade", fast_overrides())
    res = run_challenge(cfg, toy_root, RunOptions(out=out, cache_dir=cache, backbones={"clip": small_clip},
                                                  test_labels=toy_root / "test_labels.txt"))
    return res, out, cache, cfg


def test_result_txt_has_one_line_per_test_image_with_five_distinct_valid_ids(toy_run, toy_root) -> None:
    _res, out, _, _ = toy_run
    parsed = read_result_txt(out / "result.txt", num_classes=32, test_dir=toy_root / "TestSetA")
    assert len(parsed.filenames) == len(list((toy_root / "TestSetA").iterdir())) == 160
    assert all(len(set(r)) == 5 for r in parsed.ids.tolist())
    assert (out / "result.zip").is_file()


def test_shots_are_saved_four_per_seen_class(toy_run, toy_root) -> None:
    _, out, _, _ = toy_run
    lines = (out / "shots.txt").read_text().split("\n")
    labels = [int(x.rsplit(" ", 1)[1]) for x in lines if x]
    assert np.bincount(labels).tolist() == [4] * 24  # 24 classes have pool images; the 8 unseen have none


def test_report_covers_stages_routes_rule_and_parameters(toy_run) -> None:
    _res, out, _, _ = toy_run
    rep = json.loads((out / "report.json").read_text())
    assert rep["rule"]["compliant"] and "within the shots" in rep["rule"]["detail"]
    names = [s["name"] for s in rep["stages"]]
    assert names == ["features:clip", "inmap", "lpp", "creature_net", "system"]
    system = rep["stages"][-1]
    routes = system["routes"]["test"]
    assert routes[0]["rows"] == 160 and all(r["rows"] <= 160 for r in routes)
    assert system["metrics"]["test"]["n"] == 160 and "Unseen" in system["metrics"]["test"]["per_domain"]
    assert system["metrics"]["estimate"]["n"] == 48  # 2 unused pool images per seen class
    lpp = next(s for s in rep["stages"] if s["name"] == "lpp")
    assert lpp["tuning"].startswith("chosen by 2-fold cross-validation") and lpp["overrides"]["select_on_val"] is False
    spec = next(s for s in rep["stages"] if s["name"] == "creature_net")
    assert 0 <= spec["epochs_kept"] <= 3 and len(spec["cv_curve"]) == 4
    for s in rep["stages"]:
        assert s["fit_s"] >= 0 and s["peak_host_mb"] > 0
    p = rep["parameters"]
    assert p["loaded_total"] > 0 and p["by_use_total"] >= p["loaded_total"]
    comp = {c["component"].split(" (")[0]: c for c in p["components"]}
    assert comp["stage creature_net"]["trainable"] > 0 and comp["backbone clip"]["loaded"] > 0
    assert (out / "report.md").read_text().startswith("# kshot challenge: toy_cascade")
    assert (out / "artifacts" / "lpp" / "method.json").is_file()


def test_two_runs_give_byte_identical_result_txt(toy_run, toy_root, small_clip, tmp_path) -> None:
    _res, out, cache, cfg = toy_run
    run_challenge(cfg, toy_root, RunOptions(out=tmp_path / "o", cache_dir=cache, backbones={"clip": small_clip}))
    for name in ("result.txt", "result.zip"):  # the zip too: fixed timestamps and order
        assert (tmp_path / "o" / name).read_bytes() == (out / name).read_bytes(), name


def test_a_users_shots_file_is_used_and_more_than_four_per_class_is_refused(toy_root, small_clip, tmp_path) -> None:
    doc = {"name": "zs", "backbones": {"clip": "toy:clip"}, "estimate_per_class": 1,
           "stages": {"tip": {"type": "method", "method": "tip_adapter", "backbone": "clip",
                              "params": {"search_steps": [10, 5]}}}, "output": "tip"}
    cfg = config_from_dict(doc)
    train = (toy_root / "train.txt").read_text().split("\n")
    by_class: dict[int, list[str]] = {}
    for line in filter(None, train):
        by_class.setdefault(int(line.rsplit(" ", 1)[1]), []).append(line)
    mine = tmp_path / "mine.txt"
    mine.write_text("\n".join(v[-1] for v in by_class.values()) + "\n")  # one shot per class, the last one
    res = run_challenge(cfg, toy_root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c", shots_file=mine,
                                                  backbones={"clip": small_clip}, force=True))
    assert res.report["data"]["shots"] == 24 and res.report["data"]["shots_source"].startswith("file")
    assert "needs >= 2 shots" in res.report["stages"][1]["tuning"]
    too_many = tmp_path / "many.txt"
    too_many.write_text("\n".join(v[0] for v in by_class.values() for _ in [0]) + "\n"
                        + "\n".join(line for v in list(by_class.values())[:1] for line in v[1:6]) + "\n")
    with pytest.raises(DataError, match="allows 4 images per class"):
        run_challenge(cfg, toy_root, RunOptions(out=tmp_path / "o2", cache_dir=tmp_path / "c", shots_file=too_many,
                                                backbones={"clip": small_clip}))


def test_tuning_on_pool_images_is_marked_outside_the_rule(toy_root, small_clip, tmp_path) -> None:
    doc = {"name": "lp", "backbones": {"clip": "toy:clip"}, "estimate_per_class": 2,
           "stages": {"lp": {"type": "method", "method": "linear_probe", "backbone": "clip", "classes": "seen",
                             "params": {"c_grid": [0.1, 10.0], "search_steps": 1}}}, "output": "lp"}
    res = run_challenge(config_from_dict(doc), toy_root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c",
                                                                    tune_on_pool=True, force=True,
                                                                    backbones={"clip": small_clip}))
    assert not res.report["rule"]["compliant"] and "OUTSIDE" in res.report["rule"]["detail"]
    assert res.report["stages"][1]["tuning"].startswith("tuned on pool images")
    assert "NOT respected" in (tmp_path / "o" / "report.md").read_text()


class _ConstantImages(torch.nn.Module):
    """A CLIP whose image tower ignores the image: every test image gets the same ranking."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self.v = torch.nn.Parameter(torch.randn(1, clip.text_projection.shape[1]))

    def encode_image(self, x):
        return self.v.expand(x.shape[0], -1) + 0 * x.mean()

    def encode_text(self, tokens):
        return self.clip.encode_text(tokens)


def test_degenerate_predictions_are_refused_without_force(toy_root, small_clip, tmp_path) -> None:
    bb = Backbone("test:constant", "constant", _ConstantImages(small_clip.model), small_clip.preprocess,
                  small_clip.preprocess_cfg, small_clip.tokenizer, small_clip.embed_dim, "const-fp", 10.0)
    cfg = config_from_dict({"name": "zs", "backbones": {"clip": "x"}, "estimate_per_class": 0,
                            "stages": {"zs": {"type": "method", "method": "zeroshot", "backbone": "clip"}},
                            "output": "zs"})
    with pytest.raises(DataError, match="same top-5"):
        run_challenge(cfg, toy_root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c", backbones={"clip": bb}))
    assert not (tmp_path / "o").exists()  # a refused run is kept aside, never as the run folder
    assert json.loads((tmp_path / "o.refused" / "report.json").read_text())["refused"]
    res = run_challenge(cfg, toy_root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c", backbones={"clip": bb},
                                                  force=True))
    assert res.result_txt.is_file() and res.report["forced"]


def test_degenerate_reason_thresholds() -> None:
    rng = np.random.default_rng(0)
    varied = np.stack([rng.permutation(50)[:5] for _ in range(100)])
    assert degenerate_reason(varied, 50, 0.9, 0.5) is None
    same = np.tile(np.arange(5), (100, 1))
    assert "same top-5" in degenerate_reason(same, 50, 0.9, 0.5)
    others = np.stack([rng.permutation(np.delete(np.arange(50), 7))[:5] for _ in range(100)])
    one_class = others.copy()
    one_class[:60, 0] = 7
    assert "class 7 is the top-1 of 60%" in degenerate_reason(one_class, 50, 0.9, 0.5)
    assert degenerate_reason(one_class, 50, 0.9, 0.7) is None


def test_windows_separators_in_train_txt_are_read(toy_root, small_clip, tmp_path) -> None:
    root = tmp_path / "win"
    shutil.copytree(toy_root, root)
    txt = root / "train.txt"
    txt.write_text(txt.read_text().replace("/", "\\"))
    cfg = config_from_dict({"name": "zs", "backbones": {"clip": "x"}, "estimate_per_class": 1,
                            "stages": {"zs": {"type": "method", "method": "zeroshot", "backbone": "clip"}},
                            "output": "zs"})
    res = run_challenge(cfg, root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c",
                                              backbones={"clip": small_clip}, force=True))
    assert res.report["data"]["shots"] == 96 and "\\" not in (tmp_path / "o" / "shots.txt").read_text()


def test_unseen_classes_top1_and_cascade_gain_with_the_pretrained_toy_clip(toy_root, trained_clip, tmp_path) -> None:
    cfg = load_config("toy_cascade", fast_overrides())
    res = run_challenge(cfg, toy_root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c",
                                                  backbones={"clip": trained_clip},
                                                  test_labels=toy_root / "test_labels.txt"))
    rep = {s["name"]: s for s in res.report["stages"]}
    test = rep["system"]["metrics"]["test"]
    chance = 1 / 32
    assert test["per_domain"]["Unseen"]["top1"] >= 5 * chance
    est = rep["system"]["trace"]["estimate"]
    assert est[-1]["top1"] > est[0]["top1"]  # the cascade beats its own first stage on the estimate split
    for split in ("estimate", "test"):
        trace = rep["system"]["trace"][split]
        print(f"{split}: Creatures top-1 before the specialist step {trace[1]['per_domain']['Creatures']['top1']:.3f}, "
              f"after {trace[2]['per_domain']['Creatures']['top1']:.3f}")
    test_trace = rep["system"]["trace"]["test"]  # 80 Creatures test images (the estimate split has 32)
    before, after = test_trace[1]["per_domain"]["Creatures"]["top1"], test_trace[2]["per_domain"]["Creatures"]["top1"]
    assert after >= before - 0.01


def _zeroshot_cfg():
    return config_from_dict({"name": "zs", "backbones": {"clip": "x"}, "estimate_per_class": 1,
                             "stages": {"zs": {"type": "method", "method": "zeroshot", "backbone": "clip"}},
                             "output": "zs"})


def test_nested_trainset_folder_is_found_with_a_warning(toy_root, small_clip, tmp_path, caplog) -> None:
    root = tmp_path / "nested"
    shutil.copytree(toy_root, root)
    (root / "TrainSet").rename(root / "inner")
    (root / "TrainSet").mkdir()
    (root / "inner").rename(root / "TrainSet" / "TrainSet")
    res = run_challenge(_zeroshot_cfg(), root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c",
                                                          backbones={"clip": small_clip}, force=True))
    assert res.report["data"]["shots"] == 96 and "TrainSet/TrainSet" in caplog.text


def test_non_image_files_in_the_test_folder_are_ignored(toy_root, small_clip, tmp_path) -> None:
    root = tmp_path / "junk"
    shutil.copytree(toy_root, root)
    (root / "TestSetA" / "notes.txt").write_text("not an image")
    (root / "TestSetA" / "Thumbs.db").write_bytes(b"\0\1")
    res = run_challenge(_zeroshot_cfg(), root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c",
                                                          backbones={"clip": small_clip}, force=True))
    names = [line.split()[0] for line in res.result_txt.read_text().splitlines()]
    assert len(names) == 160 and "notes.txt" not in names


def test_train_labels_beyond_the_class_file_are_refused(toy_root, small_clip, tmp_path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(toy_root, root)
    lines = (root / "train.txt").read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 1)[0] + " 99"
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="99"):
        run_challenge(_zeroshot_cfg(), root, RunOptions(out=tmp_path / "o", cache_dir=tmp_path / "c",
                                                        backbones={"clip": small_clip}))
