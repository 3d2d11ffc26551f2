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
from gradlint.base.findings import ExitCode, Finding, Severity

#: Decades of attenuation (or growth) beyond which a verdict is vanishing (or exploding).
DEFAULT_THRESHOLD = 2.0


@dataclass(frozen=True)
class ParamReport:
    """Predicted (and, after a probe, measured) gradient of one parameter tensor.

    ``predicted_grad_rms`` is None when the prediction is unknown (an op upstream of the
    parameter that gradlint cannot account for, a fallback analysis that cannot see the
    path), and 0.0 only where no gradient provably reaches the parameter (unused, detached,
    under no_grad). ``measured_grad_rms`` is None before a probe; after one it is the RMS of
    the gradient the model's own ``loss.backward()`` gave (0.0: none reached it).
    """

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
    """Predicted RMS of the backpropagated gradient at one layer's output.

    Attributes:
        grad_rms: Predicted RMS of dL/d(output) (None: unknown).
        forward_rms: Predicted RMS of the output (None: unknown).
        measured_grad_rms: After a probe, the measured one (None: not measured at this layer).
        signal_decades: What the verdict reads at this layer: the trunk's backward profile
            (``TrunkPoint.t_decades``) at the first trunk point at or after the layer, in
            decades relative to the output (None: no trunk point, or unknown).
        forward_decades: The forward profile there (``TrunkPoint.q_decades``).
        measured_signal_decades: After a probe, the measured backward profile there.
        measured_forward_decades: After a probe, the measured forward profile there.
    """

    module: str
    kind: str
    node: str
    grad_rms: float | None
    forward_rms: float | None
    measured_grad_rms: float | None = None
    signal_decades: float | None = None
    forward_decades: float | None = None
    measured_signal_decades: float | None = None
    measured_forward_decades: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "kind": self.kind, "node": self.node, "grad_rms": _num(self.grad_rms),
                "forward_rms": _num(self.forward_rms), "measured_grad_rms": _num(self.measured_grad_rms),
                "signal_decades": _round(self.signal_decades), "forward_decades": _round(self.forward_decades),
                "measured_signal_decades": _round(self.measured_signal_decades),
                "measured_forward_decades": _round(self.measured_forward_decades)}


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
        uncounted_decades: The change of T at this step that the verdict does not count: the
            gradient a residual sum of normalized branches adds (more paths, each of bounded
            gain; see ``Summary.residual_growth``). ``step_decades`` is 0 there.
    """

    node: str
    module: str
    t_decades: float
    q_decades: float
    cause: str | None
    step_decades: float
    uncounted_decades: float = 0.0


@dataclass(frozen=True)
class Summary:
    """The verdict for one model.

    Attributes:
        verdict: ``vanishing``, ``exploding``, ``blocked``, ``healthy``, or ``unknown`` when
            the analysis could not produce numbers to judge by (``unknown`` says why); an
            unknown verdict fails the gate with exit code 2, like a target that could not be
            analyzed.
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
        residual_growth: Decades the trunk's backward profile gains (negative: loses) at residual
            sums whose branches all pass through a normalization. Not counted in the verdict: each
            path keeps a bounded gain, and the extra gradient comes from the number of paths
            (docs/design.md §2.3).
        unknown: Why numbers are missing, one line per reason (unknown predictions, an op
            gradlint cannot account for, a fallback analysis); empty when every number is known.
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
    residual_growth: float = 0.0
    unknown: tuple[str, ...] = ()

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
            "residual_growth_decades": _round(self.residual_growth),
            "unknown": list(self.unknown),
        }


