"""Finding, importing and building the models a user asks gradlint to analyze.

``gradlint check model.py`` names files, directories, or ``file.py::Name``. Each file is
imported like Python would import a script beside its own modules (its directory and the
project root on ``sys.path``), but under a private module name, so ``__main__`` blocks do not
run and two ``model.py`` files do not collide. Every failure in the user's code becomes a
``LoadError`` pointing at the user's file and line, with their traceback and not ours.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import io
import os
import re
import sys
import sysconfig
import tokenize
import traceback
import types
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradlint.base.errors import GradlintError, LoadError
from gradlint.base.targets import TARGET_ATTR, TargetOptions

__all__ = [
    "Discovery", "Skipped", "Target", "discover", "find_project_root", "format_user_traceback",
    "import_file", "innermost_line", "innermost_user_frame", "instantiate", "iter_python_files", "may_define_model",
    "parse_target_arg", "shown_path", "user_code",
]

PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
SKIP_DIRS = frozenset({"__pycache__", ".venv", "venv", "site-packages", "node_modules", ".git", "build",
                       "dist", ".tox"})

_GRADLINT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the gradlint package
_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__))
_LIBRARY_DIRS = tuple(dict.fromkeys(
    os.path.realpath(p) for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))))

# Top-level names of the user's own modules that import_file brought in: name -> (module,
# file it came from). A later file may mean another module by the same name (two projects
# each with a helpers.py); those entries are dropped from sys.modules before it is imported.
_USER_MODULES: dict[str, tuple[types.ModuleType, str | None]] = {}
# Resolved file -> the sys.path entries its code needs, for code that imports lazily.
_ROOTS: dict[str, tuple[str, ...]] = {}


# --- naming what to analyze -------------------------------------------------------------------

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


# --- tracebacks in the user's terms -----------------------------------------------------------

def _is_ours(filename: str) -> bool:
    if filename.startswith("<frozen importlib"):
        return True
    real = os.path.abspath(filename)
    return real.startswith((_GRADLINT_DIR + os.sep, _IMPORTLIB_DIR + os.sep))


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen ...>, <string>: no file of the user's
        return True
    return os.path.realpath(filename).startswith(tuple(p + os.sep for p in _LIBRARY_DIRS))


def _trim(exc_tb: traceback.TracebackException, seen: set[int], files: set[str]) -> None:
    if id(exc_tb) in seen:
        return
    seen.add(id(exc_tb))
    frames = [f for f in exc_tb.stack if not _is_ours(f.filename)]
    # torch's and the standard library's frames say how, not where: the user's last frame is the
    # call that failed. A traceback that runs in libraries only is left whole.
    users = [f for f in frames if not _is_library(f.filename)]
    exc_tb.stack = traceback.StackSummary.from_list(users or frames)
    files.update(f.filename for f in exc_tb.stack)
    if isinstance(getattr(exc_tb, "filename", None), str):  # a SyntaxError's own file
        files.add(exc_tb.filename)
    for chained in (exc_tb.__cause__, exc_tb.__context__):
        if chained is not None:
            _trim(chained, seen, files)


def shown_path(filename: str) -> str:
    """``filename`` relative to the working directory when it lies below it, else as given."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel


def format_user_traceback(exc: BaseException) -> str:
    """Formats an exception's traceback with the user's frames only.

    gradlint's, importlib's, torch's and the standard library's frames are left out (all of them
    are kept when no frame of the user's remains); files below the working directory are shown
    relative to it, as the report names them.

    Args:
        exc: An exception raised in the user's code.

    Returns:
        The traceback text, chained exceptions included.
    """
    exc_tb = traceback.TracebackException.from_exception(exc)
    files: set[str] = set()
    _trim(exc_tb, set(), files)
    text = "".join(exc_tb.format())
    for name in files:
        if os.path.isabs(name) and (shown := shown_path(name)) != name:
            text = text.replace(f'File "{name}"', f'File "{shown}"')
    return text


