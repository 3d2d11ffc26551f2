"""Every rule's good and bad examples, and the rule contract (codes, names, documentation).

The harness is gradlint.testing, the same one `gradlint test-rules PACKAGE` runs for rule packs.
"""

from __future__ import annotations

import re

import pytest

from gradlint.lint.rule import load_builtin
from gradlint.testing import cases, contract_problems, run_case

RULES = load_builtin()
CASES = cases(RULES)


@pytest.mark.parametrize("cls,kind,i", CASES, ids=[f"{c.code}-{k}-{i}" for c, k, i in CASES])
def test_rule_example(cls, kind, i):
    outcome = run_case(cls, kind, i)
    assert outcome.ok, outcome.failure


@pytest.mark.parametrize("code", sorted(RULES))
def test_contract(code):
    cls = RULES[code]
    assert re.fullmatch(r"GL\d{3}", code)
    assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", cls.name)
    assert not contract_problems(cls)


def test_codes_and_names_unique():
    names = [cls.name for cls in RULES.values()]
    assert len(set(names)) == len(names) == len(RULES)
