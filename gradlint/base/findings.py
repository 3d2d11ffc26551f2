"""Findings, severities and exit codes: the vocabulary of gradlint's contract."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

CODE_RE = re.compile(r"^GL[0-9]{3}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
CATEGORIES = ("vanishing", "exploding", "saturation", "init", "normalization", "skip", "recurrent",
              "blockage", "unused", "trace", "other")


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class ExitCode(enum.IntEnum):
    CLEAN = 0
    FINDINGS = 1
    COULD_NOT_ANALYZE = 2
    # The run analyzed no target at all (pytest's "no tests ran" is 5 too): never a silent green.
    # `gradlint check --allow-no-targets` accepts it, e.g. for a commit that stages only helpers.
    NO_TARGETS = 5
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended


@dataclass(frozen=True)
class Note:
    """A finding of another rule attached to the finding of the problem it belongs to, as a
    compiler attaches notes to an error (``gradlint.lint.grouping`` does the attaching).

    Attributes:
        role: ``cause`` (it contributes to the problem: the saturating activations, the init),
            ``fix`` (another fix: the normalization or the skip connection it lacks) or
            ``symptom`` (the vanishing or exploding gradient, under a more severe cause).
        The others: the fields of the ``Finding`` it was, its own location included.
    """

    code: str
    name: str
    severity: str
    category: str
    role: str
    message: str
    fix: str = ""
    path: str | None = None
    line: int | None = None
    column: int | None = None
    module: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    via: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Finding:
    """One thing gradlint found, pointing at the user's source.

    Attributes:
        code: ``GL`` + three digits.
        name: Kebab-case rule name.
        severity: ``error``, ``warning`` or ``info``.
        category: One of ``CATEGORIES``.
        message: What is wrong, with the numbers.
        fix: The change that mends it, as code where possible.
        path: Source file the finding points at.
        line: Line in that file (1-based).
        column: Column (1-based).
        module: Qualified name of the module concerned ('' = the model).
        evidence: The numbers behind the message (JSON-ready).
        confirmed: After a probe: whether the measurement agrees (None before).
        notes: The findings of other rules about the same problem: its causes and its other
            fixes, each with its own location (see ``gradlint.lint.grouping``).
        via: When the line is inside a helper the model's constructor called, the lines that
            called it, innermost first, as ``(path, line)``; a suppression comment on any of
            them applies too.
    """

    code: str
    name: str
    severity: str
    category: str
    message: str
    fix: str = ""
    path: str | None = None
    line: int | None = None
    column: int | None = None
    module: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    confirmed: bool | None = None
    notes: tuple[Note, ...] = ()
    via: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))


def matches(code: str, name: str, patterns: Iterable[str]) -> bool:
    """Whether a rule is meant by any of ``patterns``: its code, a prefix of its code (``GL1``), or
    its name. The one matcher ``--select``/``--ignore``, the configuration and the assertions use."""
    return any(code.startswith(p.upper()) or name == p for p in patterns)


def _finite(value: Any) -> Any:
    """``value`` with inf and NaN floats as None, so the report stays strict JSON (an
    overflowed or empty model's evidence holds them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
