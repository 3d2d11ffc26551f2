"""Probe mode: a real backward pass that confirms or refutes each prediction.

``probe(model, inputs)`` runs the static check, then the measurement protocol for real
(``gradlint.probing.measure``: the same exported graph, fresh inputs and loss weights per seed, the
user's model untouched) and returns the report with measured gradients beside the predicted
ones, the agreement between the two, and each finding marked confirmed or not. Where they
disagree, the measured verdict is the report's verdict.
"""

from __future__ import annotations

import copy
import math
import re
import statistics
import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from gradlint.api import as_example_inputs, predict, select_rules
from gradlint.base.errors import ProbeError
from gradlint.base.report import Agreement, Report, Summary
from gradlint.capture.loops import lag_targets
from gradlint.engine.result import cause_of
from gradlint.engine.summary import summarize
from gradlint.probing.measure import Measurement, measure

VERDICT_CODES = {"vanishing": "GL101", "exploding": "GL102"}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is checked and returned."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ProbeError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ProbeError(f"--device {device}: CUDA is not available here (torch {torch.__version__})",
                             hint="use --device cpu, or --device auto to take CUDA only where it exists")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ProbeError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ProbeError(f"--device {device!r}: the probe runs on cpu or cuda")
    return device


def materialize(model: nn.Module, device: str) -> tuple[nn.Module, str]:
    """A copy of a meta-device model with real weights from its own init; the model itself if
    it has no meta tensors.

    The copy is allocated with ``to_empty`` and filled by the model's init: a Hugging Face
    model's ``initialize_weights()``, else every submodule's ``reset_parameters()``. Tied
    weights stay tied.

    Raises:
        ProbeError: When some meta tensor belongs to a module with no init to run.
    """
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    if not any(t.is_meta for _, t in tensors):
        return model, ""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    work = copy.deepcopy(model).to_empty(device=device)
    for names in groups.values():  # to_empty gives every module its own new Parameter
        first = work.get_parameter(names[0])
        for other in names[1:]:
            owner, _, attr = other.rpartition(".")
            setattr(work.get_submodule(owner) if owner else work, attr, first)
    if callable(getattr(work, "initialize_weights", None)) and hasattr(work, "config"):
        for m in work.modules():
            if getattr(m, "_is_hf_initialized", False):
                del m._is_hf_initialized
        with torch.no_grad():
            work.initialize_weights()
        how = "initialize_weights()"
    else:
        missing = []
        with torch.no_grad():
            for name, m in work.named_modules():
                own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
                if not own:
                    continue
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
                else:
                    missing.append(f"{name or 'the model'} ({type(m).__name__}: {', '.join(n for n, _ in own[:3])})")
        if missing:
            raise ProbeError(
                f"cannot probe a meta-device model: {len(missing)} module(s) hold meta tensors and define no "
                f"reset_parameters(): {'; '.join(missing[:5])}",
                hint="build the model on a real device for --probe, or give those modules a reset_parameters() "
                     "that initializes their tensors")
        how = "reset_parameters()"
    return work, f"built on the meta device: materialized on {device} with its {how}"


