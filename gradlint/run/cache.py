"""The cache: a file's reports, kept until something they depend on changes.

A file whose entry is valid is not checked again, so a run where every file hits needs no
worker and never imports torch. The key of a file (``path``, or ``path::Name``) covers:

- the file's content, and that of the local modules it imports, transitively: imports
  (anywhere in the file, relative ones too) that resolve under the file's own directory, its
  package root or the project root, as ``gradlint.load.import_file`` puts them on sys.path.
  Installed packages are not read: the modification times of the site-packages directories
  stand for them (installing, upgrading or removing a package changes them);
- the resolved file. Not the path as given nor the current directory: an entry is stored with
  the path its reports quote and the configuration file as the run named them, and a hit from
  another directory (or under another spelling of the path) rewrites those to the ones of the
  run that reads it (``_relocate``);
- gradlint's version and the size and modification time of each of its own source files;
  torch's ``version.py``; the Python interpreter;
- the settings that change a file's reports: input shapes, select, ignore, threshold,
  fail-on, probe, device, seeds, batch size, the rules' options and the configured targets
  of that file. Severities and per-file ignores are left out: they are applied to the
  reports after the cache, on every run.

What the key cannot see: files the model reads (``open("config.json")``), modules imported
by a computed name (``importlib.import_module(name)``), the environment. ``--no-cache``
checks everything afresh.

Files with a target that could not be analyzed are not cached: the error may come from the
machine (memory, a missing package), and such files are rarely the slow ones. Probe results
are cached like predictions: given the seeds, device and batch size (all in the key) a probe
measures the same numbers again; its wall time is the one of the run that measured it.

Entries live in a user cache directory (never in the user's project), one file each, written
to a temporary file and renamed into place, so a run that is killed or runs beside another
leaves no half-written entry. Entries are JSON (``gradlint.run.wire``), which rebuilds plain
data and gradlint's report records and nothing else, so reading one can never run code. An
entry that cannot be read, is not the user's own, names another key or holds anything
unexpected is ignored, never trusted.

Pruning keeps the directory bounded. A hit refreshes its entry's modification time (at most
once a day per entry), so the time stands for the last use. A run that wrote an entry prunes
when the last pruning is a day old (one ``stat`` of a stamp file tells): entries unused for
``MAX_AGE`` go, then the least recently used ones until the entries take at most
``MAX_BYTES``, and temporary files a killed run left behind. Pruning removes gradlint's own
entries only: files named as an entry (``v<N>/<2 hex>/<62 hex>.json``, or ``.pickle`` from
format 1, which pickled reports) that start with the
cache's header, and its temporary files, never following a link, so a ``--cache-dir`` that
holds other files keeps them.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from gradlint import load
from gradlint._version import __version__
from gradlint.base.report import Report
from gradlint.load.files import read_source
from gradlint.run import wire

__all__ = ["Cache", "FORMAT", "MAX_AGE", "MAX_BYTES", "PRUNE_EVERY", "default_dir", "local_imports", "prune"]

# 2: JSON entries (1 pickled them; its entries are no longer read, and pruning removes them).
FORMAT = 2
_MAGIC = b"gradlint-cache\n"
DAY = 24 * 3600.0
# Entries unused this long (seconds) are pruned; then the least recently used, down to MAX_BYTES.
MAX_AGE = 30 * DAY
MAX_BYTES = 256 * 1024 * 1024
# Seconds between prunings; and how stale an entry's time may get before a hit refreshes it.
PRUNE_EVERY = DAY
_TOUCH_AFTER = DAY
_STAMP = "last-prune"
# What gradlint writes, and nothing else: v<FORMAT>/<key[:2]>/<key[2:]>.json (.pickle in format 1)
# and mkstemp's files.
_FORMAT_DIR = re.compile(r"v[0-9]+")
_SHARD_DIR = re.compile(r"[0-9a-f]{2}")
_ENTRY = re.compile(r"[0-9a-f]{62}\.(?:json|pickle)")
_TEMP = re.compile(r"\.tmp-[A-Za-z0-9_]+")


def default_dir() -> Path:
    """``$GRADLINT_CACHE_DIR``, else the platform's user cache directory, ``gradlint`` in it:
    ``$XDG_CACHE_HOME/gradlint`` or ``~/.cache/gradlint`` on Linux,
    ``~/Library/Caches/gradlint`` on macOS, ``%LOCALAPPDATA%\\gradlint\\Cache`` on Windows."""
    if os.environ.get("GRADLINT_CACHE_DIR"):
        return Path(os.environ["GRADLINT_CACHE_DIR"])
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
        return Path(base, "gradlint", "Cache")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gradlint"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "gradlint")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


def _source_files(directory: str) -> list[tuple[str, int, int]]:
    out = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        if entry.name.endswith(".py"):
            st = entry.stat()
            out.append((entry.name, st.st_size, st.st_mtime_ns))
    return out


def _environment() -> list[Any]:
    """What every key shares: gradlint, torch, the interpreter and its installed packages."""
    import gradlint

    own = [os.path.dirname(os.path.abspath(gradlint.__file__))]
    try:
        rules = importlib.util.find_spec("gradlint.rules")
        own += list(rules.submodule_search_locations or ()) if rules else []
    except (ImportError, ValueError):
        pass
    torch = None
    try:
        spec = importlib.util.find_spec("torch")
        if spec is not None and spec.origin:
            torch = hashlib.sha256(Path(spec.origin).with_name("version.py").read_bytes()).hexdigest()
    except (ImportError, ValueError, OSError):
        torch = "unreadable"
    site = sorted({p for p in (sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib"),
                               *(e for e in sys.path if "site-packages" in e or "dist-packages" in e)) if p})
    stamps = []
    for directory in site:
        try:
            stamps.append((directory, os.stat(directory).st_mtime_ns))
        except OSError:
            pass
    # python and python3 of one environment are one interpreter; two environments differ in prefix.
    python = (sys.version, os.path.realpath(sys.executable), sys.prefix)
    return [FORMAT, __version__, [(d, _source_files(d)) for d in own], torch, python, stamps]


class Cache:
    """The cache of one run: its settings are part of every key.

    Args:
        directory: Where entries live (created when the first one is written).
        settings: The run's ``gradlint.run.runner.Settings``.
    """

    def __init__(self, directory: str | os.PathLike[str], settings: Any) -> None:
        self.dir = Path(directory) / f"v{FORMAT}"
        self.settings = settings
        config = settings.config
        # Every setting but the configuration, which counts only through its rule options and
        # warn-unused-ignores, all-targets and trust-custom-backward (its severities and per-file ignores
        # apply after the cache).
        self._base = _digest(_environment(), [
            *(getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "config"),
            sorted((k, sorted(dict(v).items())) for k, v in config.rule_options.items()) if config else None,
            config.warn_unused_ignores if config else None, config.all_targets if config else False,
            config.trust_custom_backward if config else False])
        self._files: dict[Path, tuple[str, list[tuple[int, str | None, tuple[str, ...]]]] | None] = {}
        self._resolved: dict[Any, list[Path]] = {}
        # key -> how this run names the file and the configuration file, which reports quote.
        self._views: dict[str, tuple[str, str]] = {}
        self._sources: dict[Path, Any] = {}
        self.written = 0

    # --- keys ---------------------------------------------------------------------------------

    def key(self, path: Any, name: str | None) -> str | None:
        """The key of checking ``path`` (``::name``), or None when the file cannot be read."""
        file = Path(os.path.realpath(path))  # never raises, not even on a symlink loop
        own = self._read(file)
        if own is None:
            return None
        from gradlint.load.callsites import value_sources

        # The files its models' constructor values may be read from (training scripts, READMEs) count too.
        deps = [(str(f), (self._read(f) or ("unreadable",))[0])
                for f in dict.fromkeys([*local_imports(file, self._read, self._resolved),
                                        *value_sources(file, self._sources)])]
        config = self.settings.config
        shown_config = _shown_config(config)
        # Origins hold the configuration file as named from here; its resolved form is the same from anywhere.
        specs = [(s.ref, s.name, s.inputs, dict(s.kwargs or {}), s.label,
                  _anywhere(s.origin, shown_config, config.file if config is not None else None))
                 for s in config.targets_in(file)] if config is not None else []
        key = _digest(self._base, name, str(file), own[0], deps, specs)
        self._views[key] = (str(path), shown_config)
        return key

    def _read(self, file: Path) -> tuple[str, list[tuple[int, str | None, tuple[str, ...]]]] | None:
        """The file's digest and imports (level, module, names), read once per run."""
        if file not in self._files:
            try:
                data = read_source(file)  # never blocks: a FIFO is refused, not waited on
            except OSError:
                self._files[file] = None
                return None
            try:
                imports = _imports(ast.parse(data).body)
            except (SyntaxError, ValueError):
                imports = []
            self._files[file] = (hashlib.sha256(data).hexdigest(), imports)
        return self._files[file]

    # --- entries ------------------------------------------------------------------------------

    def _entry(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key[2:]}.json"

    def get(self, key: str | None) -> list[tuple[str, Any]] | None:
        """The events stored under ``key``; None when there is no valid entry."""
        if key is None:
            return None
        entry = self._entry(key)
        try:
            with open(entry, "rb") as f:
                st = os.fstat(f.fileno())
                if hasattr(os, "getuid") and st.st_uid != os.getuid():
                    return None  # someone else's file: not the user's results
                data = f.read()
            if not data.startswith(_MAGIC):
                return None
            stored = wire.loads(data[len(_MAGIC):])
        except Exception:  # noqa: BLE001 - a missing or corrupt entry is a miss, whatever it raises
            return None
        if not (isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("events"), list)):
            return None
        events = stored["events"]
        view = stored.get("view")
        if not (isinstance(view, tuple) and len(view) == 2 and all(isinstance(v, str) for v in view)):
            return None
        for event in events:
            if not (isinstance(event, tuple) and len(event) == 2 and (
                    (event[0] == "report" and isinstance(event[1], Report))
                    or (event[0] == "note" and isinstance(event[1], str)))):
                return None
        if time.time() - st.st_mtime > _TOUCH_AFTER:
            _touch(entry)  # an entry's time is its last use, which pruning goes by
        return _relocate(events, view, self._views.get(key, view))

    def put(self, key: str, events: list[tuple[str, Any]]) -> None:
        """Stores ``events`` under ``key``; a cache that cannot be written is no cache."""
        entry = self._entry(key)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            data = _MAGIC + wire.dumps({"key": key, "events": events, "view": self._views.get(key, ("", ""))})
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, entry)
                self.written += 1
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except Exception:  # noqa: BLE001 - read-only, full, or gone: the run's results stand
            pass

    # --- pruning ------------------------------------------------------------------------------

    def prune_if_due(self, now: float | None = None) -> tuple[int, int] | None:
        """Prunes the cache (``prune``) when this run wrote to it and the last pruning is at
        least ``PRUNE_EVERY`` old; one ``stat`` otherwise. Never raises.

        Returns:
            ``prune``'s (entries removed, bytes freed), or None when it was not due.
        """
        if not self.written:
            return None
        now = time.time() if now is None else now
        stamp = self.dir / _STAMP
        try:
            if now - stamp.stat().st_mtime < PRUNE_EVERY:
                return None
        except OSError:
            pass  # never pruned
        try:
            # The stamp first, so runs beside this one do not prune too.
            stamp.touch()
            os.utime(stamp, (now, now))
        except OSError:
            return None
        try:
            return prune(self.dir.parent, now=now)
        except Exception:  # noqa: BLE001 - a cache that cannot be pruned is still a cache
            return None


