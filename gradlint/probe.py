"""Probe mode: a real backward pass that confirms or refutes each prediction.

``probe(model, inputs)`` runs the static check, then the measurement protocol for real
(``gradlint.measure``: the same exported graph, fresh inputs and loss weights per seed, the
user's model untouched) and returns the report with measured gradients beside the predicted
ones, the agreement between the two, and each finding marked confirmed or not. Where they
disagree, the measured verdict is the report's verdict.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from gradlint.measure import measure
from gradlint.report import Report
from gradlint.result import cause_of
from gradlint.summary import summarize

VERDICT_CODES = {"vanishing": "GL101", "exploding": "GL102"}


@dataclass(frozen=True)
class Agreement:
    """How far predictions and measurements are apart, over the weight matrices.

    Attributes:
        median_decades: Median |log10 predicted - log10 measured|.
        worst_decades: The largest of them.
        worst_param: Where the largest is.
        disagreeing: Parameters more than a decade apart.
        device: Where the probe ran.
        seeds: Number of seeds.
        seconds: Wall time of the measurement.
    """

    median_decades: float
    worst_decades: float
    worst_param: str
    disagreeing: tuple[str, ...]
    device: str
    seeds: int
    seconds: float


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def probe(model: nn.Module, inputs: Any = None, *, device: str = "cpu", seeds: int = 3, **check_kwargs) -> Report:
    """Check ``model`` statically, then measure it for real and put both in one report.

    Args:
        model: The model; it is not modified (parameters, buffers, mode, grads, RNG).
        inputs: As for ``gradlint.check``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        seeds: Independent draws of inputs and loss weights.
        **check_kwargs: Passed on to ``gradlint.check``.

    Returns:
        The report with ``measured_grad_rms`` filled, ``probe`` agreement, findings marked
        ``confirmed``, and the measured verdict as the summary.
    """
    from gradlint.api import _as_example_inputs, check

    ex = _as_example_inputs(model, inputs)
    report = check(model, ex, **check_kwargs)
    dev = _device(device)
    t0 = time.perf_counter()
    meas = measure(model, ex, seeds=seeds, device=dev)
    seconds = time.perf_counter() - t0

    params = tuple(replace(p, measured_grad_rms=meas.param_rms(p.name)) for p in report.params)
    diffs = [(p.name, abs(math.log10(p.predicted_grad_rms) - math.log10(p.measured_grad_rms)))
             for p in params if sum(d > 1 for d in p.shape) >= 2 and p.predicted_grad_rms and p.measured_grad_rms]
    worst = max(diffs, key=lambda d: d[1]) if diffs else ("", 0.0)
    agreement = Agreement(
        median_decades=statistics.median(d for _, d in diffs) if diffs else 0.0, worst_decades=worst[1],
        worst_param=worst[0], disagreeing=tuple(n for n, d in diffs if d > 1.0), device=dev, seeds=seeds,
        seconds=seconds)

    result = report.result
    g = result.graph
    numel = {n.name: math.prod(n.shape) if n.shape else 1 for n in result.propagation.nodes}
    q = {n.name: meas.node_q.get(n.name, n.q) for n in result.propagation.nodes}
    s = {n.name: meas.node_s.get(n.name, n.s) for n in result.propagation.nodes}
    rec = []
    for r in result.propagation.recurrent:
        lag = meas.lag_rms(r.module)
        if lag and lag[-1] > 0:
            rec.append((r.node, math.log10(lag[-1] / lag[0]) if lag[0] > 0 else math.inf))
    grads = {k: sum(v) / len(v) for k, v in meas.param_ms.items() if v}
    measured = summarize(g, q, s, numel, {n.name: cause_of(n) for n in g.nodes}, rec, grads,
                         report.summary.threshold, g.batch_size)
    findings = tuple(replace(f, confirmed=_confirmed(f, measured, agreement)) for f in report.findings)
    return replace(report, params=params, findings=findings, summary=measured, probe=agreement,
                   predicted_summary=report.summary)


def _confirmed(finding, measured, agreement) -> bool | None:
    """A vanishing/exploding finding stands when the measured verdict agrees; other findings
    stand when the measurement agrees with the prediction to within a decade."""
    for verdict, code in VERDICT_CODES.items():
        if finding.code == code:
            return measured.verdict == verdict
    if finding.severity == "info":
        return None
    return agreement.worst_decades <= 1.0
