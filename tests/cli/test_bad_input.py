"""A corpus of bad invocations across every verb: each exits non-zero with one `error:` line naming the problem, never
a traceback. Run in-process through the entry point's handler (`kshot.cli_errors.run_cli`), as the `kshot` script is.

Placeholders in a case: {W} a 16-class toy image folder, {CH} a toy challenge root, {ART} a fitted tip_adapter
artifact, {FILE} a plain file, {O} a fresh output path, {CONT} the shipped continual digits config, {BADYAML} a YAML
with an unknown key, {RESULT} a malformed result.txt, {TREN} the world's test split with its first class folder
({FIRST}) renamed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kshot.cli import app
from kshot.cli_errors import run_cli

REPO = Path(__file__).resolve().parents[2]
_FIT = ["fit", "{W}", "-m", "tip_adapter", "-o", "{O}", "-k", "1"]
_PRED = ["predict", "{W}", "-a", "{ART}", "-o", "{O}/p.csv"]

# (argv, a word the message must contain: the bad argument or value)
CASES: list[tuple[list[str], str]] = [
    # fit
    (["fit"], "data"),
    (["fit", "{W}"], "--method"),
    (["fit", "{W}", "-m", "tip_adapter"], "--out"),
    (["fit", "{W}", "-m", "tip_adapter", "-o", "{O}", "-k", "two"], "--shots"),
    (["fit", "/nonexistent/data", "-m", "tip_adapter", "-o", "{O}"], "/nonexistent/data"),
    ([*_FIT, "--bogus"], "--bogus"),
    ([*_FIT, "-b", "/nonexistent/ViT-B-32.pt"], "ViT-B-32.pt"),
    ([*_FIT, "-b", "nosuchsource:model"], "nosuchsource:model"),
    ([*_FIT, "--layout", "weird"], "weird"),
    ([*_FIT, "--split", "nosuch"], "nosuch"),
    ([*_FIT, "--device", "cpux"], "cpux"),
    ([*_FIT, "--device", "cuda:x"], "cuda:x"),
    (["fit", "{W}", "-m", "tip_adapter", "-o", "{O}", "-k", "0"], "shots"),
    (["fit", "{W}", "-m", "tip_adapter", "-o", "{O}", "-k", "-3"], "shots"),
    ([*_FIT, "--views", "-1"], "views"),
    ([*_FIT, "--views", "2", "--augment", "nope"], "nope"),
    ([*_FIT, "--prompts", "/nonexistent/prompts.json"], "prompts.json"),
    ([*_FIT, "--set", "alpha"], "alpha"),
    (["fit", "{W}", "-m", "tip_adapter", "-o", "{FILE}/art"], "{FILE}"),
    (["fit", "{W}", "-m", "tip_adapter", "-o", "{FILE}"], "{FILE}"),
    # predict
    (["predict", "{W}", "-a", "/nonexistent/art"], "/nonexistent/art"),
    ([*_PRED, "--topk", "0"], "--topk"),
    (["predict", "{W}", "-m", "tip_adapter"], "--artifact"),
    ([*_PRED, "--backend", "tf"], "tf"),
    (["predict", "{W}", "-a", "{W}"], "{W}"),
    ([*_PRED, "--device", "cpux"], "cpux"),
    (["predict", "{W}", "-a", "{ART}", "-o", "{FILE}/p.csv"], "{FILE}"),
    (["predict", "{W}", "-a", "{ART}", "--topk", "many"], "--topk"),
    # eval
    (["eval", "{W}", "--protocol", "nope"], "nope"),
    (["eval", "{W}", "--set", "alpha=1"], "alpha"),
    (["eval", "/nonexistent/data"], "/nonexistent/data"),
    (["eval", "{W}", "--test", "/nonexistent/test"], "/nonexistent/test"),
    (["eval", "{W}", "--views", "x"], "--views"),
    # extract
    (["extract"], "data"),
    (["extract", "/nonexistent/data"], "/nonexistent/data"),
    (["extract", "{W}", "--batch-size", "0"], "--batch-size"),
    (["extract", "{W}", "--decode", "magic"], "magic"),
    (["extract", "{W}", "--views", "2", "--augment", "nope"], "nope"),
    (["extract", "{W}", "--split", "val2"], "val2"),
    (["extract", "{W}", "--cache", "{FILE}"], "{FILE}"),
    (["extract", "{W}", "--device", "gpu7"], "gpu7"),
    # score
    (["score"], "predictions"),
    (["score", "/nonexistent/p.csv", "--labels", "{W}"], "/nonexistent/p.csv"),
    (["score", "{RESULT}", "--labels", "{W}"], "result.txt"),
    (["score", "{RESULT}"], "--labels"),
    # challenge
    (["challenge", "run", "/nonexistent/root"], "/nonexistent/root"),
    (["challenge", "run", "{CH}", "-c", "nosuch_config", "-o", "{O}"], "nosuch_config"),
    (["challenge", "run", "{CH}", "--split", "testC", "-o", "{O}"], "testC"),
    (["challenge", "show", "nosuch_config"], "nosuch_config"),
    (["challenge", "run", "{CH}", "-o", "{O}", "--set", "stages"], "stages"),
    (["challenge", "run", "{CH}", "-o", "{O}", "--batch-size", "zero"], "--batch-size"),
    # continual
    (["continual", "run", "/nonexistent/run.yaml"], "/nonexistent/run.yaml"),
    (["continual", "run", "{BADYAML}", "-o", "{O}"], "no_such_key"),
    (["continual", "run", "{CONT}", "-o", "{O}", "-m", "nosuch"], "nosuch"),
    (["continual", "eval", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["continual", "report", "/nonexistent/run"], "/nonexistent/run"),
    # prompts
    (["prompts", "explain", "/nonexistent/art"], "/nonexistent/art"),
    (["prompts", "explain", "{ART}"], "tip_adapter"),
    (["prompts", "explain", "{ART}", "--topk", "lots"], "--topk"),
    # export
    (["export", "{ART}", "--out", "{O}/m.pkl", "--format", "onnx9"], "onnx9"),
    (["export", "/nonexistent/art", "--out", "{O}/m.pkl"], "/nonexistent/art"),
    (["export", "{ART}"], "--out"),
    # align
    (["align", "/nonexistent/data"], "/nonexistent/data"),
    (["align", "{W}", "-b", "/nonexistent/clip.pkl"], "clip.pkl"),
    (["align", "{W}", "-n", "x"], "--limit"),
    # toyworld
    (["toyworld", "export", "--out", "{O}", "--layout", "zip"], "zip"),
    (["toyworld", "export", "--out", "{O}", "--domains", "Mars"], "Mars"),
    (["toyworld", "pretrain", "--out", "{O}", "--steps", "0"], "steps"),
    (["toyworld", "generate", "--bogus"], "--bogus"),
    (["toyworld", "pretrain", "--out", "{O}", "--checkpoint-every", "-1"], "checkpoint"),
    # data
    (["data", "prepare", "nosuch_dataset", "--root", "{O}"], "nosuch_dataset"),
    (["data", "check", "nosuch_dataset", "--root", "{O}"], "nosuch_dataset"),
    (["data", "check", "dtd"], "--root"),
    # serve (refused before the server starts)
    (["serve", "--root", "/nonexistent/root"], "/nonexistent/root"),
    (["serve", "--root", "{W}", "--port", "70000"], "--port"),
    (["serve", "--root", "{W}", "-a", "/nonexistent/art"], "/nonexistent/art"),
    # lora
    (["lora", "merge", "/nonexistent/run", "-o", "{O}/m.safetensors"], "/nonexistent/run"),
    # more of the sample: devices, ranges, outputs, renamed classes
    (["challenge", "run", "{CH}", "-o", "{O}", "--device", "cpux"], "cpux"),
    (["continual", "run", "{CONT}", "-o", "{O}", "--device", "cuda:x"], "cuda:x"),
    (["eval", "{W}", "--device", "cpux", "-o", "{O}"], "cpux"),
    (["eval", "{W}", "--shots", "-1", "-o", "{O}"], "--shots"),
    (["eval", "{W}", "--seeds", "", "-o", "{O}"], "--seeds"),
    (["eval", "{W}", "--methods", "tip_adapter", "--test", "{TREN}", "-o", "{O}", "--shots", "1", "--seeds", "1"],
     "{FIRST}_renamed"),
    (["eval", "{W}", "--holdout", "0.2", "--test", "{W}", "-o", "{O}"], "--holdout"),
    (["predict", "{W}", "-a", "{ART}", "-o", "{O}/p.xml"], "p.xml"),
    (["predict", "{W}", "-a", "{ART}", "-o", "{O}/p.csv", "--format", "xml"], "xml"),
    (["predict", "{W}", "-a", "{ART}", "-o", "{O}/p.csv", "--result-txt", "{FILE}/r.txt"], "{FILE}"),
    (["export", "--backbone", "/nonexistent/clip.pt", "--out", "{O}/c.pkl"], "clip.pt"),
    (["score", "{RESULT}", "--labels", "/nonexistent/labels"], "/nonexistent/labels"),
    (["fit", "{W}/train/{FIRST}", "-m", "tip_adapter", "-o", "{O}", "-k", "1"], "unlabelled"),  # a flat folder
    (["eval", "{W}/train/{FIRST}", "-o", "{O}"], "unlabelled"),
    (["eval", "{W}", "--views", "-1", "-o", "{O}"], "--views"),
    (["eval", "{W}", "--holdout", "1.5", "-o", "{O}"], "--holdout"),
    (["score", "{RESULT}", "--labels", "{W}", "--json", "{FILE}/s.json"], "{FILE}"),
    # top level
    (["nosuchverb"], "nosuchverb"),
    (["methods", "extra"], "extra"),
]

# The config-validation cases of issue 15 (its config module validates values once, for every command).
CONFIG_CASES = [
    pytest.param([*_FIT, "--set", "search=maybe"], "search"),
    pytest.param([*_FIT, "--set", "init_alpha=nan"], "init_alpha"),
    pytest.param(["fit", "{W}", "-m", "tip_adapter_f", "-o", "{O}", "-k", "1", "--set", "epochs=ten"], "epochs"),
    pytest.param(["fit", "{W}", "-m", "tip_adapter_f", "-o", "{O}", "-k", "1", "--set", "lr=nan"], "lr"),
    pytest.param([*_FIT, "--set", "alpha=high"], "alpha"),
    pytest.param([*_FIT, "--set", "search_steps=[0,20]"], "search_steps"),
    pytest.param(["eval", "{W}", "--set", "no_such_method.alpha=1", "-o", "{O}"], "no_such_method"),
    pytest.param(["eval", "{W}", "--shots", "two", "-o", "{O}"], "--shots"),
    pytest.param(["eval", "{W}", "--seeds", "1,x", "-o", "{O}"], "--seeds"),
    pytest.param(["fit", "{W}", "-m", "tip_adaptr", "-o", "{O}"], "tip_adapter"),
    pytest.param(["eval", "{W}", "--methods", "tip_adaptr", "-o", "{O}"], "tip_adapter"),
    pytest.param(["fit", "{W}", "-m", "tip_adapter", "-o", "{O}", "-k", "4", "--shots-file", "{SHOTS1}"], "shots"),
    pytest.param([*_FIT, "--set", "init_beta=inf"], "init_beta"),
    pytest.param([*_FIT, "--set", "init_alpha=-1"], "init_alpha"),
    pytest.param(["fit", "{W}", "-m", "tip_adapter_f", "-o", "{O}", "-k", "1", "--set", "epochs=-1"], "epochs"),
    pytest.param(["fit", "{W}", "-m", "tip_adapter_f", "-o", "{O}", "-k", "1", "--set", "lr=-1"], "lr"),
    pytest.param([*_FIT, "--set", "no_such_key=1"], "no_such_key"),
    pytest.param(["eval", "{W}", "--methods", "tip_adapter", "--set", "tip_adapter.init_alpha=nan", "-o", "{O}"],
                 "init_alpha"),

]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from kshot.toyworld.export import export_world
    from kshot.toyworld.generator import World

    root = tmp_path_factory.mktemp("bad_input")
    world = World()
    w = export_world(world, "imagefolder", root / "world", domains=["Creatures"], n_train=2, n_val=1, n_test=1)
    ch = export_world(world, "challenge", root / "chal", domains=["Creatures"], n_train=2, n_val=1, n_test=1)
    first = sorted(p.name for p in (w / "test").iterdir())[0]
    shutil.copytree(w / "test", root / "renamed" / "test")
    (root / "renamed" / "test" / first).rename(root / "renamed" / "test" / f"{first}_renamed")
    (root / "afile").write_text("not a folder\n")
    (root / "result.txt").write_text("img_1.jpg 3 x 5\n")
    (root / "bad.yaml").write_text("no_such_key: 1\n")
    shots1 = root / "shots1.txt"
    art = root / "art"
    cache = root / "cache"
    assert run_cli(app, ["fit", str(w), "-m", "tip_adapter", "-k", "1", "-o", str(art), "--cache", str(cache),
                         "--shots-file", str(shots1)]) == 0
    return {"W": str(w), "CH": str(ch), "ART": str(art), "FILE": str(root / "afile"), "RESULT": str(root / "result.txt"),
            "BADYAML": str(root / "bad.yaml"), "CONT": str(REPO / "configs" / "continual" / "digits.yaml"),
            "SHOTS1": str(shots1), "CACHE": str(cache), "TREN": str(root / "renamed"), "FIRST": first}


def _check(argv: list[str], expect: str, places: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture
           ) -> None:
    fill = {**places, "O": str(tmp_path / "out")}
    args = [a.format(**fill) for a in argv]
    if "--cache" not in args and args[0] in ("fit", "predict", "eval", "extract", "align"):
        args += ["--cache", places["CACHE"]] if args[0] != "align" else []
    status = run_cli(app, args)
    out = capsys.readouterr()
    text = out.out + out.err
    assert status != 0, f"{args} exited 0:\n{text}"
    assert "Traceback" not in text, text
    assert "error:" in text, text
    assert expect.format(**fill).lower() in text.lower(), f"message does not name {expect!r}:\n{text}"


@pytest.mark.parametrize("argv, expect", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_invocation_is_one_error_line(argv: list[str], expect: str, places: dict[str, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    _check(argv, expect, places, tmp_path, capsys)


@pytest.mark.parametrize("argv, expect", CONFIG_CASES, ids=[" ".join(c.values[0])[:60] for c in CONFIG_CASES])
def test_bad_config_value_is_one_error_line(argv: list[str], expect: str, places: dict[str, str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    _check(argv, expect, places, tmp_path, capsys)


def test_corpus_covers_every_verb() -> None:
    groups = ("challenge", "continual", "toyworld", "prompts", "data", "lora")
    verbs = {c[0][0] if c[0][0] not in groups else " ".join(c[0][:2]) for c in CASES}
    for verb in ("fit", "predict", "eval", "extract", "score", "challenge run", "continual run", "prompts explain",
                 "export", "align", "toyworld export", "toyworld pretrain", "data prepare", "data check", "serve",
                 "lora merge"):
        assert verb in verbs, verb
    assert len(CASES) + len(CONFIG_CASES) >= 100
