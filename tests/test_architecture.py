"""The architecture as a property of the code: stages as packages, no import cycle, the torch
boundary at package level, no module too long to read in one sitting."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gradlint"
RULES = ROOT / "rules"
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    """Every module of gradlint and of its built-in rules, by dotted name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted(RULES.glob("*.py")):
        out["gradlint.rules" + ("" if path.stem == "__init__" else "." + path.stem)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The gradlint modules ``name`` imports, at module level or inside functions; not those
    under ``if TYPE_CHECKING:``, which never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "gradlint":
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_counting_imports_inside_functions():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_rule_imports_another_rule():
    graph = _graph()
    bad = {m: sorted(d for d in deps if d.startswith("gradlint.rules.")) for m, deps in graph.items()
           if m.startswith("gradlint.rules.")}
    assert not {m: d for m, d in bad.items() if d}


def test_no_module_is_longer_than_it_can_be_read():
    long = {str(p.relative_to(ROOT)): n for p in [*PACKAGE.rglob("*.py"), *RULES.glob("*.py")]
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_torch_free_packages_import_no_torch():
    """What serves --version, --help, configuration errors and cache hits lives in packages that
    never import torch: importing every module of them, in a fresh interpreter, loads none."""
    from gradlint import TORCH_FREE

    mods = [m for m in _modules() if any(m == p or m.startswith(p + ".") for p in TORCH_FREE)]
    assert len(mods) > 10
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(k for k in ('torch', 'numpy', 'transformers') if k in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("stage", ["run", "load", "capture", "engine", "lint", "probing", "output"])
def test_each_stage_is_a_package(stage):
    assert (PACKAGE / stage / "__init__.py").is_file()
    assert ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text())), "say what the stage does"


def test_every_package_is_shipped():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")} | {"gradlint.rules"}
    assert listed == found


def test_one_table_of_op_kinds():
    """The engine has a rule for every kind in base.kinds.KINDS and for nothing else, and every
    named set of kinds is drawn from it."""
    from gradlint.base import kinds
    from gradlint.engine.transfers import TRANSFERS

    assert set(TRANSFERS) == set(kinds.KINDS)
    for name in ("BENIGN_KINDS", "WEIGHTED_KINDS", "NORM_KINDS", "ACTIVATION_KINDS", "LAYER_KINDS", "PROFILE_KINDS"):
        assert getattr(kinds, name) <= set(kinds.KINDS), name
