"""Special ids and word ids are read from the tokenizer itself, for both the BPE and the toy tokenizer."""

import pytest

from kshot.errors import DataError
from kshot.methods.prompting.tokens import content_ids, specials, token_strings


@pytest.mark.parametrize("which", ["toy_bb", "bpe_bb"])
def test_specials_and_content_ids_rebuild_the_tokenizer_output(which, request):
    tok = request.getfixturevalue(which).tokenizer
    sp = specials(tok)
    row = tok(["a photo of a red star."])[0].tolist()
    ids = content_ids(tok, "a photo of a red star.")
    assert row[: len(ids) + 2] == [sp.sot, *ids, sp.eot]
    assert all(t == sp.pad for t in row[len(ids) + 2:])
    assert "".join(token_strings(tok, content_ids(tok, "photo"))) == "photo"


def test_toy_tokenizer_spells_unknown_words_and_rejects_empty(toy_bb):
    tok = toy_bb.tokenizer
    assert len(content_ids(tok, "zorvik")) == len("zorvik") + 1  # characters + end-of-word
    with pytest.raises(DataError, match="tokenizes to nothing"):
        content_ids(tok, "_", what="attribute word")
