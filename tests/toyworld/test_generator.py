"""The toy world's classes, determinism, pretraining distribution and splits."""

from __future__ import annotations

import numpy as np
import pytest

from kshot.errors import ConfigError
from kshot.toyworld.generator import DOMAINS, OPAQUE_NAMES, World, WorldSpec, is_held_out
from kshot.toyworld.render import BACKGROUNDS, COLOURS, SHAPES, RenderCfg


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_domains_and_class_counts(world: World) -> None:
    counts = {d: len(world.class_ids(d)) for d in DOMAINS}
    assert counts == {"Shapes": 48, "Novel": 8, "Creatures": 16, "Unseen": 8}
    assert len(set(world.classnames)) == len(world.classnames)  # names unique across domains
    # Shapes + Novel + Unseen cover the 64 colour x shape combos exactly once.
    combos = {(c.shape, c.colour) for c in world.classes if c.domain != "Creatures"}
    assert len(combos) == 64
    for c in world.classes:
        assert c.held_out == any(is_held_out(c.shape, col) for col in c.colours)
        assert c.held_out == (c.domain in ("Novel", "Unseen"))
        assert c.has_train == (c.domain != "Unseen")
    # ids: classes with training images first (the challenge's B-round order)
    has_train = [c.has_train for c in world.classes]
    assert has_train == sorted(has_train, reverse=True)


def test_held_out_combos_cover_each_colour_and_shape_twice(world: World) -> None:
    held = [c for c in world.classes if c.held_out]
    assert len(held) == 16
    assert sorted(np.bincount([c.colour for c in held]).tolist()) == [2] * 8
    assert sorted(np.bincount([c.shape for c in held]).tolist()) == [2] * 8


def test_creatures_are_opaque_fine_grained_and_inside_the_pretraining_distribution(world: World) -> None:
    creatures = [world.classes[i] for i in world.class_ids("Creatures")]
    words = set(" ".join(SHAPES + COLOURS + BACKGROUNDS).split())
    for c in creatures:
        assert c.name in OPAQUE_NAMES and c.name not in words
        assert c.backgrounds == (BACKGROUNDS.index("checkered"),)
        assert len(c.colours) == 6 and not any(is_held_out(c.shape, col) for col in c.colours)
        assert c.colour is None and len(c.sizes) == 1
    assert len({(c.shape, c.sizes) for c in creatures}) == len(creatures) == 16  # shape x size defines a creature
    # no other domain uses the checkered background: the domains are visually disjoint
    others = [c for c in world.classes if c.domain != "Creatures"]
    assert all(BACKGROUNDS.index("checkered") not in c.backgrounds for c in others)
    # images follow the class definition: one size, several colours, never a held-out combo
    attrs = world.sample_attributes(np.full(200, world.class_ids("Creatures")[3]), np.random.default_rng(0))
    assert set(attrs.size.tolist()) == set(creatures[3].sizes)
    assert set(attrs.colour.tolist()) == set(creatures[3].colours)
    assert set(attrs.background.tolist()) == {BACKGROUNDS.index("checkered")}


def test_render_is_deterministic_from_seed(world: World) -> None:
    ids = [0, 5, 60, 75, 5]
    a, b = world.render(ids, seed=3), world.render(ids, seed=3)
    assert a.dtype == np.uint8 and a.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, world.render(ids, seed=4))
    assert not np.array_equal(a, World(WorldSpec(seed=1)).render(ids, seed=3))


def test_sixty_four_pixel_worlds() -> None:
    w = World(WorldSpec(render=RenderCfg(image_size=64)))
    assert w.render([0, 1], seed=0).shape == (2, 64, 64, 3)


def test_pretraining_batches_never_show_held_out_combos(world: World) -> None:
    rng = np.random.default_rng(0)
    attrs = world.sample_pretraining_attributes(4000, rng)
    held = np.array([is_held_out(s, c) for s, c in zip(attrs.shape, attrs.colour)])
    assert not held.any()
    assert len(set(zip(attrs.shape.tolist(), attrs.colour.tolist()))) == 48  # every base combo appears
    assert set(attrs.background.tolist()) == set(range(len(BACKGROUNDS)))


def test_pretraining_batch_is_reproducible_and_captions_name_colour_and_shape(world: World) -> None:
    imgs, caps = world.sample_pretraining_batch(32, np.random.default_rng(5))
    imgs2, caps2 = world.sample_pretraining_batch(32, np.random.default_rng(5))
    np.testing.assert_array_equal(imgs, imgs2)
    assert caps == caps2
    attrs = world.sample_pretraining_attributes(32, np.random.default_rng(5))
    for cap, s, c in zip(caps, attrs.shape, attrs.colour):
        assert SHAPES[s] in cap and COLOURS[c] in cap
    for name in OPAQUE_NAMES:
        assert all(name not in cap for cap in caps)


def test_make_split_counts_labels_and_class_independence(world: World) -> None:
    split = world.make_split(["Creatures", "Unseen"], n_train=3, n_val=2, n_test=4, seed=1)
    n_c = 16
    assert split.classnames == tuple(world.classes[i].name for i in world.class_ids(["Creatures", "Unseen"]))
    assert split.train.images.shape == (3 * n_c, 32, 32, 3) and split.val.images.shape[0] == 2 * n_c
    assert split.test.images.shape[0] == 4 * 24
    assert set(split.train.labels.tolist()) == set(range(n_c))  # Unseen classes have no training images
    assert np.bincount(split.test.labels).tolist() == [4] * 24
    # the images of a class do not depend on which other classes are in the split
    alone = world.make_split("Creatures", n_train=3, n_val=2, n_test=4, seed=1)
    np.testing.assert_array_equal(alone.train.images, split.train.images)
    np.testing.assert_array_equal(alone.test.images, split.test.images[: 4 * n_c])
    np.testing.assert_array_equal(world.render_class(split.class_ids[0], 4, "test", seed=1), split.test.images[:4])
    # train and test images differ
    assert not np.array_equal(split.train.images[:3], split.test.images[:3])


def test_bad_arguments_raise_config_errors(world: World) -> None:
    with pytest.raises(ConfigError, match="domain"):
        world.class_ids("Dogs")
    with pytest.raises(ConfigError, match="class ids"):
        world.render([999])
    with pytest.raises(ConfigError, match="n_creatures"):
        World(WorldSpec(n_creatures=99))
    with pytest.raises(ConfigError, match="split part"):
        world.render_class(0, 2, "holdout")


def test_spec_round_trips_through_dict() -> None:
    spec = WorldSpec(seed=7, n_creatures=20, render=RenderCfg(image_size=64, noise_sigma=(1.0, 2.0)))
    assert WorldSpec.from_dict(spec.to_dict()) == spec
