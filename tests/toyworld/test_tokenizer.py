"""The toy tokenizer: caption words as single tokens, character fallback, EOT last."""

from __future__ import annotations

import pytest
import torch

from kshot.errors import ConfigError
from kshot.toyworld.captions import TEMPLATES, caption_words
from kshot.toyworld.generator import OPAQUE_NAMES
from kshot.toyworld.pretrain import make_tokenizer
from kshot.toyworld.tokenizer import ToyTokenizer, build_vocab, split_words


@pytest.fixture(scope="module")
def tok() -> ToyTokenizer:
    return make_tokenizer(32)


def test_opaque_names_get_distinct_sequences(tok: ToyTokenizer) -> None:
    rows = tok([f"a photo of a {n}." for n in OPAQUE_NAMES])
    assert len({tuple(r.tolist()) for r in rows}) == len(OPAQUE_NAMES)
    # no shared unknown-word token: spelled names differ and decode back
    for n, r in zip(OPAQUE_NAMES, rows):
        assert tok.decode(r) == f"a photo of a {n} ."
    # adjacent unknown words stay distinguishable thanks to the end-of-word token
    assert not torch.equal(tok(["ab cd"]), tok(["abc d"]))


def test_caption_words_are_single_tokens(tok: ToyTokenizer) -> None:
    for w in caption_words():
        assert len(tok.encode(w)) == 1, w
    assert "color" in caption_words() and "shape" in caption_words()  # attribute nouns for ATPrompt
    text = TEMPLATES[5].format(shape="star", colour="red", size="small", background="", position="")
    assert len(tok.encode(text)) == len(split_words(text)) == 16  # one id per word and punctuation mark


def test_layout_eot_is_highest_and_truncation_keeps_it() -> None:
    tok = make_tokenizer(8)
    out = tok(["a red star", "its shape is a star, its color is red, its size is small."])
    assert out.dtype == torch.long and out.shape == (2, 8)
    assert out[0].tolist()[:5] == [tok.sot_id, *tok.encode("a red star"), tok.eot_id]
    assert out[0, 5:].tolist() == [tok.pad_id] * 3
    assert int(out[1, -1]) == tok.eot_id and (out.argmax(-1) == torch.tensor([4, 7])).all()
    assert tok.eot_id == tok.vocab_size - 1
    assert tok(["Red_Star"]).tolist() == tok(["red star"]).tolist()  # case and underscores do not matter


def test_unknown_characters_and_bad_vocab() -> None:
    tok = make_tokenizer(16)
    ids = tok.encode("café")
    assert len(ids) == 5 and tok.decode(ids) == "caf?"
    with pytest.raises(ConfigError):
        ToyTokenizer(["a", "b"])
    with pytest.raises(ConfigError):
        ToyTokenizer(build_vocab(["red"]), context_length=2)
