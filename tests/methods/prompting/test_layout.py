"""Prompt layouts: slot bookkeeping, trimming and the errors for names that do not fit."""

import pytest
import torch

from kshot.errors import ConfigError, DataError
from kshot.methods.prompting.layout import CLASS, Learned, attribute_pieces, build_layout, coop_pieces
from kshot.methods.prompting.tokens import content_ids, specials


def test_rows_are_recipe_major_with_bank_offsets(toy_bb):
    tok = toy_bb.tokenizer
    sp = specials(tok)
    dot = tuple(content_ids(tok, "."))
    recipes = [attribute_pieces([content_ids(tok, "shape")], 2, ["a"]) + coop_pieces(3, "end", dot, "c"),
               coop_pieces(3, "front", dot, "c")]
    lay = build_layout(recipes, ["red star", "zorvik"], tok, sp, {"a": 2, "c": 3}, context_length=32, trim=True)
    assert lay.ids.shape[0] == 4 and lay.row_class.tolist() == [0, 1, 0, 1]
    assert lay.slot[0, 1:3].tolist() == [0, 1] and lay.slot[0, 4:7].tolist() == [2, 3, 4]
    assert (lay.ids[torch.arange(4), lay.eot] == sp.eot).all()
    assert lay.ids.shape[1] == int(lay.eot.max()) + 1  # trimmed after the last end-of-text
    # the front recipe puts the class name first: its first learned slot comes after the name's tokens
    assert lay.slot[3, 1 + len(content_ids(tok, "zorvik"))] == 2


def test_long_class_name_is_named(toy_bb):
    tok = toy_bb.tokenizer
    long = " ".join(["red"] * 40)
    with pytest.raises(DataError, match=r"class 'red red.*#1.*context is 32"):
        build_layout([[Learned("c", 4), CLASS]], ["star", long], tok, specials(tok), {"c": 4}, context_length=32,
                     trim=False)


def test_bad_position_and_slot_outside_group(toy_bb):
    tok = toy_bb.tokenizer
    with pytest.raises(ConfigError, match="class_token_position"):
        coop_pieces(4, "left", (1,))
    with pytest.raises(ConfigError, match="outside its group"):
        build_layout([[Learned("c", 5), CLASS]], ["star"], tok, specials(tok), {"c": 4}, context_length=32, trim=True)
