"""Findings that point at a constructor line calling a helper move into the helper: to the line of
the init call or the module construction that is the cause, with the lines that called it as
``via`` (the model's own constructor line last). Suppression comments on any of those lines
apply (``gradlint.lint.suppress.lines_of``), so a ``# noqa`` written on the constructor line
before the finding moved keeps working.

The chains come from ``gradlint.capture.sites``, recorded while the model was built; a finding
whose line is not on its subject's chain stays where its rule put it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace

from gradlint.base.findings import Finding
from gradlint.base.paths import shown_path
from gradlint.capture.graph import Source

__all__ = ["relocate"]

# Rules about a parameter's init: their cause is the init call, not the layer's construction.
_INIT_CATEGORIES = ("init",)


def relocate(findings: Iterable[Finding], sites: Mapping[str, tuple[Source, ...]]) -> list[Finding]:
    """``findings``, each moved to the innermost line of its subject's site chain when the line it
    points at is further out on that chain."""
    return [_moved(f, sites) for f in findings] if sites else list(findings)


def _moved(f: Finding, sites: Mapping[str, tuple[Source, ...]]) -> Finding:
    if not f.path or not f.line or f.via:
        return f
    here = os.path.realpath(f.path)
    for chain in _chains(f, sites):
        at = next((i for i, s in enumerate(chain) if s.line == f.line and os.path.realpath(s.path) == here), 0)
        if at > 0:
            inner = chain[0]
            spelt = _speller(f.path, here)
            return replace(f, path=spelt(inner.path), line=inner.line,
                           via=tuple((spelt(s.path), s.line) for s in chain[1:at + 1]))
    return f


def _speller(given: str, here: str) -> Callable[[str], str]:
    """How the moved finding spells each file of its chain: the finding's own file as the finding
    named it, every other file in the same form (absolute, or relative to the working directory
    where the finding's path is relative), so ``path`` and ``via`` read alike in every output."""
    def spelt(path: str) -> str:
        if os.path.realpath(path) == here:
            return given
        return os.path.abspath(path) if os.path.isabs(given) else shown_path(os.path.abspath(path))
    return spelt


def _chains(f: Finding, sites: Mapping[str, tuple[Source, ...]]) -> Iterator[tuple[Source, ...]]:
    if not f.module:
        return
    if f.category in _INIT_CATEGORIES:
        for name in (f"{f.module}.weight", f"{f.module}.weight_ih_l0", f"{f.module}.in_proj_weight"):
            if name in sites:
                yield sites[name]
    if f.module in sites:
        yield sites[f.module]
