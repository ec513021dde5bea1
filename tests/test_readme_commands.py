"""Every `kshot ...` line of the README's ```bash blocks against the real CLI (issue 22: the docs must not drift).

(a) every command parses: its verb and sub-verbs exist and every flag it writes is an option of that command
(click's tree from `typer.main.get_command(app)`; nothing is executed; `DATA`, `runs/x`, `$VARS` and `...` are
plain words); (b) the blocks that run offline on the toy world in seconds are run, placeholders bound to a toy
ImageFolder. The Python snippet is run by tests/test_readme.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kshot.cli import app
from kshot.cli_errors import DEBUG_FLAG

README = Path(__file__).resolve().parents[1] / "README.md"
ROOT_CMD = typer.main.get_command(app)
#: Shell words that end one command and start another.
OPERATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {"<", ">", ">>", "2>"}

#: Sections whose kshot commands are run by another test (parse-checked here too).
RUN_ELSEWHERE = {
    "Look at it": "tests/deploy/test_readme.py runs the export and `kshot serve` (needs a free port, httpx)",
    "Deploy it": "tests/deploy/test_readme.py runs fit, both exports and the onnx predict",
    "Reproduce a paper table": "tests/eval/test_bench_cli.py runs the toy `bench` blocks (the coop11/dg ones need "
                               "the official archives and ViT-B/16 weights)",
    "kshot": "the set-up lines: `kshot demo` is tests/test_demo.py (minutes), the suite is pytest itself",
}
#: Sections whose kshot commands are only parse-checked, and why.
PARSE_ONLY = {
    "Protocols, prompt learning, continual learning": "DATA is a real benchmark; base2new trains five "
                                                     "prompt methods (minutes); digits continual alone is ~30 s",
    "Preparing the 11 CoOp benchmark datasets": "downloads or the official archives (~100 GB)",
    "The Jittor challenge (track 1: 4 shots per class, top-5 `result.txt`)": "the challenge Dataset/; the toy cascade "
                                                                           "took 342 s on 2 cores (issue 22)",
    "Feature extraction at scale": "open_clip ViT-B-32 weights (online), CUDA, torchrun over 8 GPUs",
    "Jittor interop": "JCLIP .pkl / open_clip weights, the Jittor venv (minutes to compile)",
    "The 2024–26 training-free and linear methods": "DATA at 16 shots of a real benchmark; proker/tda are long",
    "CLIP-LoRA: training through the encoders": "500 x K LoRA iterations, torchrun, open_clip weights",
}
#: Sections run here: the quick start, each placeholder bound to the toy world (see test_using_kshot_block_runs).
RUN_HERE = {"Using kshot"}


def bash_blocks() -> list[tuple[str, str]]:
    """(section heading, block text) of every ```bash block, in order."""
    out, section = [], ""
    for part in re.split(r"(^#+ [^\n]*$|^```bash\n.*?^```)", README.read_text(), flags=re.M | re.S):
        if part.startswith("#"):
            section = part.lstrip("#").strip()
        elif part.startswith("```bash"):
            out.append((section, part[len("```bash\n"):-3]))
    return out


