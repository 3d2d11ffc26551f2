"""Reports as text: ruff-style finding lines, a summary per target, the probe's table, the
gradient profile, and the message of a failed assertion. Pure functions of plain report data."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gradlint.base.findings import Finding, Severity, matches
from gradlint.base.kinds import PROFILE_KINDS
from gradlint.base.paths import shown_path

if TYPE_CHECKING:
    from gradlint.base.report import Report

# The rule that reports each unhealthy verdict: ignoring the rule also accepts the verdict.
VERDICT_RULES = {"vanishing": ("GL101", "vanishing-gradient"), "exploding": ("GL102", "exploding-gradient"),
                 "blocked": ("GL701", "gradient-blockage")}
WEAKEST = 5


_COLORS = {"error": "\033[31m", "warning": "\033[33m", "info": "\033[36m", "bold": "\033[1m", "dim": "\033[2m"}


def _c(text: str, what: str, color: bool) -> str:
    return f"{_COLORS[what]}{text}\033[0m" if color else text


def format_finding(f: Finding, color: bool = False) -> str:
    """``file:line:col: CODE [severity] message``, its fix, and its notes as a compiler prints
    them: ``file:line:col: note: ...``, each at its own location, a cause with its message (and
    its fix when it is not the finding's), another fix with that fix."""
    refuted = ", refuted by the probe: not failing" if f.confirmed is False else ""
    head = f"{_c(_where(f), 'bold', color)}: {f.code} [{_c(f.severity, f.severity, color)}{refuted}] {f.message}"
    head += _via(f, "    ") + _fix_lines(f.fix, "    ")
    for n in f.notes:
        what = {"cause": "cause", "fix": "another fix"}.get(n.role, n.role)
        context = f", at {n.module}" if n.module else ""
        text = n.message if n.role != "fix" or not n.fix else n.fix.splitlines()[0]
        head += f"\n    {_c(_where(n), 'bold', color)}: {_c('note', 'info', color)}: {n.code} {what}{context}: {text}"
        head += _via(n, "        ")
        if n.role != "fix":
            head += _fix_lines(n.fix if n.fix != f.fix else "", "        ")
        else:
            head += "".join(f"\n        {line}" for line in n.fix.splitlines()[1:])
    return head


def _via(f: Any, indent: str) -> str:
    # The lines that called the helper the finding points into: the model's own constructor line last.
    return "".join(f"\n{indent}called from {shown_path(p)}:{line}" for p, line in f.via)


def _where(f: Any) -> str:
    return f"{shown_path(f.path) if f.path else '<unknown>'}:{f.line or 1}:{f.column or 1}"


def _fix_lines(fix: str, indent: str) -> str:
    return "".join(f"\n{indent}" + ("fix: " if i == 0 else "     ") + line for i, line in enumerate(fix.splitlines()))


def _decades(x: float) -> str:
    return f"{x:+.1f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def format_error(r: Report, color: bool = False) -> str:
    """``file:line: could not analyze TARGET: what happened``, its hint, and the user's traceback.

    The location leads, as in a compiler's message, so editors and terminals can jump to it.
    """
    error = r.error or ""
    head = ""
    if r.path:
        where = f"{r.path}:{r.line}" if r.line else r.path
        if error.startswith(f"{where}: "):
            head, error = f"{_c(where, 'bold', color)}: ", error[len(where) + 2:]
    lines = [f"{head}{_c('could not analyze', 'error', color)} {_c(r.target, 'bold', color)}: {error}"]
    if r.traceback:
        lines.extend(f"  {line}" if line else "" for line in r.traceback.rstrip().splitlines())
    return "\n".join(lines)


def format_arguments(r: Report) -> list[str]:
    """The constructor arguments gradlint chose, one line per place they came from; each
    assumed value on its own line, saying so and why."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for a in r.arguments:
        key = (a.how, a.source, a.note) if a.how != "assumed" else (a.how, a.name, a.note)
        groups.setdefault(key, []).append(f"{a.name}={a.value}")
    out = []
    for (how, source, note), values in groups.items():
        joined = ", ".join(values)
        if how == "assumed":
            out.append(f"{joined} assumed ({note})" if note else f"{joined} assumed")
        elif how == "default":
            out.append(f"{joined} ({note}, {source})" if note else f"{joined} (defaults, {source})")
        else:
            out.append(f"{joined} from {source}" + (f" ({note})" if note else ""))
    return [f"  {'arguments:' if i == 0 else ' ' * 10} {line}" for i, line in enumerate(out)]


def format_summary(r: Report, color: bool = False, weakest: int = 3) -> str:
    if r.status != "ok":
        return format_error(r, color)
    s = r.summary
    verdict = s.verdict if s else "?"
    tone = "info" if verdict == "healthy" else "error"
    lines = [f"{_c(r.target, 'bold', color)}: {_c(verdict, tone, color)}"
             f" (attenuation {_decades(s.attenuation_decades)} decades, analysis: {r.analysis})"]
    if s and s.unknown:
        lines.extend(f"  unknown: {why}" for why in s.unknown)
    if r.inputs:
        lines.append(f"  inputs: {r.inputs}")
    lines += format_arguments(r)
    if r.probe is not None:
        lines.extend(format_probe(r))
    weights = [p for p in r.params if p.predicted_grad_rms is not None and len(p.shape) >= 2]
    if weights:
        ordered = sorted(weights, key=lambda p: p.predicted_grad_rms)
        shown = ", ".join(f"{p.name} {_log(p.predicted_grad_rms)}" for p in ordered[:weakest])
        lines.append(f"  weakest weight gradients (log10 RMS): {shown}")
        top = max(weights, key=lambda p: p.predicted_grad_rms)
        lines.append(f"  strongest: {top.name} {_log(top.predicted_grad_rms)}")
    if s and s.attribution:
        parts = ", ".join(f"{k} {_decades(v)}" for k, v in sorted(s.attribution.items(), key=lambda kv: kv[1]))
        lines.append(f"  attribution (decades): {parts}")
    if s and abs(s.residual_growth) >= 0.5:
        lines.append(f"  residual sums of normalized branches {'add' if s.residual_growth > 0 else 'remove'} "
                     f"{abs(s.residual_growth):.1f} decades of gradient toward the input: more paths, each of "
                     "bounded gain, not counted in the verdict")
    for rec in r.recurrent if r.probe is None else ():  # a probe prints them beside the measurement
        if rec.lag_grad_rms and rec.lag_grad_rms[-1] > 0 and rec.lag_grad_rms[0] > 0:
            d = math.log10(rec.lag_grad_rms[0] / rec.lag_grad_rms[-1])
            lines.append(f"  {rec.module or rec.node} ({_how(rec)}, {rec.steps} steps): "
                         f"long-range gradient at step 0 is 10^{d:.1f} of the last step's")
    return "\n".join(lines)


def _how(rec) -> str:
    """``gru``; ``gru, a Python loop``; ``scan``: the cell, and how the recurrence is written."""
    return rec.mode if rec.form in ("module", rec.mode) else f"{rec.mode}, a Python loop"


def format_probe(r: Report, max_rows: int = 20) -> list[str]:
    """The probe's lines: how it ran, the agreement, predicted against measured per layer and,
    for recurrent layers, per time step."""
    p, s, pred = r.probe, r.summary, r.predicted_summary
    batch = ("" if p.batch_size is None else f", batch {p.batch_size}"
             + ("" if p.requested_batch_size in (None, p.batch_size) else f" of {p.requested_batch_size} asked"))
    mem = "" if p.peak_memory_bytes is None else f", peak memory {p.peak_memory_bytes / 2**20:,.0f} MiB"
    decided = ("" if pred is None or pred.verdict == s.verdict
               else f" (predicted {pred.verdict}: the measurement decides)")
    worst = ""
    if p.worst_param:
        worst = f" ({p.worst_param}"
        wp = next((x for x in r.params if x.name == p.worst_param), None)
        if wp is not None and not math.isfinite(p.worst_decades):
            worst += f": predicted {_log(wp.predicted_grad_rms)}, measured {_log(wp.measured_grad_rms)}"
        worst += ")"
    unknown = f"; {len(p.unknown)} unknown predictions not compared" if p.unknown else ""
    if p.compared:
        apart = (f"|log10 predicted - measured| over {p.compared} parameters: median {_dist(p.median_decades)}, "
                 f"worst {_dist(p.worst_decades)} decades{worst}{unknown}")
    else:  # nothing to compare: no statistic, not a reassuring 0.00
        apart = f"no parameter with a known prediction to compare{unknown}"
    lines = [f"  probe ({p.device}, {p.seeds} seeds{batch}, {p.seconds:.2f} s{mem}): "
             f"measured verdict {s.verdict}{decided}; {apart}"]
    lines += [f"  probe: {note}" for note in p.notes]
    if p.departures:
        shown = ", ".join(f"{name} {_ratio(d)}" for name, d in p.departures[:3])
        more = f" and {len(p.departures) - 3} more" if len(p.departures) > 3 else ""
        lines.append(f"  probe: the model's own backward departs from its captured graph at {len(p.departures)} "
                     f"parameters ({shown}{more}): hooks, custom autograd Functions or in-place updates that the "
                     "static analysis does not see; the measured verdict counts them")
    if p.disagreeing:
        more = f" and {len(p.disagreeing) - 5} more" if len(p.disagreeing) > 5 else ""
        lines.append(f"  more than a decade apart: {', '.join(p.disagreeing[:5])}{more}")
    rows = [lr for lr in r.layers if lr.kind not in ("act", "act_module")]
    if rows:
        lines.append("  output-gradient RMS per layer, forward order (log10):")
        lines.append(f"    {'layer':<32} {'kind':<11} {'predicted':>9} {'measured':>9} {'apart':>6}")
        for lr in _spread(rows, max_rows):
            apart = ""
            if lr.measured_grad_rms and lr.grad_rms and lr.measured_grad_rms > 0 and lr.grad_rms > 0:
                apart = f"{math.log10(lr.grad_rms) - math.log10(lr.measured_grad_rms):+6.2f}"
            name = lr.module or lr.node
            name = name if len(name) <= 32 else "…" + name[-31:]
            lines.append(f"    {name:<32} {lr.kind:<11} {_log(lr.grad_rms):>9} "
                         f"{_log(lr.measured_grad_rms) if lr.measured_grad_rms is not None else '-':>9} {apart:>6}")
        if len(rows) > max_rows:
            lines.append(f"    ({max_rows} of {len(rows)} layers, evenly spaced, and any more than a decade apart; "
                         "--format json lists all)")
    measured = dict(p.lag_grad_rms)
    for rec in r.recurrent:
        lag = measured.get(rec.lag_key)
        if not lag or not rec.lag_grad_rms or lag[-1] <= 0 or rec.lag_grad_rms[-1] <= 0:
            continue
        steps = sorted({round(i * (len(lag) - 1) / 4) for i in range(5)})
        rel = lambda seq, t: _decades(math.log10(seq[t] / seq[-1])) if seq[t] > 0 else "-inf"
        lines.append(f"  {rec.module or rec.node} ({_how(rec)}, {rec.steps} steps): input gradient at step t under a "
                     "last-step loss, log10 relative to the last step:")
        lines.append("    " + f"{'step':<10}" + "".join(f"{t:>7}" for t in steps))
        lines.append("    " + f"{'predicted':<10}" + "".join(f"{rel(rec.lag_grad_rms, t):>7}" for t in steps))
        lines.append("    " + f"{'measured':<10}" + "".join(f"{rel(lag, t):>7}" for t in steps))
    return lines


def _dist(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "inf"


def _ratio(d: float) -> str:
    """A departure log10(model / graph) in words."""
    if math.isinf(d):
        return "gets a gradient the graph does not give it" if d > 0 else "gets none where the graph gives one"
    return f"10^{d:+.1f} of the graph's"


def _spread(rows: list, n: int, key: Any = None) -> list:
    """At most ``n`` rows, evenly spaced from first to last, keeping every row ``key`` picks
    (by default: prediction and measurement more than a decade apart)."""
    if len(rows) <= n:
        return rows

    def apart(lr) -> bool:
        return bool(lr.measured_grad_rms and lr.grad_rms and lr.measured_grad_rms > 0 and lr.grad_rms > 0
                    and abs(math.log10(lr.grad_rms / lr.measured_grad_rms)) > 1)

    pick = key or apart
    keep = {round(i * (len(rows) - 1) / (n - 1)) for i in range(n)} | {i for i, lr in enumerate(rows) if pick(lr)}
    return [rows[i] for i in sorted(keep)]


def _log(x: float | None) -> str:
    """log10 of an RMS for a table: ``unknown`` for an unknown value, ``none`` for no gradient."""
    if x is None:
        return "unknown"
    return f"{math.log10(x):.2f}" if x > 0 else "none"


def format_text(reports: Iterable[Report], color: bool = False, profile: bool = False, quiet: bool = False) -> str:
    """ruff-style finding lines, then one summary per target (with ``profile``, its bar chart).

    ``quiet``: the finding lines and the targets that could not be analyzed, nothing else.
    """
    reports = list(reports)
    out = []
    for r in reports:
        for f in r.findings:
            out.append(format_finding(f, color))
    if quiet:
        return "\n".join(out + [format_error(r, color) for r in reports if r.status != "ok"])
    if out:
        out.append("")
    for r in reports:
        out.append(format_summary(r, color))
        if profile and r.status == "ok":
            out.extend(format_profile(r, color))
    return "\n".join(out)


def format_profile(r: Report, color: bool = False, width: int = 40, max_rows: int = 24) -> list[str]:
    """A bar per layer, in forward order, of what the verdict reads there: the trunk's gradient
    signal x·dL/dx relative to the output's (backward) and the forward signal since the last
    normalization, in decades; the bar shows the one farther from 0. A row is marked where it
    reaches the threshold, so the marks, the chart and the verdict say the same thing. After a
    probe the measured profile is drawn and marked, as the measured verdict decides."""
    probed = r.probe is not None
    rows = []
    for lr in r.layers:
        if lr.kind not in PROFILE_KINDS:
            continue
        back, fwd = ((lr.measured_signal_decades, lr.measured_forward_decades) if probed
                     else (lr.signal_decades, lr.forward_decades))
        if back is None and fwd is None:
            continue
        rows.append((lr, back or 0.0, fwd or 0.0))
    if not rows:
        return ["  gradient profile: no layer on the trunk"]
    threshold = r.summary.threshold if r.summary else 2.0
    finite = [abs(v) for _, b, f in rows for v in (b, f) if math.isfinite(v)]
    # The axis always spans the threshold, so a healthy profile's small wiggles stay small.
    span = max([threshold + 0.5, *finite])
    which = "measured" if probed else "predicted"
    lines = [f"  gradient profile as the verdict reads it ({which}; decades relative to the output, backward: "
             f"x·dL/dx along the trunk, forward: signal since the last normalization; █ = {span / width:.2g} decades):"]
    names = {id(lr): (lr.module or lr.node) for lr, _, _ in rows}
    name_w = min(28, max(len(n) for n in names.values()))
    lines.append(f"    {'layer':<{name_w}} {'backward':>8} {'forward':>8}")
    for lr, back, fwd in _spread(rows, max_rows, key=lambda row: max(abs(row[1]), abs(row[2])) >= threshold):
        value = back if abs(back) >= abs(fwd) else fwd
        bar = "█" * max(1, round(min(abs(value), span) / span * width)) if math.isfinite(value) else "█" * width
        zone = "vanishing" if value <= -threshold else "exploding" if value >= threshold else ""
        name = names[id(lr)]
        name = name if len(name) <= name_w else "…" + name[-(name_w - 1):]
        text = f"    {name:<{name_w}} {_decades2(back):>8} {_decades2(fwd):>8} {bar}"
        lines.append(_c(text, "error", color) + f" {zone}" if zone and color else text + (f" {zone}" if zone else ""))
    if len(rows) > max_rows:
        lines.append(f"    ({max_rows} of {len(rows)} layers, evenly spaced, and every marked one)")
    s = r.summary
    if s and s.recurrent_decay > 0 and s.recurrent_decay >= max(s.trunk_attenuation, s.forward_collapse):
        lines.append(f"    over time: the long-range gradient decays {s.recurrent_decay:.1f} decades over the sequence"
                     + (" vanishing" if s.recurrent_decay >= threshold else ""))
    return lines


def _decades2(x: float) -> str:
    return f"{x:+.2f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def summary_counts(reports: Iterable[Report]) -> dict[str, Any]:
    """Counts for a run: targets, errors, findings by severity, verdicts."""
    reports = list(reports)
    sev: dict[str, int] = {"error": 0, "warning": 0, "info": 0}
    verdicts: dict[str, int] = {}
    for r in reports:
        for f in r.findings:
            sev[f.severity] = sev.get(f.severity, 0) + 1
        if r.summary is not None:
            verdicts[r.summary.verdict] = verdicts.get(r.summary.verdict, 0) + 1
    return {"targets": len(reports), "could_not_analyze": sum(r.status != "ok" for r in reports),
            "findings": sev, "verdicts": verdicts}


# -- a failed assertion ------------------------------------------------------------------------------

def assertion_failure(report: Report, ignore: Iterable[str] = (), fail_on: str | None = None) -> str | None:
    """The message ``Report.assert_clean`` raises with, or None when the report is clean.

    Fails when gradlint could not analyze the target, when the verdict is not healthy, or on
    a finding at or above ``fail_on`` whose code, prefix or rule name is not in ``ignore``.
    After a probe the measurement decides: the verdict is the measured one, and a finding the
    measurement refuted (``confirmed=False``) does not fail.
    """
    if fail_on is not None and fail_on not in ("error", "warning", "info"):
        raise ValueError(f"fail_on={fail_on!r} must be 'error', 'warning' or 'info'")
    if isinstance(ignore, str):
        ignore = (ignore,)
    if report.status != "ok":
        return f"gradlint could not analyze {report.target}: {report.error}"
    if report.summary is not None and report.summary.verdict == "unknown":
        # Not a finding to ignore: gradlint does not know, so it cannot say healthy.
        return (f"gradlint: {report.target}: the verdict is unknown, so it cannot be called healthy:\n"
                + "\n".join(f"  {why}" for why in report.summary.unknown))
    findings, verdict, refuted = failing(report, ignore, fail_on)
    if findings or verdict:
        return failure_message(report, findings, verdict, refuted, fail_on or report.fail_on)
    return None


def failing(report: Report, ignore: Iterable[str] = (), fail_on: str | None = None
            ) -> tuple[list[Finding], str | None, list[Finding]]:
    """What makes ``report`` fail an assertion.

    Returns:
        The failing findings, the unhealthy verdict (None when healthy or ignored), and the
        findings at or above ``fail_on`` that the measurement refuted.
    """
    from gradlint.lint.grouping import flatten, group

    ignore = tuple(ignore)
    level = Severity(fail_on or report.fail_on).rank
    # An ignored rule's finding leaves its notes, grouped again, as the CLI's --ignore does.
    kept = report.findings
    if ignore and any(matches(g.code, g.name, ignore) for f in report.findings for g in (f, *f.notes)):
        kept = group([f for f in flatten(report.findings) if not matches(f.code, f.name, ignore)], report.layers)
    due = [f for f in kept if Severity(f.severity).rank >= level]
    failing_ = [f for f in due if f.confirmed is not False]
    refuted = [f for f in due if f.confirmed is False]
    verdict = report.summary.verdict if report.summary is not None else None
    rule = VERDICT_RULES.get(verdict or "")
    # A verdict is accepted as its rule is: ignored, or its finding silenced by an inline comment.
    accepted = rule and (matches(rule[0], rule[1], ignore) or any(f.code == rule[0] for f in report.suppressed))
    bad_verdict = verdict if rule and not accepted else None
    return failing_, bad_verdict, refuted


def failure_message(report: Report, findings: list[Finding], verdict: str | None, refuted: list[Finding],
                    fail_on: str) -> str:
    """The multi-line message of a failed assertion."""
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
            loc = f"{shown_path(f.path)}:{f.line or 1}:{f.column or 1}{where}" if f.path else f"model{where}"
            mark = ", confirmed" if f.confirmed else ""
            lines.append(f"  {f.code} [{f.severity}{mark}] {loc}: {f.message}")
            for i, fix_line in enumerate(f.fix.splitlines()):
                lines.append(("      fix: " if i == 0 else "           ") + fix_line)
            for n in f.notes:
                where = f" in {n.module}" if n.module else ""
                loc = f"{shown_path(n.path)}:{n.line or 1}:{n.column or 1}{where}" if n.path else f"model{where}"
                text = n.message if n.role != "fix" or not n.fix else n.fix
                lines.append(f"      note: {n.code} ({n.role}) {loc}: " + "\n           ".join(text.splitlines()))
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


def _log_or_na(x: float | None) -> str:
    return f"{math.log10(x):.2f}" if x and x > 0 else ("none" if x == 0 else "unknown")


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
        extra = f"  (predicted {_log_or_na(p.predicted_grad_rms)})" if measured else ""
        out.append(f"  {p.name:<{width}}  {_log_or_na(value(p))}{extra}")
    top = ordered[-1]
    out.append(f"strongest: {top.name} {_log_or_na(value(top))}")
    return out
