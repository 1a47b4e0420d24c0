"""The house's rules, read from the source: every import (at module level or inside a function) goes to the
importer's own layer or one below it (bench.LAYERS), no two modules import each other through any chain, and no
module or function outgrows what one reader holds in mind."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench import LAYERS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "sweeps", "methods", "models")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:  # `from pkg import name`: the module pkg.name, else pkg itself
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def layer(name: str) -> int:
    best = max(((len(p), i) for i, names in enumerate(LAYERS) for p in names if name == p or name.startswith(p + ".")),
               default=None)
    assert best is not None, f"{name} is in no layer of bench.LAYERS: add its package there"
    return best[1]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_goes_up_a_layer():
    up = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
          for a, targets in graph().items() for b in sorted(targets)
          if layer(b) > layer(a) and not (b in ("bench", "sweeps") and a.startswith(b + "."))]
    assert not up, "imports against bench.LAYERS:\n" + "\n".join(up)


def test_no_circle_between_modules():
    g, circles, state = graph(), [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(g.get(m, ())):
            if state.get(n) == "open":
                circles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks above fail where they should: an upward import and a two-module circle, on made-up files."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from bench.cli import main\n")
    b.write_text("from .a import f\n")
    assert imports("bench.core.a", a, {"bench.cli", "bench.core.a"}) == {"bench.cli"}
    assert layer("bench.cli") > layer("bench.core.a")
    assert imports("bench.core.b", b, {"bench.core.a", "bench.core.b"}) == {"bench.core.a"}
    with pytest.raises(AssertionError, match="in no layer"):
        layer("elsewhere.module")


MAX_LINES, MAX_FUNCTION = 420, 60  # about 400 lines a module, 60 a function


def test_modules_and_functions_stay_readable():
    long_modules, long_functions = [], []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION:
                    long_functions.append(f"{name}.{node.name}: {n} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


def test_every_package_says_what_it_owns_and_may_import():
    """bench's packages open with a docstring naming what they own and what they may import (the layers above)."""
    for init in sorted((ROOT / "bench").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import:" in doc, f"{init.relative_to(ROOT)} does not say what it may import"
        allowed = doc.split("May import:", 1)[1]
        own = layer(module_name(init))
        for name in {m for m in modules() if m.count(".") == 1 and m.startswith("bench.")} - {module_name(init)}:
            if name in allowed.replace(",", " ").split():
                assert layer(name) <= own, f"{init.relative_to(ROOT)} allows {name}, a layer above it"
