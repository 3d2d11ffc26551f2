"""The models that matter in a file, read from its source: which module-level functions are
model factories, and which classes and factories are building blocks of others.

A factory is a module-level function whose every ``return`` builds an ``nn.Module`` (a call to
an ``nn.Module`` class, to another factory, or a name assigned from such a call). Nothing is
called to decide: ``main()``, ``train()`` or ``test()`` are never run. A class or factory is a
building block when the code of another candidate (a class's methods, a factory's body)
refers to it by name: ``GPT`` builds ``Block``, ``ResNet18()`` builds ``ResNet``, or when another
module of its package builds it (``package_users``).
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import textwrap
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gradlint.load.files import read_source

__all__ = ["building_blocks", "factory_kind", "package_users"]


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, namespace)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _own_nodes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """The nodes of a function's body, nested functions, lambdas and classes left out."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        out.append(node)
        stack += [c for c in ast.iter_child_nodes(node)
                  if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))]
    return out


@functools.lru_cache(maxsize=64)
def _top_level(filename: str, mtime: float) -> dict[str, ast.AST]:
    """The top-level classes and functions of a file, parsed once."""
    try:
        tree = ast.parse(read_source(filename))
    except (OSError, SyntaxError, ValueError):
        return {}
    return {n.name: n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}


def _definition(obj: Any) -> ast.AST | None:
    """The ``class`` or ``def`` statement of a class or function, from its file (parsed once per
    file), else from ``inspect.getsource``."""
    name = getattr(obj, "__qualname__", "")
    try:
        filename = inspect.getsourcefile(obj)
    except TypeError:
        filename = None
    if filename and "." not in name:
        try:
            found = _top_level(filename, os.path.getmtime(filename)).get(name)
        except OSError:
            found = None
        if found is not None:
            return found
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    return tree.body[0] if tree.body else None


def _function_node(obj: Any) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    node = _definition(obj)
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def factory_kind(obj: Any, module: types.ModuleType, _seen: frozenset[int] = frozenset()) -> str | None:
    """Whether a function of the file is a model factory, read from its source.

    Returns:
        ``"own"`` when every return builds a model and one builds a class of the file (or
        calls such a factory); ``"library"`` when they only build library modules
        (``nn.Sequential(...)``); None when it is no factory.
    """
    import torch.nn as nn

    if not inspect.isfunction(obj) or id(obj) in _seen or inspect.isgeneratorfunction(obj):
        return None
    node = _function_node(obj)
    if node is None:
        return None
    namespace = {**vars(module), **getattr(obj, "__globals__", {})}
    nodes = _own_nodes(node)
    returns = [n for n in nodes if isinstance(n, ast.Return)]
    if not returns or any(r.value is None for r in returns):
        return None
    assigned: dict[str, list[ast.expr]] = {}
    for n in nodes:
        if isinstance(n, ast.Assign):
            for target in n.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(n.value)
    kinds: list[str] = []

    def builds(value: ast.expr, depth: int = 0) -> bool:
        if isinstance(value, ast.IfExp):
            return builds(value.body, depth) and builds(value.orelse, depth)
        if isinstance(value, ast.Name) and depth == 0 and value.id in assigned:
            return all(builds(v, 1) for v in assigned[value.id])
        if not isinstance(value, ast.Call):
            return False
        callee = _resolve(value.func, namespace)
        if isinstance(callee, type) and issubclass(callee, nn.Module):
            kinds.append("own" if callee.__module__ == module.__name__ else "library")
            return True
        if inspect.isfunction(callee) and callee.__module__ == module.__name__:
            inner = factory_kind(callee, module, _seen | {id(obj)})
            if inner is not None:
                kinds.append(inner)
                return True
        return False

    if not all(builds(r.value) for r in returns if r.value is not None):
        return None
    return "own" if "own" in kinds else "library"


