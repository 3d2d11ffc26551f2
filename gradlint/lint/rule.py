"""The rule interface: a rule reads a ``Result`` (prediction or probe) and yields findings.

A rule never traces, runs a backward pass or prints. It declares its code, name, default
severity, category, options and documentation on the class, and registers itself when its
module is imported; duplicates are refused.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from gradlint.base.findings import CATEGORIES, CODE_RE, NAME_RE, Finding, Severity

if TYPE_CHECKING:
    from gradlint.engine.result import Result

DOC_SECTIONS = ("What it finds", "Why it matters", "Example", "Fix", "Known limits")
REGISTRY: dict[str, type[Rule]] = {}


@dataclass(frozen=True)
class Case:
    """A model example a rule is tested on.

    Attributes:
        build: Zero-argument callable returning the model.
        inputs: Input declaration (as for ``@gradlint.target``).
        at: For bad examples, the module the finding must point at (None: anywhere).
        severity: For bad examples, the severity the finding must have: ``info``,
            ``warning``, ``error``, or ``any`` (the default, for rule packs; every built-in
            bad example states one).
    """

    build: Callable[[], Any]
    inputs: Any = None
    at: str | None = None
    severity: str = "any"

    def __post_init__(self) -> None:
        if self.severity != "any" and self.severity not in {s.value for s in Severity}:
            raise ValueError(f"Case severity {self.severity!r} must be 'any', 'info', 'warning' or 'error'")


class Rule:
    """Base class of every rule; subclasses set the class attributes and ``check``."""

    code: ClassVar[str]
    name: ClassVar[str]
    severity: ClassVar[Severity] = Severity.WARNING
    category: ClassVar[str] = "other"
    options: ClassVar[dict[str, Any]] = {}
    # An opt-in rule runs only when asked for: named by its exact code or name in ``select``
    # (a prefix such as ``GL9`` does not), or requested by its own switch.
    opt_in: ClassVar[bool] = False
    good: ClassVar[tuple[Case, ...]] = ()
    bad: ClassVar[tuple[Case, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not CODE_RE.match(getattr(cls, "code", "")):
            raise ValueError(f"rule {cls.__name__}: code {getattr(cls, 'code', None)!r} must match GL + 3 digits")
        if not NAME_RE.match(getattr(cls, "name", "")):
            raise ValueError(f"rule {cls.__name__}: name {getattr(cls, 'name', None)!r} must be kebab-case")
        if cls.category not in CATEGORIES:
            raise ValueError(f"rule {cls.__name__}: category {cls.category!r} not in {CATEGORIES}")
        for other in REGISTRY.values():
            if other.code == cls.code or other.name == cls.name:
                if other.__module__ == cls.__module__ and other.__qualname__ == cls.__qualname__:
                    continue  # the same module imported twice (reload)
                raise ValueError(f"rule {cls.__name__}: {cls.code} {cls.name} clashes with {other.__name__}")
        REGISTRY[cls.code] = cls

    def __init__(self, **options: Any) -> None:
        self.opts = {**self.options, **options}

    def check(self, result: Result) -> Iterator[Finding]:
        raise NotImplementedError

    def threshold(self, result: Result) -> float:
        """The decades at which a finding becomes an error: the rule's ``threshold`` option
        when it is set, else the run's threshold (``--threshold``, 2 by default)."""
        own = self.opts.get("threshold")
        return float(own) if own is not None else float(result.summary.threshold)

    @staticmethod
    def escalate(*values: float, error_at: float, warn_at: float | None = None) -> Severity:
        """The severity of a finding measured by ``values`` (decades): an error when every
        value reaches ``error_at``; else a warning when every value reaches ``warn_at``, or
        always when there is no ``warn_at``; else a note (info)."""
        if all(v >= error_at for v in values):
            return Severity.ERROR
        if warn_at is None or all(v >= warn_at for v in values):
            return Severity.WARNING
        return Severity.INFO

    def finding(self, result: Result, message: str, *, fix: str = "", module: str = "",
                node: str | None = None, severity: Severity | None = None, **evidence: Any) -> Finding:
        """A finding of this rule, located at ``node`` (or at ``module``) in the user's source."""
        path, line = result.locate(node=node, module=module)
        return Finding(code=self.code, name=self.name, severity=(severity or self.severity).value,
                       category=self.category, message=message, fix=fix, path=path, line=line,
                       column=1 if line else None, module=module, evidence=evidence)


def load_builtin() -> dict[str, type[Rule]]:
    """Import every module of ``gradlint.rules``, and every rule pack registered under the
    ``gradlint.rules`` entry-point group, so their rules register."""
    import gradlint.rules as pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    if not _PACKS_LOADED:
        from importlib.metadata import entry_points
        for ep in entry_points(group="gradlint.rules"):
            ep.load()  # importing the pack registers its rules
        _PACKS_LOADED.append(True)
    return dict(REGISTRY)


_PACKS_LOADED: list[bool] = []


@dataclass(frozen=True)
class RuleInfo:
    """What configuration checks need of a rule: its code, name and default options."""

    code: str
    name: str
    options: dict[str, Any]


def catalog_imports_rules() -> bool:
    """Whether ``catalog`` imports the rules (and torch with them): rule packs are installed,
    or the rules are loaded already."""
    from importlib.metadata import entry_points

    return bool(REGISTRY) or bool(list(entry_points(group="gradlint.rules")))


def catalog() -> dict[str, Any]:
    """Every rule's code, name and options, by code, without importing torch where possible.

    The built-in rules are read from their source with ``ast``, so checking a configuration
    costs no torch import in the parent process; with rule packs installed, or a built-in
    module the reader cannot follow, the rules are imported (``load_builtin``).
    """
    import ast
    from pathlib import Path

    import gradlint.rules as pkg

    if catalog_imports_rules():
        return load_builtin()
    out: dict[str, Any] = {}
    for path in sorted(Path(p) for base in pkg.__path__ for p in Path(base).glob("*.py")):
        if path.name == "__init__.py":
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
                attrs = {t.id: stmt.value for stmt in cls.body if isinstance(stmt, ast.Assign)
                         for t in stmt.targets if isinstance(t, ast.Name)}
                if "code" in attrs and "name" in attrs:
                    options = ast.literal_eval(attrs["options"]) if "options" in attrs else {}
                    info = RuleInfo(ast.literal_eval(attrs["code"]), ast.literal_eval(attrs["name"]), options)
                    out[info.code] = info
        except (OSError, SyntaxError, ValueError):
            return load_builtin()
    return out or load_builtin()
