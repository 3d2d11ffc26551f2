"""Why a forward fails by itself: once torch.export has failed, tell a forward that cannot run
on the example inputs (an error that names the layer, what it takes and what it got) from one
that only tracing cannot follow (the fallback graph)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gradlint.base.errors import ForwardError, InputError
from gradlint.base.targets import Tokens
from gradlint.capture.fake import fake_forward
from gradlint.capture.infer import meta_only, suggest_input
from gradlint.capture.inputs import ExampleInputs, _dtype_name
from gradlint.capture.meta import quiet
from gradlint.load import format_user_traceback, innermost_user_frame

if TYPE_CHECKING:
    from torch import nn

# What only a forward on fake tensors raises besides what a meta one does (``meta_only``): a
# value or an output shape that depends on values.
_FAKE_ONLY = re.compile(r"data.?dependent|DynamicOutputShape", re.IGNORECASE)

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}



_SOURCES = {"decorator": "declared by @gradlint.target", "argument": "given to gradlint.check",
            "example_input_array": "from example_input_array", "cli": "from --input-shape",
            "inferred": "inferred by gradlint"}



def _misfit(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """``(what the layer takes, what it got)`` when its input cannot fit it; None when it fits
    or the layer is not one whose input shape gradlint knows."""
    import torch
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd
    from torch.nn.modules.instancenorm import _InstanceNorm

    x = args[0] if args else next(iter(kwargs.values()), None)
    if not isinstance(x, torch.Tensor):
        return None
    shape, got = tuple(x.shape), f"{tuple(x.shape)} {_dtype_name(x.dtype)}"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        floating = x.is_floating_point() or x.is_complex()
        return (f"integer token ids below {module.num_embeddings}", got) if floating else None
    if isinstance(module, nn.Linear):
        fits = bool(shape) and shape[-1] == module.in_features
        return None if fits else (f"(..., {module.in_features})", got)
    if isinstance(module, _ConvNd):
        rank = len(module.kernel_size)
        fits = len(shape) in (rank + 1, rank + 2) and shape[-rank - 1] == module.in_channels
        return None if fits else (f"(N, {module.in_channels}, {_SPATIAL.get(rank, '...')})", got)
    if isinstance(module, nn.LayerNorm):
        dims = tuple(module.normalized_shape)
        fits = len(shape) >= len(dims) and shape[len(shape) - len(dims):] == dims
        return None if fits else (f"(..., {', '.join(map(str, dims))})", got)
    if isinstance(module, (_BatchNorm, _InstanceNorm, nn.GroupNorm)):
        channels = module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features
        fits = len(shape) >= 2 and shape[1] == channels
        return None if fits else (f"(N, {channels}, ...)", got)
    if isinstance(module, nn.RNNBase):
        fits = len(shape) in (2, 3) and shape[-1] == module.input_size
        order = "N, L" if module.batch_first else "L, N"
        return None if fits else (f"({order}, {module.input_size})", got)
    if isinstance(module, nn.MultiheadAttention):
        fits = bool(shape) and shape[-1] == module.embed_dim
        return None if fits else (f"(..., {module.embed_dim})", got)
    return None



def _suggestion(guess: Any, source: str | None) -> str:
    """How the user would declare the guessed input, where they declared (or did not) theirs."""
    if isinstance(guess, Tokens):
        return f"@gradlint.target(inputs=gradlint.tokens({guess.shape}, vocab={guess.vocab}))"
    if source == "cli":
        return f"--input-shape {','.join(map(str, guess))}"
    if source == "config":
        return f"inputs = {list(guess)} in the target's [tool.gradlint] entry"
    if source == "example_input_array":
        return f"example_input_array = torch.randn{guess}"
    if source == "argument":
        return f"inputs={guess}"
    return f"@gradlint.target(inputs={guess})"



def forward_error(model: nn.Module, inputs: ExampleInputs | None) -> Exception | None:
    """Why the model's forward fails on the example inputs, when it fails by itself.

    Called once capture has failed. A forward of the model on fake tensors (as capture runs it,
    ``gradlint.capture.fake``) tells a forward that cannot run on these inputs from one that
    only capture cannot follow: the first gets an error, the second the fallback graph.

    Args:
        model: The model.
        inputs: Its example inputs.

    Returns:
        An ``InputError`` when a layer's input does not fit it (the layer, what it takes, what
        it got, and inputs that would fit when it is the first layer); a ``ForwardError`` when
        the user's code raised anything else; each at the innermost line of the user's code,
        with their traceback in ``traceback_text``. None when the forward runs, or fails only
        because its tensors have no values (fake or meta tensors).
    """
    if inputs is None or not inputs.found:
        return None
    running: list[tuple[nn.Module, tuple[Any, ...], dict[str, Any]]] = []
    first_leaf: list[nn.Module] = []

    def enter(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> None:
        running.append((module, a, kw))
        if not module._modules and not first_leaf:
            first_leaf.append(module)

    def leave(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any], out: Any) -> None:
        if running and running[-1][0] is module:
            running.pop()

    failure: Exception | None = None
    names: dict[int, str] = {}
    try:
        with fake_forward(model, inputs) as run:
            names = {id(m): n for n, m in run.model.named_modules()}
            handles = [h for m in run.model.modules() for h in (m.register_forward_pre_hook(enter, with_kwargs=True),
                                                                m.register_forward_hook(leave, with_kwargs=True))]
            try:
                with quiet():
                    run.model(*run.args, **run.kwargs)
            except Exception as exc:  # noqa: BLE001 - the user's forward: any failure is diagnosed
                failure = exc
            finally:
                for handle in handles:
                    handle.remove()
    except Exception:  # noqa: BLE001 - nothing to run, so nothing to diagnose
        return None
    if failure is None:
        return None
    if meta_only(failure) or _FAKE_ONLY.search(f"{type(failure).__name__}: {failure}"):
        # Real tensors might pass, so only tracing is known to fail.
        return None
    path, line = innermost_user_frame(failure) or (None, None)
    said = inputs.note if inputs.source == "config" else _SOURCES.get(inputs.source or "", "")
    given = f"the example inputs {inputs.describe()}" + (f" ({said})" if said else "")
    misfit = _misfit(*running[-1]) if running else None
    if misfit is not None:
        layer = running[-1][0]
        name = names.get(id(layer), "") or "the model"
        takes, got = misfit
        guess = suggest_input(layer, inputs.batch_size or 8, model) if first_leaf[:1] == [layer] else None
        if guess is not None:
            suggestion = _suggestion(guess, inputs.source)
            hint = f"{name} is the first layer forward calls; declare inputs it takes, e.g. {suggestion}"
        else:
            hint = (f"{name} gets its input from the layers before it: if the model was written for inputs of "
                    "another size (an image size, a sequence length), declare inputs of that size")
        err: Exception = InputError(f"{given} do not fit {name} = {layer!r}: it takes {takes}, got {got}",
                                    path=path, line=line, hint=hint)
    else:
        text = next((ln.strip() for ln in str(failure).strip().splitlines() if ln.strip()), "")[:300]
        hint = "fix the forward, or declare the inputs it expects with @gradlint.target(inputs=...)"
        if inputs.source == "inferred":
            hint = ("gradlint inferred these inputs, and the forward raised on every candidate it tried; declare the "
                    "inputs it expects with @gradlint.target(inputs=...) or `inputs` in the target's [tool.gradlint] "
                    "entry")
        err = ForwardError(f"forward raised {type(failure).__name__} on {given}: {text}", path=path, line=line,
                           hint=hint)
    err.traceback_text = format_user_traceback(failure)
    return err
