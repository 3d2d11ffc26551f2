"""Inline suppressions: ``# gradlint: ignore[GL123]`` or ``# noqa: GL123`` on the line a
finding points to; a bare ``# gradlint: ignore`` silences every finding on that line.

Suppressions that do nothing are not silent: a code that names no rule (``# noqa: GL610``,
``# gradlint: ignore[GL1O1]``) is finding GL903, and on request (``--warn-unused-ignores``,
ruff's RUF100) a suppression that silenced nothing is finding GL904. Both are judged on the
lines a model's findings can point at: where its modules are defined, where its ops are called,
and the target itself. Findings a comment silenced stay in ``Report.suppressed``, so that an
accepted verdict and an unused comment can be told across the targets of a run.

This module imports no torch (the command line's parent process reconciles a run's reports).
"""

from __future__ import annotations

import functools
import linecache
import os
import re
import tokenize
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gradlint.base.findings import Finding

_GRADLINT = re.compile(r"#\s*gradlint:\s*ignore(?:\[(?P<codes>[^\]]*)\])?", re.IGNORECASE)
_NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Za-z0-9_, -]+))?", re.IGNORECASE)
# In a noqa comment, the codes that are gradlint's: other linters' codes (E501, F401) share it.
_OURS = re.compile(r"^GL[0-9A-Z]*$", re.IGNORECASE)
UNKNOWN_CODE, UNUSED = "GL903", "GL904"


@dataclass(frozen=True)
class _RuleInfo:
    """What a finding needs of its rule; the command line's parent process imports no rule."""

    code: str
    name: str
    severity: object
    category: str


class _Sev(str):
    @property
    def value(self) -> str:
        return str(self)


# As rules/unknown_suppression_code.py and rules/unused_suppression.py declare them (a test holds them equal).
RULE_INFO = {UNKNOWN_CODE: _RuleInfo(UNKNOWN_CODE, "unknown-suppression-code", _Sev("warning"), "other"),
             UNUSED: _RuleInfo(UNUSED, "unused-suppression", _Sev("warning"), "other")}


@dataclass(frozen=True)
class Suppression:
    """One suppression comment.

    Attributes:
        path: The file.
        line: Its line.
        column: Where the comment starts (1-based).
        codes: The codes or rule names it names, as written; None for a bare ``# gradlint: ignore``.
        text: The comment as written, for messages.
    """

    path: str
    line: int
    column: int
    codes: tuple[str, ...] | None
    text: str

    def silences(self, finding: Finding) -> bool:
        return self.codes is None or any(c.upper() in (finding.code.upper(), finding.name.upper()) for c in self.codes)


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def suppressions(path: str) -> dict[int, list[Suppression]]:
    """The suppression comments of a file, by line; {} when it cannot be read.

    Code that is no file of its own (a notebook's cell, ``NOTEBOOK.ipynb:cell N``) is read from
    ``linecache``, where the code that compiled it registered its lines.
    """
    stamp = _stat(path)
    if stamp is None:
        lines = linecache.cache.get(path)
        return _suppressions_in(path, tuple(lines[2])) if lines and lines[2] else {}
    return _suppressions_of(path, *stamp)


@functools.lru_cache(maxsize=256)
def _suppressions_of(path: str, mtime_ns: int, size: int) -> dict[int, list[Suppression]]:
    """Cached per file version, so an edited file is read again."""
    try:
        with tokenize.open(path) as f:
            return _scan(path, f.readline)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}


@functools.lru_cache(maxsize=256)
def _suppressions_in(path: str, lines: tuple[str, ...]) -> dict[int, list[Suppression]]:
    return _scan(path, iter(lines).__next__)


def _scan(path: str, readline: Callable[[], str]) -> dict[int, list[Suppression]]:
    """Tokenized, so '#' inside strings is no comment."""
    out: dict[int, list[Suppression]] = {}
    try:
        for tok in tokenize.generate_tokens(readline):
            if tok.type == tokenize.COMMENT:
                out.setdefault(tok.start[0], []).extend(_parse(path, tok.start[0], tok.start[1] + 1, tok.string))
    except (SyntaxError, tokenize.TokenError, StopIteration):
        return {}
    return {line: found for line, found in out.items() if found}


def _parse(path: str, line: int, column: int, comment: str) -> list[Suppression]:
    found = []
    for m in _GRADLINT.finditer(comment):
        codes = m.group("codes")
        names = None if codes is None else tuple(c.strip() for c in codes.split(",") if c.strip())
        found.append(Suppression(path, line, column + m.start(), names, m.group(0)))
    for m in _NOQA.finditer(comment):
        if m.group("codes") is None:
            continue  # a bare noqa belongs to other linters; only gradlint's own bare form silences all
        ours = tuple(c for c in (c.strip() for c in m.group("codes").replace(" ", ",").split(",")) if _OURS.match(c))
        if ours:
            found.append(Suppression(path, line, column + m.start(), ours, m.group(0).rstrip(", ")))
    return found