def _same_file(a: str, b: str | os.PathLike[str]) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def innermost_line(exc: BaseException, path: str | os.PathLike[str]) -> int | None:
    """Returns the line of the innermost traceback frame that runs in ``path``.

    Args:
        exc: The exception.
        path: The user's file.

    Returns:
        The line number, or None when no frame ran in that file.
    """
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if _same_file(frame.filename, path):
            return frame.lineno
    return None


def innermost_user_frame(exc: BaseException) -> tuple[str, int] | None:
    """Returns ``(file, line)`` of the innermost traceback frame in the user's code.

    The user's code is whatever is neither gradlint's nor importlib's, torch's or the
    standard library's; files below the working directory are named relative to it.

    Args:
        exc: The exception.

    Returns:
        The file and line, or None when every frame is a library's.
    """
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not _is_ours(frame.filename) and not _is_library(frame.filename) and frame.lineno:
            return shown_path(frame.filename), frame.lineno
    return None


def _user_error(cls: type[GradlintError], message: str, exc: BaseException, path: str,
                line: int | None, hint: str | None = None) -> GradlintError:
    err = cls(message, path=path, line=line, hint=hint)
    err.traceback_text = format_user_traceback(exc)
    return err


# --- importing --------------------------------------------------------------------------------

def _is_user_file(origin: str | None, roots: list[str]) -> bool:
    if not origin or os.path.realpath(origin).startswith(tuple(p + os.sep for p in _LIBRARY_DIRS)):
        return False
    parts = set(Path(origin).parts)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return any(os.path.realpath(origin).startswith(os.path.realpath(root) + os.sep) for root in roots)


def _spec_origin(spec: importlib.machinery.ModuleSpec | None) -> str | None:
    if spec is None:
        return None
    if spec.origin and spec.has_location:
        return os.path.realpath(spec.origin)
    locations = list(spec.submodule_search_locations or ())
    return os.path.realpath(locations[0]) if locations else None


def _evict_shadowed(search_path: list[str]) -> None:
    """Drops earlier user modules that this file's imports would find elsewhere."""
    for top, (module, origin) in list(_USER_MODULES.items()):
        if sys.modules.get(top) is not module:
            del _USER_MODULES[top]
            continue
        if _spec_origin(importlib.machinery.PathFinder.find_spec(top, search_path)) == origin:
            continue
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
        del _USER_MODULES[top]


def _record_user_modules(names: Iterable[str], roots: list[str]) -> None:
    for name in names:
        top = name.partition(".")[0]
        if top.startswith("_gradlint_") or top in _USER_MODULES or top == "gradlint":
            continue
        module = sys.modules.get(top)
        origin = _spec_origin(getattr(module, "__spec__", None))
        if module is not None and _is_user_file(origin, roots):
            _USER_MODULES[top] = (module, origin)


@dataclass(frozen=True)
class _GlobalState:
    """Process-wide settings a user's file may change, which must not leak into the next file."""

    cwd: str | None
    default_dtype: Any
    default_device: Any
    grad_enabled: bool
    deterministic: bool
    deterministic_warn_only: bool
    threads: int
    anomaly: bool
    anomaly_check_nan: bool

    @classmethod
    def capture(cls) -> _GlobalState:
        import torch

        try:
            cwd: str | None = os.getcwd()
        except OSError:  # the user's code deleted the directory it was in
            cwd = None
        get_device = getattr(torch, "get_default_device", None)
        return cls(cwd, torch.get_default_dtype(), get_device() if get_device else None, torch.is_grad_enabled(),
                   torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_num_threads(),
                   torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())

    def restore(self) -> None:
        import torch

        now = _GlobalState.capture()
        if self.cwd is not None and now.cwd != self.cwd:
            os.chdir(self.cwd)
        if now.default_dtype != self.default_dtype:
            torch.set_default_dtype(self.default_dtype)
        if now.default_device != self.default_device and self.default_device is not None:
            # None clears torch's device context; setting "cpu" would leave one on every call.
            torch.set_default_device(None if self.default_device == torch.device("cpu") else self.default_device)
        torch.set_grad_enabled(self.grad_enabled)
        if (now.deterministic, now.deterministic_warn_only) != (self.deterministic, self.deterministic_warn_only):
            torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        if now.threads != self.threads:
            torch.set_num_threads(self.threads)
        if (now.anomaly, now.anomaly_check_nan) != (self.anomaly, self.anomaly_check_nan):
            torch.set_anomaly_enabled(self.anomaly, self.anomaly_check_nan)


