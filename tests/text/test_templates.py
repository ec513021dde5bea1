import json

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError
from kshot.text import PromptSpec, build_text_classifier, dataset_template, encode_texts, load_prompt_file
from tests.helpers import tiny_backbone


def test_dataset_templates_follow_coop_table():
    assert dataset_template("OxfordPets") == "a photo of a {}, a type of pet."
    assert dataset_template("DTD") == "{} texture."
    assert dataset_template("unknown-set") == "a photo of a {}."


def test_ensemble_is_mean_of_normalised_prompts_renormalised():
    bb = tiny_backbone()
    templates = ["a photo of a {}.", "itap of a {}.", "art of the {}."]
    w = build_text_classifier(bb, ["cat", "dog"], templates)
    for c, name in enumerate(["cat", "dog"]):
        e = encode_texts(bb, [t.format(name) for t in templates])
        ref = F.normalize(F.normalize(e, dim=-1).mean(0), dim=0)
        torch.testing.assert_close(w[c], ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(2))


def test_single_template_equals_one_prompt():
    bb = tiny_backbone()
    w = build_text_classifier(bb, ["cat"], ["a photo of a {}."])
    torch.testing.assert_close(w[0], encode_texts(bb, ["a photo of a cat."])[0])


def test_per_domain_json_and_folder(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"Animal": ["a photo of a {}, a type of animal."], "Food-101": ["{}, food."]}))
    spec = load_prompt_file(f)
    assert spec.prompts_for("bear", "Animal") == ["a photo of a bear, a type of animal."]
    assert spec.prompts_for("pizza", "Food-101") == ["pizza, food."]
    assert spec.prompts_for("x", None) == ["a photo of a x."]
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "Animal_prompt.json").write_text(json.dumps(["a {} in the wild.", "a photo of a {}."]))
    spec2 = load_prompt_file(folder)
    assert spec2.prompts_for("bear", "Animal") == ["a bear in the wild.", "a photo of a bear."]
    bb = tiny_backbone()
    w = build_text_classifier(bb, ["bear", "bread"], spec2, class_domains=["Animal", "Food-101"])
    assert not torch.allclose(w[0], build_text_classifier(bb, ["bear"], ["a photo of a {}."])[0])


def test_cupl_style_class_sentences(tmp_path):
    f = tmp_path / "cupl.json"
    f.write_text(json.dumps({"cat": ["a small furry pet.", "whiskers and a tail."]}))
    spec = load_prompt_file(f)
    assert spec.prompts_for("cat") == ["a small furry pet.", "whiskers and a tail."]


@pytest.mark.parametrize("content", ["{not json", "[]", '["no placeholder"]', '{"templates": ["x"]}'])
def test_bad_prompt_files(tmp_path, content):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(ConfigError):
        load_prompt_file(f)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_prompt_file(tmp_path / "nope.json")


def test_promptspec_template_without_placeholder():
    with pytest.raises(ConfigError):
        PromptSpec(templates=["plain"]).prompts_for("cat")
