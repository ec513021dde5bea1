"""Every `kshot` command against docs/cli.md: examples in every --help, one name and alias per flag, `--json` takes a
file, help and errors printed without markup, no message suggesting a flag that does not exist (issue 22)."""

from __future__ import annotations

import ast
import io
import re
import shlex
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from kshot.cli import app
from kshot.cli_errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "cli.md").read_text()
#: Flags of other programs that kshot's messages may name.
EXTERNAL_FLAGS = {"--nproc-per-node"}


def _commands() -> dict[str, object]:
    """'kshot fit' -> its click command, for every leaf command (and `kshot bench`, a callback-only group)."""
    out = {}

    def walk(cmd, path):
        subs = getattr(cmd, "commands", {})
        if not subs or path == "kshot bench":
            out[path] = cmd
        for name, sub in subs.items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "kshot")
    out.pop("kshot", None)
    return out


def test_top_level_help_has_an_example():
    assert re.search(r"Example:\s+kshot fit ", CliRunner().invoke(app, ["--help"]).output)


COMMANDS = _commands()


def _options(cmd) -> list:
    return [p for p in cmd.params if type(p).__name__.endswith("Option")]


def test_every_command_is_documented_and_documented_commands_exist():
    listed = set(re.findall(r"`(kshot [a-z][a-z ]*?)`", DOC.split("## Commands", 1)[1].split("##", 1)[0]))
    assert listed == set(COMMANDS), (sorted(set(COMMANDS) - listed), sorted(listed - set(COMMANDS)))


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_ends_with_an_example_that_parses(path):
    words = path.split()[1:]
    r = CliRunner().invoke(app, [*words, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    m = re.search(r"Example:\s+(kshot [^\n]+)", r.output)
    assert m, f"`{path} --help` has no 'Example:' line"
    example = shlex.split(m.group(1).split(" && ")[0])
    assert example[: len(path.split())] == path.split(), (path, example)
    cmd = COMMANDS[path]
    ctx = cmd.make_context(path, example[len(path.split()):], resilient_parsing=False)  # raises on a bad flag
    assert ctx.command is cmd


def test_short_aliases_and_long_names_are_one_to_one():
    short_to_long: dict[str, set[str]] = {}
    long_to_short: dict[str, dict[str, str]] = {}
    for path, cmd in COMMANDS.items():
        for p in _options(cmd):
            longs = [o for o in p.opts if o.startswith("--")]
            shorts = [o for o in p.opts if not o.startswith("--")]
            assert len(longs) == 1, f"{path}: option {p.opts} needs exactly one long name"
            for s in shorts:
                short_to_long.setdefault(s, set()).add(longs[0])
            if not p.is_flag:
                long_to_short.setdefault(longs[0], {})[path] = ",".join(shorts)
    clash = {s: sorted(ls) for s, ls in short_to_long.items() if len(ls) > 1}
    assert not clash, f"one short alias, several flags: {clash}"
    uneven = {f: by for f, by in long_to_short.items() if len(set(by.values())) > 1}
    assert not uneven, f"a flag with a short alias in one command and not in another: {uneven}"


def test_shared_flags_are_in_the_table_with_their_alias():
    table = DOC.split("## Flags", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            names = re.findall(r"`(-[-\w]+)`", line.split("|")[1])
            for n in names:
                rows[n] = names
    used: dict[str, set[str]] = {}
    for path, cmd in COMMANDS.items():
        for p in _options(cmd):
            long = next(o for o in p.opts if o.startswith("--"))
            used.setdefault(long, set()).add(path)
            if long in rows:  # the documented alias is the real one
                shorts = [o for o in p.opts if not o.startswith("--")]
                assert all(s in rows[long] for s in shorts), (path, long, shorts, rows[long])
    shared = {f for f, paths in used.items() if len(paths) > 1 and f != "--help"}
    missing = sorted(shared - set(rows))
    assert not missing, f"flags used by several commands but not in docs/cli.md: {missing}"


def test_json_always_takes_a_file():
    for path, cmd in COMMANDS.items():
        for p in _options(cmd):
            if "--json" in p.opts:
                assert not p.is_flag, f"{path}: --json must take a file path (docs/cli.md)"


def test_default_output_folders_follow_the_layout():
    for path, cmd in COMMANDS.items():
        for p in _options(cmd):
            if "--out" in p.opts and p.default not in (None, ...) and not p.required:
                d = Path(str(p.default))
                assert d.parts[0] == "kshot-out" or len(d.parts) == 1, f"{path}: --out defaults to {d}"


def test_help_and_errors_keep_brackets():
    r = CliRunner().invoke(app, ["predict", "--help"], terminal_width=200)
    assert "kshot[jittor]" in r.output and "kshot[deploy]" in r.output
    from kshot.jittor_backend.runtime import INSTALL_HINT, JittorError

    def boom():
        raise JittorError(f"no Jittor here; {INSTALL_HINT}")

    broken = typer.Typer()
    broken.command()(boom)
    buf = io.StringIO()
    assert run_cli(broken, [], console=Console(file=buf, width=300)) == 2
    assert 'pip install "kshot[jittor]"' in buf.getvalue()


def _message_strings():
    """(file, string) of every string literal in src/kshot that is not a docstring, outside argparse scripts."""
    for f in sorted((ROOT / "src" / "kshot").rglob("*.py")):
        text = f.read_text()
        if "argparse" in text:
            continue
        tree = ast.parse(text)
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                yield f, node.value


def test_no_message_suggests_a_flag_that_does_not_exist():
    known = {"--help", "--debug", *EXTERNAL_FLAGS}
    root = typer.main.get_command(app)
    for p in root.params:
        known |= set(p.opts) | set(p.secondary_opts)
    for cmd in COMMANDS.values():
        for p in cmd.params:
            known |= set(p.opts) | set(p.secondary_opts)
    bad = sorted({(f.relative_to(ROOT).as_posix(), m) for f, s in _message_strings()
                  for m in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", s) if m not in known})
    assert not bad, bad


def test_offline_open_clip_hint_names_no_arch_flag():
    from kshot.backbones.open_clip_source import offline_hint

    assert "--arch" not in offline_hint("ViT-B-32") and "open_clip:ViT-B-32@/path/to/file" in offline_hint("ViT-B-32")