# Resolved file -> the default dtype its import left set: its models are built under it, as they
# would be in the user's own process, while everything else the import changed is undone.
_DTYPES: dict[str, Any] = {}


@contextmanager
def _sandbox(roots: Iterable[str], argv: list[str] | None = None, dtype: Any = None,
             left: dict[str, Any] | None = None) -> Iterator[list[str]]:
    """Runs user code with ``roots`` first on sys.path and no bytecode written.

    What the code prints goes to stderr, so it cannot corrupt a report on stdout (``--format
    json``). The working directory, warning filters and torch's global settings (default dtype
    and device, grad mode, deterministic algorithms, thread count, anomaly mode) are restored
    on exit; ``dtype`` is set as the default dtype for the duration, and ``left["dtype"]`` gets
    the default dtype the code left behind.

    Yields a list that, on exit, holds the sys.path entries the user's code added itself.
    """
    import warnings

    roots = list(roots)
    saved_path, saved_argv, saved_bytecode = list(sys.path), sys.argv, sys.dont_write_bytecode
    saved_state = _GlobalState.capture()
    sys.path[:0] = roots
    sys.dont_write_bytecode = True
    if argv is not None:
        # Module-level argparse then parses nothing, instead of gradlint's own flags.
        sys.argv = argv
    added: list[str] = []
    stashed = _stash_shadowed(roots)
    try:
        with warnings.catch_warnings(), redirect_stdout(sys.stderr), redirect_stderr(sys.stderr):
            if dtype is not None:
                import torch

                torch.set_default_dtype(dtype)
            yield added
    finally:
        if left is not None:
            import torch

            left["dtype"] = torch.get_default_dtype()
        saved_state.restore()
        added.extend(p for p in sys.path if p not in saved_path and p not in roots)
        sys.path[:] = saved_path
        sys.argv = saved_argv
        sys.dont_write_bytecode = saved_bytecode
        for name, module in stashed.items():
            sys.modules.setdefault(name, module)


def _stash_shadowed(roots: list[str]) -> dict[str, types.ModuleType]:
    """Set aside already-imported modules that a sibling of the user's file would shadow.

    The user's ``import helpers`` must find their own ``helpers.py``, not a ``helpers`` some
    other code (a test suite, another project) imported first. The standard library and
    installed packages are left alone: Python would not let a sibling file shadow them once
    imported either, and swapping them out would break torch.
    """
    stdlib = {os.path.dirname(os.__file__)}
    stashed: dict[str, types.ModuleType] = {}
    for root in roots:
        try:
            entries = os.listdir(root)
        except OSError:
            continue
        names = {e[:-3] for e in entries if e.endswith(".py")} | {
            e for e in entries if os.path.isfile(os.path.join(root, e, "__init__.py"))}
        for name in names:
            module = sys.modules.get(name)
            if module is None or name in stashed:
                continue
            origin = _spec_origin(getattr(module, "__spec__", None)) or ""
            if not origin or "site-packages" in origin or "dist-packages" in origin or any(
                    origin.startswith(d) for d in stdlib):
                continue
            if os.path.dirname(origin) in (root, os.path.join(root, name)):
                continue  # it is that sibling already
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                stashed[key] = sys.modules.pop(key)
    return stashed


