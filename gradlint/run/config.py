"""``[tool.gradlint]`` in pyproject.toml: finding it, checking it, and merging it with the command line.

Every value comes from one of three places, each overriding the one before: gradlint's
default, the configuration file, the command line. ``Config`` records where each value came
from, so ``gradlint config`` can say why a value is what it is.

Every key is checked. An unknown key, an unknown rule or a value of the wrong type is a
``ConfigError`` at the key's file and line: a misspelt option that silently does nothing is
worse than an error. tomllib reports no positions, so ``key_lines`` finds them in the text.

Paths in the file (``targets``, ``include``, ``exclude``, ``per-file-ignores``) are relative
to the file's directory, so the configuration means the same from whichever directory
gradlint runs. This module imports no torch until it checks rule codes.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gradlint.base.errors import ConfigError, GradlintError
from gradlint.base.findings import Finding, Severity
from gradlint.engine.summary import DEFAULT_THRESHOLD
from gradlint.base.targets import TargetOptions, Tokens

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["CLI_OPTIONS", "COMMAND_LINE", "DEFAULT", "Config", "TargetSpec", "describe", "find",
           "from_command_line", "key_lines", "load", "merge"]

DEFAULT, COMMAND_LINE = "default", "command line"
SEVERITIES = ("error", "warning", "info")

# Click parameter name of each `gradlint check` option -> the configuration key it overrides.
CLI_OPTIONS = {"select": "select", "ignore": "ignore", "fail_on": "fail-on", "threshold": "threshold",
               "input_shapes": "input-shape", "probe": "probe", "device": "device", "seeds": "seeds",
               "jobs": "jobs", "timeout": "timeout", "force_exclude": "force-exclude"}

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TARGET_KEYS = ("path", "inputs", "kwargs", "name")
_TOKEN_KEYS = ("shape", "vocab", "dtype")


# --- the effective configuration ----------------------------------------------------------------

@dataclass(frozen=True)
class TargetSpec:
    """One ``targets`` entry: a model to check, with its inputs and constructor arguments.

    Attributes:
        ref: The entry's ``path`` as written: ``file.py`` or ``file.py::Name``.
        file: That file, resolved against the configuration file's directory.
        name: The object's name in the file; None when the entry names the whole file.
        inputs: As for ``@gradlint.target(inputs=...)``: a shape tuple, a list of shapes, a dict
            name -> shape, or ``Tokens`` wherever a shape may stand; None when not given.
        kwargs: Keyword arguments for the factory or class; None when not given.
        label: The name reports show (the entry's ``name``); None when not given.
        origin: Where the entry is written, ``pyproject.toml:LINE``.
    """

    ref: str
    file: Path
    name: str | None = None
    inputs: Any = field(default=None, hash=False)
    kwargs: Mapping[str, Any] | None = field(default=None, hash=False)
    label: str | None = None
    origin: str = ""

    def matches(self, target: Any) -> bool:
        """Whether this entry configures ``target`` (a ``loading.Target`` of the same file)."""
        return self.name is not None and self.name in (target.name, target.display_name)

    def options(self, declared: TargetOptions | None) -> TargetOptions:
        """The decorator's options with this entry's over them (kwargs merged key by key)."""
        kwargs = {**((declared.kwargs or {}) if declared else {}), **(self.kwargs or {})}
        return TargetOptions(inputs=self.inputs if self.inputs is not None else (declared.inputs if declared else None),
                             kwargs=kwargs or None, name=self.label or (declared.name if declared else None))


@dataclass(frozen=True)
class Config:
    """The effective configuration of a run: defaults, then the file, then the command line.

    Attributes:
        select: Rules to run (codes, code prefixes or names); empty: all.
        ignore: Rules to skip.
        fail_on: Lowest severity that fails the run.
        threshold: Decades of attenuation or growth beyond which the verdict is vanishing/exploding.
        input_shape: Input shapes for targets that declare none (``--input-shape``).
        probe: Whether to measure with a real backward pass too.
        device: Where the probe runs.
        seeds: Seeds the probe averages over.
        jobs: Worker processes checking files in parallel (``--jobs``).
        timeout: Seconds one target (or one file's import) may run in a worker before it is
            killed (``--timeout``); 0: no limit.
        include: Globs a directory walk keeps (empty: every ``*.py``).
        exclude: Globs a directory walk drops.
        force_exclude: Whether ``exclude`` drops files named explicitly too.
        per_file_ignores: ``(glob, rules)`` pairs: findings in matching files that those rules
            (codes, prefixes or names) do not report.
        targets: Models to check, with their inputs and constructor arguments.
        rule_options: Rule code -> options overriding the rule's defaults.
        severities: Rule code -> the severity its findings are reported with.
        file: The configuration file; None when there is none.
        root: The directory relative paths are resolved against: the file's, else the current one.
        origins: Key (as the file spells it; ``rules.GL101.threshold`` for a rule's option) ->
            where its value came from, ``pyproject.toml:LINE`` or ``command line``. Keys not in it
            have their defaults.
    """

    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    fail_on: str = "error"
    threshold: float = DEFAULT_THRESHOLD
    input_shape: tuple[tuple[int, ...], ...] = ()
    probe: bool = False
    device: str = "cpu"
    seeds: int = 3
    jobs: int = 1
    timeout: float = 300.0  # the default; gradlint.run.runner.DEFAULT_TIMEOUT reads it
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    force_exclude: bool = False
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    targets: tuple[TargetSpec, ...] = ()
    rule_options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY, hash=False)
    severities: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    file: Path | None = None
    root: Path = field(default_factory=lambda: Path(os.path.realpath(os.getcwd())))
    origins: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)

    def origin(self, key: str) -> str:
        """Where the value of ``key`` came from: ``default``, ``FILE:LINE`` or ``command line``."""
        return self.origins.get(key, DEFAULT)

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to ``root``, with forward slashes (absolute when outside it)."""
        real = Path(os.path.realpath(path))
        try:
            return real.relative_to(self.root).as_posix()
        except ValueError:
            return real.as_posix()

    def wants(self, file: str | os.PathLike[str]) -> bool:
        """Whether a directory walk checks ``file``: it matches ``include`` (when given) and not ``exclude``."""
        rel = self.relative(file)
        return (not self.include or any(_glob_matches(p, rel) for p in self.include)) and not self.excluded(file)

    def excluded(self, file: str | os.PathLike[str]) -> bool:
        """Whether ``file`` matches an ``exclude`` glob."""
        rel = self.relative(file)
        return any(_glob_matches(p, rel) for p in self.exclude)

    def targets_in(self, file: str | os.PathLike[str]) -> tuple[TargetSpec, ...]:
        """The ``targets`` entries naming an object in ``file``."""
        real = os.path.realpath(file)
        return tuple(t for t in self.targets if t.name is not None and os.path.realpath(t.file) == real)

    def adjust(self, findings: Iterable[Finding], checked: str | os.PathLike[str] | None = None) -> tuple[Finding, ...]:
        """The findings with the configured severities, less those ``per-file-ignores`` silences.

        A ``per-file-ignores`` glob applies to a finding when it matches the file the finding
        points at or ``checked``, the file of the target it was found in: a model's findings
        often point into the files its layers come from.

        Args:
            findings: A report's findings.
            checked: The target's file.

        Returns:
            The findings, most severe first.
        """
        if not self.severities and not self.per_file_ignores:
            return tuple(findings)
        out = []
        for f in findings:
            rels = [self.relative(p) for p in (f.path, checked) if p]
            if any(_rule_matches(rule, f.code, f.name) for glob, rules in self.per_file_ignores
                   if any(_glob_matches(glob, rel) for rel in rels) for rule in rules):
                continue
            severity = self.severities.get(f.code)
            out.append(replace(f, severity=severity) if severity and severity != f.severity else f)
        out.sort(key=lambda f: (-Severity(f.severity).rank, f.path or "", f.line or 0, f.code))
        return tuple(out)


# --- glob and rule matching ---------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end]
            out.append("[^" + re.escape(body[1:]) + "]" if body[0] in "!^" else "[" + re.escape(body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _glob_matches(pattern: str, rel: str) -> bool:
    """gitignore-like: a glob without '/' matches any one path component (a file or directory
    name anywhere); one with '/' matches from the root, and a match on a directory covers all
    below it. ``*`` stays within a component, ``**`` crosses them."""
    pattern = pattern.strip()
    pattern = pattern[2:] if pattern.startswith("./") else pattern
    pattern = pattern.rstrip("/") or pattern
    parts = rel.split("/")
    regex = _glob_regex(pattern)
    if "/" not in pattern:
        return any(regex.match(part) for part in parts)
    return any(regex.match("/".join(parts[:k])) for k in range(1, len(parts) + 1))


def _rule_matches(pattern: str, code: str, name: str) -> bool:
    # The same test as api.select_rules, so a pattern means the same in every key.
    return code.startswith(pattern.upper()) or name == pattern


# --- where keys are written ---------------------------------------------------------------------

class _Stop(Exception):
    """The text is not TOML this scanner understands; the lines found so far stand."""


class _Scanner:
    """Finds the line of every key, table and array element in TOML text.

    Paths are tuples of keys and array indices, as the parsed document nests them:
    ``("tool", "gradlint", "targets", 0, "kwargs")``. The text has already been parsed by
    tomllib, so this scanner needs no error handling beyond giving up.
    """

    def __init__(self, text: str) -> None:
        self.s, self.i, self.line = text, 0, 1
        self.lines: dict[tuple[Any, ...], int] = {}
        self.arrays: dict[tuple[Any, ...], int] = {}

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def _advance(self, n: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + n)
        self.i += n

    def _mark(self, path: tuple[Any, ...], line: int) -> None:
        self.lines.setdefault(path, line)

    def _blank(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._advance()
            elif c == "#":
                end = self.s.find("\n", self.i)
                self._advance((len(self.s) if end == -1 else end) - self.i)
            else:
                return

    def _string(self) -> str:
        start = self.i
        for quote in ('"""', "'''", '"', "'"):
            if self._peek(len(quote)) == quote:
                break
        self._advance(len(quote))
        while self.i < len(self.s):
            if quote[0] == '"' and self.s[self.i] == "\\":
                self._advance(2)
            elif self._peek(len(quote)) == quote:
                self._advance(len(quote))
                # A multi-line string may end in up to two extra quotes.
                while len(quote) == 3 and self._peek() == quote[0]:
                    self._advance()
                break
            else:
                self._advance()
        raw = self.s[start:self.i]
        try:
            return tomllib.loads(f"k = {raw}")["k"] if tomllib is not None else raw.strip("\"'")
        except Exception:  # noqa: BLE001 - only for naming keys; the document itself parsed
            return raw.strip("\"'")

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._blank(newlines=False)
            if self._peek() in ('"', "'"):
                parts.append(self._string())
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if m is None:
                    raise _Stop
                parts.append(m.group())
                self._advance(len(m.group()))
            self._blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance()

    def _resolve(self, key: tuple[str, ...]) -> tuple[Any, ...]:
        # Inside [[a]], a header [a.b] or [[a.b]] belongs to a's latest element.
        out: tuple[Any, ...] = ()
        for part in key:
            out += (part,)
            if out in self.arrays and len(out) < len(key):
                out += (self.arrays[out] - 1,)
        return out

    def _value(self, path: tuple[Any, ...]) -> None:
        c = self._peek()
        if c in ('"', "'"):
            self._string()
        elif c == "[":
            self._advance()
            index = 0
            while True:
                self._blank(newlines=True)
                if self._peek() in ("]", ""):
                    self._advance()
                    return
                self._mark(path + (index,), self.line)
                self._value(path + (index,))
                index += 1
                self._blank(newlines=True)
                if self._peek() == ",":
                    self._advance()
        elif c == "{":
            self._advance()
            while True:
                self._blank(newlines=True)
                if self._peek() in ("}", ""):
                    self._advance()
                    return
                self._keyval(path)
                self._blank(newlines=True)
                if self._peek() == ",":
                    self._advance()
        else:
            m = re.compile(r"[^,\]}\n#]*").match(self.s, self.i)
            self._advance(len(m.group()) if m else 1)

    def _keyval(self, table: tuple[Any, ...]) -> None:
        line = self.line
        key = self._key()
        for k in range(1, len(key) + 1):
            self._mark(table + key[:k], line)
        if self._peek() != "=":
            raise _Stop
        self._advance()
        self._blank(newlines=False)
        self._value(table + key)

    def scan(self) -> dict[tuple[Any, ...], int]:
        table: tuple[Any, ...] = ()
        try:
            while True:
                self._blank(newlines=True)
                if self.i >= len(self.s):
                    break
                if self._peek() == "[":
                    line, double = self.line, self._peek(2) == "[["
                    self._advance(2 if double else 1)
                    key = self._key()
                    self._advance(2 if double else 1)
                    table = self._resolve(key)
                    self._mark(table, line)
                    if double:
                        self.arrays[table] = self.arrays.get(table, 0) + 1
                        table += (self.arrays[table] - 1,)
                        self._mark(table, line)
                else:
                    self._keyval(table)
        except (_Stop, IndexError):
            pass
        return self.lines


def key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """The line of every key, table header and array element in TOML text.

    Args:
        text: A TOML document.

    Returns:
        Path (keys and array indices, as tomllib nests the document) -> 1-based line where it is
        first written. A path written implicitly (the parent of a dotted key) has its first
        child's line.
    """
    return _Scanner(text).scan()


# --- reading the file ---------------------------------------------------------------------------

def _shown(file: Path) -> str:
    try:
        rel = os.path.relpath(file)
    except ValueError:
        return str(file)
    return rel if len(rel) < len(str(file)) else str(file)


def _toml(value: Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Tokens):
        fields = {"shape": value.shape, "vocab": value.vocab, **({"dtype": value.dtype} if value.dtype != "long" else {})}
        return _toml(fields)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _toml_key(key: Any) -> str:
    return key if isinstance(key, str) and _BARE_KEY.fullmatch(key) else json.dumps(str(key))


def _a(value: Any) -> str:
    """The TOML type of ``value``, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


class _Reader:
    """Checks one source of values (a file's table or the command line) and builds errors
    that point at the key."""

    def __init__(self, file: Path | None = None, text: str = "", prefix: tuple[str, ...] = ()) -> None:
        self.file, self.prefix = file, prefix
        self.shown = _shown(file) if file is not None else None
        self.lines = key_lines(text) if text else {}
        self.root = Path(os.path.realpath(file.parent)) if file is not None else Path(os.path.realpath(os.getcwd()))

    def line(self, path: tuple[Any, ...]) -> int | None:
        full = self.prefix + path
        while full:
            if full in self.lines:
                return self.lines[full]
            full = full[:-1]
        return None

    def origin(self, path: tuple[Any, ...]) -> str:
        if self.file is None:
            return COMMAND_LINE
        line = self.line(path)
        return f"{self.shown}:{line}" if line else str(self.shown)

    def table(self, path: tuple[Any, ...] = ()) -> str:
        """The table holding ``path``'s last key, as its header is written."""
        keys = [k for k in (self.prefix + path[:-1]) if isinstance(k, str)]
        return f"[{'.'.join(_toml_key(k) for k in keys)}]" if keys else "the top level"

    def key(self, path: tuple[Any, ...]) -> str:
        if self.file is None:
            return "--" + str(path[0])
        out = ""
        for part in path:
            out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + _toml_key(part)
        return out

    def error(self, path: tuple[Any, ...], message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{self.key(path)}: {message}", path=self.shown, line=self.line(path), hint=hint)

    def wrong(self, path: tuple[Any, ...], value: Any, expected: str, example: str | None = None) -> ConfigError:
        if self.file is None:
            given = " ".join(map(str, value if isinstance(value, list) else [value]))
            return ConfigError(f"{self.key(path)} {given}: must be {expected}")
        return ConfigError(f"{self.key(path)} = {_toml(value)}: must be {expected}", path=self.shown,
                           line=self.line(path), hint=f"for example {self.key(path)} = {example}" if example else None)

    def unknown_key(self, path: tuple[Any, ...], known: Iterable[str]) -> ConfigError:
        known = list(known)
        close = difflib.get_close_matches(str(path[-1]), known, n=1)
        hint = (f"did you mean {close[0]!r}? " if close else "") + "known keys: " + ", ".join(known)
        return ConfigError(f"unknown key {path[-1]!r} in {self.table(path)}", path=self.shown,
                           line=self.line(path), hint=hint)


# --- the keys -----------------------------------------------------------------------------------

def _rules() -> dict[str, Any]:
    from gradlint.lint.rule import catalog

    return catalog()


def _rule_pattern(r: _Reader, path: tuple[Any, ...], value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise r.wrong(path, value, "a rule code, code prefix or name", '["GL1", "dead-relu-risk"]')
    rules = _rules()
    prefix = re.fullmatch(r"GL[0-9]{0,3}", value.upper()) is not None
    if any((prefix and _rule_matches(value, code, cls.name)) or value == cls.name for code, cls in rules.items()):
        return value
    names = [*rules, *(cls.name for cls in rules.values())]
    close = difflib.get_close_matches(value, names, n=2)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "") + "`gradlint rules` lists them"
    what = "rule prefix" if prefix and len(value) < 5 else "rule"
    raise r.error(path, f"unknown {what} {value!r}: no rule has that code, code prefix or name", hint=hint)


def _rule_list(r: _Reader, path: tuple[Any, ...], value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise r.wrong(path, value, "an array of rule codes, code prefixes or names", '["GL1", "dead-relu-risk"]')
    return tuple(_rule_pattern(r, path if r.file is None else path + (i,), v) for i, v in enumerate(value))


def _fail_on(r: _Reader, path: tuple[Any, ...], value: Any) -> str:
    if value not in SEVERITIES:
        raise r.wrong(path, value, 'one of "error", "warning", "info"', '"warning"')
    return value


def _threshold(r: _Reader, path: tuple[Any, ...], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise r.wrong(path, value, "a positive number of decades", "2.0")
    return float(value)


def _shape(r: _Reader, path: tuple[Any, ...], value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise r.wrong(path, value, "a shape, an array of positive integers", "[8, 3, 32, 32]")
    return tuple(value)


def _input_shape(r: _Reader, path: tuple[Any, ...], value: Any) -> tuple[tuple[int, ...], ...]:
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return tuple(_shape(r, path + (i,), v) for i, v in enumerate(value))
    return (_shape(r, path, value),)


def _bool(r: _Reader, path: tuple[Any, ...], value: Any) -> bool:
    if not isinstance(value, bool):
        raise r.wrong(path, value, "true or false", "true")
    return value


def _device(r: _Reader, path: tuple[Any, ...], value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise r.wrong(path, value, 'a device: "cpu", "cuda", "cuda:N" or "auto"', '"cuda"')
    return value


def _seeds(r: _Reader, path: tuple[Any, ...], value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise r.wrong(path, value, "an integer from 1 to 100", "3")
    return value


def _jobs(r: _Reader, path: tuple[Any, ...], value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise r.wrong(path, value, "a positive integer, the number of worker processes", "2")
    return value


def _timeout(r: _Reader, path: tuple[Any, ...], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise r.wrong(path, value, "a number of seconds, 0 or more (0: no limit)", "600")
    return float(value)


def _globs(r: _Reader, path: tuple[Any, ...], value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise r.wrong(path, value, "an array of glob patterns", '["models/**/*.py"]')
    return tuple(value)


def _per_file_ignores(r: _Reader, path: tuple[Any, ...], value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, Mapping):
        raise r.wrong(path, value, "a table of glob -> rules", '{ "models/legacy/*.py" = ["GL4"] }')
    return tuple((glob, _rule_list(r, path + (glob,), rules)) for glob, rules in value.items())


def _inputs(r: _Reader, path: tuple[Any, ...], value: Any) -> Any:
    """TOML's forms of ``@gradlint.target(inputs=...)``: an array of ints is one shape, an array
    of arrays several inputs, a table with ``vocab`` a token input, any other table keyword inputs."""
    def one(p: tuple[Any, ...], v: Any) -> Any:
        if isinstance(v, Mapping) and "vocab" in v:
            extra = [k for k in v if k not in _TOKEN_KEYS]
            if extra:
                raise r.unknown_key(p + (extra[0],), _TOKEN_KEYS)
            if "shape" not in v:
                raise r.error(p, "a token input needs a shape", hint="for example { shape = [8, 128], vocab = 32000 }")
            try:
                return Tokens(shape=_shape(r, p + ("shape",), v["shape"]), vocab=v["vocab"], dtype=v.get("dtype", "long"))
            except GradlintError as e:
                raise r.error(p, e.message, hint=e.hint) from None
        return _shape(r, p, v)

    example = "[8, 3, 32, 32], [[8, 16], [8, 4]], { x = [8, 16] } or { shape = [8, 128], vocab = 32000 }"
    if isinstance(value, Mapping) and "vocab" not in value:
        if not value:
            raise r.wrong(path, value, f"example inputs, such as {example}")
        for k in value:
            if not k.isidentifier():
                raise r.error(path + (k,), f"{k!r} is not the name of a forward() parameter")
        return {k: one(path + (k,), v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, (list, Mapping)) for v in value):
        return [one(path + (i,), v) for i, v in enumerate(value)]
    if isinstance(value, (list, Mapping)):
        return one(path, value)
    raise r.wrong(path, value, f"example inputs, such as {example}")


def _targets(r: _Reader, path: tuple[Any, ...], value: Any) -> tuple[TargetSpec, ...]:
    example = '[{ path = "models/net.py::Net", inputs = [8, 3, 32, 32], kwargs = { depth = 50 } }]'
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise r.wrong(path, value, "an array of tables", example)
    out = []
    for i, entry in enumerate(value):
        p = path + (i,)
        for key in entry:
            if key not in _TARGET_KEYS:
                raise r.unknown_key(p + (key,), _TARGET_KEYS)
        ref = entry.get("path")
        if not isinstance(ref, str) or not ref.partition("::")[0]:
            if ref is None:
                raise r.error(p, "a target needs a path", hint=f"for example targets = {example}")
            raise r.wrong(p + ("path",), ref, 'a file, or file.py::Name', '"models/net.py::Net"')
        file_text, sep, name = ref.partition("::")
        if sep and not all(part.isidentifier() for part in name.split(".")):
            raise r.error(p + ("path",), f"{name!r} after '::' is not a Python name", hint='write "file.py::Name"')
        file = Path(os.path.normpath(r.root / file_text))
        if not file.is_file():
            raise r.error(p + ("path",), f"no such file: {file}",
                          hint="paths in the configuration are relative to its own directory")
        inputs = _inputs(r, p + ("inputs",), entry["inputs"]) if "inputs" in entry else None
        kwargs = entry.get("kwargs")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise r.wrong(p + ("kwargs",), kwargs, "a table of keyword arguments", "{ depth = 50 }")
        label = entry.get("name")
        if label is not None and (not isinstance(label, str) or not label):
            raise r.wrong(p + ("name",), label, "a non-empty string", '"resnet50"')
        if not sep and (inputs is not None or kwargs is not None or label is not None):
            given = next(k for k in ("inputs", "kwargs", "name") if k in entry)
            raise r.error(p + (given,), f"{given} needs one target: path names a whole file",
                          hint=f'name the object: path = "{file_text}::Name"')
        try:
            # The decorator's own checks, so a target means the same in both places.
            TargetOptions(inputs=inputs, kwargs=kwargs, name=label)
        except GradlintError as e:
            raise r.error(p, e.message, hint=e.hint) from None
        out.append(TargetSpec(ref=ref, file=file, name=name or None, inputs=inputs,
                              kwargs=MappingProxyType(dict(kwargs)) if kwargs is not None else None,
                              label=label, origin=r.origin(p)))
    return tuple(out)


def _fits(default: Any, value: Any) -> str | None:
    """None when ``value`` has the type of the option's ``default``; else what it must be."""
    if default is None:
        # Every option without a default is a threshold that falls back to the run's.
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    if isinstance(default, (list, tuple)):
        return None if isinstance(value, list) else "an array"
    if isinstance(default, Mapping):
        return None if isinstance(value, Mapping) else "a table"
    return None


@dataclass(frozen=True)
class _Key:
    attr: str
    check: Callable[[_Reader, tuple[Any, ...], Any], Any]


# In the order `gradlint config` shows them; rules is read separately.
_KEYS: dict[str, _Key] = {
    "select": _Key("select", _rule_list),
    "ignore": _Key("ignore", _rule_list),
    "fail-on": _Key("fail_on", _fail_on),
    "threshold": _Key("threshold", _threshold),
    "input-shape": _Key("input_shape", _input_shape),
    "probe": _Key("probe", _bool),
    "device": _Key("device", _device),
    "seeds": _Key("seeds", _seeds),
    "jobs": _Key("jobs", _jobs),
    "timeout": _Key("timeout", _timeout),
    "include": _Key("include", _globs),
    "exclude": _Key("exclude", _globs),
    "force-exclude": _Key("force_exclude", _bool),
    "per-file-ignores": _Key("per_file_ignores", _per_file_ignores),
    "targets": _Key("targets", _targets),
}


def _read_rules(r: _Reader, value: Any, origins: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    path = ("rules",)
    if not isinstance(value, Mapping):
        raise r.wrong(path, value, "a table of rule code or name -> options", "{ GL101 = { threshold = 3.0 } }")
    rules = _rules()
    by_name = {cls.name: code for code, cls in rules.items()}
    options: dict[str, Any] = {}
    severities: dict[str, str] = {}
    written: dict[str, str] = {}
    for key, table in value.items():
        p = path + (key,)
        code = key.upper() if key.upper() in rules else by_name.get(key)
        if code is None:
            close = difflib.get_close_matches(key, [*rules, *by_name], n=2)
            raise r.error(p, f"unknown rule {key!r}",
                          hint=(f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "")
                          + "`gradlint rules` lists them")
        if code in written:
            raise r.error(p, f"{code} is configured twice, as {written[code]!r} and {key!r}",
                          hint="keep one table per rule")
        written[code] = key
        if not isinstance(table, Mapping):
            raise r.wrong(p, table, "a table of the rule's options", "{ threshold = 3.0 }")
        cls = rules[code]
        mine: dict[str, Any] = {}
        for opt, v in table.items():
            q = p + (opt,)
            if opt == "severity":
                if v not in SEVERITIES:
                    raise r.wrong(q, v, 'one of "error", "warning", "info"', '"warning"')
                severities[code] = v
            elif opt in cls.options:
                expected = _fits(cls.options[opt], v)
                if expected:
                    raise r.wrong(q, v, expected, _toml(cls.options[opt]) if cls.options[opt] is not None else None)
                mine[opt] = v
            else:
                raise ConfigError(
                    f"unknown option {opt!r} of {code} {cls.name} in {r.table(q)}", path=r.shown, line=r.line(q),
                    hint=f"{code} takes: {', '.join([*cls.options, 'severity'])} (`gradlint explain {code}`)")
            origins[f"rules.{code}.{opt}"] = r.origin(q)
        if mine:
            options[code] = MappingProxyType(mine)
    return options, severities


def _from_table(r: _Reader, table: Mapping[str, Any], file: Path) -> Config:
    changes: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key, value in table.items():
        if key == "rules":
            options, severities = _read_rules(r, value, origins)
            changes.update(rule_options=MappingProxyType(options), severities=MappingProxyType(severities))
            continue
        spec = _KEYS.get(key)
        if spec is None:
            raise r.unknown_key((key,), [*_KEYS, "rules"])
        changes[spec.attr] = spec.check(r, (key,), value)
        origins[key] = r.origin((key,))
        if key == "per-file-ignores":
            for glob in value:
                origins[f"per-file-ignores.{_toml_key(glob)}"] = r.origin((key, glob))
    return Config(**changes, file=file, root=r.root, origins=MappingProxyType(origins))


def _parse(file: Path, text: str) -> dict[str, Any]:
    if tomllib is None:
        raise ConfigError("reading the configuration needs Python 3.11, or the tomli package on 3.10",
                          path=_shown(file), hint="pip install tomli")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        raise ConfigError(f"not valid TOML: {e}", path=_shown(file), line=int(m.group(1)) if m else None) from None


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the configuration: {e}", path=_shown(file)) from None


def find(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` with a ``[tool.gradlint]`` table, at or above ``start``.

    Args:
        start: The directory to start from; the current directory by default.

    Returns:
        The file, or None when no directory up to the root has one.

    Raises:
        ConfigError: When a pyproject.toml that mentions gradlint is not valid TOML.
    """
    here = Path(os.path.abspath(start if start is not None else os.getcwd()))
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if not candidate.is_file():
            continue
        text = _read(candidate)
        # Another project's broken pyproject.toml is not gradlint's business unless it has our table.
        if "gradlint" not in text:
            continue
        if tomllib is None:
            # Without a parser, a header is enough to know; load() then says what is missing.
            if re.search(r"^\s*\[\[?\s*tool\.gradlint\b", text, re.MULTILINE):
                return candidate
            continue
        tool = _parse(candidate, text).get("tool")
        if isinstance(tool, Mapping) and "gradlint" in tool:
            return candidate
    return None


def load(path: str | os.PathLike[str] | None = None, *, start: str | os.PathLike[str] | None = None) -> Config:
    """Reads and checks a configuration.

    Args:
        path: The file (``--config``): a pyproject.toml with a ``[tool.gradlint]`` table, or
            another TOML file holding the same keys at its top level or under ``[tool.gradlint]``.
            None: ``find(start)``.
        start: Where ``find`` starts; the current directory by default.

    Returns:
        The configuration, values from the file marked with their ``FILE:LINE``; the defaults
        when no file is given or found.

    Raises:
        ConfigError: For a missing or unreadable file, invalid TOML, an unknown key, rule or rule
            option, or a value of the wrong type, at the file and line of the key.
    """
    if path is None:
        found = find(start)
        if found is None:
            return Config(root=Path(os.path.realpath(start if start is not None else os.getcwd())))
        file = found
    else:
        file = Path(os.path.abspath(path))
        if not file.is_file():
            raise ConfigError("no such configuration file" if not file.exists() else "is not a file", path=str(path))
    text = _read(file)
    data = _parse(file, text)
    tool = data.get("tool")
    if isinstance(tool, Mapping) and "gradlint" in tool:
        table, prefix = tool["gradlint"], ("tool", "gradlint")
    elif file.name == "pyproject.toml":
        raise ConfigError("has no [tool.gradlint] table", path=_shown(file),
                          hint="add one, or point --config at a file that has it")
    else:
        table, prefix = data, ()
    r = _Reader(file, text, prefix)
    if not isinstance(table, Mapping):
        raise ConfigError(f"tool.gradlint is {_a(table)}; it must be a table", path=r.shown, line=r.line(()))
    return _from_table(r, table, file)


def _plain(value: Any) -> Any:
    # Command-line values arrive as tuples; the checks expect TOML's arrays.
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def merge(config: Config, given: Mapping[str, Any]) -> Config:
    """The command line's values over ``config``.

    Args:
        config: From ``load``.
        given: Key (as the file spells it, ``fail-on``) -> value; None means not given.

    Returns:
        The configuration with those values, their origin ``command line``.

    Raises:
        ConfigError: For an unknown rule or a value out of range.
    """
    r = _Reader()
    changes: dict[str, Any] = {}
    origins = dict(config.origins)
    for key, value in given.items():
        if value is None:
            continue
        changes[_KEYS[key].attr] = _KEYS[key].check(r, (key,), _plain(value))
        origins[key] = COMMAND_LINE
    return replace(config, **changes, origins=MappingProxyType(origins))


def from_command_line(params: Mapping[str, Any]) -> dict[str, Any]:
    """The options given on the command line, by configuration key.

    Args:
        params: ``gradlint check``'s parameters by click name; None, or an empty tuple for a
            repeatable option, means not given.

    Returns:
        Key -> value, for ``merge``.
    """
    return {CLI_OPTIONS[k]: v for k, v in params.items() if k in CLI_OPTIONS and v is not None and v != ()}


def describe(config: Config) -> str:
    """The effective configuration as TOML, each value followed by where it came from.

    Args:
        config: From ``load`` and ``merge``.

    Returns:
        Lines ``key = value  # origin`` (origin ``default``, ``FILE:LINE`` or ``command line``),
        after a comment naming the configuration file.
    """
    rows: list[tuple[str, str]] = []
    for key, spec in _KEYS.items():
        value = getattr(config, spec.attr)
        if key == "input-shape":
            value = value[0] if len(value) == 1 else value
        if key == "per-file-ignores":
            rows += [(f"per-file-ignores.{_toml_key(glob)} = {_toml(rules)}",
                      config.origin(f"per-file-ignores.{_toml_key(glob)}")) for glob, rules in value] or [
                ("per-file-ignores = {}", config.origin(key))]
        elif key == "targets" and value:
            rows.append(("targets = [", config.origin(key)))
            for t in value:
                fields = {"path": t.ref, "inputs": t.inputs, "kwargs": t.kwargs, "name": t.label}
                rows.append(("    " + _toml({k: v for k, v in fields.items() if v is not None}) + ",",
                             t.origin or config.origin(key)))
            rows.append(("]", ""))
        else:
            rows.append((f"{key} = {_toml(value)}", config.origin(key)))
    configured = sorted(set(config.rule_options) | set(config.severities))
    if not configured:
        rows.append(("rules = {}", DEFAULT))
    for code in configured:
        values = {**config.rule_options.get(code, {}), **({"severity": config.severities[code]}
                                                            if code in config.severities else {})}
        rows += [(f"rules.{code}.{opt} = {_toml(v)}", config.origin(f"rules.{code}.{opt}")) for opt, v in values.items()]
    width = min(max(len(text) for text, _ in rows), 48)
    head = (f"# configuration file: {_shown(config.file)}" if config.file is not None
            else "# no configuration file: defaults and command line")
    return "\n".join([head, *(f"{text:<{width}}  # {origin}" if origin else text for text, origin in rows)])
