"""docs/rules.md is generated from the rules: regenerate it with `gradlint docs > docs/rules.md`."""

from pathlib import Path

from gradlint.lint.docs import rules_markdown


def test_rules_doc_is_current():
    path = Path(__file__).resolve().parents[1] / "docs" / "rules.md"
    assert path.read_text() == rules_markdown(), "docs/rules.md is stale: run `gradlint docs > docs/rules.md`"
