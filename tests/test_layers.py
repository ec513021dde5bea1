"""Imports of src/kshot (function-local ones included) follow the layer order written in docs/DESIGN.md: no
upward import between packages and no import circle between modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kshot"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md"


def layers() -> dict[str, int]:
    """Top-level module/package name -> layer number, read from DESIGN.md's list."""
    text = DESIGN.read_text()
    block = text.split("<!-- layers -->")[1].split("<!-- /layers -->")[0]
    out: dict[str, int] = {}
    for num, rest in re.findall(r"(\d+)\.\s+([^;]+)", block):
        for name in re.findall(r"`([\w/]+)`", rest):
            out.setdefault(name.split("/")[0], int(num))
    return out


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """kshot module -> the kshot modules it imports (anywhere in the file)."""
    mods = {module_name(p): p for p in SRC.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("kshot")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("kshot"):
                    for a in node.names:
                        deps.add(f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target)
        out[name] = {d for d in deps if d in mods and d != name}
    return out


def layer_of(module: str, table: dict[str, int]) -> int:
    parts = module.split(".")
    if parts[-1] == "cli" or module in ("kshot.cli", "kshot.demo", "kshot.__main__"):
        return max(table.values())
    if len(parts) == 1:  # the kshot package itself (version only)
        return 0
    return table[parts[1]]


def test_every_package_has_a_layer():
    table = layers()
    top = {module_name(p).split(".")[1] for p in SRC.rglob("*.py") if module_name(p) != "kshot"}
    assert not sorted(top - set(table)), "add these packages to docs/DESIGN.md's layer list"


def test_no_upward_imports():
    table, bad = layers(), []
    for mod, deps in imports().items():
        for d in deps:
            if layer_of(d, table) > layer_of(mod, table):
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports from a higher layer:\n" + "\n".join(sorted(bad))


def test_no_import_circles():
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


@pytest.mark.parametrize("src,ok", [("from kshot.eval import metrics", False), ("import kshot.errors", True)])
def test_checker_sees_function_local_imports(tmp_path, src, ok):
    tree = ast.parse(f"def f():\n    {src}\n")
    found = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in ast.walk(tree)
             if isinstance(n, (ast.Import, ast.ImportFrom))}
    table = layers()
    assert (max(table[m.split(".")[1]] for m in found) <= table["features"]) is ok
