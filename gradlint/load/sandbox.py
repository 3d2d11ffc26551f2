"""Importing the user's files: each runs like a script beside its own modules, under a private
module name, in a sandbox that undoes what it changes in the process.

``import_file`` puts the file's directory, its package root and the project root first on
``sys.path``, so ``__main__`` blocks do not run and two ``model.py`` files do not collide. Every
failure in the user's code becomes a ``LoadError`` pointing at the user's file and line, with
their traceback and not ours. ``user_code`` runs later calls into the file (building a model,
its ``forward``) under the same conditions.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import io
import os
import re
import sys
import tokenize
import types
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradlint.base.errors import GradlintError, LoadError
from gradlint.base.paths import shown_path
from gradlint.load.files import (
    find_project_root,
    import_roots,
    is_library_file,
    package_parts,
    read_source,
    same_file,
    source_problem,
)
from gradlint.load.notebooks import NotebookLoader, is_notebook
from gradlint.load.tracebacks import format_user_traceback, innermost_line, user_error

__all__ = ["forget_user_modules", "import_file", "user_code"]

# Top-level names of the user's own modules that import_file brought in: name -> (module,
# file it came from). A later file may mean another module by the same name (two projects
# each with a helpers.py); those entries are dropped from sys.modules before it is imported.
_USER_MODULES: dict[str, tuple[types.ModuleType, str | None]] = {}
# Resolved file -> the sys.path entries its code needs, for code that imports lazily.
_ROOTS: dict[str, tuple[str, ...]] = {}
# Resolved file -> what its import left set that its models see, as they would in the user's own
# process: the default dtype and the working directory (a script that chdirs to its run directory
# at import writes there from its constructors). The rest of what the import changed is undone.
_LEFT: dict[str, dict[str, Any]] = {}


def _is_user_file(origin: str | None, roots: list[str]) -> bool:
    if not origin or is_library_file(origin):
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


def forget_user_modules() -> None:
    """Drops every user module ``import_file`` brought in, and what it remembers of them, so
    that the next import sees their files as they are now (a worker between runs)."""
    tops = set(_USER_MODULES)
    for name in list(sys.modules):
        top = name.partition(".")[0]
        if top in tops or top.startswith("_gradlint_"):
            del sys.modules[name]
    _USER_MODULES.clear()
    _ROOTS.clear()
    _LEFT.clear()


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


@contextmanager
def _sandbox(roots: Iterable[str], argv: list[str] | None = None, dtype: Any = None, cwd: str | None = None,
             left: dict[str, Any] | None = None) -> Iterator[list[str]]:
    """Runs user code with ``roots`` first on sys.path and no bytecode written.

    What the code prints goes to stderr, so it cannot corrupt a report on stdout (``--format
    json``). The working directory, sys.argv, warning filters and torch's global settings
    (default dtype and device, grad mode, deterministic algorithms, thread count, anomaly mode)
    are restored on exit; ``argv``, ``dtype`` and ``cwd`` are set for the duration, and
    ``left`` gets the default dtype (``"dtype"``) and working directory (``"cwd"``) the code
    left behind.

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
        sys.argv = list(argv)
    added: list[str] = []
    stashed = _stash_shadowed(roots)
    try:
        with warnings.catch_warnings(), redirect_stdout(sys.stderr), redirect_stderr(sys.stderr):
            if cwd is not None:
                try:
                    os.chdir(cwd)
                except OSError:  # removed since: the code runs where gradlint does, as before
                    pass
            if dtype is not None:
                import torch

                torch.set_default_dtype(dtype)
            yield added
    finally:
        if left is not None:
            import torch

            left["dtype"] = torch.get_default_dtype()
            try:
                left["cwd"] = os.getcwd()
            except OSError:  # the code removed the directory it was in
                left["cwd"] = None
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
def user_code(path: str | os.PathLike[str], cwd: bool = True) -> Iterator[None]:
    """Runs code of an imported user file the way it ran at import.

    Puts the file's import roots back on sys.path (for imports done lazily inside constructors
    or ``forward``), gives the code the ``sys.argv`` it had at import (``[file]``) and the
    default dtype its import left (``torch.set_default_dtype`` at module level still decides
    how its models are built), keeps Python from writing bytecode into the user's tree, and
    sends what the code prints to stderr.

    Args:
        path: The user's file, as given to ``import_file``.
        cwd: Also run in the working directory the file's import left: a training script that
            changes to its run directory at import writes there from its constructors, as when
            run on its own. Only around the user's own calls (a constructor): gradlint's own
            work around them names the user's files relative to where it runs.

    Yields:
        Nothing; restores sys.path, sys.argv, the bytecode flag, the working directory and
        torch's global settings on exit.
    """
    file = os.path.realpath(path)
    roots = _ROOTS.get(file) or tuple(dict.fromkeys([str(Path(file).parent), str(find_project_root(file))]))
    left = _LEFT.get(file, {})
    with _sandbox(roots, argv=[file], dtype=left.get("dtype"), cwd=left.get("cwd") if cwd else None):
        yield


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text)


def _digest(path: Path) -> str:
    return hashlib.sha1(str(path).encode()).hexdigest()[:10]


def _exec_module(name: str, file: Path, search: list[str] | None = None) -> types.ModuleType:
    # A notebook's code cells run through a loader of their own (gradlint.load.notebooks).
    loader = NotebookLoader(file) if is_notebook(file) else None
    spec = importlib.util.spec_from_file_location(name, file, loader=loader, submodule_search_locations=search)
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
            top is None or any(same_file(p, top_dir) for p in getattr(top, "__path__", ()))):
        real = ".".join(parts)
        importlib.import_module(real)
        if any(same_file(p, top_dir) for p in getattr(sys.modules[parts[0]], "__path__", ())):
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
        data = read_source(file)  # never blocks, whatever was put in the file's place since
    except OSError as exc:
        raise LoadError(f"cannot be read: {exc.strerror or exc}", path=shown,
                        hint=getattr(exc, "hint", None) or "check the file's permissions") from exc
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
    problem = source_problem(path)
    if problem is not None:  # a FIFO, a link leading nowhere, a directory, notes.txt
        raise LoadError(problem[0], path=shown, hint=problem[1])
    file = Path(os.path.realpath(path))
    if not file.is_file():
        raise LoadError("no such file", path=shown, hint="check the path")
    _check_encoding(file, shown)
    parts, package_root = package_parts(file)
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
        where = shown_path(exc.filename) if exc.filename and not same_file(exc.filename, file) else shown
        err = LoadError(f"{type(exc).__name__}: {exc.msg}", path=where, line=exc.lineno)
        err.traceback_text = format_user_traceback(exc)
        raise err from exc
    except GradlintError as exc:
        err = user_error(type(exc), exc.message, exc, exc.path or shown,
                         exc.line if exc.path else innermost_line(exc, file), exc.hint)
        raise err from exc
    except SystemExit as exc:
        raise user_error(
            LoadError, f"the file called sys.exit({exc.code!r}) while being imported", exc, shown,
            innermost_line(exc, file),
            'gradlint imports the file without running it as a script; move script code under '
            '`if __name__ == "__main__":`') from exc
    except Exception as exc:
        hint = _import_hint(exc, file, parts, roots) if isinstance(exc, ImportError) else None
        raise user_error(LoadError, f"{type(exc).__name__} while importing the file: {exc}", exc, shown,
                         innermost_line(exc, file), hint) from exc
    _ROOTS[str(file)] = tuple(dict.fromkeys([*roots, *added]))
    _LEFT[str(file)] = left
    return module

