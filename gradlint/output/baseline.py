"""Baselines: record today's findings so that only new ones fail a run.

A finding's fingerprint leaves out its line, so it survives code moving around the file. It
is built from the file's path relative to the repository root, the target's name, the rule,
the module the finding concerns, the names in its evidence, and its message with the numbers
masked (a finding that gets a little worse is still the same finding). Baselines are
multisets, as in semgrep: a fingerprint recorded once hides one finding, not every finding
that shares it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradlint.base.errors import GradlintError
from gradlint.base.paths import repo_root, root_relative_or_absolute
from gradlint.base.report import Report
from gradlint.load.files import read_source
from gradlint.output.fingerprint import BASELINE_VERSION, fingerprints, mask


class BaselineError(GradlintError):
    """The baseline file cannot be read."""


def build(reports: Iterable[Report], root: Path) -> dict[str, Any]:
    """The baseline document for ``reports``: one entry per distinct fingerprint, with its
    count and, for people reading a diff, what it stands for. Sorted, so recording the same
    findings twice gives the same bytes."""
    entries: dict[str, dict[str, Any]] = {}
    for r in reports:
        for f, fp in zip(r.findings, fingerprints(r, root)):
            if fp in entries:
                entries[fp]["count"] += 1
                continue
            entries[fp] = {"fingerprint": fp, "count": 1, "code": f.code,
                           "path": root_relative_or_absolute(f.path, root) if f.path else None,
                           "target": r.name, "module": f.module, "message": mask(f.message, root)}
    ordered = sorted(entries.values(), key=lambda e: (e["path"] or "", e["target"], e["code"], e["module"],
                                                      e["fingerprint"]))
    return {"version": BASELINE_VERSION, "tool": "gradlint", "fingerprints": ordered}


def write(path: str | os.PathLike[str], reports: Iterable[Report], root: Path) -> int:
    """Record ``reports``' findings into ``path``; returns how many findings it holds."""
    doc = build(reports, root)
    Path(path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return sum(e["count"] for e in doc["fingerprints"])


def load(path: str | os.PathLike[str]) -> Counter[str]:
    """The fingerprints recorded in ``path``, with their counts.

    The document is checked entry by entry: a fingerprint is a string, a count a whole number
    of at least 1. Anything else is refused, with where it is wrong, in one line.

    Raises:
        BaselineError: For a file that cannot be read, is not JSON (nested too deeply, say),
            or is not a gradlint baseline.
    """
    redo = "fix it, or delete it and rerun with --baseline to record a new one"
    try:
        doc = json.loads(read_source(path).decode("utf-8"))  # a FIFO is refused, never waited on
    except RecursionError:
        raise BaselineError(f"cannot read the baseline: its JSON is nested too deeply; {redo}",
                            path=str(path)) from None
    except (OSError, ValueError) as e:
        raise BaselineError(f"cannot read the baseline: {e}", path=str(path)) from None
    if not isinstance(doc, dict) or doc.get("version") != BASELINE_VERSION or \
            not isinstance(doc.get("fingerprints"), list):
        raise BaselineError(f"not a gradlint baseline of version {BASELINE_VERSION}; {redo}", path=str(path))
    counts: Counter[str] = Counter()
    for i, e in enumerate(doc["fingerprints"], 1):
        if isinstance(e, str) and e:  # a hand-written list of bare fingerprints
            counts[e] += 1
            continue
        if not (isinstance(e, dict) and isinstance(e.get("fingerprint"), str) and e["fingerprint"]):
            raise BaselineError(f"entry {i} of \"fingerprints\" is not a fingerprint string nor an object with one "
                                f"(a {type(e).__name__}); {redo}", path=str(path))
        count = e.get("count", 1)
        if type(count) is not int or count < 1:
            raise BaselineError(f"entry {i} of \"fingerprints\" has count {json.dumps(count)[:40]}, not a whole "
                                f"number of at least 1; {redo}", path=str(path))
        counts[e["fingerprint"]] += count
    return counts


def subtract(reports: Iterable[Report], known: Counter[str], root: Path) -> tuple[list[Report], int, int]:
    """Drop the findings ``known`` holds, each fingerprint as often as it was recorded.

    Returns:
        The reports without those findings, how many findings were dropped, and how many
        recorded findings matched nothing (fixed since, or moved to another file).
    """
    left = Counter(known)
    out, dropped = [], 0
    for r in reports:
        kept = []
        for f, fp in zip(r.findings, fingerprints(r, root)):
            if left[fp] > 0:
                left[fp] -= 1
                dropped += 1
            else:
                kept.append(f)
        out.append(r if len(kept) == len(r.findings) else replace(r, findings=tuple(kept)))
    return out, dropped, sum(left.values())


def apply(reports: list[Report], path: str, *, update: bool = False,
          root: Path | None = None) -> tuple[list[Report], list[str], bool]:
    """What ``gradlint check --baseline PATH`` does with a run's reports.

    Records the findings into ``path`` when it does not exist yet (or ``update``), else
    drops the findings it holds.

    Returns:
        The reports to show, notes for the user, and whether the baseline was recorded.
    """
    root = root or repo_root()
    if update or not Path(path).exists():
        n = write(path, reports, root)
        notes = [f"{path}: recorded {n} finding{'s' if n != 1 else ''} as the baseline; "
                 "later runs with --baseline fail only on new ones"]
        broken = sum(r.status != "ok" for r in reports)
        if broken:
            notes.append(f"{path}: {broken} target{'s' if broken != 1 else ''} could not be analyzed, "
                         "so the baseline holds none of their findings")
        return reports, notes, True
    shown, dropped, stale = subtract(reports, load(path), root)
    notes = [f"{path}: {dropped} known finding{'s' if dropped != 1 else ''} hidden by the baseline"]
    if stale:
        notes.append(f"{path}: {stale} recorded finding{'s' if stale != 1 else ''} no longer found; "
                     "--update-baseline drops them")
    return shown, notes, False
