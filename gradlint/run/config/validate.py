"""Checking every key of a configuration: each value against what its key takes, every rule
against the catalog, each error at the key's file and line (or its command-line option)."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gradlint.base.errors import ConfigError, GradlintError
from gradlint.base.findings import matches
from gradlint.base.paths import shortest_path
from gradlint.base.targets import TargetOptions, Tokens
from gradlint.run.config.model import COMMAND_LINE, SEVERITIES, Config, TargetSpec
from gradlint.run.config.toml_lines import key_lines
from gradlint.run.config.toml_text import to_toml, toml_key

__all__ = ["KEYS", "PLACEHOLDER", "Key", "Source", "from_table"]

#: What ``gradlint init`` writes for a constructor value it could not find; refused until replaced.
PLACEHOLDER = "<FILL IN>"

_TARGET_KEYS = ("path", "inputs", "kwargs", "name")
_TOKEN_KEYS = ("shape", "vocab", "dtype")


class Source:
    """One source of values, a file's table or the command line: where each key is written,
    and errors that point at the key."""

    def __init__(self, file: Path | None = None, text: str = "", prefix: tuple[str, ...] = ()) -> None:
        self.file, self.prefix = file, prefix
        self.shown = shortest_path(file) if file is not None else None
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
        return f"[{'.'.join(toml_key(k) for k in keys)}]" if keys else "the top level"

    def key(self, path: tuple[Any, ...]) -> str:
        if self.file is None:
            return "--" + str(path[0])
        out = ""
        for part in path:
            out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + toml_key(part)
        return out

    def error(self, path: tuple[Any, ...], message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{self.key(path)}: {message}", path=self.shown, line=self.line(path), hint=hint)

    def wrong(self, path: tuple[Any, ...], value: Any, expected: str, example: str | None = None) -> ConfigError:
        if self.file is None:
            given = " ".join(map(str, value if isinstance(value, list) else [value]))
            return ConfigError(f"{self.key(path)} {given}: must be {expected}")
        return ConfigError(f"{self.key(path)} = {to_toml(value)}: must be {expected}", path=self.shown,
                           line=self.line(path), hint=f"for example {self.key(path)} = {example}" if example else None)

    def unknown_key(self, path: tuple[Any, ...], known: Iterable[str]) -> ConfigError:
        known = list(known)
        close = difflib.get_close_matches(str(path[-1]), known, n=1)
        hint = (f"did you mean {close[0]!r}? " if close else "") + "known keys: " + ", ".join(known)
        return ConfigError(f"unknown key {path[-1]!r} in {self.table(path)}", path=self.shown,
                           line=self.line(path), hint=hint)


def _catalog() -> dict[str, Any]:
    from gradlint.lint.rule import catalog

    return catalog()


def _rule_pattern(source: Source, path: tuple[Any, ...], value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise source.wrong(path, value, "a rule code, code prefix or name", '["GL1", "dead-relu-risk"]')
    rules = _catalog()
    prefix = re.fullmatch(r"GL[0-9]{0,3}", value.upper()) is not None
    if any((prefix and matches(code, cls.name, (value,))) or value == cls.name for code, cls in rules.items()):
        return value
    names = [*rules, *(cls.name for cls in rules.values())]
    close = difflib.get_close_matches(value, names, n=2)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "") + "`gradlint rules` lists them"
    what = "rule prefix" if prefix and len(value) < 5 else "rule"
    raise source.error(path, f"unknown {what} {value!r}: no rule has that code, code prefix or name", hint=hint)


def _rule_list(source: Source, path: tuple[Any, ...], value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise source.wrong(path, value, "an array of rule codes, code prefixes or names", '["GL1", "dead-relu-risk"]')
    return tuple(_rule_pattern(source, path if source.file is None else path + (i,), v) for i, v in enumerate(value))


def _fail_on(source: Source, path: tuple[Any, ...], value: Any) -> str:
    if value not in SEVERITIES:
        raise source.wrong(path, value, 'one of "error", "warning", "info"', '"warning"')
    return value


def _threshold(source: Source, path: tuple[Any, ...], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise source.wrong(path, value, "a positive number of decades", "2.0")
    return float(value)


def _shape(source: Source, path: tuple[Any, ...], value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise source.wrong(path, value, "a shape, an array of positive integers", "[8, 3, 32, 32]")
    return tuple(value)


def _input_shape(source: Source, path: tuple[Any, ...], value: Any) -> tuple[tuple[int, ...], ...]:
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return tuple(_shape(source, path + (i,), v) for i, v in enumerate(value))
    return (_shape(source, path, value),)


def _bool(source: Source, path: tuple[Any, ...], value: Any) -> bool:
    if not isinstance(value, bool):
        raise source.wrong(path, value, "true or false", "true")
    return value


def _device(source: Source, path: tuple[Any, ...], value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise source.wrong(path, value, 'a device: "cpu", "cuda", "cuda:N" or "auto"', '"cuda"')
    return value


def _seeds(source: Source, path: tuple[Any, ...], value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise source.wrong(path, value, "an integer from 1 to 100", "3")
    return value


def _jobs(source: Source, path: tuple[Any, ...], value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise source.wrong(path, value, "a positive integer, the number of worker processes", "2")
    return value


def _timeout(source: Source, path: tuple[Any, ...], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise source.wrong(path, value, "a number of seconds, 0 or more (0: no limit)", "600")
    return float(value)


def _globs(source: Source, path: tuple[Any, ...], value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise source.wrong(path, value, "an array of glob patterns", '["models/**/*.py"]')
    return tuple(value)


def _per_file_ignores(source: Source, path: tuple[Any, ...], value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, Mapping):
        raise source.wrong(path, value, "a table of glob -> rules", '{ "models/legacy/*.py" = ["GL4"] }')
    return tuple((glob, _rule_list(source, path + (glob,), rules)) for glob, rules in value.items())


def _inputs(source: Source, path: tuple[Any, ...], value: Any) -> Any:
    """TOML's forms of ``@gradlint.target(inputs=...)``: an array of ints is one shape, an array
    of arrays several inputs, a table with ``vocab`` a token input, any other table keyword inputs."""
    def one(p: tuple[Any, ...], v: Any) -> Any:
        if isinstance(v, Mapping) and "vocab" in v:
            extra = [k for k in v if k not in _TOKEN_KEYS]
            if extra:
                raise source.unknown_key(p + (extra[0],), _TOKEN_KEYS)
            if "shape" not in v:
                raise source.error(p, "a token input needs a shape",
                                   hint="for example { shape = [8, 128], vocab = 32000 }")
            try:
                return Tokens(shape=_shape(source, p + ("shape",), v["shape"]), vocab=v["vocab"],
                              dtype=v.get("dtype", "long"))
            except GradlintError as e:
                raise source.error(p, e.message, hint=e.hint) from None
        return _shape(source, p, v)

    example = "[8, 3, 32, 32], [[8, 16], [8, 4]], { x = [8, 16] } or { shape = [8, 128], vocab = 32000 }"
    if isinstance(value, Mapping) and "vocab" not in value:
        if not value:
            raise source.wrong(path, value, f"example inputs, such as {example}")
        for k in value:
            if not k.isidentifier():
                raise source.error(path + (k,), f"{k!r} is not the name of a forward() parameter")
        return {k: one(path + (k,), v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, (list, Mapping)) for v in value):
        return [one(path + (i,), v) for i, v in enumerate(value)]
    if isinstance(value, (list, Mapping)):
        return one(path, value)
    raise source.wrong(path, value, f"example inputs, such as {example}")


def _placeholders(value: Any, path: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _placeholders(v, path + (k,))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _placeholders(v, path + (i,))]
    return [path] if value == PLACEHOLDER else []


def _targets(source: Source, path: tuple[Any, ...], value: Any) -> tuple[TargetSpec, ...]:
    example = '[{ path = "models/net.py::Net", inputs = [8, 3, 32, 32], kwargs = { depth = 50 } }]'
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise source.wrong(path, value, "an array of tables", example)
    out = []
    for i, entry in enumerate(value):
        p = path + (i,)
        for key in entry:
            if key not in _TARGET_KEYS:
                raise source.unknown_key(p + (key,), _TARGET_KEYS)
        ref = entry.get("path")
        if not isinstance(ref, str) or not ref.partition("::")[0]:
            if ref is None:
                raise source.error(p, "a target needs a path", hint=f"for example targets = {example}")
            raise source.wrong(p + ("path",), ref, 'a file, or file.py::Name', '"models/net.py::Net"')
        file_text, sep, name = ref.partition("::")
        if sep and not all(part.isidentifier() for part in name.split(".")):
            raise source.error(p + ("path",), f"{name!r} after '::' is not a Python name",
                               hint='write "file.py::Name"')
        file = Path(os.path.normpath(source.root / file_text))
        if not file.is_file():
            raise source.error(p + ("path",), f"no such file: {file}",
                               hint="paths in the configuration are relative to its own directory")
        inputs = _inputs(source, p + ("inputs",), entry["inputs"]) if "inputs" in entry else None
        kwargs = entry.get("kwargs")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise source.wrong(p + ("kwargs",), kwargs, "a table of keyword arguments", "{ depth = 50 }")
        for key_path in _placeholders(kwargs or {}, p + ("kwargs",)):
            raise source.error(key_path, f"{PLACEHOLDER} is the placeholder gradlint init wrote for a value it could "
                                         "not find", hint="give the value the model is built with")
        label = entry.get("name")
        if label is not None and (not isinstance(label, str) or not label):
            raise source.wrong(p + ("name",), label, "a non-empty string", '"resnet50"')
        if not sep and (inputs is not None or kwargs is not None or label is not None):
            given = next(k for k in ("inputs", "kwargs", "name") if k in entry)
            raise source.error(p + (given,), f"{given} needs one target: path names a whole file",
                               hint=f'name the object: path = "{file_text}::Name"')
        try:
            # The decorator's own checks, so a target means the same in both places.
            TargetOptions(inputs=inputs, kwargs=kwargs, name=label)
        except GradlintError as e:
            raise source.error(p, e.message, hint=e.hint) from None
        out.append(TargetSpec(ref=ref, file=file, name=name or None, inputs=inputs,
                              kwargs=MappingProxyType(dict(kwargs)) if kwargs is not None else None,
                              label=label, origin=source.origin(p)))
    return tuple(out)


def _type_mismatch(default: Any, value: Any) -> str | None:
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
class Key:
    """How a key is read: the ``Config`` attribute it sets, and the check that turns its value
    (from the file or the command line) into that attribute's, or raises at the key."""

    attr: str
    check: Callable[[Source, tuple[Any, ...], Any], Any]