def lines_of(finding: Finding) -> list[tuple[str, int]]:
    """The lines a comment may silence a finding on: the one it points at, and those that called
    it there (a helper's init call, and the constructor line that called the helper)."""
    if not finding.path or not finding.line:
        return []
    return [(finding.path, finding.line), *((p, line) for p, line in finding.via if p and line)]


def silencing(finding: Finding) -> Suppression | None:
    """The comment on the finding's line, or on a line that called it there, that silences it."""
    return next((s for path, line in lines_of(finding) for s in suppressions(path).get(line, ())
                 if s.silences(finding)), None)


def suppressed(finding: Finding) -> bool:
    """Whether a comment on the finding's line silences it."""
    return silencing(finding) is not None


def split(findings: Iterable[Finding]) -> tuple[list[Finding], list[Finding]]:
    """The findings no inline comment silences, and those one does."""
    kept: list[Finding] = []
    silenced: list[Finding] = []
    for f in findings:
        (silenced if suppressed(f) else kept).append(f)
    return kept, silenced


def apply(findings: Iterable[Finding]) -> list[Finding]:
    """The findings no inline comment suppresses."""
    return split(findings)[0]


def on_lines(lines: Iterable[tuple[str, int]]) -> list[Suppression]:
    """The suppression comments on ``lines`` ((path, line) pairs), in file and line order."""
    by_file: dict[str, set[int]] = {}
    for path, line in lines:
        if path and line:
            by_file.setdefault(path, set()).add(line)
    out = []
    for path in sorted(by_file):
        found = suppressions(path)
        out += [s for line in sorted(by_file[path] & found.keys()) for s in found[line]]
    return out


def unknown(comments: Iterable[Suppression], known: Mapping[str, str]) -> list[tuple[Suppression, list[str]]]:
    """Per comment, the codes or names in it that name no rule (``known``: code -> name)."""
    names = {c.upper() for c in known} | {n.upper() for n in known.values()}
    out = []
    for s in comments:
        bad = [c for c in s.codes or () if c.upper() not in names]
        if bad:
            out.append((s, bad))
    return out


def unused(comments: Iterable[Suppression], silenced: Iterable[Finding]) -> list[tuple[Suppression, list[str]]]:
    """Per comment, what in it silenced nothing: its codes that no silenced finding on its line
    has, or ``["*"]`` for a bare comment that silenced nothing."""
    used: dict[tuple[str, int], list[Finding]] = {}
    for f in silenced:
        for path, line in lines_of(f):
            used.setdefault((os.path.realpath(path), line), []).append(f)
    out = []
    for s in comments:
        here = used.get((os.path.realpath(s.path), s.line), [])
        if s.codes is None:
            if not here:
                out.append((s, ["*"]))
            continue
        idle = [c for c in s.codes if not any(c.upper() in (f.code.upper(), f.name.upper()) for f in here)]
        if idle:
            out.append((s, idle))
    return out


def unknown_message(s: Suppression, bad: list[str], known: Mapping[str, str]) -> tuple[str, str]:
    """GL903's message and fix for a comment naming ``bad``."""
    import difflib

    names = [*known, *known.values()]
    guesses = [m[0] for c in bad if (m := difflib.get_close_matches(c.upper() if _OURS.match(c) else c,
                                                                     names, n=1, cutoff=0.6))]
    listed = ", ".join(bad)
    message = (f"{s.text!r} names {'no rule' if len(bad) == 1 else 'no rules'}: {listed} "
               f"{'is' if len(bad) == 1 else 'are'} not a gradlint rule code or name, so it silences nothing")
    fix = (f"did you mean {', '.join(guesses)}? " if guesses else "") + "`gradlint rules` lists the codes and names"
    return message, fix


def unused_message(s: Suppression, idle: list[str], ran: Callable[[str], bool]) -> tuple[str, str]:
    """GL904's message and fix; ``ran(code)`` says whether the rule ran in this check."""
    if idle == ["*"]:
        return f"{s.text!r} silences nothing: no finding points at this line", "remove the comment"
    off = [c for c in idle if not ran(c)]
    why = f" ({', '.join(off)} did not run in this check)" if off else ""
    return (f"{s.text!r}: {', '.join(idle)} silenced nothing on this line{why}",
            "remove " + ("the comment" if s.codes is not None and len(idle) == len(s.codes) else ", ".join(idle)))


def in_files(paths: Iterable[str]) -> list[Suppression]:
    """Every suppression comment in ``paths``."""
    return [s for path in sorted(set(paths)) for found in suppressions(path).values() for s in found]


