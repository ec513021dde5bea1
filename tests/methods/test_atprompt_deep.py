"""ATPrompt on the deep methods: the attribute block sits before the class soft tokens, the deep text prompts replace
exactly those, the methods fit/save/load/move to new classes on toy-world images, attributes default to ImageNet's."""

from __future__ import annotations

import pytest
import torch

from kshot.methods import Task, create, load
from tests.methods.test_clip_lora import _features, _task
from tests.methods.test_maple import _internals, tiny, world  # noqa: F401  (fixtures)


@pytest.mark.parametrize("name", ["atprompt_maple", "atprompt_promptsrc"])
def test_deep_prompts_replace_the_class_soft_tokens(tiny, name):  # noqa: F811
    m = create(name, attributes=("color", "shape"), depth=2, **({"depth_vision": 2} if "src" in name else {}))
    learner, params, image = _internals(m, tiny, ["red star", "blue circle"])
    m._prepare(Task(train=None, classnames=["red star", "blue circle"], backbone=tiny, logit_scale=20.0))
    n = m.config.n_ctx
    # [sot][a1 x n]color[a2 x n]shape[ctx x n]...: ctx starts after 1 + 2 * (n + 1) tokens
    assert m.deep_start_ == 1 + 2 * (n + 1)
    lay_slot = learner.slot[0]
    ctx0 = sum(g.size for g in learner.groups[:-1])
    assert lay_slot[m.deep_start_:m.deep_start_ + n].tolist() == list(range(ctx0, ctx0 + n))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    assert torch.isfinite(m.batch_loss(learner, params, image, x, y, 20.0)).all()


def test_fit_save_load_new_classes_and_default_attributes(world, tmp_path):  # noqa: F811
    bb, train, test = world
    m = create("atprompt_maple", attributes=("shape", "color"), depth=3, epochs=1).fit(_task(bb, train))
    feats = _features(m.tuned_backbone(bb), test)
    loaded = load(m.save(tmp_path / "atpm")).attach_backbone(bb)
    torch.testing.assert_close(loaded.for_classes(train.classnames).logits(feats), m.logits(feats), atol=1e-5,
                               rtol=1e-5)
    assert m.meta_["attributes"] == ["shape", "color"]
    assert create("atprompt_promptsrc").attributes() == ("color", "shape")