@contextmanager
def user_code(path: str | os.PathLike[str]) -> Iterator[None]:
    """Runs code of an imported user file the way it ran at import.

    Puts the file's import roots back on sys.path (for imports done lazily inside constructors
    or ``forward``), sets the default dtype its import left (``torch.set_default_dtype`` at
    module level still decides how its models are built), keeps Python from writing bytecode
    into the user's tree, and sends what the code prints to stderr.

    Args:
        path: The user's file, as given to ``import_file``.

    Yields:
        Nothing; restores sys.path, the bytecode flag, the working directory and torch's global
        settings on exit.
    """
    file = str(Path(path).resolve())
    roots = _ROOTS.get(file) or tuple(dict.fromkeys([str(Path(file).parent), str(find_project_root(file))]))
    with _sandbox(roots, dtype=_DTYPES.get(file)):
        yield


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text)


def _digest(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:10]


def import_roots(file: Path, project_root: Path | None = None) -> list[Path]:
    """The ``sys.path`` entries ``import_file`` gives a file's code: its directory, its
    package's parent when it is in a package, and the project root."""
    parts, package_root = _package_parts(file)
    root = project_root if project_root is not None else find_project_root(file)
    return list(dict.fromkeys([file.parent, *([package_root] if parts else []), root]))


def _package_parts(file: Path) -> tuple[list[str], Path]:
    parts: list[str] = []
    directory = file.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    return parts, directory


def _exec_module(name: str, file: Path, search: list[str] | None = None) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        raise LoadError("cannot be imported as Python source", path=str(file))
    module = importlib.util.module_from_spec(spec)
    # Registered before running, as the import system does: dataclasses and pickling look it up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_package(parts: list[str], package_root: Path) -> str:
    """Imports the package holding the user's file; returns the name it lives under."""
    top_dir = (package_root / parts[0]).resolve()
    top = sys.modules.get(parts[0])
    if all(part.isidentifier() for part in parts) and (
            top is None or any(_same_file(p, top_dir) for p in getattr(top, "__path__", ()))):
        real = ".".join(parts)
        importlib.import_module(real)
        if any(_same_file(p, top_dir) for p in getattr(sys.modules[parts[0]], "__path__", ())):
            return real
    # Another module already owns the package's name (or it is no identifier): load the
    # package under a private alias, which keeps its relative imports working.
    name, directory = f"_gradlint_{_digest(top_dir)}_{_identifier(parts[0])}", top_dir
    for i, part in enumerate(parts):
        if i:
            name, directory = f"{name}.{part}", directory / part
        if name not in sys.modules:
            _exec_module(name, directory / "__init__.py", [str(directory)])
    return name


def _load(file: Path, parts: list[str], package_root: Path) -> types.ModuleType:
    stem = _identifier(file.stem)
    if not parts:
        return _exec_module(f"_gradlint_{_digest(file)}_{stem}", file)
    package = _import_package(parts, package_root)
    if file.name == "__init__.py":
        return sys.modules[package]
    return _exec_module(f"{package}._gradlint_{_digest(file)}_{stem}", file)


_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")


def _check_encoding(file: Path, shown: str) -> None:
    """Refuses a file Python could not run as a script because of its bytes, before importing it.

    importlib decodes more leniently than ``python model.py`` (it lets undecodable bytes in
    comments through), so the file is checked the way the interpreter reads a script.
    """
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise LoadError(f"cannot be read: {exc.strerror or exc}", path=shown) from exc
    head = data.split(b"\n", 2)[:2]
    cookie = next(((i + 1, m.group(1).decode("ascii", "replace")) for i, line in enumerate(head)
                   if (m := _CODING.match(line))), None)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        raise LoadError(f"SyntaxError: {exc.msg}", path=shown, line=cookie[0] if cookie else 1,
                        hint="declare an encoding Python knows, e.g. `# -*- coding: latin-1 -*-`, or save the file "
                             "as UTF-8 and drop the declaration") from exc
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start:exc.start + 1].hex()
        if cookie is None:
            raise LoadError(f"the file is not UTF-8 and declares no encoding: byte 0x{byte} on line {line} is not "
                            "valid UTF-8", path=shown, line=line,
                            hint="save the file as UTF-8, or declare its encoding on its first or second line, "
                                 "e.g. `# -*- coding: latin-1 -*-` (PEP 263)") from exc
        raise LoadError(f"the file declares the encoding {cookie[1]} on line {cookie[0]}, but byte 0x{byte} on "
                        f"line {line} is not valid {cookie[1]}", path=shown, line=line,
                        hint=f"fix the coding declaration, or save the file as {cookie[1]}") from exc


