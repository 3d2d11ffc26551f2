"""Paths as the machine formats and baselines write them: relative to the repository root."""

from __future__ import annotations

import os
from pathlib import Path

from gradlint.base.report import Report


def repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The git top level containing ``start`` (default: the working directory), else ``start``.

    Looks for ``.git`` (a directory, or a file in worktrees and submodules) instead of
    running git, so it works where git is not installed and costs no subprocess.
    """
    here = Path(os.path.realpath(start if start is not None else os.getcwd()))
    for d in (here, *here.parents):
        if (d / ".git").exists():
            return d
    return here


def repo_relpath(path: str | None, root: Path) -> str | None:
    """``path`` relative to ``root`` in POSIX form, or None when it lies outside ``root``."""
    if not path:
        return None
    p = Path(os.path.realpath(path))
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return None


def display_path(path: str | None, root: Path) -> str | None:
    """The repository-relative path where there is one, else the absolute POSIX path."""
    if not path:
        return None
    return repo_relpath(path, root) or Path(os.path.realpath(path)).as_posix()


def target_name(report: Report) -> str:
    """The target's own name, without the ``path::`` prefix the runner gives it."""
    return report.target.rsplit("::", 1)[-1]
