"""Matching paths and rules as the configuration's keys mean them: gitignore-style globs
(``include``, ``exclude``, ``per-file-ignores``) and rule patterns (codes, code prefixes, names)."""

from __future__ import annotations

import functools
import re

__all__ = ["glob_matches"]


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end]
            out.append("[^" + re.escape(body[1:]) + "]" if body[0] in "!^" else "[" + re.escape(body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_matches(pattern: str, rel: str) -> bool:
    """gitignore-like: a glob without '/' matches any one path component (a file or directory
    name anywhere); one with '/' matches from the root, and a match on a directory covers all
    below it. ``*`` stays within a component, ``**`` crosses them."""
    pattern = pattern.strip()
    pattern = pattern[2:] if pattern.startswith("./") else pattern
    pattern = pattern.rstrip("/") or pattern
    parts = rel.split("/")
    regex = _glob_regex(pattern)
    if "/" not in pattern:
        return any(regex.match(part) for part in parts)
    return any(regex.match("/".join(parts[:k])) for k in range(1, len(parts) + 1))


