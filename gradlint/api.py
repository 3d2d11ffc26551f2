"""The library API: ``check(model, inputs)`` -> ``Report``. The CLI is a thin layer over it."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from gradlint.base.errors import ForwardError, InputError
from gradlint.base.findings import Finding, Severity, matches
from gradlint.base.kinds import LAYER_KINDS, PROFILE_KINDS
from gradlint.base.report import DEFAULT_THRESHOLD, LayerReport, ParamReport, Report
from gradlint.base.targets import TargetOptions
from gradlint.capture import fusion, own_backward
from gradlint.capture import params as params_mod
from gradlint.capture import trace as tracing
from gradlint.capture.graph import Source
from gradlint.capture.inputs import ExampleInputs, resolve_inputs
from gradlint.capture.sites import sites_of
from gradlint.engine.propagate import propagate
from gradlint.engine.result import Result, build_summary, unknown_gradient_nodes
from gradlint.lint import grouping, suppress
from gradlint.lint.relocate import relocate
from gradlint.lint.rule import REGISTRY, Rule, load_builtin
from gradlint.load.tracebacks import forward_site


class Prediction(NamedTuple):
    """A report and the live result it was made from: the graph and the engine's statistics,
    for the probe and for tests that read them. The report itself stays plain data."""

    report: Report
    result: Result


def as_example_inputs(model: nn.Module, inputs: Any, input_shape: Any = None) -> ExampleInputs:
    if isinstance(inputs, ExampleInputs):
        return inputs
    if isinstance(inputs, torch.Tensor) or (isinstance(inputs, (tuple, list, dict)) and _concrete(inputs)):
        return replace(resolve_inputs(model, TargetOptions(inputs=lambda: inputs)), source="argument")
    options = TargetOptions(inputs=inputs) if inputs is not None else None
    cli = [tuple(input_shape)] if input_shape is not None and isinstance(input_shape[0], int) else input_shape
    ex = resolve_inputs(model, options, cli)
    # Inputs given to check() are the caller's, not a decorator's: the report says so.
    return replace(ex, source="argument") if ex.source == "decorator" else ex


def _concrete(inputs: Any) -> bool:
    """Real forward arguments, not shapes: a tensor somewhere (``(ids, (h0, c0))``, or
    ``(src, lengths, trg, 0.5)``), and nothing but tensors and plain values beside it."""
    leaves = torch.utils._pytree.tree_leaves(inputs)
    return any(isinstance(x, torch.Tensor) for x in leaves) and all(
        isinstance(x, (torch.Tensor, int, float, bool, str, type(None))) for x in leaves)


def select_rules(select: Iterable[str] | None = None, ignore: Iterable[str] | None = None,
                 options: dict[str, dict[str, Any]] | None = None, requested: Iterable[str] = ()) -> list[Rule]:
    """Instantiate the registered rules, filtered by code, code prefix or name.

    An opt-in rule runs only when ``select`` names it by its exact code or name, or its code is
    in ``requested``.
    """
    load_builtin()
    sel = list(select or [])
    ign = list(ignore or [])
    asked = {p.upper() for p in (*sel, *requested)}

    out = []
    for code in sorted(REGISTRY):
        cls = REGISTRY[code]
        if cls.opt_in and cls.code not in asked and cls.name.upper() not in asked:
            continue
        if sel and not matches(cls.code, cls.name, sel) and cls.code not in requested:
            continue
        if ign and matches(cls.code, cls.name, ign):
            continue
        out.append(cls(**((options or {}).get(cls.code) or (options or {}).get(cls.name) or {})))
    return out


def analyze(model: nn.Module, inputs: ExampleInputs | None, *, threshold: float = DEFAULT_THRESHOLD,
            target_source: Source | None = None, trust_custom_backward: bool = False) -> tuple[Result, list[str]]:
    """Trace, propagate and summarize; no rules. Returns the result and tracing failures.

    ``trust_custom_backward`` takes custom autograd Functions' backward to be their forward's
    derivative (the verdict is then not unknown for them; hooks still make it unknown)."""
    from gradlint.capture.initscan import recorded_init

    stats = params_mod.collect(model, recorded_init(model))
    graph, failures = tracing.trace(model, inputs)
    if not graph.outputs:
        raise _no_output(model)
    fusion.fuse(graph, model, stats)
    prop = propagate(graph, stats, model)
    hooks = backward_hooks(model, graph, prop.params)
    custom = tuple(e for e in graph.own_backward if not (trust_custom_backward and own_backward.is_function(e)))
    summary = build_summary(prop, threshold, tuple(failures), invisible_backward_reasons(hooks, custom))
    definitions = tracing.definition_sites(model)
    return Result(graph, prop, summary, definitions, target_source, trace_failures=tuple(failures),
                  backward_hooks=hooks, custom_backward=custom, sites=sites_of(model)), failures


def backward_hooks(model: nn.Module, graph=None, param_grads: dict[str, float | None] | None = None
                   ) -> tuple[str, ...]:
    """Where ``model`` holds backward hooks on a gradient path: on modules
    (``register_full_backward_hook`` and its pre-hook and legacy forms) that its forward calls,
    and on parameters (``register_hook``) that get a gradient. The graph does not show what they
    do to the gradient; GL905 says so, and a probe measures it. Without ``graph``, every hook."""
    called = None if graph is None else {n.module for n in graph.nodes if n.module}
    out = []
    for name, m in model.named_modules():
        kinds = [k for k, hooks in (("backward hook", m._backward_hooks), ("backward pre-hook", m._backward_pre_hooks))
                 if hooks]
        if kinds and name and called is not None and not any(c == name or c.startswith(name + ".") for c in called):
            continue  # never called by forward: its hook never runs
        out += [f"{name or 'the model'}: {k}" for k in kinds]
    for name, p in model.named_parameters():
        if getattr(p, "_backward_hooks", None) and p.requires_grad and (
                param_grads is None or param_grads.get(name, 0.0) != 0.0):
            out.append(f"{name}: tensor hook")
    return tuple(out)


def invisible_backward_reasons(hooks: tuple[str, ...], custom: tuple[str, ...]) -> tuple[str, ...]:
    """Why a verdict resting on the graph's derivatives is unknown when the model's own backward
    can differ from them (never a silent green): one line, for ``Summary.unknown``."""
    if not hooks and not custom:
        return ()
    items = [h.replace(": ", " has a ", 1) for h in hooks] + list(custom)
    shown = "; ".join(items[:4]) + (f"; and {len(items) - 4} more" if len(items) > 4 else "")
    why = ("the static prediction takes every op's backward to be the derivative of its forward, so what they do "
           "to the gradient is unknown")
    if any(own_backward.is_function(e) for e in custom):
        why += (" (a custom autograd.Function counts even when it only computes that derivative more efficiently, "
                "such as a parallel scan; trust it with trust-custom-backward = true)")
    return (f"the model's own backward may differ from its graph: {shown}; {why}; gradlint check --probe measures "
            "the model's own backward",)


def predicted_rms(e2: float | None, unknown: bool) -> float | None:
    """A predicted E[g²] as an RMS for the report: None when unknown (never 0 or -inf for
    what gradlint does not know), 0.0 only for a provable zero."""
    if unknown or e2 is None:
        return None
    return math.sqrt(max(e2, 0.0))


def layer_profile(graph, summary) -> dict[str, tuple[float, float]]:
    """Per layer node (``PROFILE_KINDS``), the verdict's profiles there: (backward ``t_decades``,
    forward ``q_decades``), what the chart and the bar profile show.

    Every trunk point belongs to the latest layer at or before it, and a layer shows the
    value farthest from 0 among its points, so the chart reaches exactly the extremes the
    verdict reads; a layer with no trunk point of its own (a residual branch's) shows the
    next trunk point's values, the stream's where its branch joins it.
    """
    if summary is None or not summary.trunk:
        return {}
    at = {p.node: (p.t_decades, p.q_decades) for p in summary.trunk}
    own: dict[str, list[tuple[float, float]]] = {}
    current = None
    waiting: list[str] = []
    nxt: dict[str, tuple[float, float]] = {}
    for n in graph.nodes:
        if n.kind in PROFILE_KINDS:
            current = n.name
            waiting.append(n.name)
        if n.name in at:
            if current is not None:
                own.setdefault(current, []).append(at[n.name])
            for name in waiting:
                nxt[name] = at[n.name]
            waiting = []
    out = {}
    for name, val in nxt.items():
        pts = own.get(name)
        if pts:
            val = (max((t for t, _ in pts), key=abs), max((f for _, f in pts), key=abs))
        out[name] = val
    return out


def _no_output(model: nn.Module) -> ForwardError:
    # Nested outputs are fine (every tensor in them is an output); with none, nothing carries a gradient.
    path, line = forward_site(model)
    return ForwardError(f"{type(model).__name__}.forward returns no tensor: no gradient can flow back from its output",
                        path=path, line=line, hint="return the tensor (or the tuple, list or dict of tensors) the "
                                                   "loss is computed from")


def check(model: nn.Module, inputs: Any = None, *, input_shape: Any = None, select: Iterable[str] | None = None,
          ignore: Iterable[str] | None = None, threshold: float | None = None, fail_on: str | None = None,
          rule_options: dict[str, dict[str, Any]] | None = None, name: str | None = None,
          target_source: Source | None = None, config: Any = None, ignore_noqa: bool = False,
          warn_unused_ignores: bool | None = None,
          trust_custom_backward: bool | None = None) -> Report:
    """Predict every parameter's gradient at initialization and run the rules. No backward pass.

    Args:
        model: The model (real or meta-device weights).
        inputs: A shape tuple, a list of them, a dict name -> shape, ``gradlint.tokens(...)``,
            a callable returning tensors, or tensors themselves. None: ``example_input_array``,
            then inference from the first layer.
        input_shape: A shape to use when ``inputs`` is None and nothing else declares one.
        select: Rule codes, prefixes or names to run (default: the configuration's, else all).
        ignore: Rule codes, prefixes or names to skip, besides the configuration's.
        threshold: Decades of attenuation beyond which the verdict is vanishing/exploding
            (default: the configuration's, else 2).
        fail_on: Lowest severity that makes ``report.ok`` false (default: the configuration's,
            else ``error``).
        rule_options: Per rule code or name, options overriding its defaults (and the
            configuration's for that rule).
        name: The target's name in the report (default: the model's class name).
        target_source: Where the target is defined, for findings without a better place.
        config: The project's ``[tool.gradlint]``, as ``gradlint check`` reads it: None (the
            default) reads the nearest ``pyproject.toml`` that has the table, at or above the
            working directory; a path reads that file; False reads none. Its ``select``,
            ``ignore``, ``threshold``, ``fail-on``, ``input-shape``, rule options, severities,
            ``per-file-ignores`` and ``warn-unused-ignores`` apply; arguments given here win.
        ignore_noqa: Report findings that ``# noqa: GL...`` or ``# gradlint: ignore`` comments
            would silence (ruff's ``--ignore-noqa``).
        warn_unused_ignores: Report suppression comments that silence nothing (GL904; default:
            the configuration's ``warn-unused-ignores``, else off).
        trust_custom_backward: Take the backward of every custom ``torch.autograd.Function`` to
            be its forward's derivative (default: the configuration's ``trust-custom-backward``,
            else off: a model with one on a gradient path is ``unknown`` until probed).

    Returns:
        The ``Report``.

    Raises:
        InputError: When the arguments are malformed.
    """
    return predict(model, inputs, input_shape=input_shape, select=select, ignore=ignore, threshold=threshold,
                   fail_on=fail_on, rule_options=rule_options, name=name, target_source=target_source,
                   config=config, ignore_noqa=ignore_noqa, warn_unused_ignores=warn_unused_ignores,
                   trust_custom_backward=trust_custom_backward).report


def predict(model: nn.Module, inputs: Any = None, *, input_shape: Any = None, select: Iterable[str] | None = None,
            ignore: Iterable[str] | None = None, threshold: float | None = None, fail_on: str | None = None,
            rule_options: dict[str, dict[str, Any]] | None = None, name: str | None = None,
            target_source: Source | None = None, config: Any = None, ignore_noqa: bool = False,
            warn_unused_ignores: bool | None = None,
            trust_custom_backward: bool | None = None) -> Prediction:
    """``check``, with the live result beside the report: the graph and the engine's statistics,
    which the probe and tests read. See ``check`` for the arguments."""
    from gradlint.run.config import project_config

    cfg = project_config(config)
    if cfg is not None:
        select = select if select is not None else (cfg.select or None)
        ignore = (*cfg.ignore, *(ignore or ())) or None
        threshold = threshold if threshold is not None else cfg.threshold
        fail_on = fail_on or cfg.fail_on
        rule_options = {**{k: dict(v) for k, v in cfg.rule_options.items()}, **(rule_options or {})} or None
        input_shape = input_shape if input_shape is not None else ([list(s) for s in cfg.input_shape] or None)
        warn_unused_ignores = cfg.warn_unused_ignores if warn_unused_ignores is None else warn_unused_ignores
        trust_custom_backward = cfg.trust_custom_backward if trust_custom_backward is None else trust_custom_backward
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    fail_on = fail_on or "error"
    if not isinstance(model, nn.Module):
        raise InputError(f"model={model!r} must be a torch.nn.Module")
    if fail_on not in ("error", "warning", "info"):
        raise InputError(f"fail_on={fail_on!r} must be 'error', 'warning' or 'info'")
    if not (isinstance(threshold, (int, float)) and threshold > 0):
        raise InputError(f"threshold={threshold!r} must be a positive number of decades")
    with _one_thread():
        ex = as_example_inputs(model, inputs, input_shape)
        result, failures = analyze(model, ex, threshold=threshold, target_source=target_source,
                                   trust_custom_backward=bool(trust_custom_backward))
        findings: list[Finding] = []
        rules = select_rules(select, ignore, rule_options, requested=("GL904",) if warn_unused_ignores else ())
        for rule in rules:
            findings.extend(rule.check(result))
    # Into the helper that holds the cause, before comments and grouping read the lines.
    findings = relocate(findings, result.sites)
    silenced: list[Finding] = []
    layers = _layers(result)
    if ignore_noqa:
        findings = list(grouping.group(findings, layers))
    else:
        # A comment silences a finding on its own line, or a grouped finding on the line it now points at.
        findings, silenced = suppress.split(findings)
        grouped, more = grouping.settle(findings, layers, suppress.suppressed)
        findings, silenced = list(grouped), silenced + more
        ran = {r.code: r for r in rules}
        if suppress.UNKNOWN_CODE in ran or suppress.UNUSED in ran:
            comments = suppress.on_lines(_model_lines(result))
            findings += suppress.comment_findings(comments, silenced, ran, {c: k.name for c, k in REGISTRY.items()})
    if cfg is not None:
        findings = list(cfg.adjust(findings, target_source.path if target_source else None, layers))
    findings.sort(key=lambda f: (-Severity(f.severity).rank, f.path or "", f.line or 0, f.code))
    report = make_report(name or type(model).__name__, result, ex, findings, fail_on, target_source)
    return Prediction(replace(report, suppressed=tuple(silenced)) if silenced else report, result)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The analysis computes on statistics, not on activations: quadrature grids of 801 points,
    per-step moments, the weights' norms once. Such small ops lose to thread hand-offs, and on
    a loaded machine badly: a Hermite projection took 0.91 ms on 2 threads and 0.07 ms on one
    (2-core machine, load 7), which made an LSTM's check 15 s slower."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _model_lines(result: Result) -> set[tuple[str, int]]:
    """The lines a model's findings can point at: where its modules are defined, where its ops
    are called, and the target itself; in the user's files, not in installed packages."""
    sources = [*result.definitions.values(), *(n.call_site for n in result.graph.nodes if n.call_site is not None),
               *(s for chain in result.sites.values() for s in chain)]
    if result.target_source is not None:
        sources.append(result.target_source)
    return {(s.path, s.line) for s in sources
            if s.path and s.line and "site-packages" not in s.path and "dist-packages" not in s.path}


def _layers(result: Result) -> tuple[LayerReport, ...]:
    prop = result.propagation
    profile = layer_profile(result.graph, result.summary)
    unknown_grad = unknown_gradient_nodes(prop)
    return tuple(
        LayerReport(module=n.module, kind=n.kind, node=n.name,
                    grad_rms=None if n.s is None or n.name in unknown_grad else n.grad_rms,
                    forward_rms=None if n.q is None else math.sqrt(max(n.q, 0.0)),
                    signal_decades=profile.get(n.name, (None, None))[0],
                    forward_decades=profile.get(n.name, (None, None))[1])
        for n in prop.nodes if n.kind in LAYER_KINDS)


def make_report(target: str, result: Result, ex: ExampleInputs, findings: list[Finding], fail_on: str,
                target_source: Source | None) -> Report:
    prop = result.propagation
    unknown = result.unknown_params()
    params = tuple(
        ParamReport(name=n, shape=st.shape, module=st.module,
                    predicted_grad_rms=predicted_rms(prop.params.get(n), n in unknown),
                    measured_grad_rms=result.measured.get(n), stats_source=st.source)
        for n, st in prop.param_stats.items())
    layers = _layers(result)
    inputs = ex.describe() if ex.found else "none"
    where = {"decorator": "declared by @gradlint.target", "argument": "given to gradlint.check",
             "example_input_array": "from example_input_array",
             "cli": "from --input-shape"}.get(ex.source or "")
    if where:
        inputs += f" ({where})"
    elif ex.note:
        inputs += f" ({ex.note})"
    return Report(target=target, status="ok", analysis=result.graph.analysis, summary=result.summary, params=params,
                  layers=layers, findings=tuple(findings), recurrent=prop.recurrent, inputs=inputs, fail_on=fail_on,
                  path=target_source.path if target_source else None,
                  line=target_source.line if target_source else None)