def _shown_config(config: Any) -> str:
    """The configuration file as this run names it in origins (``pyproject.toml``, ``../pyproject.toml``)."""
    if config is None or config.file is None:
        return ""
    from gradlint.base.paths import shortest_path

    return shortest_path(config.file)


def _anywhere(origin: str, shown: str, file: Path | None) -> str:
    """``origin`` (``SHOWN:LINE``) with the configuration file resolved."""
    if file is not None and shown and origin.startswith(shown + ":"):
        return str(Path(file).resolve()) + origin[len(shown):]
    return origin


def _relocate(events: list[tuple[str, Any]], stored: tuple[str, str], here: tuple[str, str]) -> list[tuple[str, Any]]:
    """The events of an entry written by a run that named the file ``stored[0]`` and the
    configuration ``stored[1]``, as this run, which names them ``here``, would have made them:
    the target labels, report and finding paths, notes and configured-input origins."""
    (old, old_cfg), (new, new_cfg) = stored, here
    if (old, old_cfg) == (new, new_cfg):
        return events

    def path(text: str | None) -> str | None:
        if text is None or not old:
            return text
        if text == old:
            return new
        for sep in ("::", ":"):
            if text.startswith(old + sep):
                return new + text[len(old):]
        return text.replace(f'"{old}::', f'"{new}::')  # a hint's TOML path = "FILE::Name"

    out: list[tuple[str, Any]] = []
    for kind, value in events:
        if kind == "note":
            out.append((kind, path(value)))
            continue
        inputs = value.inputs
        if old_cfg and new_cfg and old_cfg != new_cfg:
            inputs = inputs.replace(f"declared in {old_cfg}:", f"declared in {new_cfg}:")
        findings = tuple(dataclasses.replace(f, path=path(f.path)) if f.path == old else f for f in value.findings)
        out.append((kind, dataclasses.replace(value, target=path(value.target), path=path(value.path),
                                              inputs=inputs, findings=findings)))
    return out


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _is_ours(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def prune(directory: str | os.PathLike[str], *, max_age: float | None = None, max_bytes: int | None = None,
          now: float | None = None) -> tuple[int, int]:
    """Removes gradlint's entries not used for ``max_age`` seconds, then the least recently
    used ones until the rest take at most ``max_bytes``, and temporary files older than a day.

    Only gradlint's own files are candidates: ``v<N>/<2 hex>/<62 hex>.json`` (or ``.pickle``) below
    ``directory`` that start with the cache's header, and ``.tmp-*`` files in those shard
    directories; links are not followed, and other users' files are left alone. Never raises.

    Args:
        directory: The cache directory (``--cache-dir``; the one holding ``v<FORMAT>``).
        max_age: Seconds; ``MAX_AGE`` by default.
        max_bytes: ``MAX_BYTES`` by default.
        now: The current time (``time.time()``).

    Returns:
        (entries removed, bytes they held).
    """
    max_age = MAX_AGE if max_age is None else max_age
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    now = time.time() if now is None else now
    uid = os.getuid() if hasattr(os, "getuid") else None
    entries: list[tuple[float, int, str]] = []
    temps: list[tuple[float, str]] = []
    for version in _scandir(os.fspath(directory)):
        if not (_FORMAT_DIR.fullmatch(version.name) and _is_dir(version)):
            continue
        for shard in _scandir(version.path):
            if not (_SHARD_DIR.fullmatch(shard.name) and _is_dir(shard)):
                continue
            for item in _scandir(shard.path):
                entry, temp = _ENTRY.fullmatch(item.name), _TEMP.fullmatch(item.name)
                if not (entry or temp):
                    continue
                try:
                    if not item.is_file(follow_symlinks=False):
                        continue
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                if uid is not None and st.st_uid != uid:
                    continue
                if entry:
                    entries.append((st.st_mtime, st.st_size, item.path))
                else:
                    temps.append((st.st_mtime, item.path))
    removed = freed = 0
    entries.sort()  # least recently used first
    total = sum(size for _, size, _ in entries)
    for mtime, size, path in entries:
        if now - mtime <= max_age and total <= max_bytes:
            break
        if not _is_ours(path):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:  # another run pruned it
            total -= size
            continue
        except OSError:
            continue
        total -= size
        removed += 1
        freed += size
    for mtime, path in temps:
        if now - mtime > DAY:  # older than any write in progress
            try:
                os.unlink(path)
            except OSError:
                pass
    return removed, freed


# --- local imports ------------------------------------------------------------------------------

def _imports(body: list[ast.stmt]) -> list[tuple[int, str | None, tuple[str, ...]]]:
    """Every import statement, at any depth (in functions, classes, ``try``, ``if``), as
    (level, module, names). Imports are statements, so expressions need no visit."""
    out: list[tuple[int, str | None, tuple[str, ...]]] = []
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            out += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module, tuple(a.name for a in node.names)))
        else:
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, name, None)
                if isinstance(children, list):
                    stack += [c for c in children if isinstance(c, ast.AST)]
    return out


