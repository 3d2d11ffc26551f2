"""The effective configuration of a run: the nearest ``[tool.gradlint]`` found and loaded, the
command line merged over it, and the result described with where each value came from.

Paths in the file (``targets``, ``include``, ``exclude``, ``per-file-ignores``) are relative
to the file's directory, so the configuration means the same from whichever directory
gradlint runs.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gradlint.base.errors import ConfigError
from gradlint.base.paths import shortest_path
from gradlint.run.config.model import COMMAND_LINE, DEFAULT, Config
from gradlint.run.config.toml_text import HAS_PARSER, parse_toml, to_toml, toml_key, toml_type
from gradlint.run.config.validate import KEYS, Source, from_table

__all__ = ["CLI_OPTIONS", "describe", "find", "from_command_line", "load", "merge", "project_config"]

# Click parameter name of each `gradlint check` option -> the configuration key it overrides.
CLI_OPTIONS = {"select": "select", "ignore": "ignore", "fail_on": "fail-on", "threshold": "threshold",
               "input_shapes": "input-shape", "probe": "probe", "device": "device", "seeds": "seeds",
               "jobs": "jobs", "timeout": "timeout", "force_exclude": "force-exclude",
               "warn_unused_ignores": "warn-unused-ignores", "all_targets": "all-targets"}


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the configuration: {e}", path=shortest_path(file)) from None


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
        text = _read_text(candidate)
        # Another project's broken pyproject.toml is not gradlint's business unless it has our table.
        if "gradlint" not in text:
            continue
        if not HAS_PARSER:
            # Without a parser, a header is enough to know; load() then says what is missing.
            if re.search(r"^\s*\[\[?\s*tool\.gradlint\b", text, re.MULTILINE):
                return candidate
            continue
        tool = parse_toml(candidate, text).get("tool")
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
    text = _read_text(file)
    data = parse_toml(file, text)
    tool = data.get("tool")
    if isinstance(tool, Mapping) and "gradlint" in tool:
        table, prefix = tool["gradlint"], ("tool", "gradlint")
    elif file.name == "pyproject.toml":
        raise ConfigError("has no [tool.gradlint] table", path=shortest_path(file),
                          hint="add one, or point --config at a file that has it")
    else:
        table, prefix = data, ()
    source = Source(file, text, prefix)
    if not isinstance(table, Mapping):
        raise ConfigError(f"tool.gradlint is {toml_type(table)}; it must be a table", path=source.shown,
                          line=source.line(()))
    return from_table(source, table, file)


def project_config(config: Any = None) -> Config | None:
    """The configuration ``gradlint.check`` and the pytest plugin use.

    Args:
        config: None or True: the nearest ``pyproject.toml`` with a ``[tool.gradlint]`` table at
            or above the working directory (the defaults when there is none); a path: that file;
            a ``Config``: itself; False: none.

    Returns:
        The configuration, or None for ``config=False``. A file is read again only when it changed.

    Raises:
        ConfigError: As ``load`` does.
    """
    if config is False:
        return None
    if isinstance(config, Config):
        return config
    file = find() if config is None or config is True else Path(os.path.abspath(config))
    if file is None:
        return Config(root=Path(os.path.realpath(os.getcwd())))
    try:
        st = file.stat()
        stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    # The origins name the file as seen from the working directory.
    return _cached_load(str(file), stamp, os.getcwd())


@functools.lru_cache(maxsize=16)
def _cached_load(file: str, stamp: tuple[int, int] | None, cwd: str) -> Config:
    return load(file)


def _toml_arrays(value: Any) -> Any:
    # Command-line values arrive as tuples; the checks expect TOML's arrays.
    return [_toml_arrays(v) for v in value] if isinstance(value, (list, tuple)) else value


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
    source = Source()
    changes: dict[str, Any] = {}
    origins = dict(config.origins)
    for key, value in given.items():
        if value is None:
            continue
        changes[KEYS[key].attr] = KEYS[key].check(source, (key,), _toml_arrays(value))
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
    for key, spec in KEYS.items():
        value = getattr(config, spec.attr)
        if key == "input-shape":
            value = value[0] if len(value) == 1 else value
        if key == "per-file-ignores":
            rows += [(f"per-file-ignores.{toml_key(glob)} = {to_toml(rules)}",
                      config.origin(f"per-file-ignores.{toml_key(glob)}")) for glob, rules in value] or [
                ("per-file-ignores = {}", config.origin(key))]
        elif key == "targets" and value:
            rows.append(("targets = [", config.origin(key)))
            for t in value:
                fields = {"path": t.ref, "inputs": t.inputs, "kwargs": t.kwargs, "name": t.label}
                rows.append(("    " + to_toml({k: v for k, v in fields.items() if v is not None}) + ",",
                             t.origin or config.origin(key)))
            rows.append(("]", ""))
        else:
            rows.append((f"{key} = {to_toml(value)}", config.origin(key)))
    configured = sorted(set(config.rule_options) | set(config.severities))
    if not configured:
        rows.append(("rules = {}", DEFAULT))
    for code in configured:
        values = {**config.rule_options.get(code, {}), **({"severity": config.severities[code]}
                                                            if code in config.severities else {})}
        rows += [(f"rules.{code}.{opt} = {to_toml(v)}", config.origin(f"rules.{code}.{opt}"))
                 for opt, v in values.items()]
    width = min(max(len(text) for text, _ in rows), 48)
    head = (f"# configuration file: {shortest_path(config.file)}" if config.file is not None
            else "# no configuration file: defaults and command line")
    return "\n".join([head, *(f"{text:<{width}}  # {origin}" if origin else text for text, origin in rows)])