def run_findings(findings: list[list[Finding]], silenced: Iterable[Finding], checked: Iterable[str | None],
                 known: Mapping[str, str], wanted: Iterable[str], ran: Callable[[str], bool]) -> list[list[Finding]]:
    """GL903 and GL904 over a whole run, as ruff judges noqa comments: every comment in the
    files checked counts, whichever target's lines it sits on.

    The targets' own GL903/GL904 findings in those files are replaced by the run's (a comment one
    target left unused may silence another target's finding); elsewhere (a helper module) they
    stay, each once. The run's findings go to the first report of their file.

    Args:
        findings: Per report, its findings.
        silenced: Every finding a comment silenced in the run.
        checked: Per report, the file whose every target it checked, and so whose every comment
            is judged (None for a target that could not be analyzed, or a file the run checked
            only some targets of: its reports keep their own findings).
        known: Every rule, code -> name.
        wanted: The codes of these two rules that the run asked for.
        ran: Whether a rule (code or name) ran in the run.
    """
    silenced = list(silenced)
    checked = list(checked)
    files = {os.path.realpath(p) for p in checked if p}
    wanted = set(wanted)
    comments = in_files(files)
    made = comment_findings(comments, silenced, {c: RULE_INFO[c] for c in wanted}, known, ran)
    first = {}
    for i, p in enumerate(checked):
        if p:
            first.setdefault(os.path.realpath(p), i)
    out = [[f for f in fs if not (f.code in (UNKNOWN_CODE, UNUSED) and f.path
                                  and os.path.realpath(f.path) in files)] for fs in findings]
    for f in made:
        out[first[os.path.realpath(f.path)]].append(f)
    return drop_used_elsewhere(out, silenced)


def drop_used_elsewhere(findings: list[list[Finding]], silenced: Iterable[Finding]) -> list[list[Finding]]:
    """GL904 findings of a whole run: a comment one target left unused may silence a finding of
    another target (a block shared by two models); only comments no target used stay reported.
    Identical GL903/GL904 findings of several targets are kept once.

    Args:
        findings: Per report, its findings.
        silenced: Every finding a comment silenced in the run.
    """
    used = {(os.path.realpath(p), line, key) for f in silenced for p, line in lines_of(f)
            for key in (f.code.upper(), f.name.upper())}
    seen: set[tuple[str | None, int | None, str, str]] = set()
    out = []
    for fs in findings:
        kept = []
        for f in fs:
            if f.code in (UNKNOWN_CODE, UNUSED):
                key = (f.path, f.line, f.code, f.message)
                if key in seen:
                    continue
                seen.add(key)
                if f.code == UNUSED and f.path and f.line:
                    idle = f.evidence.get("codes") or []
                    where = os.path.realpath(f.path)
                    if idle and idle != ["*"] and all((where, f.line, c.upper()) in used for c in idle):
                        continue
                    if idle == ["*"] and any(p == where and line == f.line for p, line, _ in used):
                        continue
            kept.append(f)
        out.append(kept)
    return out


def comment_findings(comments: list[Suppression], silenced: list[Finding], rules: Mapping[str, object],
                     known: Mapping[str, str], ran: Callable[[str], bool] | None = None) -> list[Finding]:
    """GL903 (when it is among ``rules``) and GL904 (likewise) for a model's suppression comments.

    Args:
        comments: The comments on the lines the model's findings can point at (``on_lines``).
        silenced: The model's findings those comments silenced.
        rules: The rules that ran, by code (rule classes or instances: their ``code``, ``name``,
            ``severity`` and ``category`` make the findings).
        known: Every registered rule, code -> name.
        ran: Whether a rule (code or name) ran; by default, whether it is among ``rules``.
    """
    out: list[Finding] = []

    def make(rule: object, s: Suppression, message: str, fix: str, codes: list[str]) -> Finding:
        return Finding(code=rule.code, name=rule.name, severity=rule.severity.value, category=rule.category,
                       message=message, fix=fix, path=s.path, line=s.line, column=s.column,
                       evidence={"codes": codes, "comment": s.text})

    if UNKNOWN_CODE in rules:
        for s, bad in unknown(comments, known):
            out.append(make(rules[UNKNOWN_CODE], s, *unknown_message(s, bad, known), bad))
    if UNUSED in rules:
        if ran is None:
            names = {c.upper() for c in rules} | {getattr(r, "name", "").upper() for r in rules.values()}
            ran = lambda c: c.upper() in names
        for s, idle in unused(comments, silenced):
            idle = [c for c in idle if c == "*" or c.upper() in {k.upper() for k in known}
                    or c.upper() in {n.upper() for n in known.values()}]  # unknown codes are GL903's
            if idle:
                out.append(make(rules[UNUSED], s, *unused_message(s, idle, ran), idle))
    return out
