"""What user model files import to declare gradlint targets and their example inputs.

``@gradlint.target`` marks a model factory or an ``nn.Module`` class as something to analyze and
says how to call it; ``gradlint.tokens(...)`` declares a token-id input. User files import this
module, so it must stay cheap: no torch at import time.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gradlint.base.errors import InputError, LoadError

__all__ = ["TargetOptions", "Tokens", "check_shape", "target", "tokens", "TARGET_ATTR"]

TARGET_ATTR = "__gradlint_target__"

# Integer dtype names a token input may name; canonical torch names on the right.
TOKEN_DTYPES = {
    "long": "int64", "int64": "int64",
    "int": "int32", "int32": "int32",
    "short": "int16", "int16": "int16",
    "int8": "int8", "uint8": "uint8",
}

_F = TypeVar("_F")


def check_shape(shape: Any, what: str = "input shape") -> tuple[int, ...]:
    """Checks that ``shape`` is a non-empty tuple (or list) of positive ints.

    Args:
        shape: The shape as the user wrote it.
        what: How the error names it (``"input shape"``, ``"shape="``).

    Returns:
        The shape as a tuple of plain ints.

    Raises:
        InputError: Quoting the shape as given.
    """
    said = f"{what}{shape!r}" if what.endswith("=") else f"{what} {shape!r}"
    if not isinstance(shape, (tuple, list)):
        raise InputError(f"{said} must be a tuple of positive ints, such as (8, 512)")
    if not shape:
        raise InputError(f"{said} is empty; give at least the batch dimension, such as (8, 512)")
    dims = []
    for dim in shape:
        # operator.index accepts numpy ints too; bool is an int to Python but never a size.
        try:
            value = operator.index(dim)
        except TypeError:
            value = None
        if value is None or isinstance(dim, bool) or value <= 0:
            raise InputError(f"{said} must contain positive ints")
        dims.append(value)
    return tuple(dims)


@dataclass(frozen=True)
class Tokens:
    """A token-id input: integers drawn uniformly from ``0..vocab-1``.

    Attributes:
        shape: The tensor's shape, batch first, such as ``(8, 128)``.
        vocab: Number of distinct ids (the embedding table's rows).
        dtype: Integer dtype name (``"long"``, ``"int64"``, ``"int32"``, ...).
    """

    shape: tuple[int, ...]
    vocab: int
    dtype: str = "long"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", check_shape(self.shape, "shape="))
        if isinstance(self.vocab, bool) or not isinstance(self.vocab, int) or self.vocab <= 0:
            raise InputError(f"vocab={self.vocab!r} must be a positive int")
        if self.dtype not in TOKEN_DTYPES:
            names = ", ".join(repr(name) for name in TOKEN_DTYPES)
            raise InputError(f"dtype={self.dtype!r} must be an integer dtype name: one of {names}")


def tokens(shape: tuple[int, ...], vocab: int, *, dtype: str = "long") -> Tokens:
    """Declares a token-id input for ``@gradlint.target(inputs=...)``.

    Args:
        shape: The tensor's shape, batch first, such as ``(8, 128)``.
        vocab: Number of distinct ids; ids are drawn uniformly from ``0..vocab-1``.
        dtype: Integer dtype name (``"long"``, ``"int64"``, ``"int32"``, ...).

    Returns:
        The declaration.

    Raises:
        InputError: When an argument is out of range, quoting it.
    """
    return Tokens(shape=shape, vocab=vocab, dtype=dtype)


def _check_one(value: Any) -> None:
    if not isinstance(value, Tokens):
        check_shape(value)


def _check_inputs(inputs: Any) -> None:
    if inputs is None or isinstance(inputs, Tokens):
        return
    if isinstance(inputs, tuple):
        check_shape(inputs)
    elif isinstance(inputs, list):
        if not inputs:
            raise InputError("inputs=[] declares no inputs; give at least one shape, such as [(8, 512)]")
        if all(isinstance(dim, int) for dim in inputs):
            raise InputError(
                f"inputs={inputs!r} is ambiguous: a list declares several inputs",
                hint=f"write one input's shape as a tuple, inputs={tuple(inputs)!r}, "
                     f"or several as a list of tuples, inputs=[{tuple(inputs)!r}]")
        for value in inputs:
            _check_one(value)
    elif isinstance(inputs, Mapping):
        for key, value in inputs.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise InputError(f"inputs key {key!r} must be the name of a forward() parameter")
            _check_one(value)
    elif not callable(inputs):
        raise InputError(
            f"inputs={inputs!r} must be a shape tuple, a list of shapes, a dict of shapes, "
            "tokens(...), or a callable returning tensors")


@dataclass(frozen=True)
class TargetOptions:
    """What ``@gradlint.target(...)`` recorded about one target.

    Attributes:
        inputs: A shape tuple, a list of shapes, a dict name -> shape, a ``Tokens`` wherever a
            shape may stand, or a zero-argument callable returning a tensor, a tuple of tensors
            or a dict of tensors; None when not declared.
        kwargs: Keyword arguments for the factory or class; None when not declared.
        name: The name reports show instead of the Python name; None when not declared.
    """

    inputs: Any = field(default=None, hash=False)
    kwargs: dict[str, Any] | None = field(default=None, hash=False)
    name: str | None = None

    def __post_init__(self) -> None:
        _check_inputs(self.inputs)
        if self.kwargs is not None:
            if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
                raise LoadError(f"kwargs={self.kwargs!r} must be a dict of keyword arguments")
            object.__setattr__(self, "kwargs", dict(self.kwargs))
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise LoadError(f"name={self.name!r} must be a non-empty str")


def target(obj: _F | None = None, *, inputs: Any = None, kwargs: Mapping[str, Any] | None = None,
           name: str | None = None) -> _F | Callable[[_F], _F]:
    """Marks a model factory or ``nn.Module`` class for gradlint; returns it unchanged.

    Usable bare (``@gradlint.target``) or with options (``@gradlint.target(inputs=(8, 512))``).

    Args:
        obj: The factory or class, when used bare.
        inputs: The example inputs: a shape tuple (one float input), a list of shapes (several
            positional inputs), a dict name -> shape (keyword inputs), ``gradlint.tokens(...)``
            wherever a shape may stand, or a zero-argument callable returning a tensor, a tuple of
            tensors or a dict of tensors.
        kwargs: Keyword arguments gradlint passes to the factory or class.
        name: The name reports show for this target.

    Returns:
        ``obj`` itself with ``__gradlint_target__`` set, or a decorator doing that.

    Raises:
        InputError: When ``inputs`` is malformed.
        LoadError: When ``kwargs`` or ``name`` is malformed, or what is decorated is not callable.
    """
    options = TargetOptions(inputs=inputs, kwargs=kwargs, name=name)

    def mark(decorated: _F) -> _F:
        if not callable(decorated):
            hint = (f"pass inputs by keyword: @gradlint.target(inputs={decorated!r})"
                    if isinstance(decorated, (tuple, list, dict, Tokens)) else None)
            raise LoadError(
                f"@gradlint.target must decorate a model factory or an nn.Module class, "
                f"not {type(decorated).__name__}", hint=hint)
        try:
            setattr(decorated, TARGET_ATTR, options)
        except (AttributeError, TypeError) as exc:
            raise LoadError(f"@gradlint.target cannot mark {decorated!r}: {exc}") from exc
        return decorated

    return mark if obj is None else mark(obj)
