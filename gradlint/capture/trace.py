"""Getting a graph out of a model, without weight memory and without real arithmetic.

Paths, best first (the report names the one used as ``analysis``):

1. ``export``: the ATen graph ``torch.export`` gives of the user's own model run on fake
   tensors (``gradlint.capture.fake``; a meta copy for a model that lives on the meta device),
   with module paths and stack traces on every node. The same graph is recorded directly from
   one forward when ``gradlint.capture.record`` can reproduce it (most models, at a quarter of
   export's cost; it also answers the values a forward reads, ``gradlint.capture.reads``);
   ``GRADLINT_CAPTURE=export`` turns that off. Writes through views become data flow
   (``gradlint.capture.views``).
2. ``fx`` and 3. ``module-order``: the fallbacks of ``gradlint.capture.fallback``.
"""

from __future__ import annotations

import functools
import inspect
import os
import re

import torch
import torch.nn as nn

from gradlint.capture.aten import Converter
from gradlint.capture.diagnose import forward_error
from gradlint.capture.fake import fake_forward
from gradlint.capture.fallback import fx_graph, module_order_graph
from gradlint.capture.graph import Graph, Source
from gradlint.capture.inputs import ExampleInputs, TensorSpec
from gradlint.capture.meta import quiet


def definition_sites(model: nn.Module) -> dict[str, Source]:
    """Where each submodule was assigned in its parent's ``__init__`` (``self.fc = nn.Linear(...)``).

    Read from the parent class's source; classes that live in torch itself are skipped (their
    children are built from arguments, so the user's line is the parent's own definition).
    """
    sites: dict[str, Source] = {}
    for name, mod in model.named_modules():
        info = _class_source(type(mod))
        if info is None:
            continue
        path, start, lines = info
        for child_name, _ in mod.named_children():
            pat = re.compile(rf"self\.{re.escape(child_name)}\s*(:[^=]*)?=(?!=)")
            for i, line in enumerate(lines):
                if pat.search(line):
                    sites[f"{name}.{child_name}" if name else child_name] = Source(path, start + i, line.strip())
                    break
    return sites


@functools.lru_cache(maxsize=512)
def _class_source(cls: type) -> tuple[str, int, list[str]] | None:
    try:
        path = inspect.getsourcefile(cls) or ""
        if not path or path.startswith(os.path.dirname(torch.__file__)):
            return None
        lines, start = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None
    return path, start, lines


