"""The user's files: what a command line names, which files a directory walk finds, where a
file's project and packages begin, and which files are libraries' rather than the user's."""

from __future__ import annotations

import os
import re
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from gradlint.base.errors import LoadError

__all__ = [
    "PROJECT_MARKERS", "SKIP_DIRS", "find_project_root", "import_roots", "is_library_file", "iter_python_files",
    "may_define_model", "package_parts", "parse_target_arg", "same_file",
]

PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
SKIP_DIRS = frozenset({"__pycache__", ".venv", "venv", "site-packages", "node_modules", ".git", "build",
                       "dist", ".tox"})

_LIBRARY_DIRS = tuple(dict.fromkeys(
    os.path.realpath(p) for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))))


def parse_target_arg(arg: str) -> tuple[Path, str | None]:
    """Splits a command-line target into a path and an optional name.

    Args:
        arg: ``file.py``, ``dir/`` or ``file.py::Name`` (``Name`` may be dotted).

    Returns:
        ``(path, name)``; name is None unless ``::Name`` was given.

    Raises:
        LoadError: For an empty path or name, or ``::Name`` after a directory.
    """
    path_text, sep, name = arg.partition("::")
    if not path_text:
        raise LoadError(f"target {arg!r} names no file; write file.py or file.py::Name")
    if not sep:
        return Path(path_text), None
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise LoadError(f"target {arg!r}: {name!r} after '::' is not a Python name; write file.py::Name")
    if path_text.endswith(("/", os.sep)) or Path(path_text).is_dir():
        raise LoadError(f"target {arg!r}: ::{name} needs a file, not a directory")
    return Path(path_text), name


def _skip_dir(directory: Path) -> bool:
    return (directory.name.startswith(".") or directory.name in SKIP_DIRS
            or (directory / "pyvenv.cfg").is_file())


def iter_python_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Lists the Python files named by the given paths.

    Files are taken as given; directories are searched recursively for ``*.py`` in sorted order,
    skipping hidden directories, ``__pycache__``, virtual environments and build output.

    Args:
        paths: Files and directories.

    Returns:
        The files, each once, in the order given.

    Raises:
        LoadError: For a path that does not exist.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for given in map(Path, paths):
        if given.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(given):
                dirnames[:] = [d for d in dirnames if not _skip_dir(Path(dirpath, d))]
                found += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
            files = sorted(found, key=lambda f: f.relative_to(given).parts)
        elif given.exists():
            files = [given]
        else:
            raise LoadError("no such file or directory", path=str(given))
        for file in files:
            if (key := file.resolve()) not in seen:
                seen.add(key)
                out.append(file)
    return out


def find_project_root(path: str | os.PathLike[str]) -> Path:
    """Returns the nearest directory at or above ``path``'s own directory holding a project marker.

    Markers are ``pyproject.toml``, ``setup.py``, ``setup.cfg`` and ``.git``.

    Args:
        path: A file (or directory) of the project.

    Returns:
        That directory, or the file's own directory when no ancestor has a marker.
    """
    path = Path(path).resolve()
    start = path if path.is_dir() else path.parent
    for directory in (start, *start.parents):
        if any((directory / marker).exists() for marker in PROJECT_MARKERS):
            return directory
    return start


_MODEL_WORDS = re.compile(rb"torch|\bnn\b|Module|Model|gradlint")


def may_define_model(path: str | os.PathLike[str]) -> bool:
    """Whether a file's text could define a model, so that it is worth importing.

    A file that mentions none of ``torch``, ``nn``, ``Module``, ``Model`` and ``gradlint`` can
    only define one through a base class imported under another name; directory walks skip
    such files without running them, and a file named on the command line is always imported.

    Args:
        path: The file.

    Returns:
        False only when the file was read and mentions none of those words.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:
        return True  # importing it says what is wrong
    return _MODEL_WORDS.search(data) is not None


def package_parts(file: Path) -> tuple[list[str], Path]:
    """The packages holding ``file``, outermost first (the directories with an ``__init__.py``
    above it), and the directory above the outermost: ``([], file.parent)`` outside a package."""
    parts: list[str] = []
    directory = file.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    return parts, directory


def import_roots(file: Path, project_root: Path | None = None) -> list[Path]:
    """The ``sys.path`` entries ``import_file`` gives a file's code: its directory, its
    package's parent when it is in a package, and the project root."""
    parts, package_root = package_parts(file)
    root = project_root if project_root is not None else find_project_root(file)
    return list(dict.fromkeys([file.parent, *([package_root] if parts else []), root]))


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` is the standard library's or an installed package's, or no file at
    all (``<frozen ...>``, ``<string>``): nothing the user wrote."""
    if filename.startswith("<"):
        return True
    return os.path.realpath(filename).startswith(tuple(p + os.sep for p in _LIBRARY_DIRS))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file, through symlinks and case-insensitive file systems."""
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
