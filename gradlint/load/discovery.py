"""Discovering the models a user's file defines: decorated targets, the top-level ``nn.Module``
classes and model factories (those no other one builds), and module-level ``nn.Module``
instances, and the modules found but not analyzed, with why."""

from __future__ import annotations

import ast
import inspect
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradlint.base.errors import LoadError
from gradlint.base.targets import TARGET_ATTR, TargetOptions
from gradlint.load.blocks import building_blocks, factory_kind, package_users

__all__ = ["Discovery", "Skipped", "Target", "discover", "kwargs_hint"]


@dataclass(frozen=True)
class Target:
    """A model gradlint can build from a user's file.

    Attributes:
        path: The file.
        name: The object's name in the file (dotted for nested objects).
        kind: ``"factory"``, ``"class"`` or ``"instance"``.
        line: The line of its ``def``/``class``/assignment; None when unknown.
        options: What ``@gradlint.target`` recorded; None when undecorated.
        obj: The factory, class or instance itself.
        needs: The constructor's parameters without a default: their values are looked for in
            the repository (``gradlint.load.arguments``) unless given.
    """

    path: Path
    name: str
    kind: str
    line: int | None
    options: TargetOptions | None = None
    obj: Any = field(default=None, compare=False, hash=False, repr=False)
    needs: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        """The decorator's ``name`` if given, else ``name``."""
        return self.options.name if self.options is not None and self.options.name else self.name

    @property
    def ref(self) -> str:
        """The target as the command line names it: ``file.py::Name``."""
        return f"{self.path}::{self.name}"


