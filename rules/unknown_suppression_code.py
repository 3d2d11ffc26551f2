"""GL903 unknown-suppression-code."""

from __future__ import annotations

from collections.abc import Iterator

import torch.nn as nn

from gradlint.base.findings import Finding, Severity
from gradlint.lint.rule import Case, Rule


class _Typo(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)  # gradlint: ignore[GL1O1]
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        return self.b(self.a(x).relu())


class _Known(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)  # gradlint: ignore[GL101, unused-parameters]
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        return self.b(self.a(x).relu())


class UnknownSuppressionCode(Rule):
    """A suppression comment names a code that is no gradlint rule, so it silences nothing.

    ## What it finds
    `# gradlint: ignore[...]` comments that name a code or rule name gradlint does not know,
    and `# noqa:` comments with a `GL` code that is no rule (`# noqa: GL610`,
    `# gradlint: ignore[GL1O1]`), on the lines the model's findings can point at: where its
    modules are defined, where its ops are called, and the target itself. Other linters'
    codes in a `noqa` comment (`E501`, `F401`) are theirs and left alone.

    ## Why it matters
    A misspelt code looks like a suppression in review while the finding it was meant for is
    still reported, or, worse, is believed to be deliberately silenced. An unknown code in the
    configuration stops the run; one in a comment is reported here.

    ## Example
    `self.a = nn.Linear(32, 32)  # gradlint: ignore[GL1O1]` (the letter O, not zero).

    ## Fix
    Write the rule's code or name as `gradlint rules` lists them; the message suggests the
    closest one.

    ## Known limits
    Comments on lines no finding of the model can point at are not read. The findings are
    made by the suppression pass after the other rules ran (`gradlint.lint.suppress`), not by
    this class's `check`.
    """

    code = "GL903"
    name = "unknown-suppression-code"
    severity = Severity.WARNING
    category = "other"
    good = (Case(_Known, (8, 32)),)
    bad = (Case(_Typo, (8, 32), severity="warning"),)

    def check(self, result) -> Iterator[Finding]:
        return iter(())  # made by gradlint.lint.suppress, which sees every rule's findings
