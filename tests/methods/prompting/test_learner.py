"""The prompt learner reproduces open_clip's `encode_text` for hard prompts and trains only its own vectors."""

import pytest
import torch

from kshot.methods.prompting.layout import attribute_pieces, build_layout, coop_pieces
from kshot.methods.prompting.learner import GroupSpec, PromptLearner, frozen, normal_vectors, word_vectors
from kshot.methods.prompting.tokens import content_ids, specials
from kshot.methods.prompting.tower import TextTower

from .conftest import TOY_NAMES


def _learner(bb, names, position="end", ctx_init="a photo of a", n_ctx=None, trim=True, attrs=()):
    tok, tower = bb.tokenizer, TextTower(bb.model)
    ids = content_ids(tok, ctx_init) if ctx_init else []
    m = len(ids) if ids else n_ctx
    dot = tuple(content_ids(tok, "."))
    attr_ids = [content_ids(tok, a) for a in attrs]
    pieces = attribute_pieces(attr_ids, 0, [f"a{i}" for i in range(len(attrs))])
    pieces += coop_pieces(m, position, dot, "ctx", ids)
    groups = [GroupSpec(f"a{i}", 0) for i in range(len(attrs))] + [GroupSpec("ctx", m)]
    layout = build_layout([pieces], names, tok, specials(tok), {g.name: g.size for g in groups},
                          context_length=tower.context_length, trim=trim)
    init = {g.name: torch.zeros(0, tower.width) for g in groups[:-1]}
    init["ctx"] = word_vectors(tower, ids) if ids else torch.zeros(0, tower.width)
    return PromptLearner(tower, layout, groups, init)


def _reference(bb, texts):
    with torch.no_grad():
        return bb.model.encode_text(bb.tokenizer(texts))


@pytest.mark.parametrize("which", ["toy_bb", "bpe_bb"])
@pytest.mark.parametrize("position,fmt", [("end", "a photo of a {}."), ("middle", "a photo {} of a."),
                                          ("front", "{} a photo of a.")])
@pytest.mark.parametrize("trim", [True, False])
def test_word_initialised_context_equals_encode_text(which, position, fmt, trim, request):
    bb = request.getfixturevalue(which)
    with torch.no_grad():
        got = _learner(bb, TOY_NAMES, position, trim=trim)()[0]
    torch.testing.assert_close(got, _reference(bb, [fmt.format(n) for n in TOY_NAMES]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which", ["toy_bb", "bpe_bb"])
def test_zero_learned_context_equals_bare_prompt_and_attribute_words(which, request):
    bb = request.getfixturevalue(which)
    with torch.no_grad():
        bare = _learner(bb, TOY_NAMES, ctx_init="", n_ctx=0)()[0]
        attr = _learner(bb, TOY_NAMES, attrs=("shape", "color"))()[0]
    torch.testing.assert_close(bare, _reference(bb, [f"{n}." for n in TOY_NAMES]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attr, _reference(bb, [f"shape color a photo of a {n}." for n in TOY_NAMES]),
                               atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_prompt_vectors(toy_bb):
    learner = _learner(toy_bb, TOY_NAMES)
    before = {n: p.requires_grad for n, p in toy_bb.model.named_parameters()}
    with frozen(toy_bb.model):
        learner()[0].pow(2).sum().backward()
    assert learner.vectors["ctx"].grad is not None and learner.vectors["ctx"].grad.abs().sum() > 0
    assert all(p.grad is None for p in toy_bb.model.parameters())
    assert {n: p.requires_grad for n, p in toy_bb.model.named_parameters()} == before


def test_csc_and_conditional_bias_shapes_and_effect(toy_bb):
    tok, tower = toy_bb.tokenizer, TextTower(toy_bb.model)
    dot = tuple(content_ids(tok, "."))
    g = torch.Generator().manual_seed(0)
    groups = [GroupSpec("att", 2), GroupSpec("ctx", 3, csc=True, conditional=True)]
    pieces = attribute_pieces([content_ids(tok, "shape")], 2, ["att"]) + coop_pieces(3, "end", dot)
    layout = build_layout([pieces], TOY_NAMES, tok, specials(tok), {"att": 2, "ctx": 3},
                          context_length=tower.context_length, trim=True)
    init = {"att": normal_vectors((2, tower.width), 0.01, g), "ctx": normal_vectors((5, 3, tower.width), 0.02, g)}
    learner = PromptLearner(tower, layout, groups, init)
    with torch.no_grad():
        plain = learner()
        bias = torch.randn(4, tower.width, generator=g)
        cond = learner(bias)
        zero = learner(torch.zeros(1, tower.width))
    assert plain.shape == (1, 5, 32) and cond.shape == (4, 1, 5, 32)
    torch.testing.assert_close(zero[0], plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cond[0], cond[1])
    emb = learner.embeddings(bias)
    # the bias moves the class soft tokens only: attribute soft tokens are shared by all images
    att_pos = (layout.slot >= 0) & (layout.slot < 2)
    torch.testing.assert_close(emb[0][att_pos], emb[1][att_pos])
    # class-specific: two classes see different context vectors at the same slot
    ctx_pos = layout.slot[0] >= 2
    assert not torch.allclose(learner.embeddings()[0][ctx_pos], learner.embeddings()[1][ctx_pos])
