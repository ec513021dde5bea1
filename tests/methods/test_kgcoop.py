"""KgCoOp: its loss equals a literal re-statement of the official one, the contract (shapes, determinism, save/load,
new classes), the pull towards the hand-crafted features, bad input."""

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import DataError
from kshot.methods import Task, create, load
from tests.methods.prompting.conftest import TOY_NAMES, feature_task, make_bpe_backbone, make_toy_backbone


@pytest.fixture(scope="module")
def bpe():
    return make_bpe_backbone()


@pytest.fixture(scope="module")
def toy():
    return make_toy_backbone()


def literal_kgcoop_loss(bb, names, x, y, ctx, template, w, scale):
    """`htyao89/KgCoOp: trainers/kgcoop.py` CustomCLIP.forward + forward_backward: prompts 'a photo of a name.'
    as prefix/ctx/suffix through the full-length text encoder (argmax pooling); the hand-crafted features are
    encode_text of the template; loss = CE + W * (1 - mean(cos(text, text_old)))."""
    model, n_ctx = bb.model, ctx.shape[0]
    tokens = bb.tokenizer([" ".join(["X"] * n_ctx) + " " + n + "." for n in names])
    with torch.no_grad():
        emb = model.token_embedding(tokens)
        old = model.encode_text(bb.tokenizer([template.format(n) for n in names]))
        old = old / old.norm(dim=-1, keepdim=True)
    prefix, suffix = emb[:, :1], emb[:, 1 + n_ctx:]
    prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(len(names), -1, -1), suffix], dim=1)
    h = model.transformer(prompts + model.positional_embedding, attn_mask=model.attn_mask)
    h = model.ln_final(h)
    text = h[torch.arange(len(names)), tokens.argmax(dim=-1)] @ model.text_projection
    text = text / text.norm(dim=-1, keepdim=True)
    logits = scale * x @ text.t()
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
    score = 1.0 - torch.mean(cos(text, old))
    return F.cross_entropy(logits, y) + w * score


def test_loss_matches_literal_official_loss(bpe):
    task, _ = feature_task(bpe, TOY_NAMES, k=4)
    m = create("kgcoop", epochs=3, lr=0.5, batch_size=64, template="a photo of a {}.").fit(task)
    x, y = task.train.features, task.train.labels
    ours = m._loss(m._current_learner(), None, x, y, task.logit_scale)
    ref = literal_kgcoop_loss(bpe, TOY_NAMES, x, y, m.vectors_["ctx"], "a photo of a {}.", 8.0, task.logit_scale)
    assert abs(float(ours.detach()) - float(ref.detach())) <= 1e-6
    assert m.extra_meta_["weight"] == 8.0 and m.extra_meta_["hand_crafted"] == "a photo of a {}."


def test_contract_shapes_determinism_round_trip_and_new_classes(toy, tmp_path):
    task, test = feature_task(toy, TOY_NAMES, k=2)
    a = create("kgcoop", epochs=3).fit(task)
    la = a.logits(test.features)
    assert la.shape == (len(test), 5) and la.dtype == torch.float32 and torch.isfinite(la).all()
    torch.testing.assert_close(create("kgcoop", epochs=3).fit(task).logits(test.features), la)
    b = load(a.save(tmp_path / "kg"))
    torch.testing.assert_close(b.logits(test.features), la, atol=1e-5, rtol=1e-5)
    new = b.attach_backbone(toy).for_classes(["cyan heart", "red ring"])
    assert new.logits(test.features).shape == (len(test), 2)
    with pytest.raises(DataError, match="dimension"):
        a.logits(torch.zeros(2, 7))


def test_weight_pulls_text_features_to_the_hand_crafted_ones(toy):
    task, _ = feature_task(toy, TOY_NAMES, k=4)
    with torch.no_grad():
        hand = F.normalize(toy.encode_text(toy.tokenize([f"a photo of a {n}." for n in TOY_NAMES])).float(), dim=-1)

    def closeness(w):
        m = create("kgcoop", epochs=15, lr=0.05, weight=w, template="a photo of a {}.").fit(task)
        return float((m.text_ * hand).sum(-1).mean())

    assert closeness(8.0) > closeness(0.0)


def test_uses_the_task_text_classifier_and_rejects_bad_templates(toy):
    task, _ = feature_task(toy, TOY_NAMES, k=1)
    tw = F.normalize(torch.randn(5, toy.embed_dim), dim=-1)
    t = Task(train=task.train, classnames=TOY_NAMES, text_weights=tw, logit_scale=20.0, backbone=toy)
    m = create("kgcoop", epochs=1).fit(t)
    assert m.extra_meta_["hand_crafted"] == "task text classifier"
    with pytest.raises(DataError, match="template"):
        create("kgcoop", epochs=1, template="a photo").fit(task)