_ALLOCATE = re.compile(r"Tried to allocate ([0-9.]+ [KMGT]?i?B)")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _measure_fitting(model: nn.Module, ex, seeds: int, device: str,
                     loops: dict | None = None) -> tuple[Measurement, list[str]]:
    """``measure``, halving the batch on CUDA out-of-memory down to one sample."""
    size = ex.batch_size
    notes: list[str] = []
    while True:
        try:
            return measure(model, ex if size in (None, ex.batch_size) else ex.with_batch(size),
                           seeds=seeds, device=device, loops=loops), notes
        except torch.OutOfMemoryError as e:
            asked = _ALLOCATE.search(str(e))
            peak = None
            if torch.cuda.is_available() and device.startswith("cuda"):
                peak = torch.cuda.max_memory_allocated(torch.device(device))
                torch.cuda.empty_cache()
            if size is None or size <= 1:
                total = ""
                if torch.cuda.is_available() and device.startswith("cuda"):
                    free, whole = torch.cuda.mem_get_info(torch.device(device))
                    total = f"; the device has {_gib(whole)}, {_gib(free)} free"
                need = (f"it needs more than {_gib(peak)} already allocated plus {asked.group(1)} more"
                        if peak is not None and asked else
                        f"it tried to allocate {asked.group(1)}" if asked else "it did not fit")
                raise ProbeError(f"the probe ran out of memory on {device} even at batch size 1: {need}{total}",
                                 hint="probe on a larger device, or on the CPU (--device cpu)") from None
            smaller = max(1, size // 2)
            notes.append(f"out of memory on {device} at batch size {size}"
                         + (f" (tried to allocate {asked.group(1)})" if asked else "") + f"; retried with {smaller}")
            size = smaller


def probe(model: nn.Module, inputs: Any = None, *, device: str = "cpu", seeds: int = 3,
          batch_size: int | None = None, **check_kwargs) -> Report:
    """Check ``model`` statically, then measure it for real and put both in one report.

    Args:
        model: The model; it is not modified (parameters, buffers, mode, grads, RNG).
            A meta-device model is materialized on ``device`` from its own init.
        inputs: As for ``gradlint.check``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        seeds: Independent draws of inputs and loss weights.
        batch_size: Samples per seed, for both the prediction and the measurement (default:
            the inputs' own). On CUDA out-of-memory the measurement halves it, down to 1.
        **check_kwargs: Passed on to ``gradlint.check``.

    Returns:
        The report with ``measured_grad_rms`` filled for parameters and layers, ``probe``
        agreement, findings marked ``confirmed``, and the measured verdict as the summary.

    Raises:
        ProbeError: When the measurement cannot run (out of memory at batch size 1, a meta
            model without init code, no such device).
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ProbeError(f"seeds={seeds!r} must be a positive int")
    ex = as_example_inputs(model, inputs)
    if batch_size is not None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ProbeError(f"batch_size={batch_size!r} must be a positive int")
        ex = ex.with_batch(batch_size)
    report, result = predict(model, ex, **check_kwargs)
    if report.analysis != "export":
        # The measurement runs the exported graph, to read every node the prediction names.
        why = "; ".join(result.trace_failures) or "no example inputs to export with"
        raise ProbeError(f"cannot probe: the probe runs the graph torch.export captures, and there is none ({why})",
                         hint=f"the static check still runs, from the {report.analysis} fallback: gradlint check "
                              "without --probe")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    real, how = materialize(model, dev)
    meas, notes = _measure_fitting(real, ex, seeds, dev, lag_targets(result.graph))
    seconds = time.perf_counter() - t0
    if device == "auto":
        notes.insert(0, f"--device auto chose {dev}")
    if how:
        notes.insert(0, how)

    params = tuple(replace(p, measured_grad_rms=meas.param_rms(p.name)) for p in report.params)
    diffs = [(p.name, abs(math.log10(p.predicted_grad_rms) - math.log10(p.measured_grad_rms)))
             for p in params if sum(d > 1 for d in p.shape) >= 2 and p.predicted_grad_rms and p.measured_grad_rms
             and math.isfinite(p.predicted_grad_rms) and math.isfinite(p.measured_grad_rms)]
    worst = max(diffs, key=lambda d: d[1]) if diffs else ("", 0.0)
    lags = tuple((r.lag_key, meas.lag_rms(r.lag_key)) for r in result.propagation.recurrent
                 if meas.lag_rms(r.lag_key))
    agreement = Agreement(
        median_decades=statistics.median(d for _, d in diffs) if diffs else 0.0, worst_decades=worst[1],
        worst_param=worst[0], disagreeing=tuple(n for n, d in diffs if d > 1.0), device=dev, seeds=seeds,
        seconds=seconds, batch_size=meas.batch_size, requested_batch_size=ex.batch_size,
        peak_memory_bytes=meas.peak_memory_bytes, lag_grad_rms=lags, notes=tuple(notes))
    layers = tuple(replace(lr, measured_grad_rms=math.sqrt(meas.node_s[lr.node]) if lr.node in meas.node_s else None)
                   for lr in report.layers)

    g = result.graph
    findings = list(report.findings)
    if meas.nonfinite:
        first = ((meas.nonfinite_forward[0], "forward") if meas.nonfinite_forward
                 else (meas.nonfinite_backward[0], "backward"))
        measured = Summary(verdict="exploding", attenuation_decades=-math.inf, strongest=first[0],
                           threshold=report.summary.threshold)
        rules = [r for r in select_rules(check_kwargs.get("select"), check_kwargs.get("ignore"),
                                         check_kwargs.get("rule_options")) if r.code == "GL103"]
        probed = replace(result, nonfinite=first)
        findings += [f for r in rules for f in r.check(probed) if f.evidence.get("phase")]
    else:
        numel = {n.name: math.prod(n.shape) if n.shape else 1 for n in result.propagation.nodes}
        q = {n.name: meas.node_q.get(n.name, n.q) for n in result.propagation.nodes}
        s = {n.name: meas.node_s.get(n.name, n.s) for n in result.propagation.nodes}
        rec = []
        for r in result.propagation.recurrent:
            lag = meas.lag_rms(r.lag_key)
            if lag and lag[-1] > 0:
                rec.append((r.node, math.log10(lag[-1] / lag[0]) if lag[0] > 0 else math.inf))
        grads = {k: sum(v) / len(v) for k, v in meas.param_ms.items() if v}
        measured = summarize(g, q, s, numel, {n.name: cause_of(n) for n in g.nodes}, rec, grads,
                             report.summary.threshold, g.batch_size)
    findings = tuple(replace(f, confirmed=_confirmed(f, measured, agreement)) for f in findings)
    return replace(report, params=params, layers=layers, findings=findings, summary=measured, probe=agreement,
                   predicted_summary=report.summary)


def _confirmed(finding, measured, agreement) -> bool | None:
    """A vanishing/exploding finding stands when the measured verdict agrees; other findings
    stand when the measurement agrees with the prediction to within a decade."""
    if finding.code == "GL103":
        return measured.verdict == "exploding"
    for verdict, code in VERDICT_CODES.items():
        if finding.code == code:
            return measured.verdict == verdict
    if finding.severity == "info":
        return None
    return agreement.worst_decades <= 1.0
