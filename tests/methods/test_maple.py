"""MaPLe: its forward/loss equals a literal re-statement of the official one on a tiny CLIP, the contract on toy-world
images (shapes, determinism, save/load, tuned encoder, new classes), bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError, DataError
from kshot.methods import Task, create, load
from tests.methods.prompting.conftest import _wrap
from tests.methods.test_clip_lora import _features, _task, _world


@pytest.fixture(scope="module")
def tiny():
    """open_clip CLIP with OpenAI's BPE tokenizer, 3 text and 3 vision blocks (QuickGELU, as OpenAI's)."""
    import open_clip

    text = {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}
    vision = {"image_size": 32, "layers": 3, "width": 48, "head_width": 16, "patch_size": 16}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    return _wrap(model, open_clip.SimpleTokenizer(context_length=24), "test:maple-tiny", 16)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from kshot.backbones import load_backbone

    train, test = _world(tmp_path_factory.mktemp("maple_world"))
    return load_backbone("toy:clip"), train, test


def literal_maple_loss(bb, names, images, labels, ctx, deep_text, proj, deep_proj, scale):
    """`multimodal-prompt-learning: trainers/maple.py` + `clip/model.py` (TextEncoder, VisionTransformer_MaPLe,
    ResidualAttentionBlock_MaPLe) written out: LND sequences, prompts cat'ed in and replaced layer by layer."""
    model, n_ctx = bb.model, ctx.shape[0]
    tokenized = bb.tokenizer(["a photo of a " + n + "." for n in names])
    with torch.no_grad():
        emb = model.token_embedding(tokenized)
    prefix, suffix = emb[:, :1], emb[:, 1 + n_ctx:]
    prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(len(names), -1, -1), suffix], dim=1)
    visual_deep = [layer(t) for layer, t in zip(deep_proj, deep_text)]
    shared_ctx = proj(ctx)
    # text encoder
    x = (prompts + model.positional_embedding).permute(1, 0, 2)
    counter = 0
    for i, blk in enumerate(model.transformer.resblocks):
        if i > 0 and counter < len(deep_text):
            pre, suf = x[:1], x[1 + n_ctx:]
            ctx_i = deep_text[counter].expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([pre, ctx_i, suf], dim=0)
            counter += 1
        h = x.permute(1, 0, 2)
        h = blk(h, attn_mask=model.attn_mask)
        x = h.permute(1, 0, 2)
    x = model.ln_final(x.permute(1, 0, 2))
    text = x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection
    # image encoder
    v = model.visual
    y = v.conv1(images).reshape(images.shape[0], v.conv1.out_channels, -1).permute(0, 2, 1)
    cls = v.class_embedding + torch.zeros(y.shape[0], 1, y.shape[-1])
    y = torch.cat([cls, y], dim=1) + v.positional_embedding
    y = torch.cat([y, shared_ctx.expand(y.shape[0], -1, -1)], dim=1)
    y = v.ln_pre(y).permute(1, 0, 2)
    counter = 0
    for i, blk in enumerate(v.transformer.resblocks):
        if i > 0 and counter < len(visual_deep):
            pre = y[0:y.shape[0] - n_ctx]
            ctx_i = visual_deep[counter].expand(y.shape[1], -1, -1).permute(1, 0, 2)
            y = torch.cat([pre, ctx_i], dim=0)
            counter += 1
        y = blk(y.permute(1, 0, 2)).permute(1, 0, 2)
    image = v.ln_post(y.permute(1, 0, 2)[:, 0, :]) @ v.proj
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return F.cross_entropy(scale * image @ text.t(), labels)


def _internals(m, bb, names, seed=0):
    m.backbone_ = bb
    tower, image = m._check_model(bb)
    gen = torch.Generator().manual_seed(seed)
    learner = m._learner(tower, names, m._initial_vectors(tower, gen))
    return learner, m._build(tower, image, gen), image


