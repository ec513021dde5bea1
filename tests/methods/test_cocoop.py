"""CoCoOp: parity with a literal per-image re-implementation of the official trainer; artifacts need the backbone."""

import math

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError
from kshot.methods import create, load
from tests.methods.prompting.conftest import TOY_NAMES, feature_task, make_bpe_backbone, make_toy_backbone

EPOCHS, LR = 3, 0.5


def literal_cocoop(bb, names, x, y, ctx, meta, epochs, lr, scale):
    """`KaiyangZhou/CoOp: trainers/cocoop.py`: for each image, ctx + meta_net(f) in every context slot, prompts
    'a photo of a name.' re-encoded per image, logits = scale · f·t; Dassl SGD + warm-up + cosine; one full batch."""
    model, n_ctx = bb.model, ctx.shape[0]
    tokens = bb.tokenizer([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        emb = model.token_embedding(tokens)
    prefix, suffix = emb[:, :1], emb[:, 1 + n_ctx:]
    ctx = torch.nn.Parameter(ctx.clone())
    opt = torch.optim.SGD([ctx, *meta.parameters()], lr=lr, momentum=0.9, weight_decay=5e-4)
    for p in model.parameters():
        p.requires_grad_(False)
    losses = []
    for e in range(epochs):
        for g in opt.param_groups:
            g["lr"] = 1e-5 if e == 0 else 0.5 * lr * (1 + math.cos(math.pi * (e - 1) / epochs))
        rows = []
        for f in x:
            shifted = (ctx + meta(f)).unsqueeze(0).expand(len(names), -1, -1)
            prompts = torch.cat([prefix, shifted, suffix], dim=1)
            h = model.ln_final(model.transformer(prompts + model.positional_embedding, attn_mask=model.attn_mask))
            t = h[torch.arange(len(names)), tokens.argmax(dim=-1)] @ model.text_projection
            rows.append(scale * f @ (t / t.norm(dim=-1, keepdim=True)).T)
        loss = F.cross_entropy(torch.stack(rows), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def test_loss_trajectory_matches_literal_cocoop():
    bb = make_bpe_backbone()
    task, _ = feature_task(bb, TOY_NAMES, k=2)
    init = create("cocoop", epochs=0).fit(task)  # same seed -> same initial context and meta-net
    m = create("cocoop", epochs=EPOCHS, lr=LR, batch_size=64).fit(task)
    import copy

    losses = literal_cocoop(bb, TOY_NAMES, task.train.features, task.train.labels, init.vectors_["ctx"],
                            copy.deepcopy(init.meta_net_), EPOCHS, LR, task.logit_scale)
    assert losses[-1] < losses[0] - 0.05
    torch.testing.assert_close(torch.tensor(m.history_), torch.tensor(losses), atol=1e-4, rtol=1e-4)


def test_per_image_prompts_and_loaded_artifact_needs_backbone(tmp_path):
    bb = make_toy_backbone()
    task, test = feature_task(bb, TOY_NAMES, k=2)
    m = create("cocoop", epochs=2, batch_size=4, eval_batch_size=4).fit(task)
    x = test.features
    logits = m.logits(x)
    assert logits.shape == (len(x), 5)
    # image-conditioned: the meta-net bias changes each image's prompts (logits differ from the unbiased prompts')
    with torch.no_grad():
        fixed = F.normalize(m._current_learner()(torch.zeros(1, 64))[0, 0], dim=-1)
    assert (m.scale_ * x @ fixed.T - logits).abs().max() > 1e-3
    loaded = load(m.save(tmp_path / "cocoop"))
    with pytest.raises(ConfigError, match="attach_backbone"):
        loaded.logits(x)
    torch.testing.assert_close(loaded.attach_backbone(bb).logits(x), logits, atol=1e-5, rtol=1e-5)
    assert loaded.for_classes(["cyan heart", "zorvik"]).logits(x).shape == (len(x), 2)
