"""The user's files: what a command line names, which files a directory walk finds, where a
file's project and packages begin, and which files are libraries' rather than the user's."""

from __future__ import annotations

import errno
import os
import re
import stat
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from gradlint.base.errors import LoadError

__all__ = [
    "PROJECT_MARKERS", "SKIP_DIRS", "NotReadable", "absolute_import_roots", "find_project_root", "import_roots",
    "is_library_file", "iter_python_files", "may_define_model", "package_parts", "parse_target_arg", "read_source",
    "repository_root", "same_file", "source_problem", "unreadable_reason",
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
    skipping hidden directories, ``__pycache__``, virtual environments and build output. Links
    to directories are not followed; links named ``*.py`` are listed, those that lead nowhere
    (dangling, or in a loop) too, so that ``unreadable_reason`` can say what is wrong with them.

    Args:
        paths: Files and directories.

    Returns:
        The files, each once, in the order given.

    Raises:
        LoadError: For a path that does not exist.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for given in map(Path, paths):
        if given.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(given):
                dirnames[:] = [d for d in dirnames if not _skip_dir(Path(dirpath, d))]
                found += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
            files = sorted(found, key=lambda f: f.relative_to(given).parts)
        elif os.path.lexists(given):
            files = [given]
        else:
            raise LoadError("no such file or directory", path=str(given))
        for file in files:
            # realpath, not Path.resolve(): it never raises, not even on a symlink loop.
            if (key := os.path.realpath(file)) not in seen:
                seen.add(key)
                out.append(file)
    return out


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def _chain(path: Path, limit: int = 8) -> str:
    """Where a symbolic link leads, link by link: ``x.py -> y.py -> x.py``."""
    steps, here, seen = [str(path)], path, {os.path.normpath(path)}
    for _ in range(limit):
        try:
            target = os.readlink(here)
        except OSError:
            break
        steps.append(target)
        here = here.parent / target
        if os.path.normpath(here) in seen:
            break
        seen.add(os.path.normpath(here))
    return " -> ".join(steps)


def unreadable_reason(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """What keeps ``path`` from being read as a Python source file, without opening it.

    Only ``stat`` calls, which never block: a FIFO named ``model.py`` would block whoever
    opens it until a writer comes.

    Args:
        path: A file named on the command line or found by a directory walk.

    Returns:
        None for a regular file (or a link to one), and for a path that does not exist at all
        (opening it says so); else what it is, in a few words, and what to do about it: a
        symbolic link that leads nowhere or loops, a FIFO, a socket, a device, a directory.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        if not os.path.islink(path):
            return None
        if exc.errno == errno.ELOOP:
            return (f"it is a symbolic link in a loop ({_chain(path)})",
                    "point the link at a real file, or remove it")
        return (f"it is a symbolic link to {os.readlink(path)}, which does not exist",
                "point the link at a real file, or remove it")
    if stat.S_ISREG(st.st_mode):
        return None
    kind = next((what for test, what in _KINDS if test(st.st_mode)), "not a regular file")
    return (f"it is {kind}, not a regular file",
            "gradlint imports regular files only: name the file itself, not a pipe, socket or device")


def source_problem(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """What keeps a file named on the command line from being imported, without opening it:
    ``unreadable_reason``, or a name that ends in neither ``.py`` nor ``.ipynb``.

    Returns:
        None when gradlint can import it (or it does not exist: importing says so); else what
        is wrong, and what to do about it.
    """
    problem = unreadable_reason(path)
    if problem is None and os.path.lexists(path) and Path(path).suffix not in (".py", ".ipynb"):
        return (f"it is not a Python file: gradlint imports .py files and notebooks, and {Path(path).name} has "
                + (f"the suffix {Path(path).suffix}" if Path(path).suffix else "no suffix"),
                "name a .py file, file.py::Name or a directory; a script without the .py suffix can be checked "
                "through a link to it named *.py")
    return problem


class NotReadable(OSError):
    """A path that is no regular file; ``reason`` and ``hint`` say what it is instead."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def read_source(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file, never blocking on anything else.

    The file is opened without blocking and checked on the open descriptor, so a FIFO (or a
    device) put in its place after any earlier check is refused, not waited on.

    Raises:
        NotReadable: For a FIFO, a socket, a device, a directory or a link leading nowhere.
        OSError: When the file cannot be read.
    """
    problem = unreadable_reason(path)  # stat first: opening a device can do more than block
    if problem is not None:
        raise NotReadable(*problem)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped in since the stat
            raise NotReadable("it is not a regular file", "gradlint reads regular files only")
        return f.read()


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


_LICENSES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENSE.rst", "LICENCE", "COPYING")


def repository_root(path: str | os.PathLike[str]) -> Path:
    """The root of the repository a file belongs to, for reading its other files.

    The project root (``find_project_root``), unless a directory between the file and it has a
    license file of its own: code vendored from another repository (a folder with its own
    LICENSE) is read as that repository.
    """
    path = Path(path).resolve()
    root = find_project_root(path)
    start = path if path.is_dir() else path.parent
    for directory in (start, *start.parents):
        if directory == root or root not in directory.parents:
            break
        if any((directory / name).is_file() for name in _LICENSES):
            return directory
    return root


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
        data = read_source(path)
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
    """The ``sys.path`` entries ``import_file`` gives a file's code.

    In a package, the package's parent comes first: a module named like its package
    (``seq2seq/models/seq2seq.py``, ``mlp_mixer_pytorch/mlp_mixer_pytorch.py``) must not
    shadow the package when the file imports it. Then the file's own directory, the project
    root, and the ancestors that make the file's own absolute imports of its repository
    resolve (``from TCN.tcn import ...`` in ``TCN/adding_problem/model.py`` of a folder
    without project markers; see ``absolute_import_roots``).
    """
    parts, package_root = package_parts(file)
    root = project_root if project_root is not None else find_project_root(file)
    first = [package_root, file.parent] if parts else [file.parent]
    return list(dict.fromkeys([*first, root, *absolute_import_roots(file, [*first, root])]))


_TOP_IMPORT = re.compile(rb"^[ \t]*(?:from[ \t]+([A-Za-z_]\w*)[\w.]*[ \t]+import|import[ \t]+([A-Za-z_]\w*))",
                         re.MULTILINE)


def _installed(name: str) -> bool:
    """Whether ``name`` is a module of the standard library or an installed package (found
    without importing it)."""
    import importlib.machinery
    import sys

    if name in sys.builtin_module_names or name in sys.stdlib_module_names:
        return True
    library = [p for p in sys.path if p and is_library_file(os.path.join(p, "x.py"))]
    try:
        return importlib.machinery.PathFinder.find_spec(name, library) is not None
    except (ImportError, ValueError):
        return False


def _provides(directory: Path, name: str) -> bool:
    return (directory / name / "__init__.py").is_file() or (directory / f"{name}.py").is_file()


def absolute_import_roots(file: Path, roots: Iterable[Path] = ()) -> list[Path]:
    """Ancestors of ``file`` that its own absolute imports need on ``sys.path``.

    For each top-level name the file imports absolutely (``from TCN.tcn import X``) that
    neither ``roots`` nor the installed packages provide, the nearest ancestor directory
    holding that package (or module) is one. An ancestor that would shadow an installed
    package or the standard library (it holds a module of the same name) is never one.

    Args:
        file: A resolved path.
        roots: Directories already on the path.

    Returns:
        The ancestors, nearest first.
    """
    try:
        data = read_source(file)
    except OSError:
        return []
    roots = list(roots)
    names = dict.fromkeys(m.group(1) or m.group(2) for m in _TOP_IMPORT.finditer(data))
    found: list[Path] = []
    for name in names:
        name = name.decode() if isinstance(name, bytes) else name
        if any(_provides(r, name) for r in [*roots, *found]) or _installed(name):
            continue
        for directory in file.parent.parents:
            if _provides(directory, name):
                if not _shadows_installed(directory):
                    found.append(directory)
                break
    return found


def _shadows_installed(directory: Path) -> bool:
    try:
        entries = os.listdir(directory)
    except OSError:
        return True
    for entry in entries:
        stem = entry[:-3] if entry.endswith(".py") else entry
        if stem.isidentifier() and (entry.endswith(".py") or (directory / entry / "__init__.py").is_file()) \
                and _installed(stem):
            return True
    return False


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` is the standard library's or an installed package's, or no file at
    all (``<frozen ...>``, ``<string>``): nothing the user wrote."""
    if filename.startswith("<"):
        return True
    return os.path.realpath(filename).startswith(tuple(p + os.sep for p in _LIBRARY_DIRS))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file, through symlinks and case-insensitive file systems."""
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