def _referenced(obj: Any) -> set[str]:
    """The names a class's methods or a function's body refer to."""
    if isinstance(obj, functools.partial):  # make = functools.partial(Net, width=3)
        return {getattr(obj.func, "__name__", "")}
    top = _definition(obj)
    if isinstance(top, ast.ClassDef):
        bodies = [n for n in ast.walk(top) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    elif isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
        bodies = [top]
    else:
        return set()
    out: set[str] = set()
    for body in bodies:
        for stmt in body.body:
            out |= {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return out


def building_blocks(candidates: Iterable[tuple[str, Any]], needs_arguments: Iterable[str] = ()) -> dict[str, str]:
    """The candidates another candidate's code refers to: name -> why, ``a building block of X``.

    A class that needs arguments and that another candidate subclasses (and so gives them) is
    one too, ``the base class of X``. When every candidate turns out to be a building block
    (they refer to each other), none is: there is no model above them to report instead.
    """
    candidates = list(candidates)
    names = {name for name, _ in candidates}
    needing = set(needs_arguments)
    users: dict[str, str] = {}
    for name, obj in candidates:
        for used in sorted(_referenced(obj) & names - {name}):
            users.setdefault(used, f"a building block of {name}")
        for base in getattr(obj, "__bases__", ()) if isinstance(obj, type) else ():
            base_name = getattr(base, "__name__", "")
            if base_name in names and base_name in needing and base_name != name:
                users.setdefault(base_name, f"the base class of {name}")
    if users and all(name in users for name, _ in candidates):
        return {}
    return users


_MAX_PACKAGE_FILES = 300


def package_users(path: Path, names: Iterable[str]) -> tuple[dict[str, str], set[str]]:
    """Which of ``names`` (defined in ``path``) the other modules of its package build, read from
    their source, and which they call directly.

    Returns:
        name -> ``a building block of other.py::User``, for a module that imports the name from
        ``path``'s module and refers to it inside a class, or inside a function that needs no
        arguments (a factory). A function that needs arguments (``create_model(image_size,
        ...)``) is no model: it is where the repository builds the class, a call site its values
        are read from. And the names called anywhere in those modules (``UNetModel(...)``):
        classes the repository builds itself. The package is the outermost one holding
        ``path``, or ``path``'s own directory outside a package.
    """
    return _package_scan(path, tuple(sorted(set(names))))


def _needs_arguments(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    return len(positional) > len(args.defaults) or any(d is None for d in args.kw_defaults)


def _package_scan(path: Path, names: tuple[str, ...]) -> tuple[dict[str, str], set[str]]:
    from gradlint.load.files import SKIP_DIRS, package_parts

    wanted = set(names)
    parts, package_root = package_parts(path)
    top = package_root / parts[0] if parts else path.parent
    files = sorted(top.rglob("*.py")) if parts else sorted(top.glob("*.py"))
    users: dict[str, str] = {}
    called: set[str] = set()
    for other in files[:_MAX_PACKAGE_FILES]:
        if other == path or any(p.startswith(".") or p in SKIP_DIRS for p in other.relative_to(top).parts[:-1]):
            continue
        try:
            text = read_source(other).decode("utf-8", errors="replace")
        except OSError:
            continue
        if path.stem not in text or not any(name in text for name in wanted):
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        bound = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module is not None \
                    and node.module.rpartition(".")[2] == path.stem:
                bound.update({(a.asname or a.name): a.name for a in node.names if a.name in wanted})
        if not bound:
            continue
        called |= {bound[n.func.id] for n in ast.walk(tree)
                   if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in bound}
        for top_node in tree.body:
            if isinstance(top_node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _needs_arguments(top_node):
                continue
            if not isinstance(top_node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(top_node):
                if isinstance(node, ast.Name) and node.id in bound:
                    rel = other.relative_to(top.parent if parts else top).as_posix()
                    users.setdefault(bound[node.id], f"a building block of {rel}::{top_node.name}")
    return users, called
