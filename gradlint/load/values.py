"""The values the restricted evaluator (``gradlint.load.evaluate``) works with: what it knows
(plain Python values, and the model's own objects it built), what it cannot know (``Unknown``,
with the expression and the line), what it assumed or found elsewhere, references to the
repository's modules, and ``argparse`` as a script sets it up (each option's default).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BUILTINS", "MATH", "METHODS", "NOTHING", "PLAIN", "VIEW_METHODS", "Assumed", "Deferred", "External",
           "Found", "Func", "Options", "Parser", "Ref", "Script", "Unknown", "first_unknown", "is_known", "parser_call",
           "short_text", "sized"]

MAX_ITEMS = 10_000  # the longest container or string built
NOTHING = object()  # a name no scope binds


def short_text(node: ast.AST | str, limit: int = 80) -> str:
    text = node if isinstance(node, str) else ast.unparse(node)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Script:
    """A piece of Python source to read.

    Attributes:
        path: The file it comes from.
        shown: How messages name that file.
        tree: The parsed source.
        offset: Lines before the source in the file (a README's code block).
        kind: ``"model"`` (the model file), ``"script"`` (another Python file) or ``"readme"``.
    """

    path: Path
    shown: str
    tree: ast.Module = field(compare=False, repr=False)
    offset: int = 0
    kind: str = "script"

    def where(self, node: ast.AST) -> str:
        return f"{self.shown}:{getattr(node, 'lineno', 0) + self.offset}"

    def line(self, node: ast.AST) -> int:
        return getattr(node, "lineno", 0) + self.offset


@dataclass(frozen=True)
class Unknown:
    """A value the evaluator cannot know: what the script computes, and where."""

    text: str
    where: str
    why: str = ""

    def describe(self) -> str:
        if self.why:
            return self.why
        if self.text.startswith("the parameter "):
            return f"{self.where}: nothing in the repository gives {self.text}"
        return f"{self.where} computes it at run time ({self.text})"


@dataclass(frozen=True)
class Assumed:
    """A conventional size used where the repository computes the value at run time."""

    name: str
    value: Any
    kind: str
    unknown: Unknown


@dataclass(frozen=True)
class Found:
    """A value found somewhere else than at the call site (an option's default, a command line)."""

    name: str
    value: Any
    where: str
    how: str


@dataclass(frozen=True)
class Ref:
    """A module (``name`` None) or a top-level name defined in the file ``path``."""

    path: Path
    name: str | None = None


@dataclass(frozen=True)
class External:
    """A standard-library or installed module, or a member of one, by its dotted name."""

    name: str


@dataclass(frozen=True)
class Func:
    """A function of the script being read, read again on each call in the scope it was defined in."""

    script: Script
    node: ast.FunctionDef | ast.AsyncFunctionDef = field(compare=False)
    scope: Any = field(default=None, compare=False, repr=False)


class Options:
    """What ``parser.parse_args()`` returns when no flag is given: each option's default."""

    def __init__(self, values: dict[str, Any], origins: dict[str, str]) -> None:
        self.__dict__["_values"], self.__dict__["_origins"] = values, origins

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__["_values"]
        if name in values:
            return values[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__["_values"][name] = value

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in self.__dict__['_values'].items())})"


@dataclass
class Parser:
    """An ``argparse.ArgumentParser`` as the script sets it up."""

    script: Script
    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)



@dataclass(frozen=True)
class Deferred:
    """A model module of the repository the script builds (``EncoderRNN(...)``), built only when
    a call site passes it: reading the statements before a call must not build every model."""

    func: Any = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    kwargs: dict[str, Any] = field(compare=False)
    assumed: tuple[Assumed, ...] = ()
    where: str = ""


PLAIN = (int, float, str, bool, type(None), complex, bytes)


def _range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_ITEMS:
        raise ValueError("range too long")
    return r


