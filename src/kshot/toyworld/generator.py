"""The toy world: classes over attribute combinations, their images and captions, pretraining batches and splits.

Four domains (class ids in this order):

| domain | classes | names | pretraining | train images |
|---|---|---|---|---|
| `Shapes` | 48 colour x shape combos | "red star" (attribute phrases) | yes | yes |
| `Novel` | 8 held-out combos, (shape - colour) % 8 == 0 | "red circle" | never rendered or captioned | yes |
| `Creatures` | 16 opaque: shape x size, any colour, checkered | made-up words ("zorvik") | seen, never named | yes |
| `Unseen` | 8 held-out combos, (shape - colour) % 8 == 4 | "red cross" | never rendered or captioned | none (B round) |

The 16 held-out combos hold out every colour and every shape twice (the prototype's choice). `Shapes`, `Novel` and
`Unseen` images use plain, striped or dotted backgrounds; only `Creatures` use checkered ones, so the domains are
visually disjoint. A creature is a fine-grained class, like a dog breed: its shape and size define it, its colour is
any of the six colours its shape takes in pretraining (so its images stay inside the pretraining distribution), and
colour, which dominates the features, is a nuisance the few shots must learn to ignore.

Everything is deterministic from `WorldSpec.seed` and the per-call seed, and the images of one class do not depend
on which other classes are rendered with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kshot.errors import ConfigError
from kshot.toyworld.captions import make_captions
from kshot.toyworld.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, RenderCfg, render_attributes

DOMAINS: tuple[str, ...] = ("Shapes", "Novel", "Creatures", "Unseen")
OPAQUE_NAMES: tuple[str, ...] = (
    "zorvik", "plimbat", "quenna", "drosk", "valmire", "tizzet", "brontle", "skivra",
    "gommel", "yarrik", "fenwhit", "lustrop", "kavvel", "mizzard", "orpent", "chuvix",
)
_PLAIN_TEXTURES = (0, 1, 2)  # plain, striped, dotted
_CHECKERED = 3


def is_held_out(shape: int, colour: int) -> bool:
    """Whether a (shape, colour) combo is held out of pretraining: (shape - colour) % 8 in {0, 4}."""
    return (shape - colour) % 8 in (0, 4)


@dataclass(frozen=True)
class ToyClass:
    """One class of the world: an attribute combination and the nuisance values its images may take.

    Attributes:
        name: class name as written in prompts ("red star", "zorvik").
        domain: one of DOMAINS.
        shape: index into SHAPES.
        colours, sizes, backgrounds: allowed indices into COLOURS, SIZES, BACKGROUNDS (each drawn uniformly per
            image).
        held_out: True when the colour x shape combo never appears in pretraining.
        has_train: False for classes without training images (the B round's unseen classes).
    """

    name: str
    domain: str
    shape: int
    colours: tuple[int, ...]
    sizes: tuple[int, ...]
    backgrounds: tuple[int, ...]
    held_out: bool
    has_train: bool = True

    @property
    def colour(self) -> int | None:
        """The class's colour when it has exactly one, else None (creatures come in several)."""
        return self.colours[0] if len(self.colours) == 1 else None

    @property
    def attributes(self) -> dict[str, str]:
        """Readable attributes, e.g. {'shape': 'star', 'color': 'red', 'size': 'small|large', 'background': ...}."""
        return {
            "shape": SHAPES[self.shape],
            "color": "|".join(COLOURS[c] for c in self.colours),
            "size": "|".join(SIZES[z] for z in self.sizes),
            "background": "|".join(BACKGROUNDS[b] for b in self.backgrounds),
        }


@dataclass(frozen=True)
class WorldSpec:
    """What defines a world. Defaults are the shipped world (the tiny CLIP was pretrained on it).

    Attributes:
        seed: base seed of every image the world renders.
        n_creatures: opaque classes (<= 16, the shape x size pairs).
        render: image size and nuisance ranges.
    """

    seed: int = 0
    n_creatures: int = 16
    render: RenderCfg = field(default_factory=RenderCfg)

    def to_dict(self) -> dict:
        r = self.render
        return {
            "seed": self.seed,
            "n_creatures": self.n_creatures,
            "render": {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.__dict__.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "WorldSpec":
        r = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.get("render", {}).items()}
        return cls(seed=int(d.get("seed", 0)), n_creatures=int(d.get("n_creatures", 16)), render=RenderCfg(**r))


@dataclass(frozen=True)
class Attributes:
    """Per-image attribute indices, each an int64 array [N]."""

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    background: np.ndarray
    position: np.ndarray

    def __len__(self) -> int:
        return int(self.shape.shape[0])


@dataclass(frozen=True)
class SplitPart:
    """Images of one split part: uint8 [N, H, W, 3]; labels int64 [N] index `ToySplit.classnames`."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ToySplit:
    """Per-class train pool / val / test images of some classes of a world.

    Attributes:
        class_ids: world class id of each local label [C].
        classnames, domains: per local label [C].
        has_train: per local label; False classes have test images only.
        train, val, test: the images and local labels.
    """

    class_ids: tuple[int, ...]
    classnames: tuple[str, ...]
    domains: tuple[str, ...]
    has_train: tuple[bool, ...]
    train: SplitPart
    val: SplitPart
    test: SplitPart


_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}


def _build_classes(n_creatures: int) -> tuple[ToyClass, ...]:
    if not 0 <= n_creatures <= len(OPAQUE_NAMES):
        raise ConfigError(f"n_creatures must be in [0, {len(OPAQUE_NAMES)}], got {n_creatures}")
    sizes = tuple(range(len(SIZES)))
    out: list[ToyClass] = []
    for colour in range(len(COLOURS)):
        for shape in range(len(SHAPES)):
            if not is_held_out(shape, colour):
                name = f"{COLOURS[colour]} {SHAPES[shape]}"
                out.append(ToyClass(name, "Shapes", shape, (colour,), sizes, _PLAIN_TEXTURES, False))
    for colour in range(len(COLOURS)):
        shape = colour  # (shape - colour) % 8 == 0
        out.append(ToyClass(f"{COLOURS[colour]} {SHAPES[shape]}", "Novel", shape, (colour,), sizes, _PLAIN_TEXTURES,
                            True))
    for i in range(n_creatures):
        shape, size = i // len(SIZES), i % len(SIZES)
        colours = tuple(c for c in range(len(COLOURS)) if not is_held_out(shape, c))
        out.append(ToyClass(OPAQUE_NAMES[i], "Creatures", shape, colours, (size,), (_CHECKERED,), False))
    for colour in range(len(COLOURS)):
        shape = (colour + 4) % 8
        out.append(ToyClass(f"{COLOURS[colour]} {SHAPES[shape]}", "Unseen", shape, (colour,), sizes, _PLAIN_TEXTURES,
                            True, False))
    return tuple(out)


class World:
    """A generated world (see the module docstring for its domains).

    Args:
        spec: the world's definition; `WorldSpec()` is the shipped world.
    """

    def __init__(self, spec: WorldSpec | None = None) -> None:
        self.spec = spec or WorldSpec()
        self.classes: tuple[ToyClass, ...] = _build_classes(self.spec.n_creatures)
        self._base_combos = np.array(
            [(s, c) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if not is_held_out(s, c)], dtype=np.int64
        )

    @property
    def classnames(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def image_size(self) -> int:
        return self.spec.render.image_size

    def class_ids(self, domains: str | list[str] | tuple[str, ...] | None = None) -> list[int]:
        """World class ids of the given domain(s), in id order; None = all classes."""
        if domains is None:
            return list(range(len(self.classes)))
        wanted = {domains} if isinstance(domains, str) else set(domains)
        unknown = wanted - set(DOMAINS)
        if unknown:
            raise ConfigError(f"unknown toy-world domain(s) {sorted(unknown)}; known: {list(DOMAINS)}")
        return [i for i, c in enumerate(self.classes) if c.domain in wanted]

    def _check_ids(self, class_ids: np.ndarray) -> None:
        if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= len(self.classes)):
            raise ConfigError(
                f"toy-world class ids must be in [0, {len(self.classes)}), got {class_ids.min()}..{class_ids.max()}"
            )

    def sample_attributes(self, class_ids: np.ndarray | list[int], rng: np.random.Generator) -> Attributes:
        """Attributes of one image per class id: colour, size and background drawn uniformly from the class's allowed
        values, position uniformly from the 3x3 grid."""
        ids = np.asarray(class_ids, dtype=np.int64)
        self._check_ids(ids)
        n = ids.shape[0]
        u = rng.random((3, n))

        def pick(field: str, row: int) -> np.ndarray:
            vals = [getattr(self.classes[i], field) for i in ids]
            return np.array([v[int(x * len(v))] for v, x in zip(vals, u[row])], dtype=np.int64)

        shape = np.array([self.classes[i].shape for i in ids], dtype=np.int64)
        position = rng.integers(0, len(POSITIONS), size=n)
        return Attributes(shape, pick("colours", 0), pick("sizes", 1), pick("backgrounds", 2), position)

    def render_attributes(self, attrs: Attributes, rng: np.random.Generator) -> np.ndarray:
        """uint8 images [N, S, S, 3] of attribute records (nuisances drawn from `rng`)."""
        return render_attributes(
            attrs.shape, attrs.colour, attrs.size, attrs.background, attrs.position, rng, self.spec.render
        )

    def render(self, class_ids: np.ndarray | list[int], seed: int = 0) -> np.ndarray:
        """uint8 images [N, S, S, 3], one per entry of `class_ids`, deterministic from (spec.seed, seed)."""
        rng = np.random.default_rng([self.spec.seed, seed])
        return self.render_attributes(self.sample_attributes(class_ids, rng), rng)

    def captions(self, attrs: Attributes, rng: np.random.Generator) -> list[str]:
        """One attribute caption per record (class names are never used: opaque names stay unknown words)."""
        return make_captions(attrs.shape, attrs.colour, attrs.size, attrs.background, attrs.position, rng)

    def sample_pretraining_attributes(self, n: int, rng: np.random.Generator) -> Attributes:
        """Attributes over the pretraining distribution: a uniform non-held-out colour x shape combo, any size,
        background (all four textures) and position."""
        combo = self._base_combos[rng.integers(0, len(self._base_combos), size=n)]
        return Attributes(
            shape=combo[:, 0].copy(),
            colour=combo[:, 1].copy(),
            size=rng.integers(0, len(SIZES), size=n),
            background=rng.integers(0, len(BACKGROUNDS), size=n),
            position=rng.integers(0, len(POSITIONS), size=n),
        )

    def sample_pretraining_batch(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """n images (uint8 [n, S, S, 3]) and their captions, never showing a held-out combo."""
        attrs = self.sample_pretraining_attributes(n, rng)
        return self.render_attributes(attrs, rng), self.captions(attrs, rng)

    def render_class(self, class_id: int, n: int, split: str = "test", seed: int = 0) -> np.ndarray:
        """n images [n, S, S, 3] of one class for a split part ('train' | 'val' | 'test'), as `make_split` draws them
        (also for classes without training images)."""
        if split not in _SPLIT_CODE:
            raise ConfigError(f"split part must be one of {list(_SPLIT_CODE)}, got {split!r}")
        rng = np.random.default_rng([self.spec.seed, seed, class_id, _SPLIT_CODE[split]])
        return self.render_attributes(self.sample_attributes(np.full(n, class_id), rng), rng)

    def make_split(
        self,
        domains: str | list[str] | tuple[str, ...] | None = None,
        n_train: int = 32,
        n_val: int = 8,
        n_test: int = 25,
        seed: int = 0,
    ) -> ToySplit:
        """Per-class train pool / val / test images of the classes of `domains` (None = all).

        Classes without training images (`Unseen`) get test images only. Local labels follow world id order.
        Each (class, part) is rendered from its own seed, so a class's images never depend on the other classes.
        """
        if min(n_train, n_val, n_test) < 0:
            raise ConfigError(f"image counts must be >= 0, got n_train={n_train}, n_val={n_val}, n_test={n_test}")
        ids = self.class_ids(domains)
        parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {p: ([], []) for p in _SPLIT_CODE}
        for label, cid in enumerate(ids):
            counts = {"train": n_train, "val": n_val, "test": n_test}
            if not self.classes[cid].has_train:
                counts["train"] = counts["val"] = 0
            for part, n in counts.items():
                parts[part][0].append(self.render_class(cid, n, part, seed))
                parts[part][1].append(np.full(n, label, dtype=np.int64))
        s = self.image_size

        def _cat(part: str) -> SplitPart:
            imgs, labels = parts[part]
            if not imgs:
                return SplitPart(np.zeros((0, s, s, 3), np.uint8), np.zeros(0, np.int64))
            return SplitPart(np.concatenate(imgs), np.concatenate(labels))

        return ToySplit(
            class_ids=tuple(ids),
            classnames=tuple(self.classes[i].name for i in ids),
            domains=tuple(self.classes[i].domain for i in ids),
            has_train=tuple(self.classes[i].has_train for i in ids),
            train=_cat("train"),
            val=_cat("val"),
            test=_cat("test"),
        )
