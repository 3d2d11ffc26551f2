"""The forms a ``gradlint check`` report takes: text, JSON, SARIF 2.1.0 and GitHub Actions
workflow commands.

Text is rendered by ``gradlint.output.text.format_text``; this module dispatches to it and holds
the machine-readable forms. Paths in SARIF and GitHub output are relative to the repository
root (the git top level of the working directory, else the working directory), because that
is what code scanning and workflow annotations resolve them against.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gradlint._version import __version__
from gradlint.base.findings import Finding
from gradlint.base.paths import repo_root, root_relative, root_relative_or_absolute
from gradlint.base.report import Report
from gradlint.output.fingerprint import fingerprints
from gradlint.output.tally import Tally
from gradlint.output.text import format_text, summary_counts

FORMATS = ("text", "json", "sarif", "github")

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SARIF_VERSION = "2.1.0"
# No project home page exists yet; the package index page is the one stable public address.
INFORMATION_URI = "https://pypi.org/project/torch-gradlint/"
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = "gradlint/v1"

_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
_GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


# -- dispatch -------------------------------------------------------------------------------

def render(fmt: str, reports: Iterable[Report], notes: Iterable[str] = (), *, color: bool = False,
           root: Path | None = None, profile: bool = False, quiet: bool = False) -> str:
    """The whole report for a run, in ``fmt`` (one of ``FORMATS``), without a final newline.

    Args:
        fmt: ``text``, ``json``, ``sarif`` or ``github``.
        reports: One per target, error reports included.
        notes: Remarks about the run (files without targets, the baseline); JSON and SARIF
            carry them, the other forms leave them to the caller's stderr.
        color: ANSI colors, for text only.
        root: Repository root paths are made relative to (default: ``repo_root()``).
        profile: For text, a bar chart of the gradient profile under each target.
        quiet: For text, the finding lines and the targets that could not be analyzed only.
    """
    reports, notes = list(reports), list(notes)
    if fmt == "text":
        return format_text(reports, color=color, profile=profile, quiet=quiet) if reports else ""
    root = root or repo_root()
    if fmt == "json":
        return json.dumps(json_doc(reports, notes, root), indent=2)
    if fmt == "sarif":
        return json.dumps(sarif_doc(reports, notes, root), indent=2)
    if fmt == "github":
        return "\n".join(github_lines(reports, root))
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def use_color(fmt: str, to_file: bool, isatty: bool, env: dict[str, str] | None = None, choice: str = "auto") -> bool:
    """Whether text output gets ANSI colors.

    Never for other formats. ``choice`` is ``--color``: ``always`` and ``never`` decide alone;
    ``auto`` gives colors on a terminal, never in a file. There ``NO_COLOR`` (non-empty, per
    no-color.org) turns them off and wins over ``FORCE_COLOR`` (non-empty, not ``0``), which
    turns them on where the terminal cannot be detected, e.g. in CI logs.
    """
    if fmt != "text" or choice == "never":
        return False
    if choice == "always":
        return True
    env = os.environ if env is None else env
    if to_file or env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR", "") not in ("", "0"):
        return True
    return isatty


# -- json -------------------------------------------------------------------------------------

def json_doc(reports: list[Report], notes: list[str], root: Path) -> dict[str, Any]:
    """Every target's ``to_dict()``, the run's notes and summary counts; each finding also
    carries its baseline fingerprint."""

    targets = []
    for r in reports:
        d = r.to_dict()
        for fd, fp in zip(d["findings"], fingerprints(r, root)):
            fd["fingerprint"] = fp
        targets.append(d)
    tally = Tally.of(reports, notes)
    summary = {**summary_counts(reports), "analyzed": tally.analyzed, "skipped": tally.skipped}
    return {"version": __version__, "targets": targets, "notes": notes, "summary": summary}


# -- sarif ------------------------------------------------------------------------------------

def _rule_descriptor(code: str, cls: Any) -> dict[str, Any]:
    doc = inspect.cleandoc(cls.__doc__ or "")
    lines = doc.splitlines()
    short = lines[0] if lines else f"{code} {cls.name}"
    what = re.search(r"^## What it finds\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    full = " ".join(what.group(1).split()) if what else short
    markdown = f"# {code} {cls.name}\n\n{doc}\n" if doc else f"# {code} {cls.name}\n"
    if cls.options:
        markdown += "\n## Options\n\n" + "".join(f"- `{k}` = `{v!r}`\n" for k, v in cls.options.items())
    return {
        "id": code,
        "name": cls.name,
        "shortDescription": {"text": short},
        "fullDescription": {"text": full},
        "help": {"text": doc or short, "markdown": markdown},
        "defaultConfiguration": {"level": _SARIF_LEVEL[cls.severity.value]},
        "properties": {"tags": [cls.category], "category": cls.category},
    }


def _rules(findings: list[Finding]) -> list[dict[str, Any]]:
    from gradlint.lint.rule import load_builtin

    rules = {code: _rule_descriptor(code, cls) for code, cls in load_builtin().items()}
    for f in findings:  # a finding from a rule that is not registered (built by hand)
        rules.setdefault(f.code, {"id": f.code, "name": f.name, "shortDescription": {"text": f.name},
                                  "defaultConfiguration": {"level": _SARIF_LEVEL.get(f.severity, "warning")}})
    return [rules[c] for c in sorted(rules)]


def _physical(path: str | None, line: int | None, column: int | None, root: Path) -> dict[str, Any] | None:
    if not path:
        return None
    rel = root_relative(path, root)
    if rel is not None:
        art = {"uri": _uri_escape(rel), "uriBaseId": SRCROOT}
    else:  # outside the repository: code scanning cannot show it, but the log stays truthful
        art = {"uri": Path(os.path.realpath(path)).as_uri()}
    loc: dict[str, Any] = {"artifactLocation": art}
    if line:
        loc["region"] = {"startLine": int(line), "startColumn": int(column or 1)}
    return {"physicalLocation": loc}


def _uri_escape(rel: str) -> str:
    from urllib.parse import quote

    return quote(rel, safe="/")


def sarif_doc(reports: list[Report], notes: list[str], root: Path) -> dict[str, Any]:
    """A SARIF 2.1.0 log with one run, as GitHub code scanning accepts it.

    Findings become results; targets gradlint could not analyze become error-level tool
    execution notifications (and make ``executionSuccessful`` false), notes become
    note-level ones.
    """

    findings = [f for r in reports for f in r.findings]
    rules = _rules(findings)
    index = {rule["id"]: i for i, rule in enumerate(rules)}
    results = []
    for r in reports:
        for f, fp in zip(r.findings, fingerprints(r, root)):
            # The calling lines link to their related locations (ids 1..), as code scanning shows them.
            called = "".join(f"\ncalled from [{_shown(p, root)}:{line}]({i})" for i, (p, line) in enumerate(f.via, 1))
            text = f.message + called + (f"\nfix: {f.fix}" if f.fix else "")
            res: dict[str, Any] = {
                "ruleId": f.code,
                "ruleIndex": index[f.code],
                "level": _SARIF_LEVEL.get(f.severity, "warning"),
                "message": {"text": text},
                "partialFingerprints": {FINGERPRINT_KEY: fp},
                "properties": {"target": r.name, "module": f.module, "category": f.category,
                               "evidence": f.evidence},
            }
            where = _physical(f.path or r.path, f.line if f.path else r.line, f.column, root)
            if where is not None:
                if f.module:
                    where["logicalLocations"] = [{"fullyQualifiedName": f"{r.name}.{f.module}",
                                                  "name": f.module, "kind": "module"}]
                res["locations"] = [where]
            if f.confirmed is not None:
                res["properties"]["confirmed"] = f.confirmed
            _sarif_related(res, f, root)
            results.append(res)
    notifications = []
    for r in reports:
        if r.status == "ok":
            continue
        n: dict[str, Any] = {"level": "error", "message": {"text": f"could not analyze {r.target}: {r.error}"},
                             "descriptor": {"id": "could-not-analyze"}}
        where = _physical(r.path, r.line, None, root)
        if where is not None:
            n["locations"] = [where]
        notifications.append(n)
    notifications += [{"level": "note", "message": {"text": note}} for note in notes]
    invocation: dict[str, Any] = {"executionSuccessful": all(r.status == "ok" for r in reports)}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    run = {
        "tool": {"driver": {"name": "gradlint", "version": __version__, "semanticVersion": __version__,
                            "informationUri": INFORMATION_URI, "rules": rules}},
        "invocations": [invocation],
        "originalUriBaseIds": {SRCROOT: {"uri": root.as_uri() + "/"}},
        "results": results,
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def _sarif_related(res: dict[str, Any], f: Finding, root: Path) -> None:
    """A finding's related locations: first the lines that called the helper it points into
    ("called from here", innermost first, as its message links them), then its notes, each
    with its rule and message, then the lines that called a note's helper (those the finding's
    own do not repeat). The calling lines are in the result's properties too (``via``), and the
    notes with their rule ids (``notes``)."""
    related: list[dict[str, Any]] = []

    def add(path: str | None, line: int | None, column: int | None, message: str) -> None:
        where = _physical(path, line, column, root)
        if where is not None:
            where["id"] = len(related) + 1
            where["message"] = {"text": message}
            related.append(where)

    for p, line in f.via:
        add(p, line, None, "called from here")
    for n in f.notes:
        add(n.path, n.line, n.column, f"{n.code} {n.name} ({n.role}): {n.message}")
    shown = set(f.via)
    for n in f.notes:  # a note's calling line once, where the finding's own does not show it already
        for p, line in n.via:
            if (p, line) not in shown:
                shown.add((p, line))
                add(p, line, None, f"{n.code} {n.name}: called from here")
    if related:
        res["relatedLocations"] = related
    if f.via:
        res["properties"]["via"] = [{"path": _shown(p, root), "line": line} for p, line in f.via]
    if f.notes:
        res["properties"]["notes"] = [{
            "ruleId": n.code, "name": n.name, "role": n.role, "level": _SARIF_LEVEL.get(n.severity, "warning"),
            "message": n.message, "fix": n.fix, "module": n.module, "evidence": n.evidence,
            **({"via": [{"path": _shown(p, root), "line": line} for p, line in n.via]} if n.via else {})}
            for n in f.notes]


def _shown(path: str, root: Path) -> str:
    return root_relative_or_absolute(path, root)


def note_lines(f: Finding, root: Path) -> list[str]:
    """A finding's notes as plain lines: ``note: CODE (role) at FILE:LINE: message``, for
    outputs that carry one message per finding."""
    out = []
    for n in f.notes:
        where = f" at {_shown(n.path, root)}:{n.line}" if n.path and n.line else ""
        where += "".join(f", called from {_shown(p, root)}:{line}" for p, line in n.via)
        text = n.message if n.role != "fix" or not n.fix else "another fix: " + n.fix
        out.append(f"note: {n.code} {n.name}{where}: {text}")
    return out


def called_from_lines(f: Finding, root: Path) -> list[str]:
    """``called from FILE:LINE`` for each line that called the helper a finding points into,
    innermost first, as the text output prints them."""
    return [f"called from {_shown(p, root)}:{line}" for p, line in f.via]


# -- github -----------------------------------------------------------------------------------

def github_escape_data(text: str) -> str:
    """Escape a workflow command's message: ``%``, CR and LF."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_escape_property(text: str) -> str:
    """Escape a workflow command's property value: as data, plus ``:`` and ``,``."""
    return github_escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _github_command(level: str, message: str, *, file: str | None = None, line: int | None = None,
                    col: int | None = None, title: str | None = None) -> str:
    props = []
    if file:
        props.append(f"file={github_escape_property(file)}")
        if line:
            props.append(f"line={int(line)}")
            props.append(f"col={int(col or 1)}")
    if title:
        props.append(f"title={github_escape_property(title)}")
    head = f"::{level} {','.join(props)}" if props else f"::{level}"
    return f"{head}::{github_escape_data(message)}"


def github_lines(reports: list[Report], root: Path) -> list[str]:
    """One GitHub Actions workflow command per finding (``::error``, ``::warning`` or
    ``::notice``), and an ``::error`` for each target gradlint could not analyze."""
    out = []
    for r in reports:
        for f in r.findings:
            msg = "\n".join([f.message, *called_from_lines(f, root), *([f"fix: {f.fix}"] if f.fix else []),
                             *note_lines(f, root)])
            out.append(_github_command(_GITHUB_LEVEL.get(f.severity, "warning"), msg,
                                       file=root_relative_or_absolute(f.path, root) if f.path else None,
                                       line=f.line, col=f.column, title=f"{f.code} {f.name}"))
    for r in reports:
        if r.status != "ok":
            # A load error already starts with the file it names; the target label would repeat it.
            msg = r.error if (r.error or "").startswith(r.target) else f"{r.target}: {r.error}"
            out.append(_github_command("error", msg, file=root_relative_or_absolute(r.path, root) if r.path else None,
                                       line=r.line, title="gradlint could not analyze"))
    return out
