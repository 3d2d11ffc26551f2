"""Assertions for test suites: ``gradlint.assert_healthy`` and ``Report.assert_clean``.

Both raise ``AssertionError`` whose message tells the whole story: the verdict, every
finding that fails (code, location, message, fix) and the layers whose gradient is
weakest. The message is built here, not by pytest's assertion rewriting, so it reads the
same under pytest, unittest or a plain script, and ``python -O`` cannot strip the check.

After a probe the measurement decides: the verdict is the measured one, and a finding the
measurement refuted (``confirmed=False``) does not fail; confirmed findings and those the
probe has no opinion on (``confirmed=None``) do.

This module imports torch only when a check runs, so ``import gradlint`` stays cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from gradlint.base.findings import Finding, Severity

if TYPE_CHECKING:
    from gradlint.base.report import Report

# The rule that reports each unhealthy verdict: ignoring the rule also accepts the verdict.
VERDICT_RULES = {"vanishing": ("GL101", "vanishing-gradient"), "exploding": ("GL102", "exploding-gradient"),
                 "blocked": ("GL701", "gradient-blockage")}
# Rules with their own attenuation threshold, which must follow check's threshold or a
# relaxed threshold would still fail on GL101/GL102.
THRESHOLD_RULES = (("GL101", "vanishing-gradient"), ("GL102", "exploding-gradient"))
WEAKEST = 5


def _matches(code: str, name: str, patterns: Iterable[str]) -> bool:
    """The same matching as ``--ignore``: a code, a code prefix, or a rule name."""
    return any(code.startswith(p.upper()) or name == p for p in patterns)


def failing(report: Report, ignore: Iterable[str] = (), fail_on: str | None = None
            ) -> tuple[list[Finding], str | None, list[Finding]]:
    """What makes ``report`` fail an assertion.

    Returns:
        The failing findings, the unhealthy verdict (None when healthy or ignored), and the
        findings at or above ``fail_on`` that the measurement refuted.
    """
    ignore = tuple(ignore)
    level = Severity(fail_on or report.fail_on).rank
    due = [f for f in report.findings
           if Severity(f.severity).rank >= level and not _matches(f.code, f.name, ignore)]
    failing_ = [f for f in due if f.confirmed is not False]
    refuted = [f for f in due if f.confirmed is False]
    verdict = report.summary.verdict if report.summary is not None else None
    rule = VERDICT_RULES.get(verdict or "")
    bad_verdict = verdict if rule and not _matches(rule[0], rule[1], ignore) else None
    return failing_, bad_verdict, refuted


def assert_clean(report: Report, ignore: Iterable[str] = (), fail_on: str | None = None) -> Report:
    """Raise ``AssertionError`` unless ``report`` is clean. See ``Report.assert_clean``."""
    __tracebackhide__ = True  # pytest shows the test's line, not this one
    if fail_on is not None and fail_on not in ("error", "warning", "info"):
        raise ValueError(f"fail_on={fail_on!r} must be 'error', 'warning' or 'info'")
    if isinstance(ignore, str):
        ignore = (ignore,)
    if report.status != "ok":
        raise AssertionError(f"gradlint could not analyze {report.target}: {report.error}")
    findings, verdict, refuted = failing(report, ignore, fail_on)
    if findings or verdict:
        raise AssertionError(failure_message(report, findings, verdict, refuted, fail_on or report.fail_on))
    return report


def failure_message(report: Report, findings: list[Finding], verdict: str | None, refuted: list[Finding],
                    fail_on: str) -> str:
    """The multi-line message of a failed assertion."""
    from gradlint.base.report import relpath

    s = report.summary
    lines = [f"gradlint: {report.target} is not healthy: {_verdict_line(report)}"]
    if verdict and not findings:
        code = VERDICT_RULES[verdict][0]
        lines.append(f"  the {'measured ' if report.probe is not None else ''}verdict is {verdict}, "
                     f"though no {code} finding says so (ignore={code!r} accepts it)")
    if findings:
        lines.append(f"{len(findings)} finding{'s' if len(findings) != 1 else ''} at or above {fail_on}:")
        for f in findings:
            where = f" in {f.module}" if f.module else ""
            loc = f"{relpath(f.path)}:{f.line or 1}:{f.column or 1}{where}" if f.path else f"model{where}"
            mark = ", confirmed" if f.confirmed else ""
            lines.append(f"  {f.code} [{f.severity}{mark}] {loc}: {f.message}")
            for i, fix_line in enumerate(f.fix.splitlines()):
                lines.append(("      fix: " if i == 0 else "           ") + fix_line)
    if refuted:
        lines.append("not failing, refuted by the probe: " + ", ".join(sorted({f.code for f in refuted})))
    lines.extend(_weakest_lines(report))
    if s is not None and s.attribution:
        parts = ", ".join(f"{k} {v:+.1f}" for k, v in sorted(s.attribution.items(), key=lambda kv: kv[1]))
        lines.append(f"attribution (decades): {parts}")
    return "\n".join(lines)


def _verdict_line(report: Report) -> str:
    s = report.summary
    if s is None:
        return "no verdict"
    att = s.attenuation_decades
    att_text = f"{att:+.1f}" if math.isfinite(att) else ("+inf" if att > 0 else "-inf")
    text = f"verdict {s.verdict} (attenuation {att_text} decades, threshold {s.threshold:g}"
    p = report.probe
    if p is not None:
        pred = report.predicted_summary
        text += f"; measured on {p.device} over {p.seeds} seeds"
        if pred is not None:
            text += f", predicted {pred.verdict}"
    else:
        text += "; predicted, no backward pass"
    return text + ")"


def _log(x: float | None) -> str:
    return f"{math.log10(x):.2f}" if x and x > 0 else ("-inf" if x == 0 else "n/a")


def _weakest_lines(report: Report) -> list[str]:
    """The weight gradients with the lowest RMS: measured ones after a probe, else predicted."""
    measured = report.probe is not None

    def value(p: Any) -> float | None:
        return p.measured_grad_rms if measured and p.measured_grad_rms is not None else p.predicted_grad_rms

    weights = [p for p in report.params if len(p.shape) >= 2 and value(p) is not None]
    if not weights:
        return []
    ordered = sorted(weights, key=value)
    kind = "measured" if measured else "predicted"
    out = [f"weakest layers (log10 RMS of the weight gradient, {kind}):"]
    width = max(len(p.name) for p in ordered[:WEAKEST] + ordered[-1:])
    for p in ordered[:WEAKEST]:
        extra = f"  (predicted {_log(p.predicted_grad_rms)})" if measured else ""
        out.append(f"  {p.name:<{width}}  {_log(value(p))}{extra}")
    top = ordered[-1]
    out.append(f"strongest: {top.name} {_log(value(top))}")
    return out


def threshold_options(threshold: float | None, rule_options: dict[str, dict[str, Any]] | None
                      ) -> dict[str, dict[str, Any]] | None:
    """``rule_options`` with GL101/GL102 following ``threshold``, unless the caller set them."""
    if threshold is None:
        return rule_options
    out = dict(rule_options or {})
    for code, name in THRESHOLD_RULES:
        if code not in out and name not in out:
            out[code] = {"threshold": threshold}
    return out


def resolve_threshold(threshold: float | None, max_decades: float | None) -> float | None:
    """``threshold=`` and its alias ``max_decades=``: at most one of them, or the same value."""
    if threshold is not None and max_decades is not None and threshold != max_decades:
        raise TypeError(f"threshold={threshold!r} and max_decades={max_decades!r} disagree; give one of them")
    return threshold if threshold is not None else max_decades


def assert_healthy(model: Any, inputs: Any = None, *, probe: bool = False, threshold: float | None = None,
                   max_decades: float | None = None, fail_on: str = "error", ignore: Iterable[str] = (),
                   device: str = "cpu", seeds: int = 3, **check_kwargs: Any) -> Report:
    """Check ``model`` and raise ``AssertionError`` unless its gradients are healthy.

    Healthy means: gradlint could analyze it, the verdict is ``healthy``, and no finding at
    or above ``fail_on`` remains. With ``probe=True`` a real backward pass runs too and the
    measured values decide: the measured verdict, and only the findings the measurement
    confirmed (or has no opinion on) fail.

    Args:
        model: The ``nn.Module``.
        inputs: As for ``gradlint.check``.
        probe: Also measure the gradients with a real backward pass (``gradlint.probe``).
        threshold: Decades of attenuation or growth that count as vanishing/exploding
            (default 2); ``max_decades`` is the same.
        max_decades: Alias of ``threshold``.
        fail_on: Lowest severity that fails: ``error``, ``warning`` or ``info``.
        ignore: Rule codes, code prefixes or names not to run and not to fail on (ignoring
            GL101 also accepts a vanishing verdict).
        device: Where the probe runs (``cpu``, ``cuda``, ``cuda:N``, ``auto``).
        seeds: Seeds the probe averages over.
        **check_kwargs: Passed on to ``gradlint.check`` (``select``, ``rule_options``, ...).

    Returns:
        The report, when healthy.

    Raises:
        AssertionError: With the verdict, the failing findings and fixes, and the weakest layers.
    """
    __tracebackhide__ = True
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignore = tuple(ignore)
    thr = resolve_threshold(threshold, max_decades)
    kwargs = dict(check_kwargs)
    if thr is not None:
        kwargs["threshold"] = thr
    kwargs["rule_options"] = threshold_options(thr, kwargs.get("rule_options"))
    kwargs["ignore"] = ignore or None
    kwargs["fail_on"] = fail_on
    if probe:
        from gradlint.probing.probe import probe as run_probe
        report = run_probe(model, inputs, device=device, seeds=seeds, **kwargs)
    else:
        from gradlint.api import check
        report = check(model, inputs, **kwargs)
    return assert_clean(report, ignore=ignore, fail_on=fail_on)
