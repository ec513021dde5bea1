"""Prompt interpretation: nearest vocabulary words of learned vectors; `kshot prompts explain`."""

from typer.testing import CliRunner

from kshot.methods import create
from kshot.methods.prompting.cli import app
from kshot.methods.prompting.interpret import explain, format_explanation, load_prompt_method, nearest_words
from kshot.methods.prompting.tokens import content_ids

from .conftest import TOY_NAMES, feature_task


def test_nearest_words_of_word_vectors_are_the_words(toy_bb):
    tok = toy_bb.tokenizer
    ids = content_ids(tok, "photo star red")
    vecs = toy_bb.model.token_embedding.weight[ids].detach() + 1e-4
    got = nearest_words(vecs, toy_bb.model.token_embedding.weight, tok, k=3)
    assert [row[0][0] for row in got] == ["photo", "star", "red"]
    assert all(row[0][1] < 1e-2 <= row[1][1] for row in got)


def test_explain_untrained_word_context_and_cli(toy_bb, tmp_path, monkeypatch):
    task, _ = feature_task(toy_bb, TOY_NAMES, k=1)
    m = create("atprompt", ctx_init="a photo of a", attributes=("shape",), epochs=0).fit(task)
    expl = explain(m, k=2)
    assert [row[0][0] for row in expl["groups"]["ctx"]] == ["a", "photo", "of", "a"]
    assert expl["attributes"] == ["shape"] and len(expl["groups"]["attr0"]) == 4
    assert "attributes: shape" in format_explanation(expl)
    m.save(tmp_path / "atp")
    import kshot.backbones

    monkeypatch.setattr(kshot.backbones, "load_backbone", lambda spec, device="cpu": toy_bb)
    assert load_prompt_method(tmp_path / "atp").backbone_ is toy_bb
    res = CliRunner().invoke(app, ["explain", str(tmp_path / "atp"), "--topk", "2", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "[ctx]" in res.output and "'photo'" in res.output
    assert (tmp_path / "e.json").read_text().count("photo") >= 1