# In the order `gradlint config` shows them; rules is read separately.
KEYS: dict[str, Key] = {
    "select": Key("select", _rule_list),
    "ignore": Key("ignore", _rule_list),
    "fail-on": Key("fail_on", _fail_on),
    "threshold": Key("threshold", _threshold),
    "input-shape": Key("input_shape", _input_shape),
    "probe": Key("probe", _bool),
    "device": Key("device", _device),
    "seeds": Key("seeds", _seeds),
    "jobs": Key("jobs", _jobs),
    "timeout": Key("timeout", _timeout),
    "include": Key("include", _globs),
    "exclude": Key("exclude", _globs),
    "force-exclude": Key("force_exclude", _bool),
    "warn-unused-ignores": Key("warn_unused_ignores", _bool),
    "trust-custom-backward": Key("trust_custom_backward", _bool),
    "per-file-ignores": Key("per_file_ignores", _per_file_ignores),
    "targets": Key("targets", _targets),
    "all-targets": Key("all_targets", _bool),
}


def _read_rules(source: Source, value: Any, origins: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    path = ("rules",)
    if not isinstance(value, Mapping):
        raise source.wrong(path, value, "a table of rule code or name -> options", "{ GL101 = { threshold = 3.0 } }")
    rules = _catalog()
    by_name = {cls.name: code for code, cls in rules.items()}
    options: dict[str, Any] = {}
    severities: dict[str, str] = {}
    written: dict[str, str] = {}
    for key, table in value.items():
        p = path + (key,)
        code = key.upper() if key.upper() in rules else by_name.get(key)
        if code is None:
            close = difflib.get_close_matches(key, [*rules, *by_name], n=2)
            raise source.error(p, f"unknown rule {key!r}",
                               hint=(f"did you mean {' or '.join(repr(c) for c in close)}? " if close else "")
                               + "`gradlint rules` lists them")
        if code in written:
            raise source.error(p, f"{code} is configured twice, as {written[code]!r} and {key!r}",
                               hint="keep one table per rule")
        written[code] = key
        if not isinstance(table, Mapping):
            raise source.wrong(p, table, "a table of the rule's options", "{ threshold = 3.0 }")
        cls = rules[code]
        mine: dict[str, Any] = {}
        for opt, v in table.items():
            q = p + (opt,)
            if opt == "severity":
                if v not in SEVERITIES:
                    raise source.wrong(q, v, 'one of "error", "warning", "info"', '"warning"')
                severities[code] = v
            elif opt in cls.options:
                expected = _type_mismatch(cls.options[opt], v)
                if expected:
                    example = to_toml(cls.options[opt]) if cls.options[opt] is not None else None
                    raise source.wrong(q, v, expected, example)
                mine[opt] = v
            else:
                raise ConfigError(
                    f"unknown option {opt!r} of {code} {cls.name} in {source.table(q)}", path=source.shown,
                    line=source.line(q),
                    hint=f"{code} takes: {', '.join([*cls.options, 'severity'])} (`gradlint explain {code}`)")
            origins[f"rules.{code}.{opt}"] = source.origin(q)
        if mine:
            options[code] = MappingProxyType(mine)
    return options, severities


def from_table(source: Source, table: Mapping[str, Any], file: Path) -> Config:
    """The configuration ``table`` sets (``[tool.gradlint]`` of ``file``, or its top level), every key checked."""
    changes: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key, value in table.items():
        if key == "rules":
            options, severities = _read_rules(source, value, origins)
            changes.update(rule_options=MappingProxyType(options), severities=MappingProxyType(severities))
            continue
        spec = KEYS.get(key)
        if spec is None:
            raise source.unknown_key((key,), [*KEYS, "rules"])
        changes[spec.attr] = spec.check(source, (key,), value)
        origins[key] = source.origin((key,))
        if key == "per-file-ignores":
            for glob in value:
                origins[f"per-file-ignores.{toml_key(glob)}"] = source.origin((key, glob))
    return Config(**changes, file=file, root=source.root, origins=MappingProxyType(origins))

