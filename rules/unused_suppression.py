"""GL904 unused-suppression."""

from __future__ import annotations

from collections.abc import Iterator

import torch.nn as nn

from gradlint.base.findings import Finding, Severity
from gradlint.lint.rule import Case, Rule


class _Stale(nn.Module):
    """A healthy two-layer model whose first layer still carries a suppression from earlier days."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)  # gradlint: ignore[GL101]
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        return self.b(self.a(x).relu())


class _Clean(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)

    def forward(self, x):
        return self.b(self.a(x).relu())


class UnusedSuppression(Rule):
    """A suppression comment silenced nothing (reported on request, like ruff's RUF100).

    ## What it finds
    `# gradlint: ignore[...]` and `# noqa: GL...` comments on the lines the model's findings
    can point at, naming a rule that reported nothing on that line, and bare
    `# gradlint: ignore` comments on a line without findings. A code whose rule did not run
    (not selected) counts as unused, and the message says so. Off unless requested:
    `--warn-unused-ignores`, `warn-unused-ignores = true` in `[tool.gradlint]`,
    `gradlint.check(..., warn_unused_ignores=True)`, or `--select GL904` by its code or name.

    ## Why it matters
    A suppression that outlived its finding hides the next real finding on that line without
    anyone noticing.

    ## Example
    `self.a = nn.Linear(32, 32)  # gradlint: ignore[GL101]` in a model whose gradient is healthy.

    ## Fix
    Remove the comment, or the codes in it that silence nothing.

    ## Known limits
    With several targets, a comment is unused only when no target of the run used it; comments
    on lines no finding of the checked models can point at are not read. The findings are made
    by the suppression pass after the other rules ran (`gradlint.lint.suppress`), not by this
    class's `check`.
    """

    code = "GL904"
    name = "unused-suppression"
    severity = Severity.WARNING
    category = "other"
    opt_in = True
    good = (Case(_Clean, (8, 32)),)
    bad = (Case(_Stale, (8, 32), severity="warning"),)

    def check(self, result) -> Iterator[Finding]:
        return iter(())  # made by gradlint.lint.suppress, which sees every rule's findings
