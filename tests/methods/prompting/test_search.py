"""ATPrompt's attribute search: candidate files, combinations, and a search that finds the informative word."""

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError, DataError
from kshot.features.featureset import FeatureSet
from kshot.methods.prompting.search import SearchConfig, combinations, read_candidates, search_attributes

from .conftest import TOY_NAMES


def test_read_candidates(tmp_path):
    p = tmp_path / "words.txt"
    p.write_text("shape, color\n# a comment\nsize  # trailing comment\n\ncolor\n")
    assert read_candidates(p) == ["shape", "color", "size"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="no candidate"):
        read_candidates(tmp_path / "empty.txt")


def test_combinations_sizes():
    assert len(combinations(["a", "b", "c", "d", "e"], 1, 3)) == 25
    assert combinations(["a", "b", "c"], 3, 5) == [("a", "b", "c")]
    with pytest.raises(ConfigError):
        combinations(["a"], 2, 1)


def test_search_prefers_the_attribute_whose_prompts_match_the_images(toy_bb):
    """Image features are the (noisy) text features of 'its shape is a <name>.'; among candidates 'shape' and
    'color' (and both), prompts containing 'shape' reproduce those features best, so alpha should favour them."""
    with torch.no_grad():
        means = F.normalize(toy_bb.model.encode_text(toy_bb.tokenizer([f"shape {n}." for n in TOY_NAMES])), dim=-1)
    g = torch.Generator().manual_seed(0)

    def draw(n):
        labels = torch.arange(5).repeat_interleave(n)
        x = F.normalize(means[labels] + 0.05 * torch.randn(len(labels), means.shape[1], generator=g), dim=-1)
        return FeatureSet(x, labels, [str(i) for i in range(len(labels))])

    cfg = SearchConfig(n_att=0, n_ctx=0, epochs=4, batch_size=8, max_size=1)
    train, val = draw(4), draw(4)
    res = search_attributes(toy_bb, TOY_NAMES, train, val, ["color", "shape"], cfg, seed=0, logit_scale=50.0)
    assert res.combinations == [("color",), ("shape",)]
    assert res.chosen == ("shape",) and res.weights[1] > 0.55
    again = search_attributes(toy_bb, TOY_NAMES, train, val, ["color", "shape"], cfg, seed=0, logit_scale=50.0)
    assert again.weights == res.weights
