"""ATPrompt: parity with a literal re-implementation of `trainers/coop_atp.py`, attribute sources, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError, DataError
from kshot.methods import create, load
from tests.methods.prompting.conftest import TOY_NAMES, feature_task, make_bpe_backbone, make_toy_backbone

EPOCHS, LR = 4, 0.5


def literal_atprompt(bb, names, attrs, x, y, att, ctx, epochs, lr, scale):
    """[SOS][a1 x m][ATTR1][a2 x m][ATTR2][c x n][CLASS][.][EOS] by torch.cat of token-embedding slices, as the
    official PromptLearner builds it from 'X X attr1 X X attr2 X X name.'; Dassl SGD, one full batch per epoch."""
    model, m, n = bb.model, att[0].shape[0], ctx.shape[0]
    xs = " ".join(["X"] * m)
    text = " ".join(f"{xs} {a}" for a in attrs) + " " + " ".join(["X"] * n)
    tokens = bb.tokenizer([f"{text} {c}." for c in names])
    with torch.no_grad():
        emb = model.token_embedding(tokens)
    params = [torch.nn.Parameter(a.clone()) for a in att] + [torch.nn.Parameter(ctx.clone())]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():
        p.requires_grad_(False)
    losses, c = [], len(names)
    for e in range(epochs):
        for g in opt.param_groups:
            g["lr"] = 1e-5 if e == 0 else 0.5 * lr * (1 + math.cos(math.pi * (e - 1) / epochs))
        parts, pos = [emb[:, :1]], 1
        for a in params[:-1]:
            parts += [a.expand(c, -1, -1), emb[:, pos + m: pos + m + 1]]
            pos += m + 1
        parts += [params[-1].expand(c, -1, -1), emb[:, pos + n:]]
        prompts = torch.cat(parts, dim=1)
        h = model.ln_final(model.transformer(prompts + model.positional_embedding, attn_mask=model.attn_mask))
        t = h[torch.arange(c), tokens.argmax(dim=-1)] @ model.text_projection
        loss = F.cross_entropy(scale * x @ (t / t.norm(dim=-1, keepdim=True)).T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def test_loss_trajectory_matches_literal_atprompt():
    bb = make_bpe_backbone()
    task, _ = feature_task(bb, TOY_NAMES, k=4)
    kw = dict(attributes=("shape", "color"), lr=LR, batch_size=64)
    init = create("atprompt", epochs=0, **kw).fit(task)
    m = create("atprompt", epochs=EPOCHS, **kw).fit(task)
    assert init.vectors_["attr0"].std() < init.vectors_["ctx"].std()  # N(0, .01²) attributes, N(0, .02²) class
    losses = literal_atprompt(bb, TOY_NAMES, ("shape", "color"), task.train.features, task.train.labels,
                              [init.vectors_["attr0"], init.vectors_["attr1"]], init.vectors_["ctx"], EPOCHS, LR,
                              task.logit_scale)
    assert losses[-1] < losses[0] - 0.05
    torch.testing.assert_close(torch.tensor(m.history_), torch.tensor(losses), atol=1e-4, rtol=1e-4)


def test_attribute_sources_and_round_trip(tmp_path):
    bb = make_toy_backbone()
    task, test = feature_task(bb, TOY_NAMES, k=2)
    assert create("atprompt", epochs=1).fit(task).attributes_ == ("color", "shape")  # ImageNet's, as a fallback
    assert create("atprompt", epochs=1, dataset="caltech-101").fit(task).attributes_ == ("shape", "size")
    m = create("atprompt", epochs=2, candidates=("shape", "color", "size"), search_epochs=2).fit(task)
    search = m.fitted_meta()["search"]
    assert len(search["combinations"]) == 7 and abs(sum(search["weights"]) - 1) < 1e-5
    assert list(m.attributes_) == search["chosen"]
    loaded = load(m.save(tmp_path / "atp")).attach_backbone(bb)
    assert loaded.attributes_ == m.attributes_
    torch.testing.assert_close(loaded.for_classes(TOY_NAMES).logits(test.features), m.logits(test.features),
                               atol=1e-5, rtol=1e-5)


def test_cocoop_base_biases_class_tokens():
    bb = make_toy_backbone()
    task, test = feature_task(bb, TOY_NAMES, k=2)
    m = create("atprompt", base="cocoop", attributes=("shape",), epochs=1, batch_size=4).fit(task)
    assert m.meta_net_ is not None and m.logits(test.features).shape == (len(test), 5)
    learner = m._current_learner()
    assert learner.cond.tolist() == [False, False, True, True]  # attribute soft tokens unbiased, class tokens biased


def test_bad_attributes():
    bb = make_toy_backbone()
    task, _ = feature_task(bb, TOY_NAMES, k=1)
    with pytest.raises(DataError, match="attribute word '_' tokenizes to nothing"):
        create("atprompt", attributes=("_",), epochs=1).fit(task)
    with pytest.raises(ConfigError, match="text encoder's 32 tokens"):
        create("atprompt", attributes=("shape color size background position " * 6,), epochs=1).fit(task)
    with pytest.raises(ConfigError, match="base"):
        create("atprompt", base="maple", epochs=1).fit(task)
    with pytest.raises(DataError, match="unknown CoOp benchmark"):
        create("atprompt", dataset="mnist", epochs=1).fit(task)