BUILTINS: dict[str, Callable[..., Any]] = {
    "int": int, "float": float, "str": str, "bool": bool, "len": len, "tuple": tuple, "list": list, "dict": dict,
    "set": set, "frozenset": frozenset, "range": _range, "min": min, "max": max, "abs": abs, "round": round,
    "sum": sum, "sorted": sorted, "reversed": lambda x: list(reversed(x)), "zip": lambda *a: list(zip(*a)),
    "enumerate": lambda x, start=0: list(enumerate(x, start)), "any": any, "all": all, "divmod": divmod,
    "pow": pow, "repr": repr, "ord": ord, "chr": chr,
}
MATH = {name: getattr(math, name) for name in ("ceil", "floor", "sqrt", "log", "log2", "log10", "exp", "prod",
                                                "gcd", "isqrt", "pi", "e", "inf")}
METHODS: dict[type, frozenset[str]] = {
    str: frozenset({"split", "rsplit", "join", "lower", "upper", "strip", "lstrip", "rstrip", "replace", "format",
                    "startswith", "endswith", "title", "capitalize", "isdigit", "count", "find"}),
    list: frozenset({"append", "extend", "insert", "pop", "index", "count", "copy", "remove", "reverse"}),
    dict: frozenset({"get", "keys", "values", "items", "update", "copy", "pop", "setdefault"}),
    tuple: frozenset({"index", "count"}),
}
VIEW_METHODS = frozenset({"keys", "values", "items"})


def is_known(value: Any) -> bool:
    """Whether ``value`` holds no ``Unknown`` (in containers too)."""
    if isinstance(value, Unknown):
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(is_known(v) for v in value)
    if isinstance(value, dict):
        return all(is_known(v) for v in value.values())
    return True


def first_unknown(values: Any) -> Unknown | None:
    for v in values:
        if isinstance(v, Unknown):
            return v
        if isinstance(v, (list, tuple)) and (inner := first_unknown(v)) is not None:
            return inner
        if isinstance(v, dict) and (inner := first_unknown(v.values())) is not None:
            return inner
    return None


def sized(value: Any) -> Any:
    if isinstance(value, (str, bytes, list, tuple, dict, set)) and len(value) > MAX_ITEMS:
        raise ValueError("value too large")
    return value


def parser_call(parser: Parser, name: str, args: list[Any], kwargs: dict[str, Any], node: ast.AST, host: Any,
                found: list[Found]) -> Any:
    """A method of an ``ArgumentParser`` the script calls: options recorded with their defaults,
    ``parse_args()`` answering as a run without flags would."""
    if name in ("add_argument_group", "add_mutually_exclusive_group"):
        return parser
    if name == "set_defaults":
        parser.values.update(kwargs)
        return None
    if name in ("parse_args", "parse_known_args"):
        options = Options(dict(parser.values), dict(parser.origins))
        return (options, []) if name == "parse_known_args" else options
    if name != "add_argument" or not args or not all(isinstance(a, str) for a in args):
        return None
    flags = [a for a in args if a.startswith("-")]
    long = next((f for f in flags if f.startswith("--")), flags[0] if flags else None)
    dest = kwargs.get("dest") or (long.lstrip("-").replace("-", "_") if long else args[0])
    if not isinstance(dest, str):
        return None
    action = kwargs.get("action")
    given = kwargs.get("type")
    convert = {"builtins.int": int, "builtins.float": float}.get(given.name, str) if isinstance(
        given, External) else str
    if "default" in kwargs:
        value = kwargs["default"]
        if isinstance(value, str) and convert in (int, float):
            try:
                value = convert(value)
            except ValueError:
                pass
    elif action == "store_true":
        value = False
    elif action == "store_false":
        value = True
    elif action == "count":
        value = None
    elif kwargs.get("required") or not flags:
        what = f"the required option {long}" if flags else f"the positional argument {dest}"
        value = Unknown(short_text(node), parser.script.where(node),
                        why=f"{parser.script.where(node)}: {what} has no default")
        if flags:
            given_value = host.command_line(parser.script, long or dest, convert)
            if given_value is not None:
                found.append(given_value)
                value = given_value.value
    else:
        value = None
    parser.values[dest] = value
    parser.origins[dest] = parser.script.where(node)
    return None
