"""TOML text: parsing a configuration document, and writing values back as TOML for messages
and ``gradlint config``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradlint.base.errors import ConfigError
from gradlint.base.paths import shortest_path
from gradlint.base.targets import Tokens

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["BARE_KEY", "HAS_PARSER", "parse_toml", "string_value", "to_toml", "toml_key", "toml_type"]

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
HAS_PARSER = tomllib is not None


def parse_toml(file: Path, text: str) -> dict[str, Any]:
    """The document ``text`` of the configuration file ``file``, parsed.

    Raises:
        ConfigError: When the text is not TOML (at its line), or no parser is installed.
    """
    if tomllib is None:
        raise ConfigError("reading the configuration needs Python 3.11, or the tomli package on 3.10",
                          path=shortest_path(file), hint="pip install tomli")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        raise ConfigError(f"not valid TOML: {e}", path=shortest_path(file),
                          line=int(m.group(1)) if m else None) from None


def string_value(raw: str) -> str:
    """The value of the TOML string literal ``raw``; ``raw`` less its quotes when it cannot be parsed."""
    try:
        return tomllib.loads(f"k = {raw}")["k"] if tomllib is not None else raw.strip("\"'")
    except Exception:  # noqa: BLE001 - only for naming keys; the document itself parsed
        return raw.strip("\"'")


def to_toml(value: Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Tokens):
        fields = {"shape": value.shape, "vocab": value.vocab,
                  **({"dtype": value.dtype} if value.dtype != "long" else {})}
        return to_toml(fields)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(k)} = {to_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def toml_key(key: Any) -> str:
    """``key`` as TOML writes it: bare when it can be, else quoted."""
    return key if isinstance(key, str) and BARE_KEY.fullmatch(key) else json.dumps(str(key))


def toml_type(value: Any) -> str:
    """The TOML type of ``value`` as a message names it: ``"an integer"``, ``"a table"``."""
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

