"""Notebooks: ``gradlint check notebook.ipynb`` analyzes the models its code cells define.

nbformat reads the file. The code cells run in order in one module, as the import of a ``.py``
file would run it, with what a notebook has and a script has not left out:

- cell magics (a cell starting with ``%%``, whose body may be another language) skip the cell;
- line magics (``%matplotlib inline``), shell lines (``!pip install ...``) and their assignments
  (``files = !ls``) become ``pass``;
- of the rest, each cell runs its imports, function and class definitions and assignments;
  other top-level statements (calls such as ``train(model)`` or ``trainer.fit(...)``, loops,
  expressions shown as output) are skipped, so checking a notebook does not train it.

Each cell is compiled under the name ``NOTEBOOK.ipynb:cell N`` (N counts code cells from 1), so
findings, tracebacks and suppression comments point at the cell and its line, as ruff names them.
This module imports no torch.
"""

from __future__ import annotations

import ast
import importlib.abc
import linecache
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradlint.base.errors import LoadError

__all__ = ["NotebookLoader", "cells", "is_notebook"]

SUFFIX = ".ipynb"
_MAGIC = re.compile(r"^\s*(?:[%!]|[A-Za-z_][\w.,\s]*=\s*[%!])")
_RUN = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
        ast.AnnAssign, ast.AugAssign)


def is_notebook(path: str | os.PathLike[str]) -> bool:
    return str(path).endswith(SUFFIX)


@dataclass(frozen=True)
class Cell:
    """One code cell: its number among the code cells (from 1), the name its code is compiled
    under, and its source with magics and shell lines made ``pass``."""

    number: int
    filename: str
    source: str


def cells(path: str | os.PathLike[str]) -> list[Cell]:
    """The code cells of a notebook, ready to compile.

    Raises:
        LoadError: When nbformat is missing or the file is not a notebook it can read.
    """
    try:
        import nbformat
    except ImportError:
        raise LoadError("checking a notebook needs nbformat, which is not installed",
                        hint="pip install nbformat") from None
    try:
        nb = nbformat.read(os.fspath(path), as_version=4)
    except Exception as e:  # noqa: BLE001 - nbformat raises JSON, validation and OS errors of many kinds
        raise LoadError(f"cannot read the notebook: {type(e).__name__}: {e}") from None
    real = os.path.realpath(path)
    out = []
    number = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        number += 1
        out.append(Cell(number, f"{real}:cell {number}", python_source(cell.get("source", ""))))
    return out


def python_source(source: str) -> str:
    """A cell's source as Python, line for line: a cell magic empties the cell, a line magic or
    shell line becomes ``pass`` at its indentation."""
    lines = source.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("%%"):
        return "\n" * len(lines)
    out = []
    for line in lines:
        if _MAGIC.match(line) and not _is_python(line):
            indent = line[:len(line) - len(line.lstrip())]
            out.append(f"{indent}pass")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _is_python(line: str) -> bool:
    """``x = a % b`` and ``flag = not ready`` look like magics to the pattern; Python says otherwise."""
    stripped = line.strip()
    if stripped.startswith(("%", "!")):
        return False
    try:
        ast.parse(stripped)
    except SyntaxError:
        return False
    return True


class NotebookLoader(importlib.abc.Loader):
    """Runs a notebook's code cells as the body of a module (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def create_module(self, spec: Any) -> None:
        return None  # the default module

    def exec_module(self, module: Any) -> None:
        for cell in cells(self.path):
            # Registered so tracebacks, inspect and the suppression comments read the cell's lines.
            lines = cell.source.splitlines(keepends=True)
            linecache.cache[cell.filename] = (len(cell.source), None, lines, cell.filename)
            # A SyntaxError names the cell and its line.
            tree = compile(cell.source, cell.filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
            tree.body = [stmt for stmt in tree.body if isinstance(stmt, _RUN)]
            exec(compile(tree, cell.filename, "exec"), module.__dict__)
