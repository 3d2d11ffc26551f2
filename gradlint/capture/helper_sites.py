"""Where a layer built by a helper function was built: the line in the helper, not the parent's.

``definition_sites`` knows where a parent's ``__init__`` assigned each child (``self.layers =
nn.ModuleList([make_layer(w) for _ in range(depth)])``). The layers inside such a container
have no line of their own there, so a finding about ``layers.3`` would point at the parent's
line, though the layer, and often its init, are written in ``make_layer``. When the parent's
line calls a function of the user's own code, the layer's line is the one in that function
(or in a function it calls on its own line) that builds a module of the layer's class:
``layer = nn.Linear(width, width)``. Read from the source, never run.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import re
import sys
import textwrap

import torch.nn as nn

from gradlint.capture.graph import Source

_DEPTH = 3  # helpers calling helpers, at most this deep


def helper_sites(model: nn.Module, definitions: dict[str, Source]) -> dict[str, Source]:
    """Per module without a definition of its own below one that has one, the line of the user's
    helper function that builds it; modules whose helper cannot be followed are left out."""
    owners = {name: type(mod) for name, mod in model.named_modules()}
    out: dict[str, Source] = {}
    seen: dict[tuple[str, str], Source | None] = {}  # (parent, class): a ModuleList of 1,000 layers reads one line
    for name, mod in model.named_modules():
        if not name or name in definitions:
            continue
        parent = name
        while "." in parent and parent not in definitions:
            parent = parent.rsplit(".", 1)[0]
        site = definitions.get(parent)
        if site is None or parent == name:
            continue
        key = (parent, type(mod).__name__)
        if key not in seen:
            owner = owners.get(parent.rsplit(".", 1)[0] if "." in parent else "")
            scope = sys.modules.get(getattr(owner, "__module__", ""), None) if owner is not None else None
            seen[key] = _built_in(site.code, vars(scope) if scope is not None else {}, key[1], _DEPTH)
        found = seen[key]
        if found is not None:
            out[name] = found
    return out


def _built_in(code: str, scope: dict, cls_name: str, depth: int) -> Source | None:
    """The line, in a user function that ``code`` calls, that builds a ``cls_name``."""
    try:
        tree = ast.parse(textwrap.dedent(code).strip().rstrip(":"))
    except SyntaxError:
        return None
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
        fn = scope.get(call.func.id)
        src = _function_source(fn) if inspect.isfunction(fn) else None
        if src is None:
            continue
        path, start, lines = src
        builds = re.compile(rf"\b{re.escape(cls_name)}\s*\(")
        for i, line in enumerate(lines[1:], start=1):  # not the def line
            if builds.search(line.split("#", 1)[0]):
                return Source(path, start + i, line.strip())
        if depth > 1:
            module = inspect.getmodule(fn)
            for line in lines[1:]:
                deeper = _built_in(line.strip(), vars(module) if module is not None else {}, cls_name, depth - 1)
                if deeper is not None:
                    return deeper
    return None


@functools.lru_cache(maxsize=256)
def _function_source(fn) -> tuple[str, int, tuple[str, ...]] | None:
    try:
        path = inspect.getsourcefile(fn) or ""
        if not path or "site-packages" in path or "dist-packages" in path \
                or path.startswith(os.path.dirname(nn.__file__)):
            return None
        lines, start = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return None
    return path, start, tuple(lines)
