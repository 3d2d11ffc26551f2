"""How gradlint names the user's files in what it shows: relative where that is shorter or
stays inside a tree, else as given. Every message, report and configuration origin names files
through these, so one file reads the same everywhere."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "root_relative", "root_relative_or_absolute", "shortest_path", "shown_path"]


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it, else as given.

    How reports and tracebacks name files: as a command line run from here would, never
    climbing out with ``..``.
    """
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel.startswith("..") else rel


def shortest_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory or as given, whichever is shorter.

    How configuration errors and origins name the configuration file, which is often above the
    working directory (``../pyproject.toml``).
    """
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def root_relative(path: str | os.PathLike[str], root: Path) -> str | None:
    """``path``, symlinks resolved, relative to ``root`` in POSIX form; None when it lies outside.

    ``root`` must be resolved itself. The form that stays the same from machine to machine:
    globs match it, baselines and CI annotations record it.
    """
    real = Path(os.path.realpath(path))
    try:
        return real.relative_to(root).as_posix()
    except ValueError:
        return None


def root_relative_or_absolute(path: str | os.PathLike[str], root: Path) -> str:
    """``root_relative(path, root)``, or the resolved absolute path in POSIX form when ``path``
    lies outside ``root``."""
    rel = root_relative(path, root)
    return rel if rel is not None else Path(os.path.realpath(path)).as_posix()


def repo_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The git top level containing ``start`` (default: the working directory), else ``start``;
    resolved, the root machine formats and baselines write paths relative to.

    Looks for ``.git`` (a directory, or a file in worktrees and submodules) instead of
    running git, so it works where git is not installed and costs no subprocess.
    """
    here = Path(os.path.realpath(start if start is not None else os.getcwd()))
    for d in (here, *here.parents):
        if (d / ".git").exists():
            return d
    return here