def export_program(model: nn.Module, inputs: ExampleInputs) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) of ``model`` on fake parameters and inputs (a meta copy of
    a model on the meta device); the model is left as it was."""
    with fake_forward(model, inputs, enter=False) as run, quiet():
        ep = torch.export.export(run.model, run.args, run.kwargs, strict=False)
    # The program holds the tensors it was exported with: the real ones, for the probe to run it.
    for table in (ep.state_dict, ep.constants):
        for name, value in table.items():
            table[name] = run.real.get(id(value), value)
    return ep


def recorded_program(model: nn.Module, inputs: ExampleInputs):
    """The program ``torch.export`` would give, recorded from one forward on fake tensors.

    Raises:
        recording.Unsupported: When only ``torch.export`` represents the forward faithfully.
    """
    from gradlint.capture.record import Unsupported, record_program

    if os.environ.get("GRADLINT_CAPTURE") == "export":
        raise Unsupported("GRADLINT_CAPTURE=export")
    with fake_forward(model, inputs) as run, quiet():
        return record_program(run.model, run.args, run.kwargs, run.reader)


def export_graph(model: nn.Module, inputs: ExampleInputs) -> Graph:
    """The ``torch.export`` graph of ``model`` on fake tensors, as a ``Graph``.

    Recorded directly when ``gradlint.capture.record`` can (a quarter of export's cost, and the
    same graph); otherwise from ``torch.export`` itself.
    """
    from gradlint.capture.record import Unsupported

    try:
        ep = recorded_program(model, inputs)
        own = ep.own_backward
    except Unsupported as refused:
        own = None
        try:
            ep = export_program(model, inputs)
        except Exception as e:
            # Why recording refused is often the cause (a value read from the weights); not
            # when the user turned recording off.
            if os.environ.get("GRADLINT_CAPTURE") != "export":
                e.add_note(f"recording refused: {refused}")
            raise
    graph = program_graph(ep, inputs)
    # A path chosen by random numbers (layer dropout) is one step's path: rules say so.
    graph.notes += [("random-path", where) for where in getattr(ep, "random_reads", ())]
    # Export inlines a custom autograd.Function's forward and keeps no trace of it: one more
    # fake forward finds it (only on this path; recording finds it from its own forward).
    graph.own_backward = own if own is not None else own_backward(model, inputs)
    return graph


def program_graph(ep, inputs: ExampleInputs) -> Graph:
    """An exported (or recorded) program as a ``Graph``; token inputs keep their vocabulary."""
    user = list(ep.graph_signature.user_inputs)
    specs = [v for v in torch.utils._pytree.tree_leaves((inputs.args, inputs.kwargs),
                                                        is_leaf=lambda x: isinstance(x, TensorSpec))
             if isinstance(v, TensorSpec)]
    vocabs = {name: (specs[i].vocab if i < len(specs) else None) for i, name in enumerate(user)}
    graph = Converter(ep, vocabs).convert()
    if inputs.batch_size:
        graph.batch_size = inputs.batch_size
    # An RNN's initial state handed in as zeros (init_hidden) is zeros, not the protocol's
    # N(0, 1) draw (docs/design.md §6, R7).
    concrete = torch.utils._pytree.tree_leaves(inputs.concrete) if inputs.concrete is not None else []
    if len(concrete) == len(user):
        zeros = {name for name, v in zip(user, concrete) if isinstance(v, torch.Tensor) and v.is_floating_point()
                 and v.numel() and not v.is_meta and not bool(v.any())}
        for n in graph.nodes:
            if n.kind == "input" and n.name in zeros:
                n.attrs["zeros"] = True
    return graph


def trace(model: nn.Module, inputs: ExampleInputs | None) -> tuple[Graph, list[str]]:
    """The best graph available for ``model``, and why better paths failed.

    Returns:
        The graph, and one message per path that was tried and failed.

    Raises:
        InputError: When export failed because the inputs do not fit a layer.
        ForwardError: When export failed because the user's forward raises on the inputs by itself.
    """
    failures: list[str] = []
    if inputs is not None and inputs.found:
        try:
            return export_graph(model, inputs), failures
        except Exception as e:  # noqa: BLE001 - any failure of export means: try the next path
            # gradlint's own note, whole: cut at a length, it would end where the absolute path
            # it quotes (shown relative later) happens to push it.
            failures += [_first_line(note, None) for note in getattr(e, "__notes__", ())
                         if note.startswith("recording refused:")]
            failures.append(f"torch.export failed: {type(e).__name__}: {_first_line(e)}")
        # A fallback graph of a forward that cannot run at all would be analyzed as if it could.
        if (error := forward_error(model, inputs)) is not None:
            raise error
    else:
        try:
            return fx_graph(model), failures
        except Exception as e:  # noqa: BLE001 - symbolic tracing runs user code: try the next path
            failures.append(f"torch.fx.symbolic_trace failed: {type(e).__name__}: {_first_line(e)}")
    graph = module_order_graph(model, inputs)
    graph.own_backward = own_backward(model, inputs)
    return graph, failures


def own_backward(model: nn.Module, inputs: ExampleInputs | None) -> tuple[str, ...]:
    """``capture.own_backward.found`` from a fake forward of its own, for captures that did not
    record one (``torch.export``, the module-order fallback); empty when there are no inputs or
    that forward fails (the capture reports the forward's failure itself)."""
    from gradlint.capture.own_backward import HookCalls, found

    if inputs is None or not inputs.found:
        return ()
    try:
        with fake_forward(model, inputs) as run, quiet(), torch.enable_grad():
            calls = HookCalls()
            with calls:
                out = run.model(*run.args, **run.kwargs)
            return found(out, calls.hooks)
    except Exception:  # noqa: BLE001 - the user's forward; its failures are reported by the capture
        return ()


def _first_line(e: BaseException | str, limit: int | None = 300) -> str:
    for line in str(e).strip().splitlines():
        line = line.strip()
        if len(line) > 3:
            return line[:limit]
    return ""
