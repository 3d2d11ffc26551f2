"""Reports: the outcome of checking one target, as plain data.

Everything here is numbers, strings and tuples of small frozen dataclasses, with no torch
and no live objects (graphs, engine results travel beside a report, never inside it), so a
report crosses processes and the cache as JSON (``gradlint.run.wire``) and renders without
torch (``gradlint.output``).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gradlint.base.errors import GradlintError
from gradlint.base.findings import Finding, Severity

#: Decades of attenuation (or growth) beyond which a verdict is vanishing (or exploding).
DEFAULT_THRESHOLD = 2.0


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
class TrunkPoint:
    """One tensor on the trunk.

    Attributes:
        node: Graph node name.
        module: Qualified module name.
        t_decades: 0.5·log10 of the cumulative T ratio relative to the output (benign ops
            counted as neutral): positive means more gradient signal than at the output.
        q_decades: 0.5·log10 of q relative to the last normalization or input before it.
        cause: The cause of the change since the previous trunk point.
        step_decades: Change of ``t_decades`` since the previous trunk point (toward the input).
    """

    node: str
    module: str
    t_decades: float
    q_decades: float
    cause: str | None
    step_decades: float


@dataclass(frozen=True)
class Summary:
    """The verdict for one model.

    Attributes:
        verdict: ``vanishing``, ``exploding``, ``blocked`` or ``healthy``.
        attenuation_decades: See the module docstring; positive = gradient lost.
        trunk_attenuation: Decades lost along the trunk at the weakest point.
        trunk_amplification: Decades gained along the trunk at the strongest point.
        forward_collapse: Decades the forward signal shrinks since the last normalization.
        forward_growth: Decades it grows.
        recurrent_decay: Largest decay of a long-range recurrent gradient over its sequence.
        weakest: Trunk node at the weakest point (or the recurrent layer's node).
        strongest: Trunk node at the strongest point.
        attribution: Decades per cause along the dominant effect's path (negative = loss).
        counts: Per cause, how many ops on that path it was attributed to.
        threshold: The threshold the verdict used.
        trunk: The trunk profile, input side first.
    """

    verdict: str
    attenuation_decades: float
    trunk_attenuation: float = 0.0
    trunk_amplification: float = 0.0
    forward_collapse: float = 0.0
    forward_growth: float = 0.0
    recurrent_decay: float = 0.0
    weakest: str | None = None
    strongest: str | None = None
    attribution: dict[str, float] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD
    trunk: tuple[TrunkPoint, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "attenuation_decades": _round(self.attenuation_decades),
            "trunk_attenuation_decades": _round(self.trunk_attenuation),
            "trunk_amplification_decades": _round(self.trunk_amplification),
            "forward_collapse_decades": _round(self.forward_collapse),
            "forward_growth_decades": _round(self.forward_growth),
            "recurrent_decay_decades": _round(self.recurrent_decay),
            "weakest": self.weakest,
            "strongest": self.strongest,
            "attribution": {k: _round(v) for k, v in self.attribution.items()},
            "threshold": self.threshold,
        }


def _round(x: float) -> float | None:
    if x is None or math.isnan(x):
        return None
    if not math.isfinite(x):
        return 1e308 if x > 0 else -1e308
    return round(x, 3)


@dataclass(frozen=True)
class RecurrentReport:
    """Per-time-step gradient at the input of a recurrent layer.

    Attributes:
        node: Graph node of the recurrent op.
        module: Qualified module name.
        mode: ``lstm``, ``gru``, ``rnn_tanh`` or ``rnn_relu``.
        steps: Sequence length T.
        input_grad_rms: RMS of dL/dx_t for each t under the model's own loss.
        lag_grad_rms: RMS of dL/dx_t for each t when only the last step's output carries
            the loss: the long-range gradient, whose decay over t is the vanishing that
            the shared weights' gradients never show.
        lag_grad_rms_bound: The same under plain mean field, the pessimistic bound
            (docs/design.md §6, R2/R3).
        form: How the recurrence is written: ``module`` (nn.RNN / LSTM / GRU), ``loop`` (a
            Python loop over time steps: a cell module called per step, or a step written by
            hand) or ``scan`` (a diagonal linear recurrence s_t = a_t * s_{t-1} + b_t, a
            selective scan). For ``loop`` and ``scan``, the input at step t is what the loop
            reads from outside at that step, and the loss sits on the last step's state.
    """

    node: str
    module: str
    mode: str
    steps: int
    input_grad_rms: tuple[float, ...]
    lag_grad_rms: tuple[float, ...]
    lag_grad_rms_bound: tuple[float, ...]
    form: str = "module"

    @property
    def lag_key(self) -> str:
        """What a probe's measured long-range gradients are keyed by: the module for nn.RNN /
        LSTM / GRU, the node naming the loop for a recurrence written as a loop or a scan."""
        return self.module if self.form == "module" else self.node


@dataclass(frozen=True)
class Agreement:
    """How far predictions and measurements are apart, and how the probe ran.

    Attributes:
        median_decades: Median |log10 predicted - log10 measured| over the weight matrices.
        worst_decades: The largest of them.
        worst_param: Where the largest is.
        disagreeing: Weight matrices more than a decade apart.
        device: Where the probe ran.
        seeds: Number of seeds.
        seconds: Wall time of the measurement (materialization included).
        batch_size: Samples per seed the measurement used.
        requested_batch_size: Samples per seed asked for (more than ``batch_size`` after an
            out-of-memory retry).
        peak_memory_bytes: On CUDA, the peak memory allocated by the measurement.
        lag_grad_rms: Per recurrent module (and per loop or scan, by its node; see
            ``RecurrentReport.lag_key``), the measured RMS of the input gradient at each time step when only
            the last step's output carries the loss.
        notes: What the user should know about how the probe ran.
    """

    median_decades: float
    worst_decades: float
    worst_param: str
    disagreeing: tuple[str, ...]
    device: str
    seeds: int
    seconds: float
    batch_size: int | None = None
    requested_batch_size: int | None = None
    peak_memory_bytes: int | None = None
    lag_grad_rms: tuple[tuple[str, tuple[float, ...]], ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "seeds": self.seeds, "seconds": round(self.seconds, 3),
                "batch_size": self.batch_size, "requested_batch_size": self.requested_batch_size,
                "peak_memory_bytes": self.peak_memory_bytes,
                "median_decades": round(self.median_decades, 4), "worst_decades": round(self.worst_decades, 4),
                "worst_param": self.worst_param, "disagreeing": list(self.disagreeing), "notes": list(self.notes)}


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
        suppressed: The findings that inline comments (``# noqa: GL101``, ``# gradlint: ignore``)
            silenced; a silenced GL101, GL102 or GL701 also accepts its verdict.
        recurrent: Per recurrent layer, the per-time-step input gradients.
        probe: After a probe, how it ran and how far prediction and measurement are apart.
        predicted_summary: After a probe, the predicted verdict (``summary`` is the measured one).
        inputs: The example inputs used, in words, and where they came from.
        fail_on: The lowest severity that makes the report not ``ok``.
        traceback: When status is ``error``: the traceback of the user's code when it raised
            (their frames only), or the whole one when gradlint itself failed; None otherwise.
    """

    target: str
    status: str = "ok"
    error: str | None = None
    analysis: str | None = None
    summary: Summary | None = None
    params: tuple[ParamReport, ...] = ()
    layers: tuple[LayerReport, ...] = ()
    findings: tuple[Finding, ...] = ()
    recurrent: tuple[RecurrentReport, ...] = ()
    inputs: str = ""
    fail_on: str = "error"
    path: str | None = None
    line: int | None = None
    probe: Agreement | None = None
    predicted_summary: Summary | None = None
    traceback: str | None = None
    suppressed: tuple[Finding, ...] = ()

    @property
    def name(self) -> str:
        """The target's own name, without the ``path::`` prefix the runner gives it."""
        return self.target.rsplit("::", 1)[-1]

    @property
    def ok(self) -> bool:
        """True when analyzed and nothing reaches ``fail_on``."""
        level = Severity(self.fail_on).rank
        return self.status == "ok" and not any(Severity(f.severity).rank >= level for f in self.findings)

    def assert_clean(self, ignore: Iterable[str] = (), fail_on: str | None = None) -> Report:
        """Raise ``AssertionError`` unless the gradients are healthy; return the report otherwise.

        Fails when gradlint could not analyze the target, when the verdict is not healthy, or
        on a finding at or above ``fail_on`` (default: the report's own) whose code, prefix or
        rule name is not in ``ignore``. After a probe, the measured verdict counts and refuted
        findings (``confirmed=False``) do not. The message lists the verdict, each failing
        finding with its location and fix, and the weakest layers.
        """
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        from gradlint.output.text import assertion_failure

        message = assertion_failure(self, ignore=ignore, fail_on=fail_on)
        if message:
            raise AssertionError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "error": self.error,
            "traceback": self.traceback,
            "analysis": self.analysis,
            "inputs": self.inputs,
            "summary": self.summary.to_dict() if self.summary else None,
            "params": [p.to_dict() for p in self.params],
            "layers": [lr.to_dict() for lr in self.layers],
            "recurrent": [
                {"module": r.module, "node": r.node, "form": r.form, "mode": r.mode, "steps": r.steps,
                 "input_grad_rms": [_num(x) for x in r.input_grad_rms],
                 "lag_grad_rms": [_num(x) for x in r.lag_grad_rms],
                 "lag_grad_rms_bound": [_num(x) for x in r.lag_grad_rms_bound]} for r in self.recurrent],
            "findings": [f.to_dict() for f in self.findings],
            "suppressed": [f.to_dict() for f in self.suppressed],
            "probe": None if self.probe is None else {
                **self.probe.to_dict(),
                "lag_grad_rms": {m: [_num(x) for x in lag] for m, lag in self.probe.lag_grad_rms},
                "predicted_summary": self.predicted_summary.to_dict() if self.predicted_summary else None},
        }

    def __str__(self) -> str:
        from gradlint.output.text import format_text

        return format_text([self], color=False)

    def __repr__(self) -> str:
        """A few lines, not every field: the verdict, the findings' codes, what was analyzed."""
        if self.status != "ok":
            return f"<Report {self.target}: could not analyze: {(self.error or '').splitlines()[0][:120]}>"
        s = self.summary
        verdict = f"{s.verdict} ({s.attenuation_decades:+.1f} decades)" if s is not None else "no verdict"
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.severity] = counts.get(f.severity, 0) + 1
        found = ", ".join(f"{n} {sev}{'s' if n != 1 and sev != 'info' else ''}" for sev, n in sorted(
            counts.items(), key=lambda kv: -Severity(kv[0]).rank)) or "no findings"
        codes = " ".join(dict.fromkeys(f.code for f in self.findings))
        probe = "" if self.probe is None else f", probed on {self.probe.device}"
        return (f"<Report {self.target}: {verdict}; {found}{': ' + codes if codes else ''}\n"
                f"  {len(self.params)} parameter tensors, {len(self.layers)} layers, analysis {self.analysis}{probe}>")

    def _repr_html_(self) -> str:
        """Jupyter's view: the verdict, the findings with their fixes, the per-layer chart."""
        from gradlint.output.html import report_html

        return report_html(self)

    def plot(self) -> Any:
        """The per-layer gradient chart as a matplotlib ``Figure`` (predicted; measured too after
        a probe). Needs matplotlib (``pip install "torch-gradlint[plot]"``).

        Raises:
            PlotError: Without matplotlib, or when gradlint could not analyze the target.
        """
        from gradlint.output.plot import figure

        return figure(self, asked_by="Report.plot()")


def error_report(target: str, err: BaseException, path: str | None = None, line: int | None = None) -> Report:
    """A report for a target gradlint could not analyze.

    A GradlintError carries the user's traceback when their code raised; any other exception
    escaped gradlint's own handling, and its whole traceback is kept for a bug report.
    """
    if isinstance(err, GradlintError):
        return Report(target=target, status="error", error=str(err), path=err.path or path, line=err.line or line,
                      traceback=getattr(err, "traceback_text", None))
    return Report(target=target, status="error", error=f"{type(err).__name__}: {err}", path=path, line=line,
                  traceback="".join(traceback.format_exception(type(err), err, err.__traceback__)))
