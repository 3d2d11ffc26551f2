"""Errors gradlint reports as "could not analyze" (exit code 2)."""

from __future__ import annotations


class GradlintError(Exception):
    """A problem with the user's input that stops the analysis of one target.

    Args:
        message: What went wrong, in the user's terms.
        path: The user's file the problem lives in, when known.
        line: The line in that file, when known.
        hint: What to do about it, when there is something to do.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.hint = hint

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}: " if self.path and self.line else (f"{self.path}: " if self.path else "")
        text = f"{where}{self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class LoadError(GradlintError):
    """The user's file could not be imported, or a target could not be built."""


class InputError(GradlintError):
    """Example inputs are missing, malformed, or do not fit the model."""


class TraceError(GradlintError):
    """No graph could be obtained from the model, not even by a fallback."""


class ForwardError(GradlintError):
    """The model's forward raised on the example inputs, by itself and not because of tracing."""


class ConfigError(GradlintError):
    """The ``[tool.gradlint]`` configuration is malformed: an unknown key or rule, or a wrong type."""


class ProbeError(GradlintError):
    """The real backward pass could not be run (no memory, a model that cannot be materialized)."""
