"""The example harness every rule is held to, built-in or third-party.

Each rule carries ``good`` and ``bad`` model examples. A bad example must produce the rule's
code (at the module it names, when it names one), with the severity it states (the most
severe of its findings there, when there are several); a good one must not. The same harness
backs gradlint's own test suite and ``gradlint test-rules PACKAGE`` for rule packs.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass

from gradlint.base.findings import Severity
from gradlint.lint.rule import DOC_SECTIONS, REGISTRY, Rule


@dataclass(frozen=True)
class Outcome:
    """The result of one example: ``rule`` code, ``kind`` (good/bad/contract), index, failure text or None."""

    rule: str
    kind: str
    index: int
    failure: str | None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def label(self) -> str:
        return f"{self.rule}-{self.kind}-{self.index}"


def contract_problems(cls: type[Rule]) -> list[str]:
    """What a rule class lacks: documentation sections, good and bad examples."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    problems = [f"documentation lacks '## {s}'" for s in DOC_SECTIONS if f"## {s}" not in doc]
    if not doc.splitlines() or not doc.splitlines()[0].strip():
        problems.append("documentation lacks a summary line")
    if not cls.good:
        problems.append("no good example")
    if not cls.bad:
        problems.append("no bad example")
    return problems


def run_case(cls: type[Rule], kind: str, index: int) -> Outcome:
    """Check one example of a rule (the rule's own defaults, every other rule off)."""
    import gradlint

    case = (cls.good if kind == "good" else cls.bad)[index]
    try:
        # config=False: a project's [tool.gradlint] must not change what a rule's own examples show.
        report = gradlint.check(case.build(), case.inputs, select=[cls.code], config=False)
    except Exception as e:  # noqa: BLE001 - an example that cannot even be analyzed fails the harness
        return Outcome(cls.code, kind, index, f"could not analyze the example: {type(e).__name__}: {e}")
    found = [f for f in report.findings if f.code == cls.code]
    if kind == "good" and found:
        return Outcome(cls.code, kind, index, f"fired on a good example: {found[0].message}")
    if kind == "bad" and not found:
        return Outcome(cls.code, kind, index, "did not fire on a bad example")
    if kind == "bad" and case.at is not None and not any(f.module == case.at for f in found):
        return Outcome(cls.code, kind, index, f"fired at {[f.module for f in found]}, expected {case.at!r}")
    if kind == "bad" and case.severity != "any":
        there = [f for f in found if case.at is None or f.module == case.at]
        worst = max((Severity(f.severity) for f in there), key=lambda s: s.rank).value
        if worst != case.severity:
            where = f" at {case.at!r}" if case.at is not None else ""
            return Outcome(cls.code, kind, index, f"fired{where} with severity {worst!r}, expected {case.severity!r}")
    return Outcome(cls.code, kind, index, None)


def cases(rules: dict[str, type[Rule]]) -> list[tuple[type[Rule], str, int]]:
    return [(cls, kind, i) for _, cls in sorted(rules.items())
            for kind, examples in (("good", cls.good), ("bad", cls.bad)) for i in range(len(examples))]


def rules_of(package: str) -> dict[str, type[Rule]]:
    """Import ``package`` (and its submodules) and return the rules it registered."""
    before = set(REGISTRY)
    mod = importlib.import_module(package)
    if hasattr(mod, "__path__"):
        for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + "."):
            importlib.import_module(info.name)
    found = {code: cls for code, cls in REGISTRY.items()
             if code not in before or cls.__module__ == package or cls.__module__.startswith(package + ".")}
    return found


def run_all(rules: dict[str, type[Rule]]) -> list[Outcome]:
    """The contract and every example of ``rules``."""
    out = [Outcome(code, "contract", 0, "; ".join(p) or None) for code, cls in sorted(rules.items())
           for p in [contract_problems(cls)]]
    out += [run_case(cls, kind, i) for cls, kind, i in cases(rules)]
    return out