@pytest.mark.parametrize("depth", [1, 3])
def test_loss_matches_literal_official_forward(tiny, depth):
    names = ["red star", "blue circle", "green square"]
    m = create("maple", depth=depth)
    learner, params, image = _internals(m, tiny, names)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 2, 1, 2])
    with torch.no_grad():  # move away from the init so every term matters
        for p in list(learner.parameters()) + list(params.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ours = m.batch_loss(learner, params, image, x, y, 20.0).mean()
    ref = literal_maple_loss(tiny, names, x, y, learner.vectors["ctx"], list(params.deep_text), params.couple[0],
                             list(params.couple[1:]), 20.0)
    assert abs(float(ours.detach()) - float(ref.detach())) <= 1e-6
    ours.backward()
    assert learner.vectors["ctx"].grad is not None and params.couple[0].weight.grad.abs().sum() > 0
    assert m.deep_start_ == 1 and learner.vectors["ctx"].shape == (2, 32)  # "a photo" learned, "of a" fixed


def test_contract_on_toy_world_images(world, tmp_path):
    bb, train, test = world
    task = _task(bb, train)
    a = create("maple", depth=3, epochs=2).fit(task)
    tuned = a.tuned_backbone(bb)
    assert tuned.fingerprint != bb.fingerprint
    feats = _features(tuned, test)
    la = a.logits(feats)
    assert la.shape == (len(test), 4) and la.dtype == torch.float32 and torch.isfinite(la).all()
    b = create("maple", depth=3, epochs=2).fit(task)
    assert torch.equal(b.prompts_["visual.2"], a.prompts_["visual.2"])
    torch.testing.assert_close(b.logits(feats), la)
    loaded = load(a.save(tmp_path / "maple"))
    torch.testing.assert_close(loaded.logits(feats), la)
    loaded.attach_backbone(bb)
    torch.testing.assert_close(_features(loaded.tuned_backbone(), test), feats)
    torch.testing.assert_close(loaded.for_classes(train.classnames).logits(feats), la, atol=1e-5, rtol=1e-5)
    assert loaded.for_classes(["cyan heart"]).logits(feats).shape == (len(test), 1)
    with pytest.raises(DataError, match="dimension"):
        a.logits(torch.zeros(2, 7))
    from kshot.methods.prompting import explain

    groups = explain(loaded, k=2)["groups"]
    assert list(groups) == ["ctx", "text_layer1", "text_layer2"] and len(groups["text_layer2"]) == 2


def test_bad_input_is_named_before_training(world):
    bb, train, _ = world
    task = _task(bb, train)
    with pytest.raises(ConfigError, match=r"text prompt depth 9 is beyond the text tower's 3 layers"):
        create("maple").fit(task)
    long = list(task.classnames[:-1]) + [" ".join(["blue"] * 40)]
    with pytest.raises(DataError, match="class 'blue blue.*32"):
        create("maple", depth=3).fit(Task(train=task.train, classnames=long, backbone=bb, images=task.images))
    with pytest.raises(ConfigError, match="text encoder's 32 tokens"):
        create("maple", depth=3, n_ctx=40, ctx_init="").fit(task)
    with pytest.raises(ConfigError, match="images"):
        create("maple", depth=3).fit(Task(train=task.train, classnames=task.classnames, backbone=bb))
    image_only = type(bb)(bb.spec, bb.arch, bb.model, bb.preprocess, bb.preprocess_cfg, None, bb.embed_dim,
                          bb.fingerprint)
    with pytest.raises(ConfigError, match="text tower"):
        create("maple", depth=3).fit(Task(train=task.train, classnames=task.classnames, backbone=image_only,
                                          images=task.images))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny):
    names = ["red star", "blue circle"]
    x, y = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1])
    out = []
    for ckpt in (False, True):
        m = create("maple", depth=3)
        learner, params, image = _internals(m, tiny, names)
        tiny.model.set_grad_checkpointing(ckpt)
        try:
            loss = m.batch_loss(learner, params, image, x, y, 20.0).mean()
            loss.backward()
        finally:
            tiny.model.set_grad_checkpointing(False)
        out.append((loss.detach(), learner.vectors["ctx"].grad.clone(), params.deep_text[1].grad.clone()))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b)
