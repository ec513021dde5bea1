"""Caption templates of the toy world: several phrasings of an image's attributes.

Colour and shape are named in every caption; size, background and position in some. A few templates use attribute
nouns ("its shape is a star, its color is red") so that attribute-anchored prompt learners (ATPrompt) find the words
"shape", "color", "size", "background" and "position" meaningful in the text encoder.
"""

from __future__ import annotations

import re

import numpy as np

from kshot.toyworld.render import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES
from kshot.toyworld.tokenizer import split_words

TEMPLATES: tuple[str, ...] = (
    "a photo of a {colour} {shape}.",
    "a {colour} {shape}.",
    "a {size} {colour} {shape}.",
    "a {size} {colour} {shape} on a {background} background.",
    "a {colour} {shape} in the {position}.",
    "its shape is a {shape}, its color is {colour}, its size is {size}.",
    "its color is {colour} and its shape is a {shape}.",
    "its background is {background}, its shape is a {shape}, its color is {colour}.",
    "a picture of a {shape} that is {colour}.",
    "the {shape} is {colour} and {size}.",
    "there is a {colour} {shape} at the {position} of the image.",
    "a {size} {shape}, colored {colour}, on a {background} background.",
    "its position is the {position}, its shape is a {shape}, its color is {colour}.",
    "an image of a {colour} {shape} with a {background} background.",
)


def caption_words() -> list[str]:
    """Every word and punctuation token the captions and attribute values can produce (the word vocabulary)."""
    words: set[str] = set()
    for t in TEMPLATES:
        words.update(split_words(re.sub(r"\{[a-z]+\}", " ", t)))
    for values in (SHAPES, COLOURS, SIZES, BACKGROUNDS, POSITIONS):
        for v in values:
            words.update(split_words(v))
    return sorted(words)


def make_captions(
    shape: np.ndarray,
    colour: np.ndarray,
    size: np.ndarray,
    background: np.ndarray,
    position: np.ndarray,
    rng: np.random.Generator,
) -> list[str]:
    """One caption per attribute record, template drawn uniformly from TEMPLATES with `rng`."""
    which = rng.integers(0, len(TEMPLATES), size=shape.shape[0])
    return [
        TEMPLATES[t].format(
            shape=SHAPES[s], colour=COLOURS[c], size=SIZES[z], background=BACKGROUNDS[b], position=POSITIONS[p]
        )
        for t, s, c, z, b, p in zip(which, shape, colour, size, background, position)
    ]
