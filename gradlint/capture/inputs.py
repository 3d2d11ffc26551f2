"""Example inputs: what gradlint feeds a model, and where that came from.

The inputs come, in this order, from ``@gradlint.target(inputs=...)``, the model's
``example_input_array`` (the PyTorch Lightning convention), ``--input-shape`` on the command
line, or an inference from the model itself (``gradlint.capture.infer``). Values are described by
``TensorSpec`` and drawn per the measurement protocol (floats ~ N(0, 1), token ids uniform over the
vocabulary), so the static estimate and a probe refer to the same experiment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gradlint.base.errors import InputError
from gradlint.base.targets import TargetOptions, Tokens, check_shape
from gradlint.capture.examples import ExampleInputs, SequenceLengths, TensorSpec, _dtype_name, _map, spec_for
from gradlint.capture.infer import infer_inputs
from gradlint.capture.layer_inputs import DEFAULT_SEQ_LEN, DEFAULT_SPATIAL
from gradlint.load import format_user_traceback, innermost_line, user_code

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ExampleInputs", "SequenceLengths", "TensorSpec", "resolve_inputs", "DEFAULT_SEQ_LEN", "DEFAULT_SPATIAL"]


# --- declared inputs ------------------------------------------------------------------------

def _float_dtype(model: nn.Module) -> str:
    # A model cast with .double() or .half() needs inputs of that dtype, or forward fails.
    try:
        for param in model.parameters():
            if param.is_floating_point():
                return _dtype_name(param.dtype)
    except Exception:  # noqa: BLE001 - lazy or exotic parameters: fall back to the default
        pass
    return "float32"


def _from_declaration(inputs: Any, float_dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, Mapping):
        return (), {name: spec_for(value, float_dtype) for name, value in inputs.items()}
    if isinstance(inputs, list):
        return tuple(spec_for(value, float_dtype) for value in inputs), {}
    return (spec_for(inputs, float_dtype),), {}


def _call_site(fn: Any) -> tuple[str | None, int | None]:
    # Reads the code of a callable object's __call__; callable() would not give it.
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)  # noqa: B004
    return (code.co_filename, code.co_firstlineno) if code is not None else (None, None)


def _from_callable(fn: Any) -> tuple[tuple[Any, ...], dict[str, Any], tuple[tuple[Any, ...], dict[str, Any]]]:
    import torch

    path, line = _call_site(fn)
    label = getattr(fn, "__qualname__", repr(fn))
    try:
        with user_code(path) if path and os.path.isfile(path) else contextlib.nullcontext():
            produced = fn()
    except Exception as exc:
        err = InputError(f"the inputs callable {label} raised {type(exc).__name__}: {exc}", path=path,
                         line=(innermost_line(exc, path) if path else None) or line)
        err.traceback_text = format_user_traceback(exc)
        raise err from exc
    if isinstance(produced, torch.Tensor):
        args, kwargs = (produced,), {}
    elif isinstance(produced, (tuple, list)):
        args, kwargs = tuple(produced), {}
    elif isinstance(produced, Mapping):
        args, kwargs = (), dict(produced)
    else:
        raise InputError(f"the inputs callable {label} returned {type(produced).__name__}; it must "
                         "return a tensor, a tuple of tensors or a dict of tensors", path=path, line=line)
    if not any(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values())):
        raise InputError(f"the inputs callable {label} returned no tensor", path=path, line=line)
    return *_describe_concrete(args, kwargs), (args, kwargs)


def _describe_concrete(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    import torch

    def spec(value: Any) -> Any:
        return TensorSpec.from_tensor(value) if isinstance(value, torch.Tensor) else value

    return _map(tuple(args), spec), _map(dict(kwargs), spec)


def _example_input_array(model: nn.Module) -> Any:
    try:
        return getattr(model, "example_input_array", None)
    except Exception:  # noqa: BLE001 - a failing Lightning property means "not set"
        return None


# --- the resolution order ---------------------------------------------------------------------

def resolve_inputs(model: nn.Module, options: TargetOptions | None = None,
                   cli_shapes: list[tuple[int, ...]] | None = None, default_batch: int = 8) -> ExampleInputs:
    """Finds the example inputs for a model.

    Order: the decorator's ``inputs``; the model's ``example_input_array``; ``cli_shapes``
    (``--input-shape``); a guess from the first layer forward calls (the first in registration
    order when forward's source cannot be read).

    Args:
        model: The instantiated model.
        options: What ``@gradlint.target`` recorded, if anything.
        cli_shapes: Shapes from ``--input-shape``, one per positional float input.
        default_batch: Batch size for guessed inputs.

    Returns:
        The inputs; ``source`` is None when nothing was found, and the note then says which
        estimates that leaves out.

    Raises:
        InputError: When declared inputs or shapes are malformed, or an inputs callable fails.
    """
    if isinstance(default_batch, bool) or not isinstance(default_batch, int) or default_batch <= 0:
        raise InputError(f"default_batch={default_batch!r} must be a positive int")
    float_dtype = _float_dtype(model)
    declared = options.inputs if options is not None else None
    if declared is not None:
        if callable(declared) and not isinstance(declared, (tuple, list, Mapping, Tokens)):
            args, kwargs, concrete = _from_callable(declared)
            label = getattr(declared, "__qualname__", "callable")
            return ExampleInputs(args, kwargs, "decorator", concrete=concrete,
                                 note=f"inputs from @gradlint.target(inputs={label}): "
                                      f"{ExampleInputs(args, kwargs).describe()}")
        args, kwargs = _from_declaration(declared, float_dtype)
        return ExampleInputs(args, kwargs, "decorator",
                             note=f"inputs declared by @gradlint.target: {ExampleInputs(args, kwargs).describe()}")

    example = _example_input_array(model)
    if example is not None:
        if isinstance(example, Mapping):
            concrete = ((), dict(example))
        elif isinstance(example, (tuple, list)):
            concrete = (tuple(example), {})
        else:
            concrete = ((example,), {})
        args, kwargs = _describe_concrete(*concrete)
        if not any(isinstance(v, TensorSpec) for v in (*args, *kwargs.values())):
            raise InputError(f"the model's example_input_array holds no tensor (it is a {type(example).__name__})",
                             hint="set it to a tensor, a tuple of tensors or a dict of tensors")
        return ExampleInputs(args, kwargs, "example_input_array", concrete=concrete,
                             note=f"inputs from the model's example_input_array: "
                                  f"{ExampleInputs(args, kwargs).describe()}")

    if cli_shapes:
        args = tuple(TensorSpec(check_shape(shape), float_dtype) for shape in cli_shapes)
        return ExampleInputs(args, {}, "cli",
                             note=f"inputs from --input-shape: {ExampleInputs(args).describe()}")

    return infer_inputs(model, default_batch, float_dtype)


# --- a forward that fails by itself ---------------------------------------------------------


