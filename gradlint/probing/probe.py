"""Probe mode: a real backward pass that confirms or refutes each prediction.

``probe(model, inputs)`` runs the static check, then the measurement protocol for real
(``gradlint.probing.measure``: the model's own forward and ``loss.backward()`` on fresh inputs
and loss weights per seed, and the captured graph on the same draws to read every node, the
user's model left as found) and returns the report with measured gradients beside the
predicted ones, the agreement between the two over every parameter, and each finding marked
confirmed or refuted. The measured verdict is the report's verdict and has its own finding
(GL101, GL102 or GL701), so it sets the exit code, ``report.ok`` and ``assert_healthy`` alike.
Where the model's own backward departs from its captured graph (hooks, custom autograd
Functions, in-place updates), GL905 says so and the departure counts in the measured verdict.
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

from gradlint.api import as_example_inputs, layer_profile, predict, select_rules
from gradlint.base.errors import ProbeError
from gradlint.base.kinds import LAYER_KINDS
from gradlint.base.report import Agreement, Report, Summary
from gradlint.capture.loops import lag_targets
from gradlint.engine.propagate import node_params
from gradlint.engine.result import cause_of
from gradlint.engine.summary import summarize, with_departures
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


def _measure_fitting(model: nn.Module, ex, seeds: int, device: str, graph: bool = True,
                     loops: dict | None = None) -> tuple[Measurement, list[str]]:
    """``measure``, halving the batch on CUDA out-of-memory down to one sample."""
    size = ex.batch_size
    notes: list[str] = []
    while True:
        try:
            return measure(model, ex if size in (None, ex.batch_size) else ex.with_batch(size),
                           seeds=seeds, device=device, graph=graph, loops=loops), notes
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
        agreement, findings marked ``confirmed``, and the measured verdict as the summary,
        with its finding.

    Raises:
        ProbeError: When the measurement cannot run (out of memory at batch size 1, a meta
            model without init code, no such device, the model's own forward or backward
            raising).
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ProbeError(f"seeds={seeds!r} must be a positive int")
    ex = as_example_inputs(model, inputs)
    if batch_size is not None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ProbeError(f"batch_size={batch_size!r} must be a positive int")
        ex = ex.with_batch(batch_size)
    if not ex.found:
        raise ProbeError("cannot probe without example inputs: nothing says what to feed the model",
                         hint="declare them: @gradlint.target(inputs=(8, 64)), --input-shape 8,64, or "
                              "gradlint.probe(model, (8, 64))")
    refuse_unsupported(model)
    report, result = predict(model, ex, **check_kwargs)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    real, how = materialize(model, dev)
    meas, notes = _measure_fitting(real, ex, seeds, dev, graph=report.analysis == "export",
                                   loops=lag_targets(result.graph))
    seconds = time.perf_counter() - t0
    if device == "auto":
        notes.insert(0, f"--device auto chose {dev}")
    if how:
        notes.insert(0, how)
    if report.analysis != "export":
        notes.append(f"no captured graph to run ({report.analysis} analysis): the per-layer values come from hooks "
                     "on the model's own modules")
    if meas.dtype != "float64":
        notes.append("measured in the model's own dtype, not float64: its forward refused float64 weights (it casts "
                     "to a fixed dtype), so gradients below that dtype's range read as zero")
    if report.analysis == "export" and meas.graph_error:
        notes.append(f"the captured graph could not be run ({meas.graph_error}): the per-layer values come from "
                     "hooks on the model's own modules")

    g = result.graph
    measured_rms = {p.name: meas.param_rms(p.name) for p in report.params}
    params = tuple(replace(p, measured_grad_rms=measured_rms[p.name]) for p in report.params)
    departures = _departures(meas, [p.name for p in report.params])
    lags = tuple((r.lag_key, meas.lag_rms(r.lag_key)) for r in result.propagation.recurrent if meas.lag_rms(r.lag_key))
    agreement = _agreement(params, departures, dev, seeds, seconds, meas, ex, notes, lags)

    from_modules = _module_values(g, meas, real)
    graph_ran = bool(meas.node_s)
    nodes = result.propagation.nodes
    node_q = {n.name: meas.node_q.get(n.name, from_modules.get(n.name, (None, None))[0]) for n in nodes}
    node_s = {n.name: meas.node_s.get(n.name, from_modules.get(n.name, (None, None))[1]) for n in nodes}
    layers = []
    for lr in report.layers:
        own = from_modules.get(lr.node)
        if own is not None:  # the model's own autograd, where the layer is one module's output
            layers.append(replace(lr, measured_grad_rms=math.sqrt(own[1])))
        elif graph_ran and lr.node in meas.node_s:
            layers.append(replace(lr, measured_grad_rms=math.sqrt(meas.node_s[lr.node])))
        else:
            layers.append(lr)

    findings = list(report.findings)
    nonfinite = _first_nonfinite(meas, from_modules)
    if nonfinite is not None:
        measured = Summary(verdict="exploding", attenuation_decades=-math.inf, strongest=nonfinite[0],
                           threshold=report.summary.threshold)
        probed = replace(result, nonfinite=nonfinite, summary=measured)
        findings += [f for r in _rules(check_kwargs, ("GL103",)) for f in r.check(probed) if f.evidence.get("phase")]
    else:
        numel = {n.name: math.prod(n.shape) if n.shape else 1 for n in result.propagation.nodes}
        q = {n.name: _known(node_q[n.name], n.q) for n in result.propagation.nodes}
        s = {n.name: _known(node_s[n.name], n.s) for n in result.propagation.nodes}
        rec = []
        for r in result.propagation.recurrent:
            lag = meas.lag_rms(r.lag_key)
            if lag and lag[-1] > 0:
                rec.append((r.node, math.log10(lag[-1] / lag[0]) if lag[0] > 0 else math.inf))
        grads = {k: sum(v) / len(v) for k, v in meas.param_ms.items() if v}
        departing = bool(departures)
        measured = summarize(g, q, s, numel, {n.name: cause_of(n) for n in g.nodes}, rec, grads,
                             report.summary.threshold, g.batch_size, blocked_without_op=departing)
        if departing:
            measured = with_departures(measured, *_departure_extremes(g, meas, [p.name for p in report.params]))
        probed = replace(result, summary=measured, measured=measured_rms, departures=departures)
        have = {f.code for f in findings}
        for rule in _rules(check_kwargs, ("GL101", "GL102", "GL905")):
            if rule.code in have and rule.code != "GL905":
                continue  # the prediction's own finding stands, confirmed or refuted below
            for f in rule.check(probed):
                if rule.code == "GL905" and not f.evidence.get("departures"):
                    continue  # the static part of GL905 is already among the findings
                findings.append(replace(f, message=f"measured: {f.message}" if rule.code != "GL905" else f.message,
                                        confirmed=True, evidence={**f.evidence, "measured": True}))
        if measured.verdict == "blocked" and "GL701" not in have:
            findings += _measured_blockage(probed, check_kwargs)
    layers = _with_measured_profile(layers, g, measured)
    findings = tuple(replace(f, confirmed=f.confirmed if f.evidence.get("measured") else
                             _confirmed(f, measured, agreement)) for f in findings)
    return replace(report, params=params, layers=tuple(layers), findings=findings, summary=measured,
                   probe=agreement, predicted_summary=report.summary)


def _known(measured: float | None, predicted: float | None) -> float | None:
    """A measured per-node value, else the prediction's (nodes the measurement could not see:
    non-float, fused away)."""
    return measured if measured is not None else predicted


def refuse_unsupported(model: nn.Module) -> None:
    """Refuse, with a hint, what the probe cannot measure."""
    if not any(True for _ in model.parameters()):
        quantized = [n for n, m in model.named_modules() if "quantized" in type(m).__module__]
        what = (f" ({quantized[0] or 'the model'} is {type(model.get_submodule(quantized[0])).__module__}: its "
                "weights are packed, not nn.Parameters)" if quantized else "")
        raise ProbeError(f"cannot probe {type(model).__name__}: it has no parameters, so there is no gradient to "
                         f"measure{what}", hint="probe the float model before torch.ao.quantization.quantize_dynamic "
                                                "(or any conversion that freezes its weights)")
    for name, p in model.named_parameters():
        if p.is_complex() and p.is_meta:
            raise ProbeError(f"cannot probe the complex meta-device parameter {name}: there is no init to fill it "
                             "from", hint="build the model on a real device for --probe")


def _rules(check_kwargs: dict, codes: tuple[str, ...]) -> list:
    return [r for r in select_rules(check_kwargs.get("select"), check_kwargs.get("ignore"),
                                    check_kwargs.get("rule_options")) if r.code in codes]


def _measured_blockage(probed, check_kwargs) -> list:
    """GL701 for a measured verdict of ``blocked`` the graph did not show: the model's own backward
    gives the earliest weights no gradient."""
    out = []
    for rule in _rules(check_kwargs, ("GL701",)):
        zero = [n for n, v in probed.measured.items() if v == 0.0]
        module = probed.propagation.param_stats[zero[0]].module if zero and zero[0] in probed.propagation.param_stats \
            else ""
        f = rule.finding(probed, f"measured: the model's own backward gives {len(zero)} parameters no gradient "
                         f"({', '.join(zero[:4])}{' and more' if len(zero) > 4 else ''}), the earliest weights among "
                         "them, though the captured graph lets gradient through: a hook or a custom autograd "
                         "Function stops it", fix="find the hook or autograd.Function whose backward returns zeros "
                         "or None, and let it pass the gradient", module=module, starved=zero[:50])
        out.append(replace(f, confirmed=True, evidence={**f.evidence, "measured": True}))
    return out


# Departures smaller than this are float64 summation order between the two runs of one draw.
DEPARTURE_DECADES = 0.05


def _departures(meas: Measurement, names: list[str]) -> tuple[tuple[str, float], ...]:
    """Where the model's own backward departs from the captured graph's run of the same draw:
    (parameter, log10 model / graph), largest first; ±inf where one of them is zero."""
    if not meas.graph_param_ms:
        return ()
    out = []
    for name in names:
        own, ran = meas.param_rms(name), meas.graph_param_rms(name)
        if own is None or ran is None:
            continue
        tiny = 1e-300
        if own <= tiny and ran <= tiny:
            continue
        d = math.inf if ran <= tiny else -math.inf if own <= tiny else math.log10(own / ran)
        if abs(d) > DEPARTURE_DECADES:
            out.append((name, d))
    out.sort(key=lambda nd: -abs(nd[1]))
    return tuple(out)


def _departure_extremes(graph, meas: Measurement, names: list[str]) -> tuple[float, float, str | None, str | None]:
    """How far the departures reshape the weight-gradient profile, relative to the weights
    nearest the output: (extra loss, extra gain, node of the worst loss, node of the worst gain)."""
    first_use: dict[str, str] = {}
    for n in graph.nodes:
        for p in node_params(n):
            first_use.setdefault(p, n.name)
    order = {name: i for i, name in enumerate(graph.by_name)}
    d = []
    for name in names:
        own, ran = meas.param_rms(name), meas.graph_param_rms(name)
        if own and ran and own > 0 and ran > 0 and name in first_use:
            d.append((order[first_use[name]], math.log10(own / ran), first_use[name]))
    if not d:
        return 0.0, 0.0, None, None
    d.sort()
    ref = d[-1][1]
    low = min(d, key=lambda x: x[1] - ref)
    high = max(d, key=lambda x: x[1] - ref)
    return max(0.0, ref - low[1]), max(0.0, high[1] - ref), low[2], high[2]


def _distance(predicted: float, measured: float) -> float:
    """|log10 predicted - log10 measured|; a zero against a nonzero value is infinitely far."""
    if predicted <= 0 and measured <= 0:
        return 0.0
    if predicted <= 0 or measured <= 0:
        return math.inf
    return abs(math.log10(predicted) - math.log10(measured))


def _agreement(params, departures, dev, seeds, seconds, meas, ex, notes, lags) -> Agreement:
    """Agreement over every parameter: unknown predictions counted apart, never as agreeing."""
    diffs = []
    unknown = []
    for p in params:
        if p.predicted_grad_rms is None:
            unknown.append(p.name)
        elif p.measured_grad_rms is not None:
            diffs.append((p.name, _distance(p.predicted_grad_rms, p.measured_grad_rms)))
    worst = max(diffs, key=lambda d: d[1]) if diffs else ("", 0.0)
    nodes_from = ("modules" if not meas.node_s else "graph, departing" if departures else "graph")
    return Agreement(
        median_decades=statistics.median(d for _, d in diffs) if diffs else 0.0, worst_decades=worst[1],
        worst_param=worst[0], disagreeing=tuple(n for n, d in diffs if d > 1.0), device=dev, seeds=seeds,
        seconds=seconds, batch_size=meas.batch_size, requested_batch_size=ex.batch_size,
        peak_memory_bytes=meas.peak_memory_bytes, lag_grad_rms=lags, notes=tuple(notes), compared=len(diffs),
        unknown=tuple(unknown), departures=departures, nodes_from=nodes_from)


def _module_values(graph, meas: Measurement, model: nn.Module) -> dict[str, tuple[float, float]]:
    """Per graph node that is one module call's output, (q, s) from the model's own run.

    A module-order graph's nodes are module calls; in an exported graph, a leaf module whose
    layer nodes match its calls one for one (an nn.Linear called twice: two linear nodes).
    """
    calls: dict[str, int] = {}
    for key in meas.module_q:
        name, _, k = key.rpartition("#")
        calls[name] = max(calls.get(name, 0), int(k) + 1)
    per_module: dict[str, list] = {}
    for n in graph.nodes:
        if not n.module or n.module not in calls or n.kind in ("input", "getitem", "param", "const"):
            continue
        if graph.analysis != "module-order":
            if n.kind not in LAYER_KINDS:
                continue
            try:
                if any(True for _ in model.get_submodule(n.module).children()):
                    continue  # a container: its output is not one of its ops'
            except AttributeError:
                continue
        per_module.setdefault(n.module, []).append(n)
    out: dict[str, tuple[float, float]] = {}
    for module, nodes in per_module.items():
        if len(nodes) != calls[module]:
            continue
        for k, n in enumerate(nodes):
            key = f"{module}#{k}"
            out[n.name] = (meas.module_q[key], meas.module_s[key])
    if graph.analysis == "module-order":
        for n in graph.nodes:  # a tuple-valued module's first element is its output
            if n.kind == "getitem" and n.inputs and n.inputs[0] in out:
                out[n.name] = out[n.inputs[0]]
    return out


def _first_nonfinite(meas: Measurement, from_modules: dict) -> tuple[str, str] | None:
    """The first graph node whose value (else gradient) held inf/NaN: from the graph's run, else
    the model's own run mapped to its node."""
    if meas.nonfinite_forward:
        return meas.nonfinite_forward[0], "forward"
    if meas.nonfinite_backward:
        return meas.nonfinite_backward[0], "backward"
    if meas.module_nonfinite is not None:
        key, phase = meas.module_nonfinite
        module = key.rpartition("#")[0]
        node = next((n for n in from_modules if n.startswith(module)), None)
        return (node or module or "output", phase)
    return None


def _with_measured_profile(layers: list, graph, measured: Summary) -> list:
    profile = layer_profile(graph, measured)
    return [replace(lr, measured_signal_decades=profile.get(lr.node, (None, None))[0],
                    measured_forward_decades=profile.get(lr.node, (None, None))[1]) for lr in layers]


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
