"""CoOp: parity with a literal re-implementation of the official trainer, save/load with a backbone, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import CheckpointError, ConfigError, DataError
from kshot.features.featureset import FeatureSet
from kshot.methods import Task, create, load
from tests.methods.prompting.conftest import TOY_NAMES, feature_task, make_bpe_backbone, make_toy_backbone

EPOCHS, LR = 4, 0.5


@pytest.fixture(scope="module")
def bpe():
    return make_bpe_backbone()


@pytest.fixture(scope="module")
def toy():
    return make_toy_backbone()


def literal_coop(bb, names, x, y, ctx, epochs, lr, scale):
    """CoOp as `KaiyangZhou/CoOp: trainers/coop.py` writes it: 'X X X X name.' tokenized, prefix/ctx/suffix
    concatenated, full-length text encoder with argmax pooling; Dassl SGD (momentum 0.9, wd 5e-4), 1 warm-up epoch
    at 1e-5 then cosine; one full batch per epoch."""
    model, n_ctx = bb.model, ctx.shape[0]
    tokens = bb.tokenizer([" ".join(["X"] * n_ctx) + " " + n + "." for n in names])
    with torch.no_grad():
        emb = model.token_embedding(tokens)
    prefix, suffix = emb[:, :1], emb[:, 1 + n_ctx:]
    ctx = torch.nn.Parameter(ctx.clone())
    opt = torch.optim.SGD([ctx], lr=lr, momentum=0.9, weight_decay=5e-4)
    losses = []
    for p in model.parameters():
        p.requires_grad_(False)
    for e in range(epochs):
        for g in opt.param_groups:
            g["lr"] = 1e-5 if e == 0 else 0.5 * lr * (1 + math.cos(math.pi * (e - 1) / epochs))
        prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(len(names), -1, -1), suffix], dim=1)
        h = model.transformer(prompts + model.positional_embedding, attn_mask=model.attn_mask)
        h = model.ln_final(h)
        text = h[torch.arange(len(names)), tokens.argmax(dim=-1)] @ model.text_projection
        text = text / text.norm(dim=-1, keepdim=True)
        loss = F.cross_entropy(scale * x @ text.T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for p in model.parameters():
        p.requires_grad_(True)
    return losses, ctx.detach()


def test_loss_trajectory_matches_literal_coop(bpe):
    task, _ = feature_task(bpe, TOY_NAMES, k=4)
    m = create("coop", ctx_init="a photo of a", epochs=EPOCHS, lr=LR, batch_size=64).fit(task)
    with torch.no_grad():
        ctx0 = bpe.model.token_embedding(torch.tensor(bpe.tokenizer.encode("a photo of a")))
    losses, ctx = literal_coop(bpe, TOY_NAMES, task.train.features, task.train.labels, ctx0, EPOCHS, LR,
                               task.logit_scale)
    assert len(m.history_) == EPOCHS
    assert losses[-1] < losses[0] - 0.05  # it trains
    torch.testing.assert_close(torch.tensor(m.history_), torch.tensor(losses), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m.vectors_["ctx"], ctx, atol=1e-4, rtol=1e-4)


def test_seeded_fit_is_deterministic_and_learns(toy):
    task, _ = feature_task(toy, TOY_NAMES, k=4)
    a = create("coop", n_ctx=4, epochs=30, lr=0.05).fit(task)
    b = create("coop", n_ctx=4, epochs=30, lr=0.05).fit(task)
    torch.testing.assert_close(a.vectors_["ctx"], b.vectors_["ctx"])
    assert a.history_[-1] < a.history_[0] - 0.5


def test_class_specific_context_fits_the_shots(toy):
    task, _ = feature_task(toy, TOY_NAMES, k=4, noise=0.1)
    m = create("coop", n_ctx=4, csc=True, epochs=40, lr=0.5, batch_size=64).fit(task)
    assert m.vectors_["ctx"].shape == (5, 4, 64)
    assert (m.logits(task.train.features).argmax(1) == task.train.labels).float().mean() >= 0.9
    with pytest.raises(ConfigError, match="class-specific"):
        m.for_classes(["red star"])


def test_save_load_attach_and_new_classes(toy, tmp_path):
    task, test = feature_task(toy, TOY_NAMES, k=2)
    m = create("coop", n_ctx=4, epochs=3).fit(task)
    loaded = load(m.save(tmp_path / "coop"))
    torch.testing.assert_close(loaded.logits(test.features), m.logits(test.features))  # stored text features
    with pytest.raises(ConfigError, match="attach_backbone"):
        loaded.for_classes(["cyan heart"])
    loaded.attach_backbone(toy)
    same = loaded.for_classes(TOY_NAMES)  # re-encoded from the learned vectors
    torch.testing.assert_close(same.logits(test.features), m.logits(test.features), atol=1e-5, rtol=1e-5)
    new = loaded.for_classes(["cyan heart", "zorvik"])
    assert new.logits(test.features).shape == (len(test), 2)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load(tmp_path / "coop").attach_backbone(make_toy_backbone(seed=1))


def test_classes_without_shots_get_text_only_prompts(toy):
    task, test = feature_task(toy, TOY_NAMES, k=2)
    keep = torch.nonzero(task.train.labels != 2).flatten()
    t = Task(train=task.train.subset(keep), classnames=TOY_NAMES, logit_scale=20.0, backbone=toy)
    assert create("coop", n_ctx=2, epochs=1).fit(t).logits(test.features).shape == (len(test), 5)


def test_bad_input(toy):
    task, test = feature_task(toy, TOY_NAMES, k=1)
    with pytest.raises(ConfigError, match="backbone"):
        create("coop", epochs=1).fit(Task(train=task.train, classnames=TOY_NAMES))
    wrong = FeatureSet(torch.zeros(5, 8), task.train.labels, task.train.paths)
    with pytest.raises(DataError, match="dimension 8"):
        create("coop", epochs=1).fit(Task(train=wrong, classnames=TOY_NAMES, backbone=toy))
    long = TOY_NAMES[:4] + [" ".join(["blue"] * 30)]
    with pytest.raises(DataError, match="class 'blue blue"):
        create("coop", epochs=1).fit(Task(train=task.train, classnames=long, backbone=toy))
    m = create("coop", n_ctx=2, epochs=1).fit(task)
    with pytest.raises(DataError, match="dimension"):
        m.logits(torch.zeros(2, 7))
    with pytest.raises(DataError, match="K=0"):
        create("coop").fit(Task(train=task.train.subset([]), classnames=TOY_NAMES, backbone=toy))