def _module_files(base: Path, parts: list[str], names: tuple[str, ...]) -> list[Path]:
    """The files importing ``parts`` (and submodules ``names`` of it) runs, below ``base``."""
    out: list[Path] = []
    here = base
    for part in parts:
        if (here / f"{part}.py").is_file():
            out.append(here / f"{part}.py")
            return out
        here = here / part
        if not here.is_dir():
            return out
        if (here / "__init__.py").is_file():
            out.append(here / "__init__.py")
    for name in names:
        if (here / f"{name}.py").is_file():
            out.append(here / f"{name}.py")
        elif (here / name / "__init__.py").is_file():
            out.append(here / name / "__init__.py")
    return out


def _skipped(file: Path, roots: list[Path]) -> bool:
    for root in roots:
        try:
            rel = file.relative_to(root)
        except ValueError:
            continue
        return any(part.startswith(".") or part in load.SKIP_DIRS for part in rel.parts[:-1])
    return True


def local_imports(file: Path, read: Any, memo: dict[Any, list[Path]] | None = None) -> list[Path]:
    """The local modules ``file`` imports, transitively, sorted (``file`` itself not included).

    Args:
        file: A resolved path.
        read: ``Cache._read``: a file's digest and its imports, or None when unreadable.
        memo: Where to keep what an import resolved to, for the next file of the run (files
            import the same modules).
    """
    memo = {} if memo is None else memo
    roots = [r.resolve() for r in load.import_roots(file)]
    parts, _ = load.package_parts(file)
    found: set[Path] = set()
    # import_file imports the file's package first: its __init__ files run too.
    directory = file.parent
    for _ in parts:
        found.add((directory / "__init__.py").resolve())
        directory = directory.parent
    stack = [file, *found]
    seen = {file}
    while stack:
        current = stack.pop()
        info = read(current)
        if info is None:
            continue
        for level, module, names in info[1]:
            mod_parts = module.split(".") if module else []
            if not level and (not mod_parts or mod_parts[0] == "gradlint"):  # in the key already
                continue
            asked = (tuple(roots), current.parent if level else None, level, module, names)
            if asked not in memo:
                if level:
                    base = current.parent
                    for _ in range(level - 1):
                        base = base.parent
                    files = _module_files(base, mod_parts, names)
                else:
                    files = []
                    for root in roots:
                        if (root / f"{mod_parts[0]}.py").is_file() or (root / mod_parts[0]).is_dir():
                            files = _module_files(root, mod_parts, names)
                            if files:
                                break
                memo[asked] = [f.resolve() for f in files]
            for f in memo[asked]:
                if f not in seen and not _skipped(f, roots):
                    seen.add(f)
                    found.add(f)
                    stack.append(f)
    found.discard(file)
    return sorted(found)