def _import_hint(exc: ImportError, file: Path, parts: list[str], roots: list[str]) -> str | None:
    """What to do about an import that failed: install a package, or fix a local import."""
    if "no known parent package" in str(exc):
        return (f"{file.name} uses a relative import, but {file.parent.name}/ has no __init__.py: add an empty "
                "__init__.py to make the directory a package, or import the module by its absolute name")
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top, _, rest = exc.name.partition(".")
    if top.startswith("_gradlint_") and parts:
        top = parts[0]  # the private alias gradlint imported the file's package under
    local = next((Path(r) for r in roots if (Path(r) / top).is_dir() or (Path(r) / f"{top}.py").is_file()), None)
    if local is None:
        return (f"{top!r} is not installed where gradlint runs and is no module of the project: install it, "
                "or run gradlint from the project's own environment")
    if not rest:
        return None
    missing = shown_path(str(local.joinpath(top, *rest.split("."))))
    return f"the project has no {missing}.py and no {missing}/ package: fix the import, or add the module"


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


def import_file(path: str | os.PathLike[str], project_root: str | os.PathLike[str] | None = None,
                ) -> types.ModuleType:
    """Imports a user's Python file under a private module name.

    The file's directory, its package root (when it sits in a package) and the project root
    go first on sys.path while it runs, so its local and relative imports work; sys.path,
    sys.argv and the bytecode flag are restored afterwards. Modules the file imported stay in
    sys.modules. ``if __name__ == "__main__":`` blocks do not run. Nothing is written to the
    user's tree.

    Args:
        path: The file.
        project_root: The project's root; by default the nearest ancestor holding
            ``pyproject.toml``, ``setup.py``, ``setup.cfg`` or ``.git``.

    Returns:
        The module.

    Raises:
        LoadError: For a syntax error (at its file and line), any exception or ``SystemExit``
            while importing (at the innermost line of the user's file, with the trimmed
            traceback in ``traceback_text``), or a missing file.
        GradlintError: A gradlint error raised by the file itself (a malformed
            ``@gradlint.target``), with the file and line filled in.
    """
    shown = str(path)
    file = Path(path).resolve()
    if not file.is_file():
        raise LoadError("is a directory, not a Python file" if file.is_dir() else "no such file", path=shown)
    _check_encoding(file, shown)
    parts, package_root = _package_parts(file)
    roots = [str(r) for r in import_roots(file, Path(project_root).resolve() if project_root is not None else None)]
    # Files created since the last import (tests, editors) must be visible to the finders.
    importlib.invalidate_caches()
    try:
        left: dict[str, Any] = {}
        with _sandbox(roots, argv=[str(file)], left=left) as added:
            _evict_shadowed(sys.path)
            before = set(sys.modules)
            try:
                module = _load(file, parts, package_root)
            finally:
                _record_user_modules(set(sys.modules) - before, roots)
    except SyntaxError as exc:
        where = shown_path(exc.filename) if exc.filename and not _same_file(exc.filename, file) else shown
        err = LoadError(f"{type(exc).__name__}: {exc.msg}", path=where, line=exc.lineno)
        err.traceback_text = format_user_traceback(exc)
        raise err from exc
    except GradlintError as exc:
        err = _user_error(type(exc), exc.message, exc, exc.path or shown,
                          exc.line if exc.path else innermost_line(exc, file), exc.hint)
        raise err from exc
    except SystemExit as exc:
        raise _user_error(
            LoadError, f"the file called sys.exit({exc.code!r}) while being imported", exc, shown,
            innermost_line(exc, file),
            'gradlint imports the file without running it as a script; move script code under '
            '`if __name__ == "__main__":`') from exc
    except Exception as exc:  # noqa: BLE001 - any failure in user code becomes a LoadError
        hint = _import_hint(exc, file, parts, roots) if isinstance(exc, ImportError) else None
        raise _user_error(LoadError, f"{type(exc).__name__} while importing the file: {exc}", exc, shown,
                          innermost_line(exc, file), hint) from exc
    _ROOTS[str(file)] = tuple(dict.fromkeys([*roots, *added]))
    _DTYPES[str(file)] = left.get("dtype")
    return module