@dataclass(frozen=True)
class Skipped:
    """An ``nn.Module`` found in a file but not analyzed, and why.

    Attributes:
        name: Its name in the file.
        line: Its line; None when unknown.
        reason: Why, in a few words (``"constructor needs arguments: depth, width"``).
    """

    name: str
    line: int | None
    reason: str
    hint: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Discovery:
    """The targets of one file.

    Attributes:
        targets: The targets, in source order.
        skipped: Modules found but not analyzed, in source order.
        blocks: The building blocks of the targets (checked on request only), in source order.
    """

    targets: tuple[Target, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    blocks: tuple[Skipped, ...] = ()


def _bound_names(target: ast.expr) -> list[str]:
    # `a, *b = ...` binds names; `obj.attr = ...` and `obj[i] = ...` bind nothing at module level.
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _bound_names(element)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return []


@dataclass(frozen=True)
class _Source:
    """What the file's own text says about its module-level names."""

    lines: dict[str, int]
    assigned: frozenset[str]
    readable: bool

    @classmethod
    def read(cls, path: Path) -> _Source:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            return cls({}, frozenset(), readable=False)
        lines: dict[str, int] = {}
        assigned: set[str] = set()
        pending = list(tree.body)
        while pending:
            node = pending.pop(0)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lines.setdefault(node.name, node.lineno)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for name in _bound_names(target):
                        lines.setdefault(name, node.lineno)
                        assigned.add(name)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                # Module-level code in blocks still binds module-level names.
                pending[:0] = [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
        return cls(lines, frozenset(assigned), readable=True)


def _options(obj: Any) -> TargetOptions | None:
    try:
        # A class's own dict only: subclasses of a decorated class are not decorated.
        found = vars(obj).get(TARGET_ATTR) if isinstance(obj, type) else getattr(obj, TARGET_ATTR, None)
    except Exception:  # noqa: BLE001 - exotic objects with __getattr__ are simply not targets
        return None
    return found if isinstance(found, TargetOptions) else None


def _line(obj: Any, name: str, source: _Source) -> int | None:
    if name in source.lines:
        return source.lines[name]
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        return code.co_firstlineno if code is not None else None


def _required_args(obj: Any) -> list[str] | None:
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    return [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def kwargs_hint(path: Path, name: str, missing: list[str]) -> str:
    """How to declare the constructor arguments ``missing`` for ``path::name``: with the
    decorator, or in pyproject.toml."""
    declared = ", ".join(f'"{m}": ...' for m in missing)
    toml = ", ".join(f"{m} = ..." for m in missing)
    return (f"declare them with @gradlint.target(kwargs={{{declared}}}), or in pyproject.toml: "
            f'[tool.gradlint] targets = [{{ path = "{path}::{name}", kwargs = {{ {toml} }} }}]')


def _kind(obj: Any) -> str:
    from torch import nn

    if isinstance(obj, nn.Module):
        return "instance"
    return "class" if isinstance(obj, type) else "factory"


def _explicit(module: types.ModuleType, path: Path, name: str, source: _Source,
              found: Discovery) -> Target:
    obj: Any = module
    try:
        for part in name.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        listing = ", ".join(t.name for t in found.targets) or "none"
        skipped = "; skipped: " + ", ".join(f"{s.name} ({s.reason})" for s in found.skipped) if found.skipped else ""
        if found.blocks:
            skipped += "; building blocks: " + ", ".join(b.name for b in found.blocks)
        raise LoadError(f"no target named {name!r} in the file; targets: {listing}{skipped}", path=str(path),
                        hint=f"name one of them: {path}::NAME") from None
    if not callable(obj):
        raise LoadError(f"{name} is a {type(obj).__name__}, not a model factory, nn.Module class or nn.Module",
                        path=str(path), line=source.lines.get(name))
    return Target(path, name, _kind(obj), _line(obj, name, source), _options(obj), obj,
                  _needs(obj, _options(obj)) if _kind(obj) != "instance" else ())


def discover(module: types.ModuleType, path: str | os.PathLike[str], name: str | None = None,
             all_targets: bool = False) -> Discovery:
    """Finds the models a file defines.

    Targets are every object decorated with ``@gradlint.target``; the top-level models of the
    file: the ``nn.Module`` subclasses it defines and its model factories (module-level
    functions whose every ``return`` builds an ``nn.Module``, read from the source, never
    called) that no other class or factory of the file builds; and every module-level
    ``nn.Module`` instance assigned in the file (one target per object, under its first name).
    A target whose constructor needs arguments lists them in ``needs``. Classes and instances
    imported from elsewhere are not targets. Abstract classes and instances without
    parameters are listed in ``skipped``; building blocks in ``blocks``.

    Args:
        module: The module ``import_file`` returned.
        path: Its file.
        name: Select this one target (its name in the file or its decorator ``name``). An object
            named explicitly is a target even when it would otherwise be skipped.
        all_targets: Building blocks are targets too.

    Returns:
        The targets, the skipped modules and the building blocks; with ``name``, that target alone.

    Raises:
        LoadError: When ``name`` names nothing in the file, or nothing that builds a model; the
            message lists the available targets.
    """
    from torch import nn

    path = Path(path)
    source = _Source.read(path)
    namespace = list(vars(module).items())
    here = module.__name__
    targets: list[Target] = []
    skipped: list[Skipped] = []
    seen: set[int] = set()

    for attr, obj in namespace:
        options = _options(obj)
        if options is None or id(obj) in seen:
            continue
        if getattr(obj, "__module__", None) == here or attr in source.assigned:
            seen.add(id(obj))
            targets.append(Target(path, attr, _kind(obj), _line(obj, attr, source), options, obj,
                                  _needs(obj, options)))

    candidates: list[tuple[str, Any, str]] = []  # name, object, "class" or "factory"
    for attr, obj in namespace:
        if id(obj) in seen:
            continue
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == here:
            seen.add(id(obj))
            if inspect.isabstract(obj):
                skipped.append(Skipped(attr, _line(obj, attr, source), "abstract class"))
            else:
                candidates.append((attr, obj, "class"))
        elif inspect.isfunction(obj) and obj.__module__ == here and factory_kind(obj, module) is not None:
            seen.add(id(obj))
            candidates.append((attr, obj, "factory"))
        elif isinstance(obj, nn.Module) and (attr in source.assigned or not source.readable):
            seen.add(id(obj))
            line = source.lines.get(attr)
            if next(obj.parameters(), None) is None:
                skipped.append(Skipped(attr, line, "instance has no parameters"))
            else:
                targets.append(Target(path, attr, "instance", line, None, obj))
    users = building_blocks([(t.name, t.obj) for t in targets if t.kind != "instance"]
                            + [(attr, obj) for attr, obj, _ in candidates],
                            [attr for attr, obj, _ in candidates if _required_args(obj)])
    # A base class that the package also builds itself (UNetModel beside its subclass
    # SuperResModel, both made in script_util.py) is a model of its own.
    built_by, called = package_users(path.resolve(), [a for a, _, _ in candidates])
    for attr in [a for a, why in users.items() if why.startswith("the base class of ") and a in called]:
        del users[attr]
    # What other modules of the package build is theirs, except a file's last classes: the file
    # named is then checked for its own model (mamba.py's Mamba, which lm.py's LM wraps).
    inside = {attr: why for attr, why in built_by.items()
              if attr not in users}
    own = [a for a, _, kind in candidates if a not in users and a not in inside and kind == "class"]
    if not own and not any(t.kind != "instance" for t in targets):
        inside = {a: why for a, why in inside.items() if dict((c[0], c[2]) for c in candidates)[a] == "factory"}
    users.update(inside)
    for t in targets:  # model = Net(2, 16) at module level: the instance is that class's model
        # (one on the meta device stands in for its class with a note: gradlint.run.check_file)
        if t.kind == "instance" and type(t.obj).__module__ == here and type(t.obj).__name__ in dict(
                (c[0], c) for c in candidates) and not any(p.is_meta for p in t.obj.parameters()):
            users.setdefault(type(t.obj).__name__, f"the class of the instance {t.name}")
    blocks: list[Skipped] = []
    for attr, obj, kind in candidates:
        line = _line(obj, attr, source)
        if attr in users and not all_targets:
            blocks.append(Skipped(attr, line, users[attr]))
        else:
            targets.append(Target(path, attr, kind, line, None, obj, tuple(_required_args(obj) or ())))

    def order(item: Target | Skipped) -> tuple[int, str]:
        return (item.line if item.line is not None else sys.maxsize, item.name)

    found = Discovery(tuple(sorted(targets, key=order)), tuple(sorted(skipped, key=order)),
                      tuple(sorted(blocks, key=order)))
    if name is None:
        return found
    for candidate in found.targets:
        if name in (candidate.name, candidate.display_name):
            return Discovery((candidate,))
    return Discovery((_explicit(module, path, name, source, found),))


def _needs(obj: Any, options: TargetOptions | None) -> tuple[str, ...]:
    """The constructor's parameters without a default that the decorator does not give."""
    if isinstance(obj, type) or inspect.isfunction(obj):
        given = (options.kwargs or {}) if options is not None else {}
        return tuple(p for p in _required_args(obj) or () if p not in given)
    return ()
