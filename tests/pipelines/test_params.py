"""Declared parameter counts: image/text split of a CLIP, loaded vs by-use totals (seed 004's two counts)."""

from __future__ import annotations

from types import SimpleNamespace

from kshot.pipelines.params import backbone_counts, human, parameter_report


def test_clip_counts_split_into_image_and_text(small_clip) -> None:
    c = backbone_counts(small_clip)
    assert c["image"] == sum(p.numel() for p in small_clip.model.visual.parameters())
    assert c["total"] == sum(p.numel() for p in small_clip.model.parameters()) == c["image"] + c["text"]
    assert c["text"] > 0


def test_by_use_adds_one_text_tower_per_extra_text_classifier(small_clip) -> None:
    c = backbone_counts(small_clip)
    stage = SimpleNamespace(kind="method", param_counts=lambda: {"fitted": 100, "trainable": 0})
    rep = parameter_report({"a": small_clip, "b": small_clip}, {"s": stage},
                           {"a": {("all", "p"), ("seen", "p")}, "b": {("all", "p")}})
    assert rep["loaded_total"] == c["total"] + 100  # two aliases of one model: counted once
    assert rep["by_use_total"] == rep["loaded_total"] + 2 * c["text"]  # three text classifiers, one tower loaded


def test_human_units() -> None:
    assert human(361_000_000) == "361.00M" and human(1_500) == "1.50K" and human(12) == "12"