# --- discovering targets ------------------------------------------------------------------------

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
    """

    path: Path
    name: str
    kind: str
    line: int | None
    options: TargetOptions | None = None
    obj: Any = field(default=None, compare=False, hash=False, repr=False)

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
    """

    targets: tuple[Target, ...] = ()
    skipped: tuple[Skipped, ...] = ()


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
    calls: dict[str, frozenset[str]]
    readable: bool

    @classmethod
    def read(cls, path: Path) -> _Source:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            return cls({}, frozenset(), {}, readable=False)
        lines: dict[str, int] = {}
        assigned: set[str] = set()
        calls: dict[str, frozenset[str]] = {}
        pending = list(tree.body)
        while pending:
            node = pending.pop(0)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lines.setdefault(node.name, node.lineno)
                if not isinstance(node, ast.ClassDef):
                    calls[node.name] = frozenset(
                        c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for name in _bound_names(target):
                        lines.setdefault(name, node.lineno)
                        assigned.add(name)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
                # Module-level code in blocks still binds module-level names.
                pending[:0] = [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
        return cls(lines, frozenset(assigned), calls, readable=True)


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
        raise LoadError(f"no target named {name!r} in the file; targets: {listing}{skipped}", path=str(path),
                        hint=f"name one of them: {path}::NAME") from None
    if not callable(obj):
        raise LoadError(f"{name} is a {type(obj).__name__}, not a model factory, nn.Module class or nn.Module",
                        path=str(path), line=source.lines.get(name))
    return Target(path, name, _kind(obj), _line(obj, name, source), _options(obj), obj)


def discover(module: types.ModuleType, path: str | os.PathLike[str], name: str | None = None) -> Discovery:
    """Finds the models a file defines.

    Targets are every object decorated with ``@gradlint.target``; every ``nn.Module`` subclass
    defined in the file whose constructor needs no arguments; and every module-level
    ``nn.Module`` instance assigned in the file (one target per object, under its first name).
    Classes and instances imported from elsewhere are not targets. Classes needing arguments,
    abstract classes, classes a decorated factory builds, and instances without parameters are
    listed in ``skipped``.

    Args:
        module: The module ``import_file`` returned.
        path: Its file.
        name: Select this one target (its name in the file or its decorator ``name``). An object
            named explicitly is a target even when it would otherwise be skipped.

    Returns:
        The targets and the skipped modules; with ``name``, that target alone.

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
            targets.append(Target(path, attr, _kind(obj), _line(obj, attr, source), options, obj))
    built_by = {called: t.name for t in targets if t.kind == "factory" for called in source.calls.get(t.name, ())}

    for attr, obj in namespace:
        if id(obj) in seen:
            continue
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == here:
            seen.add(id(obj))
            line = _line(obj, attr, source)
            required = _required_args(obj)
            if inspect.isabstract(obj):
                skipped.append(Skipped(attr, line, "abstract class"))
            elif required:
                skipped.append(Skipped(attr, line, f"constructor needs arguments: {', '.join(required)}",
                                       hint=_kwargs_hint(path, attr, required)))
            elif attr in built_by:
                skipped.append(Skipped(attr, line, f"built by the decorated factory {built_by[attr]}"))
            else:
                targets.append(Target(path, attr, "class", line, None, obj))
        elif isinstance(obj, nn.Module) and (attr in source.assigned or not source.readable):
            seen.add(id(obj))
            line = source.lines.get(attr)
            if next(obj.parameters(), None) is None:
                skipped.append(Skipped(attr, line, "instance has no parameters"))
            else:
                targets.append(Target(path, attr, "instance", line, None, obj))

    def order(item: Target | Skipped) -> tuple[int, str]:
        return (item.line if item.line is not None else sys.maxsize, item.name)

    found = Discovery(tuple(sorted(targets, key=order)), tuple(sorted(skipped, key=order)))
    if name is None:
        return found
    for candidate in found.targets:
        if name in (candidate.name, candidate.display_name):
            return Discovery((candidate,))
    return Discovery((_explicit(module, path, name, source, found),))


# --- building -----------------------------------------------------------------------------------

def _brief(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 60 else type(value).__name__


def _kwargs_hint(path: Path, name: str, missing: list[str]) -> str:
    declared = ", ".join(f'"{m}": ...' for m in missing)
    toml = ", ".join(f"{m} = ..." for m in missing)
    return (f"declare them with @gradlint.target(kwargs={{{declared}}}), or in pyproject.toml: "
            f'[tool.gradlint] targets = [{{ path = "{path}::{name}", kwargs = {{ {toml} }} }}]')


def _check_call(target: Target, kwargs: dict[str, Any]) -> None:
    try:
        params = inspect.signature(target.obj).parameters
    except (TypeError, ValueError):
        return
    where = {"path": str(target.path), "line": target.line}
    what = f"{target.name}'s constructor" if target.kind == "class" else f"the factory {target.name}"
    missing = [p.name for p in params.values() if p.default is p.empty and p.name not in kwargs
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise LoadError(f"{what} needs arguments: {', '.join(missing)}", **where,
                        hint=_kwargs_hint(target.path, target.name, missing))
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params or params[k].kind is params[k].POSITIONAL_ONLY]
        if unknown:
            raise LoadError(f"{what} takes no argument {', '.join(unknown)}", **where,
                            hint=f"it takes: {', '.join(params) or 'no arguments'}")


def instantiate(target: Target, kwargs: dict[str, Any] | None = None) -> Any:
    """Builds the model a target describes.

    Args:
        target: From ``discover``.
        kwargs: Keyword arguments for the factory or class; they override the decorator's.

    Returns:
        The ``nn.Module``.

    Raises:
        LoadError: When arguments are missing (with a hint showing how to declare them) or
            unknown, when the user's code raises (at the innermost line of their file, with the
            trimmed traceback in ``traceback_text``), or when a factory returns no ``nn.Module``.
    """
    from torch import nn

    if target.kind == "instance":
        if kwargs:
            raise LoadError(f"{target.name} is an nn.Module instance; it takes no kwargs",
                            path=str(target.path), line=target.line)
        return target.obj
    merged = {**((target.options.kwargs or {}) if target.options is not None else {}), **(kwargs or {})}
    _check_call(target, merged)
    try:
        with user_code(target.path):
            built = target.obj(**merged)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure in user code becomes a LoadError
        raise _user_error(LoadError, f"building {target.name} raised {type(exc).__name__}: {exc}", exc,
                          str(target.path), innermost_line(exc, target.path) or target.line) from exc
    if not isinstance(built, nn.Module):
        hint = ("return the model alone; gradlint makes its own inputs" if isinstance(built, tuple)
                else "return the nn.Module the factory builds")
        raise LoadError(f"the factory {target.name} returned {_brief(built)}, not an nn.Module",
                        path=str(target.path), line=target.line, hint=hint)
    return built
