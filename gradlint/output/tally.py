"""Counting a run: findings by severity and rule, targets analyzed, skipped and not analyzed;
the closing line of ``gradlint check`` and the line that says why a run analyzed nothing.

A run's notes are the runner's plain sentences (``gradlint.run.check_file`` writes them); the
ones counted here are recognized by their fixed form: ``FILE:LINE: skipped NAME: why`` for a
target that was found but not checked, ``FILE: no targets: why`` for a file without any, and
``FILE: excluded by ...`` for a file the configuration left out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradlint.base.report import Report

_SKIPPED = re.compile(r"^(?P<file>.+?):\d+: skipped (?P<name>[^:]+): (?P<why>[^\n]*)")
_NO_TARGETS = re.compile(r"^(?P<file>.+?): no targets: (?P<why>[^\n]*)")
_EXCLUDED = re.compile(r"^(?P<file>.+?): excluded by ")


@dataclass(frozen=True)
class Tally:
    """What a run did.

    Attributes:
        errors, warnings, infos: Findings by severity.
        analyzed: Targets gradlint analyzed (a verdict and findings).
        skipped: Targets found and left out on purpose (parameter-free modules, classes whose
            constructor needs arguments in a file without other targets).
        failed: Targets gradlint could not analyze.
        empty_files: Files in which no target was found, or that the configuration excluded.
        skip_reasons: Why the skipped targets were skipped, most frequent first.
    """

    errors: int
    warnings: int
    infos: int
    analyzed: int
    skipped: int
    failed: int
    empty_files: tuple[str, ...]
    skip_reasons: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, reports: Iterable[Report], notes: Iterable[str] = ()) -> Tally:
        reports = list(reports)
        severities = Counter(f.severity for r in reports for f in r.findings)
        skipped: list[str] = []
        empty: list[str] = []
        for note in notes:
            if m := _SKIPPED.match(note):
                skipped.append(_reason(m.group("why")))
            elif (m := _NO_TARGETS.match(note)) or (m := _EXCLUDED.match(note)):
                empty.append(m.group("file"))
        return cls(errors=severities["error"], warnings=severities["warning"], infos=severities["info"],
                   analyzed=sum(r.status == "ok" for r in reports), skipped=len(skipped),
                   failed=sum(r.status != "ok" for r in reports), empty_files=tuple(dict.fromkeys(empty)),
                   skip_reasons=tuple(Counter(skipped).most_common()))

    def closing_line(self) -> str:
        """``Found 4 errors, 1 warning; 1 target analyzed, 2 skipped, 0 could not analyze.``"""
        found = [_count(self.errors, "error"), _count(self.warnings, "warning")]
        if self.infos:
            found.append(f"{self.infos} info")
        head = "Found " + ", ".join(found) if self.errors or self.warnings or self.infos else "No findings"
        return (f"{head}; {_count(self.analyzed, 'target')} analyzed, {self.skipped} skipped, "
                f"{self.failed} could not analyze.")

    def nothing_analyzed(self) -> str | None:
        """The one line that says why no target was analyzed, when none was and none failed."""
        if self.analyzed or self.failed:
            return None
        why = []
        if self.empty_files:
            shown = ", ".join(self.empty_files[:3]) + (f" and {len(self.empty_files) - 3} more"
                                                       if len(self.empty_files) > 3 else "")
            why.append(f"{_count(len(self.empty_files), 'file')} without a target ({shown})")
        if self.skipped:
            reasons = "; ".join(f"{n}x {r}" if n > 1 else r for r, n in self.skip_reasons[:2])
            why.append(f"{_count(self.skipped, 'target')} skipped ({reasons})")
        return ("gradlint: no target analyzed: " + ("; ".join(why) or "nothing to check")
                + " (exit code 5; --allow-no-targets accepts a run with nothing to analyze)")


def _reason(why: str) -> str:
    """A skip reason without the names in it: 'constructor needs arguments: a, b' counts as
    'constructor needs arguments'."""
    return why.split(":", 1)[0].split(" (", 1)[0].strip()


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def statistics(reports: Iterable[Report]) -> list[str]:
    """Findings per rule, most frequent first, as ``ruff --statistics`` prints them:
    count, code, the highest severity, name."""
    counts: Counter[tuple[str, str]] = Counter()
    worst: dict[str, str] = {}
    rank = {"info": 0, "warning": 1, "error": 2}
    for r in reports:
        for f in r.findings:
            counts[(f.code, f.name)] += 1
            if rank.get(f.severity, 0) >= rank.get(worst.get(f.code, "info"), 0):
                worst[f.code] = f.severity
    if not counts:
        return []
    width = len(str(max(counts.values())))
    return [f"{n:>{width}}\t{code}\t[{worst[code]}] {name}"
            for (code, name), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
