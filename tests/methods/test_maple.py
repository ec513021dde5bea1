"""MaPLe: its forward/loss equals a literal re-statement of the official one on a tiny CLIP (float64), the contract on
toy-world images (shapes, determinism, save/load, tuned encoder, new classes), the artifact's trainable tensors and
`init`, bad input."""

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
def tiny64(tiny):
    """The same tiny CLIP in float64 (parity to round-off, not to float32's ~1e-6)."""
    import copy

    return _wrap(copy.deepcopy(tiny.model).double(), tiny.tokenizer, "test:maple-tiny64", 16)


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
    cls = v.class_embedding + torch.zeros(y.shape[0], 1, y.shape[-1], dtype=y.dtype)
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
def test_loss_matches_literal_official_forward(tiny64, depth):
    """float64 throughout (model, prompts, coupling layers, images): loss and gradients equal to round-off."""
    names = ["red star", "blue circle", "green square"]
    m = create("maple", depth=depth)
    learner, params, image = _internals(m, tiny64, names)
    learner.double(), params.double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    with torch.no_grad():  # move away from the init so every term matters
        for p in list(learner.parameters()) + list(params.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    trained = list(learner.parameters()) + list(params.parameters())
    ours = m.batch_loss(learner, params, image, x, y, 20.0).mean()
    ref = literal_maple_loss(tiny64, names, x, y, learner.vectors["ctx"], list(params.deep_text), params.couple[0],
                             list(params.couple[1:]), 20.0)
    assert ours.dtype == ref.dtype == torch.float64
    assert abs(float(ours.detach()) - float(ref.detach())) <= 1e-10
    g_ours = torch.autograd.grad(ours, trained)
    g_ref = torch.autograd.grad(ref, trained)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    assert all(a.abs().sum() > 0 for a in g_ours)  # every trainable tensor (coupling layers too) gets a gradient
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


def test_artifact_keeps_every_trainable_tensor_and_init_continues_from_it(world, tmp_path):
    """Coupling layers are saved: they regenerate the stored visual prompts; `--set init=<run>` with 0 epochs
    reproduces the run exactly, with 1 epoch trains on from it; a run of another method or depth is refused."""
    from typer.testing import CliRunner

    from kshot.cli import app

    bb, _, test = world
    r = CliRunner()

    def fit(out, *sets, method="maple"):
        args = ["fit", str(tmp_path / "data"), "-m", method, "-o", str(out), "-k", "2", "--layout", "imagefolder",
                "--cache", str(tmp_path / "cache"), "--device", "cpu"]
        res = r.invoke(app, args + [a for s in ("depth=3", "lr=0.05", *sets) for a in ("--set", s)])
        return res

    _world(tmp_path / "data")
    assert fit(tmp_path / "a", "epochs=1").exit_code == 0
    a = load(tmp_path / "a")
    couple = {k for k in a.trainable_ if k.startswith("params.couple.")}
    assert len(couple) == 6 and set(a.trainable_) >= {"learner.ctx", "params.deep_text.0", "params.deep_text.1"}
    with torch.no_grad():  # the stored coupling layers produce the stored visual prompts
        texts = [a.trainable_["learner.ctx"], a.trainable_["params.deep_text.0"], a.trainable_["params.deep_text.1"]]
        for i, t in enumerate(texts):
            w, b = a.trainable_[f"params.couple.{i}.weight"], a.trainable_[f"params.couple.{i}.bias"]
            torch.testing.assert_close(t @ w.T + b, a.prompts_[f"visual.{i}"])
    res = r.invoke(app, ["prompts", "explain", str(tmp_path / "a"), "--topk", "2"])  # per layer, from the CLI
    assert res.exit_code == 0 and all(f"[{g}]" in res.output for g in ("ctx", "text_layer1", "text_layer2")), res.output
    a.attach_backbone(bb)
    feats = _features(a.tuned_backbone(), test)
    res = fit(tmp_path / "b", "epochs=0", f"init={tmp_path / 'a'}")
    assert res.exit_code == 0, res.output
    b = load(tmp_path / "b").attach_backbone(bb)
    assert set(b.trainable_) == set(a.trainable_)
    for k, v in a.trainable_.items():
        assert torch.equal(b.trainable_[k], v), k
    torch.testing.assert_close(b.logits(_features(b.tuned_backbone(), test)), a.logits(feats))
    assert fit(tmp_path / "c", "epochs=1", f"init={tmp_path / 'a'}").exit_code == 0
    c = load(tmp_path / "c")
    assert not torch.equal(c.trainable_["params.couple.0.weight"], a.trainable_["params.couple.0.weight"])
    res = fit(tmp_path / "d", "epochs=0", "depth=2", f"init={tmp_path / 'a'}")
    assert res.exit_code != 0 and "this configuration" in str(res.exception)
    res = fit(tmp_path / "e", "epochs=0", f"init={tmp_path / 'a'}", method="atprompt_maple")
    assert res.exit_code != 0 and "holds a maple artifact" in str(res.exception)
