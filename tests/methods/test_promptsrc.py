"""PromptSRC: its loss equals a literal re-statement of the official one on a tiny CLIP, the Gaussian prompt
aggregation is the weighted sum of the epochs' prompts, the contract on toy-world images, bad input."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from kshot.errors import ConfigError
from kshot.methods import Task, create, load
from kshot.methods.promptsrc import gpa_weights
from tests.methods.test_clip_lora import _features, _task
from tests.methods.test_maple import _internals, tiny, world  # noqa: F401  (fixtures)


def literal_promptsrc_loss(logits, label, text, zs_text, image_ft, zs_image, zero_shot_logits, wt, wi):
    """`muzairkhattak/PromptSRC: trainers/promptsrc.py` forward_backward, written out on full-batch tensors."""
    loss_ce = F.cross_entropy(logits, label)
    loss_scl_text = F.l1_loss(text, zs_text, reduction='mean') * wt
    loss_scl_image = F.l1_loss(image_ft, zs_image, reduction='mean') * wi
    L_SCL_logits = F.kl_div(F.log_softmax(logits / 1, dim=1), F.log_softmax(zero_shot_logits / 1, dim=1),
                            reduction='sum', log_target=True) * (1 * 1) / logits.numel()
    return loss_ce + (L_SCL_logits + loss_scl_text + loss_scl_image)


def test_loss_matches_literal_official_loss(tiny):  # noqa: F811
    names = ["red star", "blue circle", "green square"]
    m = create("promptsrc", depth=3, depth_vision=2, n_ctx_vision=3)
    learner, params, image = _internals(m, tiny, names)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 2, 1, 2])
    m._prepare(Task(train=None, classnames=names, backbone=tiny, logit_scale=20.0))
    with torch.no_grad():
        for p in list(learner.parameters()) + list(params.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ours = m.batch_loss(learner, params, image, x, y, 20.0).mean()
    deep_text, visual = m._prompts(params, learner.vectors["ctx"])
    with torch.no_grad():
        text = F.normalize(learner(deep=deep_text, deep_start=1)[0], dim=-1)
        img = F.normalize(image.encode(x, visual), dim=-1)
        zs_text = tiny.model.encode_text(tiny.tokenizer([f"a photo of a {n}." for n in names]))
        zs_text = zs_text / zs_text.norm(dim=-1, keepdim=True)
        zs_img = tiny.model.encode_image(x)
        zs_img = zs_img / zs_img.norm(dim=-1, keepdim=True)
        ref = literal_promptsrc_loss(20.0 * img @ text.t(), y, text, zs_text, img, zs_img, 20.0 * zs_img @ zs_text.t(),
                                     25.0, 10.0)
    assert abs(float(ours.detach()) - float(ref)) <= 1e-6
    assert visual[0].shape == (3, 48) and len(visual) == 2 and len(deep_text) == 2


def test_gpa_is_the_gaussian_weighted_sum_of_epoch_prompts(world):  # noqa: F811
    bb, train, _ = world
    g = [1 / math.sqrt(2 * math.pi) * math.exp(-0.5 * (e - 2.0) ** 2) for e in (1, 2, 3)]
    assert gpa_weights(3, 2.0, 1.0) == pytest.approx([v / sum(g) for v in g])
    m = create("promptsrc", depth=2, depth_vision=2, epochs=3, gpa_mean=2.0, lr=0.01)
    seen = []
    original = m._after_epoch
    m._after_epoch = lambda e, p: (seen.append((e, p)), original(e, p))
    m.fit(_task(bb, train))
    assert [e for e, _ in seen] == [1, 2, 3]
    w = gpa_weights(3, 2.0, 1.0)
    for k, v in m.prompts_.items():
        torch.testing.assert_close(v, sum(wi * p[k] for wi, (_, p) in zip(w, seen)))
    last = create("promptsrc", depth=2, depth_vision=2, epochs=3, gpa=False, lr=0.01).fit(_task(bb, train))
    torch.testing.assert_close(last.prompts_["visual.1"], seen[-1][1]["visual.1"])


def test_contract_on_toy_world_images(world, tmp_path):  # noqa: F811
    bb, train, test = world
    task = _task(bb, train)
    a = create("promptsrc", depth=3, depth_vision=3, epochs=2).fit(task)
    feats = _features(a.tuned_backbone(bb), test)
    la = a.logits(feats)
    assert la.shape == (len(test), 4) and torch.isfinite(la).all()
    torch.testing.assert_close(create("promptsrc", depth=3, depth_vision=3, epochs=2).fit(task).logits(feats), la)
    loaded = load(a.save(tmp_path / "src")).attach_backbone(bb)
    torch.testing.assert_close(loaded.logits(feats), la)
    torch.testing.assert_close(loaded.for_classes(train.classnames).logits(feats), la, atol=1e-5, rtol=1e-5)


def test_bad_input(world):  # noqa: F811
    bb, train, _ = world
    task = _task(bb, train)
    with pytest.raises(ConfigError, match=r"vision prompt depth 5 is beyond the vision tower's 4 layers"):
        create("promptsrc", depth=3, depth_vision=5).fit(task)
    with pytest.raises(ConfigError, match=r"text prompt depth 9 .* 3 layers"):
        create("promptsrc").fit(task)


class _Killed(Exception):
    pass


def test_resumed_fit_equals_the_uninterrupted_one_gpa_included(world, tmp_path):  # noqa: F811
    """2 steps per epoch, 3 epochs; the first run dies at the end of epoch 2 (step 4, before its checkpoint), so it
    resumes from step 3 with epoch 1 already in the Gaussian aggregate — which only the checkpoint can hold."""
    from kshot.tuning.checkpoint import load_checkpoint

    bb, train, _ = world
    cfg = dict(depth=2, depth_vision=2, epochs=3, gpa_mean=2.0, lr=0.01, batch_size=4)
    whole = create("promptsrc", **cfg).fit(_task(bb, train))
    ck = dict(cfg, checkpoint_every=1, checkpoint_dir=str(tmp_path / "ck"))

    def dying(m):
        original = m._after_epoch

        def after(epoch, prompts):
            if epoch == 2:
                raise _Killed
            original(epoch, prompts)
        m._after_epoch = after
        return m

    with pytest.raises(_Killed):
        dying(create("promptsrc", **ck)).fit(_task(bb, train))
    step, tensors, _ = load_checkpoint(tmp_path / "ck")
    assert step == 3 and any(k.startswith("extra.gpa.") for k in tensors)
    resumed = create("promptsrc", **ck).fit(_task(bb, train))
    assert resumed.history_ == pytest.approx(whole.history_, abs=0)
    for k, v in whole.prompts_.items():
        torch.testing.assert_close(resumed.prompts_[k], v, atol=1e-7, rtol=1e-6)
    # without the aggregate the resumed run would miss epoch 1's share (what the checkpoint state is for)
    shutil.rmtree(tmp_path / "ck")
    with pytest.raises(_Killed):
        dying(create("promptsrc", **ck)).fit(_task(bb, train))
    forgetful = create("promptsrc", **ck)
    forgetful.load_extra = lambda state: None
    forgetful.fit(_task(bb, train))
    assert not torch.allclose(forgetful.prompts_["visual.1"], whole.prompts_["visual.1"])
