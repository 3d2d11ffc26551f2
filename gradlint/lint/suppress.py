"""Inline suppressions: ``# gradlint: ignore[GL123]`` or ``# noqa: GL123`` on the line a
finding points to; a bare ``# gradlint: ignore`` silences every finding on that line."""

from __future__ import annotations

import functools
import os
import re
import tokenize
from collections.abc import Iterable

from gradlint.base.findings import Finding

_GRADLINT = re.compile(r"#\s*gradlint:\s*ignore(?:\[(?P<codes>[^\]]*)\])?", re.IGNORECASE)
_NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z0-9, ]+))?", re.IGNORECASE)


def _comments(path: str) -> dict[int, str]:
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return _comments_of(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _comments_of(path: str, mtime_ns: int, size: int) -> dict[int, str]:
    """Comment text per line of a source file (tokenized, so '#' inside strings is not a comment);
    cached per file version, so an edited file is read again."""
    out: dict[int, str] = {}
    try:
        with tokenize.open(path) as f:
            for tok in tokenize.generate_tokens(f.readline):
                if tok.type == tokenize.COMMENT:
                    out[tok.start[0]] = out.get(tok.start[0], "") + " " + tok.string
    except (OSError, SyntaxError, tokenize.TokenError, UnicodeDecodeError):
        return {}
    return out


def _codes(text: str | None) -> set[str] | None:
    if text is None:
        return None  # bare: everything
    return {c.strip().upper() for c in text.split(",") if c.strip()}


def suppressed(finding: Finding) -> bool:
    """Whether a comment on the finding's line silences it."""
    if not finding.path or not finding.line:
        return False
    comment = _comments(finding.path).get(finding.line)
    if not comment:
        return False
    for pattern in (_GRADLINT, _NOQA):
        m = pattern.search(comment)
        if m is None:
            continue
        codes = _codes(m.group("codes"))
        if pattern is _NOQA and codes is None:
            continue  # a bare noqa belongs to other linters; only gradlint's own bare form silences all
        if codes is None or finding.code.upper() in codes or finding.name.upper() in codes:
            return True
    return False


def apply(findings: Iterable[Finding]) -> list[Finding]:
    """The findings no inline comment suppresses."""
    return [f for f in findings if not suppressed(f)]