def kshot_commands(block: str) -> list[list[str]]:
    """The argument lists after `kshot` (also `.venv/bin/kshot`, `python -m kshot`, `torchrun ... -m kshot`)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split, lex.commenters = True, "#"
        segment: list[str] = []
        for word in [*lex, ";"]:
            if word not in OPERATORS:
                segment.append(word)
                continue
            for i, w in enumerate(segment):
                if w.rsplit("/", 1)[-1] == "kshot" and (i == 0 or segment[i - 1] == "-m"):
                    args = segment[i + 1:]
                    cut = [j for j, a in enumerate(args) if a in REDIRECTS]
                    out.append(args[:cut[0]] if cut else args)
                    break
            segment = []
    return out


def _takes_value(param) -> bool:
    return not (getattr(param, "is_flag", False) or getattr(param, "count", False))


def check_parses(args: list[str], fragment: bool = False) -> str | None:
    """None if `kshot ARGS` names an existing command with only its own flags, else what is wrong (a `fragment`, as
    in prose, may end with an option that takes a value)."""
    cmd, path, i = ROOT_CMD, "kshot", 0
    args = [a for a in args if a != DEBUG_FLAG and a != "..."]
    while True:
        opts = {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        positional = [p for p in cmd.params if type(p).__name__.endswith("Argument")]
        n_pos, subs = 0, getattr(cmd, "commands", {})
        while i < len(args):
            word = args[i]
            i += 1
            if word == "--help":
                return None
            if word.startswith("-") and word != "-":
                name = word.split("=", 1)[0]
                if name not in opts:
                    return f"`{path}` has no option {name}"
                if _takes_value(opts[name]) and "=" not in word:
                    if i >= len(args) and not fragment:
                        return f"`{path} {name}` needs a value"
                    i += 1
            elif subs:
                if word not in subs:
                    return f"`{path}` has no command {word!r} (has: {', '.join(sorted(subs))})"
                cmd, path = subs[word], f"{path} {word}"
                break
            else:
                n_pos += 1
        else:
            limit = sum(float("inf") if p.nargs == -1 else p.nargs for p in positional)
            return None if n_pos <= limit else f"`{path}` takes {limit} arguments, got {n_pos}"


def inline_commands() -> list[list[str]]:
    """The `kshot ...` code spans of the prose (outside code blocks), e.g. `kshot eval DATA --holdout 0.2 --seed 1`."""
    prose = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.M | re.S)
    spans = re.findall(r"`((?:torchrun [^`]*?-m )?kshot [^`]+)`", prose)
    return [args for span in spans for args in kshot_commands(" ".join(span.split()))]


BLOCKS = bash_blocks()
COMMANDS = [(section, args) for section, block in BLOCKS for args in kshot_commands(block)]
INLINE = inline_commands()


def test_readme_commands_were_found():
    assert len(COMMANDS) > 40 and any(a[:1] == ["fit"] for _, a in COMMANDS)
    # continuation lines joined, torchrun's `-m kshot` and `&&` chains found
    assert any(a[:1] == ["bench"] and "-o" in a for _, a in COMMANDS)
    assert any(s.startswith("CLIP-LoRA") and "--device" in a for s, a in COMMANDS)
    assert ["demo"] in [a for _, a in COMMANDS]
    assert ["eval", "DATA", "--holdout", "0.2", "--seed", "1"] in INLINE  # a span broken over two lines


def test_the_checker_catches_drift():
    assert check_parses(["fit", "DATA", "-m", "lpp", "-k", "4", "-o", "runs/x"]) is None
    assert "no option --topk" in check_parses(["fit", "DATA", "--topk", "5"])
    assert "no command 'fitt'" in check_parses(["fitt", "DATA"])
    assert "no command 'lst'" in check_parses(["data", "lst"])
    assert "takes" in check_parses(["methods", "extra"])
    assert "needs a value" in check_parses(["predict", "-a"]) and check_parses(["predict", "-a"], fragment=True) is None
    assert check_parses(["-q", "data", "check", "coop11", "--root", "DATA", DEBUG_FLAG]) is None


@pytest.mark.parametrize("section,args", COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_readme_command_parses(section, args):
    assert check_parses(args) is None, f"README [{section}] kshot {' '.join(args)}: {check_parses(args)}"


@pytest.mark.parametrize("args", INLINE, ids=[" ".join(a)[:60] for a in INLINE])
def test_readme_prose_command_parses(args):
    assert check_parses(args, fragment=True) is None, f"README prose `kshot {' '.join(args)}`: {check_parses(args)}"


def test_every_section_with_commands_is_classified():
    sections = {s for s, _ in COMMANDS}
    unclassified = sections - set(RUN_ELSEWHERE) - set(PARSE_ONLY) - RUN_HERE
    assert not unclassified, f"say whether these README sections' commands are run, and where: {unclassified}"
    stale = (set(RUN_ELSEWHERE) | set(PARSE_ONLY) | RUN_HERE) - sections
    assert not stale, f"no README section with kshot commands is called {stale}"


#: Single commands of parse-only sections that run offline in a second; run as written.
RUN_AS_WRITTEN = [["data", "list"], ["challenge", "configs"]]
#: What the quick start's placeholders stand for here: DATA the toy world as an ImageFolder with enough images per
#: class for its `-k 16` (16 shots + 4 validation); TEST its test images as a labelled `<class>/<img>` tree whose file
#: names are unique (the challenge's result.txt is keyed by file name); the shipped tiny CLIP.
BINDINGS = {"DATA": "data", "TEST": "test", "SPEC": "toy:clip"}


def _invoke(args: list[str]):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, f"kshot {' '.join(args)}\n{r.output}{r.exception!r}"
    return r.output


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KSHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_using_kshot_block_runs(in_tmp):
    (block,) = [b for s, b in BLOCKS if s in RUN_HERE]
    commands = kshot_commands(block)
    assert [a[0] for a in commands] == ["--help", "methods", "extract", "fit", "predict", "predict", "score",
                                        "toyworld"], "the quick start changed: update BINDINGS and this test"
    _invoke(["toyworld", "export", "--layout", "imagefolder", "--domains", "Creatures", "--per-class", "20",
             "--n-test", "5", "--out", "data"])
    for image in sorted((in_tmp / "data" / "test").glob("*/*.png")):
        (in_tmp / "test" / image.parent.name).mkdir(parents=True, exist_ok=True)
        image.rename(in_tmp / "test" / image.parent.name / f"{image.parent.name}-{image.name}")
    outputs = [_invoke([BINDINGS.get(a, a) for a in args]) for args in commands]
    assert "fit" in outputs[0] and "tip_adapter" in outputs[1]
    assert (in_tmp / "runs" / "tip" / "method.json").is_file() and (in_tmp / "runs" / "tip" / "shots.txt").is_file()
    assert len((in_tmp / "result.txt").read_text().splitlines()) == 16 * 5  # one line per test image
    assert len((in_tmp / "predictions.csv").read_text().splitlines()) == 1 + 16 * 5
    assert "mean per-class recall" in outputs[6] and re.search(r"all\W+80\W", outputs[6])  # 80 test images scored
    assert (in_tmp / "toy" / "train.txt").is_file()


@pytest.mark.parametrize("args", RUN_AS_WRITTEN, ids=" ".join)
def test_offline_one_liners_run(args, in_tmp):
    assert args in [a for _, a in COMMANDS], f"README no longer shows kshot {' '.join(args)}"
    assert _invoke(args).strip()
