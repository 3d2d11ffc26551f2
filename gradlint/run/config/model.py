"""The effective configuration of a run, and one ``targets`` entry: plain values, each recorded
with where it came from (gradlint's default, ``FILE:LINE``, or the command line)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gradlint.base.findings import Finding, matches
from gradlint.base.paths import root_relative_or_absolute
from gradlint.base.report import DEFAULT_THRESHOLD
from gradlint.base.targets import TargetOptions
from gradlint.lint import grouping
from gradlint.run.config.globs import glob_matches

__all__ = ["COMMAND_LINE", "DEFAULT", "SEVERITIES", "Config", "TargetSpec"]

DEFAULT, COMMAND_LINE = "default", "command line"
SEVERITIES = ("error", "warning", "info")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class TargetSpec:
    """One ``targets`` entry: a model to check, with its inputs and constructor arguments.

    Attributes:
        ref: The entry's ``path`` as written: ``file.py`` or ``file.py::Name``.
        file: That file, resolved against the configuration file's directory.
        name: The object's name in the file; None when the entry names the whole file.
        inputs: As for ``@gradlint.target(inputs=...)``: a shape tuple, a list of shapes, a dict
            name -> shape, or ``Tokens`` wherever a shape may stand; None when not given.
        kwargs: Keyword arguments for the factory or class; None when not given.
        label: The name reports show (the entry's ``name``); None when not given.
        origin: Where the entry is written, ``pyproject.toml:LINE``.
    """

    ref: str
    file: Path
    name: str | None = None
    inputs: Any = field(default=None, hash=False)
    kwargs: Mapping[str, Any] | None = field(default=None, hash=False)
    label: str | None = None
    origin: str = ""

    def matches(self, target: Any) -> bool:
        """Whether this entry configures ``target`` (a ``gradlint.load.Target`` of the same file)."""
        return self.name is not None and self.name in (target.name, target.display_name)

    def options(self, declared: TargetOptions | None) -> TargetOptions:
        """The decorator's options with this entry's over them (kwargs merged key by key)."""
        kwargs = {**((declared.kwargs or {}) if declared else {}), **(self.kwargs or {})}
        return TargetOptions(inputs=self.inputs if self.inputs is not None else (declared.inputs if declared else None),
                             kwargs=kwargs or None, name=self.label or (declared.name if declared else None))


@dataclass(frozen=True)
class Config:
    """The effective configuration of a run: defaults, then the file, then the command line.

    Attributes:
        select: Rules to run (codes, code prefixes or names); empty: all.
        ignore: Rules to skip.
        fail_on: Lowest severity that fails the run.
        threshold: Decades of attenuation or growth beyond which the verdict is vanishing/exploding.
        input_shape: Input shapes for targets that declare none (``--input-shape``).
        probe: Whether to measure with a real backward pass too.
        device: Where the probe runs.
        seeds: Seeds the probe averages over.
        jobs: Worker processes checking files in parallel (``--jobs``).
        timeout: Seconds one target (or one file's import) may run in a worker before it is
            killed (``--timeout``); 0: no limit.
        include: Globs a directory walk keeps (empty: every ``*.py``).
        exclude: Globs a directory walk drops.
        force_exclude: Whether ``exclude`` drops files named explicitly too.
        warn_unused_ignores: Whether a suppression comment that silenced nothing is finding GL904.
        trust_custom_backward: Whether custom autograd Functions' backward is taken to be their
            forward's derivative (otherwise a model with one is ``unknown`` until probed).
        per_file_ignores: ``(glob, rules)`` pairs: findings in matching files that those rules
            (codes, prefixes or names) do not report.
        targets: Models to check, with their inputs and constructor arguments.
        all_targets: Whether the building blocks of a file's models are checked too (by default
            only its top-level models are).
        rule_options: Rule code -> options overriding the rule's defaults.
        severities: Rule code -> the severity its findings are reported with.
        file: The configuration file; None when there is none.
        root: The directory relative paths are resolved against: the file's, else the current one.
        origins: Key (as the file spells it; ``rules.GL101.threshold`` for a rule's option) ->
            where its value came from, ``pyproject.toml:LINE`` or ``command line``. Keys not in it
            have their defaults.
    """

    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    fail_on: str = "error"
    threshold: float = DEFAULT_THRESHOLD
    input_shape: tuple[tuple[int, ...], ...] = ()
    probe: bool = False
    device: str = "cpu"
    seeds: int = 3
    jobs: int = 1
    timeout: float = 300.0  # the default; gradlint.run.runner.DEFAULT_TIMEOUT reads it
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    force_exclude: bool = False
    warn_unused_ignores: bool = False
    trust_custom_backward: bool = False
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    targets: tuple[TargetSpec, ...] = ()
    all_targets: bool = False
    rule_options: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY, hash=False)
    severities: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    file: Path | None = None
    root: Path = field(default_factory=lambda: Path(os.path.realpath(os.getcwd())))
    origins: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)

    def origin(self, key: str) -> str:
        """Where the value of ``key`` came from: ``default``, ``FILE:LINE`` or ``command line``."""
        return self.origins.get(key, DEFAULT)

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to ``root``, with forward slashes (absolute when outside it)."""
        return root_relative_or_absolute(path, self.root)

    def wants(self, file: str | os.PathLike[str]) -> bool:
        """Whether a directory walk checks ``file``: it matches ``include`` (when given) and not ``exclude``."""
        rel = self.relative(file)
        return (not self.include or any(glob_matches(p, rel) for p in self.include)) and not self.excluded(file)

    def excluded(self, file: str | os.PathLike[str]) -> bool:
        """Whether ``file`` matches an ``exclude`` glob."""
        rel = self.relative(file)
        return any(glob_matches(p, rel) for p in self.exclude)

    def targets_in(self, file: str | os.PathLike[str]) -> tuple[TargetSpec, ...]:
        """The ``targets`` entries naming an object in ``file``."""
        real = os.path.realpath(file)
        return tuple(t for t in self.targets if t.name is not None and os.path.realpath(t.file) == real)

    def adjust(self, findings: Iterable[Finding], checked: str | os.PathLike[str] | None = None,
               layers: Sequence[Any] = ()) -> tuple[Finding, ...]:
        """The findings with the configured severities, less those ``per-file-ignores`` silences.

        A ``per-file-ignores`` glob applies to a finding when it matches the file the finding
        points at or ``checked``, the file of the target it was found in: a model's findings
        often point into the files its layers come from. Both apply to a finding's notes as to
        findings of their own (a note is another rule's finding), and the rest is grouped again
        (``gradlint.lint.grouping``): ignoring the rule of a finding with notes leaves its notes
        as a finding.

        Args:
            findings: A report's findings.
            checked: The target's file.
            layers: The target's layers (``Report.layers``), for grouping.

        Returns:
            The findings, most severe first.
        """
        if not self.severities and not self.per_file_ignores:
            return tuple(findings)
        out = []
        for f in grouping.flatten(findings):
            rels = [self.relative(p) for p in (f.path, checked) if p]
            if any(matches(f.code, f.name, rules) for glob, rules in self.per_file_ignores
                   if any(glob_matches(glob, rel) for rel in rels)):
                continue
            severity = self.severities.get(f.code)
            out.append(replace(f, severity=severity) if severity and severity != f.severity else f)
        return grouping.group(out, layers)

