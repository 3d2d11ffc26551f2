"""Fingerprints: what identifies a finding across runs, for baselines and SARIF.

A fingerprint leaves out the line, so it survives code moving around the file. It is built
from the file's path relative to the repository root, the target's name, the rule, the module
the finding concerns, the names in its evidence, and the message with numbers masked (a
finding that gets a little worse is still the same finding).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from gradlint.base.findings import Finding
from gradlint.base.paths import root_relative_or_absolute
from gradlint.base.report import Report

#: The version of the baseline format; fingerprints carry it, so a new format drops old ones.
BASELINE_VERSION = 1

# ATen node names are numbered in graph order ("sigmoid_3"), so they shift when an unrelated
# op is added upstream; free text already shows in the message.
_UNSTABLE_KEYS = frozenset({"node", "nodes", "weakest", "strongest", "reason", "failures"})
_HEX = re.compile(r"0x[0-9a-fA-F]+")
# Not digits inside identifiers: layers.16 and GL101 name things, 10^-15.9 measures them.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def mask(text: str, root: Path | None = None) -> str:
    """``text`` with numbers, hex addresses and the repository root masked, whitespace collapsed."""
    if root is not None:
        text = text.replace(root.as_posix() + "/", "").replace(str(root) + os.sep, "")
    text = _NUMBER.sub("#", _HEX.sub("#", text))
    return " ".join(text.split())


def _names(evidence: dict[str, Any], root: Path) -> list[str]:
    out = []
    for key in sorted(evidence):
        value = evidence[key]
        if key in _UNSTABLE_KEYS:
            continue
        if isinstance(value, str):
            out.append(f"{key}={mask(value, root)}")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            out.append(f"{key}=" + ",".join(mask(v, root) for v in value))
    return out


def fingerprint(finding: Finding, target: str, root: Path) -> str:
    """The stable identity of ``finding`` of target ``target`` (its name, without a path)."""
    parts = [f"v{BASELINE_VERSION}", (root_relative_or_absolute(finding.path, root) if finding.path else ""), target,
             finding.code, finding.module, *_names(finding.evidence, root), mask(finding.message, root)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def fingerprints(report: Report, root: Path) -> list[str]:
    """The fingerprint of each of ``report``'s findings, in order."""
    name = report.name
    return [fingerprint(f, name, root) for f in report.findings]
