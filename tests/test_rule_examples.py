"""Every rule's good and bad examples, and the rule contract (registration, documentation).

The harness is gradlint.testing, the same one `gradlint test-rules PACKAGE` runs for rule packs.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

import gradlint.rules
from gradlint.base.findings import Severity
from gradlint.lint.rule import REGISTRY, Case, Rule, load_builtin
from gradlint.testing import cases, contract_problems, run_case

RULES = load_builtin()
CASES = cases(RULES)


@pytest.mark.parametrize("cls,kind,i", CASES, ids=[f"{c.code}-{k}-{i}" for c, k, i in CASES])
def test_rule_example(cls, kind, i):
    outcome = run_case(cls, kind, i)
    assert outcome.ok, outcome.failure


@pytest.mark.parametrize("code", sorted(RULES))
def test_contract(code):
    assert not contract_problems(RULES[code])


@pytest.mark.parametrize("code", sorted(c for c, cls in RULES.items() if cls.__module__.startswith("gradlint.rules")))
def test_builtin_bad_examples_state_their_severity(code):
    """Rule packs may leave a bad example's severity open ('any'); gradlint's own rules may not."""
    assert all(case.severity != "any" for case in RULES[code].bad)


def test_a_bad_example_with_another_severity_fails(monkeypatch):
    cls = RULES["GL901"]  # info, on a model that cannot be exported
    monkeypatch.setattr(cls, "bad", (dataclasses.replace(cls.bad[0], severity="error"),))
    outcome = run_case(cls, "bad", 0)
    assert outcome.failure == "fired with severity 'info', expected 'error'"


def test_case_refuses_an_unknown_severity():
    with pytest.raises(ValueError, match="severity 'fatal'"):
        Case(lambda: None, severity="fatal")


def _define(code: str, name: str) -> type[Rule]:
    return type("Probe", (Rule,), {"code": code, "name": name, "category": "other", "__module__": __name__})


@pytest.mark.parametrize("code,name,error", [
    ("GL1", "probe-rule", "must match GL"),
    ("XX123", "probe-rule", "must match GL"),
    ("GL999", "Probe_Rule", "must be kebab-case"),
    ("GL999", "probe rule", "must be kebab-case"),
    ("GL101", "probe-rule", "clashes with VanishingGradient"),
    ("GL999", "vanishing-gradient", "clashes with VanishingGradient"),
])
def test_a_rule_class_with_a_bad_or_taken_code_or_name_is_refused(code, name, error):
    before = dict(REGISTRY)
    with pytest.raises(ValueError, match=error):
        _define(code, name)
    assert REGISTRY == before


def test_severity_ladder():
    assert Rule.escalate(2.5, error_at=2.0) is Severity.ERROR
    assert Rule.escalate(1.5, error_at=2.0) is Severity.WARNING
    assert Rule.escalate(1.5, error_at=2.0, warn_at=1.0) is Severity.WARNING
    assert Rule.escalate(0.5, error_at=2.0, warn_at=1.0) is Severity.INFO
    # Several measures: an error only when every one reaches the threshold (NaN never does).
    assert Rule.escalate(3.0, 1.0, error_at=2.0) is Severity.WARNING
    assert Rule.escalate(3.0, float("nan"), error_at=2.0) is Severity.WARNING


def test_threshold_is_the_rules_option_else_the_runs():
    result = SimpleNamespace(summary=SimpleNamespace(threshold=2))
    assert RULES["GL101"]().threshold(result) == 2.0
    assert RULES["GL101"](threshold=3).threshold(result) == 3.0


def test_no_rule_imports_another_rule():
    """What rules share lives in gradlint.lint (the toolkit), not in one of them."""
    for path in Path(gradlint.rules.__path__[0]).glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("gradlint.rules")], path.name