def _round(x: float | None, digits: int = 3) -> float | None:
    """Rounded for JSON; infinities as ±1e308 (JSON has no infinity), NaN and None as null."""
    if x is None or math.isnan(x):
        return None
    if not math.isfinite(x):
        return 1e308 if x > 0 else -1e308
    return round(x, digits)


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

    The measurement is the model's own forward and ``loss.backward()`` (on a copy, in float64);
    the captured graph is run too, to read the gradient at every node, and checked against it.

    Attributes:
        median_decades: Median |log10 predicted - log10 measured| over every parameter whose
            prediction is known (a zero against a nonzero value counts as infinitely far).
        worst_decades: The largest of them (``inf`` for a zero against a nonzero value).
        worst_param: Where the largest is.
        disagreeing: Parameters more than a decade apart, infinitely far ones included.
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
        compared: How many parameters the median and worst are over.
        unknown: Parameters whose prediction is unknown, so not compared.
        departures: ``(parameter, log10 model / graph)`` where the gradient of the model's own
            backward departs from the captured graph's run of the same draw (hooks, custom
            autograd Functions, in-place updates the capture does not reproduce), largest first;
            ``±inf`` where one of them is zero.
        nodes_from: Where the per-node values (the verdict's profiles, the per-layer table) were
            read: ``graph`` (the captured graph's run, which agreed with the model's own
            backward), ``graph, departing`` (it did not: the departures then count in the
            verdict), or ``modules`` (hooks on the model's own modules, when there is no graph to run).
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
    compared: int = 0
    unknown: tuple[str, ...] = ()
    departures: tuple[tuple[str, float], ...] = ()
    nodes_from: str = "graph"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "seeds": self.seeds, "seconds": round(self.seconds, 3),
                "batch_size": self.batch_size, "requested_batch_size": self.requested_batch_size,
                "peak_memory_bytes": self.peak_memory_bytes,
                "median_decades": _round(self.median_decades, 4), "worst_decades": _round(self.worst_decades, 4),
                "worst_param": self.worst_param, "disagreeing": list(self.disagreeing), "compared": self.compared,
                "unknown": list(self.unknown), "departures": {k: _round(v, 4) for k, v in self.departures},
                "nodes_from": self.nodes_from, "notes": list(self.notes)}


@dataclass(frozen=True)
class Argument:
    """One constructor argument gradlint built a target with, and where its value came from.

    Attributes:
        name: The parameter (``config``; ``config.d_model`` for a field of a config it built).
        value: The value, as Python writes it (shortened).
        source: ``file:line`` where the repository spells or computes it.
        how: ``found`` (the repository's own call or option), ``default`` (a config class's or
            classmethod's defaults), ``assumed`` (a conventional size for a value the repository
            computes at run time, or a default kept because the call's value is unknown), or
            ``configured`` (the user's ``kwargs``).
        note: More about it: how it was found, or why it was assumed.
    """

    name: str
    value: str
    source: str
    how: str = "found"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "source": self.source, "how": self.how, "note": self.note}


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
        arguments: The constructor arguments gradlint found or assumed to build the target, each
            with where its value came from; empty when it needed none.
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
    arguments: tuple[Argument, ...] = ()
    suppressed: tuple[Finding, ...] = ()

    @property
    def name(self) -> str:
        """The target's own name, without the ``path::`` prefix the runner gives it."""
        return self.target.rsplit("::", 1)[-1]

    @property
    def ok(self) -> bool:
        """True when analyzed, the verdict is known, and no finding reaches ``fail_on``.

        After a probe a finding the measurement refuted (``confirmed=False``) does not count, and
        the measured verdict has its own finding (GL101, GL102 or GL701), so the CLI's exit code,
        ``report.ok`` and ``assert_healthy`` agree.
        """
        return self.exit_code == ExitCode.CLEAN

    @property
    def exit_code(self) -> int:
        """What this target alone makes ``gradlint check`` exit with: 2 when it could not be
        analyzed or its verdict is ``unknown``, 1 when a finding reaches ``fail_on``, else 0."""
        if self.status != "ok" or (self.summary is not None and self.summary.verdict == "unknown"):
            return ExitCode.COULD_NOT_ANALYZE
        level = Severity(self.fail_on).rank
        if any(Severity(f.severity).rank >= level and f.confirmed is not False for f in self.findings):
            return ExitCode.FINDINGS
        return ExitCode.CLEAN

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
            "arguments": [a.to_dict() for a in self.arguments],
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
