"""Reports: the immutable result of checking one target, and its text and JSON forms."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from gradlint.findings import Finding, Severity
from gradlint.summary import Summary


@dataclass(frozen=True)
class ParamReport:
    """Predicted (and, after a probe, measured) gradient of one parameter tensor."""

    name: str
    shape: tuple[int, ...]
    module: str
    predicted_grad_rms: float | None
    measured_grad_rms: float | None = None
    stats_source: str = "tensor"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "module": self.module,
                "predicted_grad_rms": _num(self.predicted_grad_rms), "measured_grad_rms": _num(self.measured_grad_rms),
                "stats_source": self.stats_source}


@dataclass(frozen=True)
class LayerReport:
    """Predicted RMS of the backpropagated gradient at one layer's output."""

    module: str
    kind: str
    node: str
    grad_rms: float
    forward_rms: float
    measured_grad_rms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "kind": self.kind, "node": self.node, "grad_rms": _num(self.grad_rms),
                "forward_rms": _num(self.forward_rms), "measured_grad_rms": _num(self.measured_grad_rms)}


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    if not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


@dataclass(frozen=True)
class Report:
    """The outcome of checking one target.

    Attributes:
        target: ``path::Name`` (or the model's class name for ``gradlint.check``).
        status: ``ok``, or ``error`` when gradlint could not analyze it.
        error: What went wrong, with file and line, when status is ``error``.
        analysis: ``export``, ``fx`` or ``module-order``.
        summary: Verdict, attenuation and attribution.
        params: Per parameter tensor.
        layers: Per layer output.
        findings: What the rules found (after suppressions).
        recurrent: Per recurrent layer, the per-time-step input gradients.
        inputs: The example inputs used, in words, and where they came from.
        fail_on: The lowest severity that makes the report not ``ok``.
    """

    target: str
    status: str = "ok"
    error: str | None = None
    analysis: str | None = None
    summary: Summary | None = None
    params: tuple[ParamReport, ...] = ()
    layers: tuple[LayerReport, ...] = ()
    findings: tuple[Finding, ...] = ()
    recurrent: tuple[Any, ...] = ()
    inputs: str = ""
    fail_on: str = "error"
    path: str | None = None
    line: int | None = None
    result: Any = field(default=None, compare=False, repr=False)
    probe: Any = None
    predicted_summary: Summary | None = None

    @property
    def ok(self) -> bool:
        """True when analyzed and nothing reaches ``fail_on``."""
        level = Severity(self.fail_on).rank
        return self.status == "ok" and not any(Severity(f.severity).rank >= level for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "error": self.error,
            "analysis": self.analysis,
            "inputs": self.inputs,
            "summary": self.summary.to_dict() if self.summary else None,
            "params": [p.to_dict() for p in self.params],
            "layers": [lr.to_dict() for lr in self.layers],
            "recurrent": [
                {"module": r.module, "mode": r.mode, "steps": r.steps,
                 "input_grad_rms": [_num(x) for x in r.input_grad_rms],
                 "lag_grad_rms": [_num(x) for x in r.lag_grad_rms],
                 "lag_grad_rms_bound": [_num(x) for x in r.lag_grad_rms_bound]} for r in self.recurrent],
            "findings": [f.to_dict() for f in self.findings],
            "probe": None if self.probe is None else {
                "device": self.probe.device, "seeds": self.probe.seeds, "seconds": round(self.probe.seconds, 3),
                "median_decades": round(self.probe.median_decades, 4), "worst_decades": round(self.probe.worst_decades, 4),
                "worst_param": self.probe.worst_param, "disagreeing": list(self.probe.disagreeing),
                "predicted_summary": self.predicted_summary.to_dict() if self.predicted_summary else None},
        }

    def __str__(self) -> str:
        return format_text([self], color=False)


# -- text ---------------------------------------------------------------------------------

_COLORS = {"error": "\033[31m", "warning": "\033[33m", "info": "\033[36m", "bold": "\033[1m", "dim": "\033[2m"}


def _c(text: str, what: str, color: bool) -> str:
    return f"{_COLORS[what]}{text}\033[0m" if color else text


def relpath(path: str | None) -> str:
    if not path:
        return "<unknown>"
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def format_finding(f: Finding, color: bool = False) -> str:
    loc = f"{relpath(f.path)}:{f.line or 1}:{f.column or 1}"
    head = f"{_c(loc, 'bold', color)}: {f.code} [{_c(f.severity, f.severity, color)}] {f.message}"
    if f.fix:
        head += "\n" + "\n".join("    fix: " + line if i == 0 else "         " + line
                                 for i, line in enumerate(f.fix.splitlines()))
    return head


def _decades(x: float) -> str:
    return f"{x:+.1f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def format_summary(r: Report, color: bool = False, weakest: int = 3) -> str:
    if r.status != "ok":
        return f"{_c(r.target, 'bold', color)}: {_c('could not analyze', 'error', color)}: {r.error}"
    s = r.summary
    verdict = s.verdict if s else "?"
    tone = "info" if verdict == "healthy" else "error"
    lines = [f"{_c(r.target, 'bold', color)}: {_c(verdict, tone, color)}"
             f" (attenuation {_decades(s.attenuation_decades)} decades, analysis: {r.analysis})"]
    if r.inputs:
        lines.append(f"  inputs: {r.inputs}")
    if r.probe is not None:
        p = r.probe
        pred = r.predicted_summary
        lines.append(f"  probe ({p.device}, {p.seeds} seeds, {p.seconds:.2f} s): measured verdict {s.verdict}"
                     f"{'' if pred is None or pred.verdict == s.verdict else f' (predicted {pred.verdict}: the measurement decides)'}; "
                     f"|log10 predicted - measured| median {p.median_decades:.2f}, worst {p.worst_decades:.2f} decades"
                     + (f" ({p.worst_param})" if p.worst_param else ""))
        if p.disagreeing:
            lines.append(f"  more than a decade apart: {', '.join(p.disagreeing[:5])}")
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
    for rec in r.recurrent:
        if rec.lag_grad_rms and rec.lag_grad_rms[-1] > 0 and rec.lag_grad_rms[0] > 0:
            d = math.log10(rec.lag_grad_rms[0] / rec.lag_grad_rms[-1])
            lines.append(f"  {rec.module or rec.node} ({rec.mode}, {rec.steps} steps): long-range gradient at step 0 is "
                         f"10^{d:.1f} of the last step's")
    return "\n".join(lines)


def _log(x: float) -> str:
    return f"{math.log10(x):.2f}" if x and x > 0 else "-inf"


def format_text(reports: Iterable[Report], color: bool = False) -> str:
    """ruff-style finding lines, then one summary per target."""
    reports = list(reports)
    out = []
    for r in reports:
        for f in r.findings:
            out.append(format_finding(f, color))
    if out:
        out.append("")
    for r in reports:
        out.append(format_summary(r, color))
    return "\n".join(out)


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
