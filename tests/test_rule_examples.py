"""Every rule's good and bad examples, and the rule contract (codes, names, documentation)."""

from __future__ import annotations

import re

import pytest

import gradlint
from gradlint.rule import DOC_SECTIONS, load_builtin

RULES = load_builtin()
CASES = [(code, kind, i) for code, cls in sorted(RULES.items())
         for kind, cases in (("good", cls.good), ("bad", cls.bad)) for i in range(len(cases))]


@pytest.mark.parametrize("code,kind,i", CASES, ids=[f"{c}-{k}-{i}" for c, k, i in CASES])
def test_rule_example(code, kind, i):
    cls = RULES[code]
    case = (cls.good if kind == "good" else cls.bad)[i]
    report = gradlint.check(case.build(), case.inputs)
    found = [f for f in report.findings if f.code == code]
    if kind == "good":
        assert not found, found
    else:
        assert found, f"{code} did not fire on its bad example"
        if case.at is not None:
            assert any(f.module == case.at for f in found), [f.module for f in found]


def test_contract():
    names = [cls.name for cls in RULES.values()]
    assert len(set(names)) == len(names)
    for code, cls in RULES.items():
        assert re.fullmatch(r"GL\d{3}", code)
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", cls.name)
        doc = cls.__doc__ or ""
        for section in DOC_SECTIONS:
            assert f"## {section}" in doc, f"{code} lacks '## {section}'"
        assert cls.good and cls.bad, f"{code} needs good and bad examples"
