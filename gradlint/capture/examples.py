"""What gradlint feeds a model, described rather than held: ``TensorSpec`` for one tensor,
``SequenceLengths`` for a list of lengths, ``ExampleInputs`` for a forward's whole call, with where
it came from. Values are drawn per the measurement protocol (floats ~ N(0, 1), token ids uniform
over the vocabulary), so the static estimate and a probe refer to the same experiment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gradlint.base.errors import InputError
from gradlint.base.targets import TOKEN_DTYPES, Tokens, check_shape

if TYPE_CHECKING:
    import torch

__all__ = ["ExampleInputs", "SequenceLengths", "TensorSpec", "spec_for"]

_DTYPES = frozenset({
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "int8", "uint8", "int16", "int32", "int64", "bool",
})
_FLOAT_ALIASES = {"float": "float32", "double": "float64", "half": "float16"}


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor input, described rather than held.

    Attributes:
        shape: The tensor's shape.
        dtype: A torch dtype name: ``"float32"``, ``"int64"``, ...
        vocab: For token ids, the number of distinct ids; None otherwise.
        batch_dim: Which dim is the batch, where it differs from the inputs' common one (an RNN's
            hidden state (layers, batch, width) beside batch-first ids); None to follow it.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    vocab: int | None = None
    batch_dim: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        dtype = TOKEN_DTYPES.get(self.dtype) or _FLOAT_ALIASES.get(self.dtype) or self.dtype
        if dtype not in _DTYPES:
            raise InputError(f"dtype={self.dtype!r} is not a torch dtype name such as 'float32' or 'int64'")
        object.__setattr__(self, "dtype", dtype)
        # Scalars and empty dims are legal when they come from a real tensor, so only
        # negative or non-int entries are refused here; declared shapes go through check_shape.
        if not isinstance(self.shape, tuple) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in self.shape):
            raise InputError(f"shape={self.shape!r} must be a tuple of non-negative ints")
        if self.vocab is not None and (isinstance(self.vocab, bool) or not isinstance(self.vocab, int)
                                       or self.vocab <= 0):
            raise InputError(f"vocab={self.vocab!r} must be a positive int")

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> TensorSpec:
        """Describes a real tensor.

        Integer tensors with non-negative values get ``vocab = max + 1``, so redrawn ids stay
        inside every table the originals could index.

        Args:
            tensor: The tensor.

        Returns:
            Its spec.
        """
        import torch

        vocab = None
        if (not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool
                and tensor.device.type != "meta" and tensor.numel() > 0 and int(tensor.min()) >= 0):
            vocab = int(tensor.max()) + 1
        return cls(tuple(tensor.shape), _dtype_name(tensor.dtype), vocab)

    @property
    def is_float(self) -> bool:
        """Whether values are floating point (or complex)."""
        return self.dtype.startswith(("float", "bfloat", "complex"))

    def describe(self) -> str:
        """Returns a short description: ``(8, 512) float32`` or ``(8, 32) int64 ids < 1000``."""
        text = f"{self.shape} {self.dtype}"
        return f"{text} ids < {self.vocab}" if self.vocab is not None else text

    def materialize(self, device: Any = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws a tensor per the measurement protocol.

        Floats are i.i.d. N(0, 1), token ids i.i.d. uniform over ``0..vocab-1``, bools fair coins.

        Args:
            device: Where the tensor goes.
            generator: Random source; drawing happens on its device, then moves to ``device``.

        Returns:
            The tensor.

        Raises:
            InputError: For an integer input without a vocab (nothing says which ids are valid).
        """
        import torch

        dtype = getattr(torch, self.dtype)
        where = generator.device if generator is not None else device
        if self.vocab is not None:
            out = torch.randint(0, self.vocab, self.shape, generator=generator, device=where, dtype=dtype)
        elif self.is_float:
            # Drawn in float32 and cast, so half-precision inputs follow the same stream.
            draw_dtype = torch.complex64 if self.dtype.startswith("complex") else torch.float32
            out = torch.randn(self.shape, generator=generator, device=where, dtype=draw_dtype).to(dtype)
        elif self.dtype == "bool":
            out = torch.rand(self.shape, generator=generator, device=where) < 0.5
        else:
            raise InputError(f"cannot draw the {self.dtype} input {self.shape} without a vocab: "
                             "nothing says which values are valid")
        return out.to(device)

    def meta(self) -> torch.Tensor:
        """Returns an empty tensor of this shape and dtype on the meta device."""
        import torch

        return torch.empty(self.shape, dtype=getattr(torch, self.dtype), device="meta")


@dataclass(frozen=True)
class SequenceLengths:
    """The lengths of a batch of full-length sequences, passed as a Python list (``[32] * 8``), as
    ``pack_padded_sequence`` and the models that call it take them.

    Attributes:
        batch: How many sequences.
        length: Each one's length: that of the sequence input beside it.
    """

    batch: int
    length: int

    def value(self) -> list[int]:
        """The list the model gets."""
        return [self.length] * self.batch

    def describe(self) -> str:
        """``[32] * 8``."""
        return f"[{self.length}] * {self.batch}"


def _map(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to every leaf of nested tuples, lists and dicts."""
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_map(v, fn) for v in value)
    if isinstance(value, list):
        return [_map(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return fn(value)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    else:
        yield value


def _describe_value(value: Any) -> str:
    if isinstance(value, (TensorSpec, SequenceLengths)):
        return value.describe()
    if isinstance(value, tuple) and any(isinstance(v, TensorSpec) for v in _leaves(value)):
        return "(" + ", ".join(_describe_value(v) for v in value) + ")"
    if isinstance(value, list) and any(isinstance(v, TensorSpec) for v in _leaves(value)):
        return "[" + ", ".join(_describe_value(v) for v in value) + "]"
    return repr(value)


def _plain(value: Any) -> Any:
    return value.value() if isinstance(value, SequenceLengths) else value


@dataclass(frozen=True)
class ExampleInputs:
    """The inputs a model is analyzed with.

    Attributes:
        args: Positional inputs: ``TensorSpec``, a tuple or list of them (an LSTM's ``(h, c)``),
            ``SequenceLengths``, or a constant passed as is.
        kwargs: Keyword inputs, likewise.
        source: ``"decorator"``, ``"argument"`` (given to ``gradlint.check``), ``"example_input_array"``,
            ``"cli"``, ``"inferred"``, or None
            when nothing could be found (the analysis then runs from parameter shapes only).
        note: A sentence for the report saying where the inputs came from.
        concrete: ``(args, kwargs)`` of the real tensors the user supplied (an inputs callable or
            ``example_input_array``), kept for a real backward pass; None otherwise.
        batch_dim: Which dim of the first tensor input is the batch (1 for sequence-first RNN and
            attention inputs that gradlint inferred). A ``TensorSpec`` with a ``batch_dim`` of
            its own follows that instead.
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str | None = None
    note: str = ""
    concrete: tuple[tuple[Any, ...], dict[str, Any]] | None = field(
        default=None, compare=False, hash=False, repr=False)
    batch_dim: int = 0

    def _specs(self) -> Iterator[TensorSpec]:
        for value in _leaves((self.args, self.kwargs)):
            if isinstance(value, TensorSpec):
                yield value

    def _batch_dim_of(self, spec: TensorSpec) -> int:
        return self.batch_dim if spec.batch_dim is None else spec.batch_dim

    @property
    def found(self) -> bool:
        """Whether any inputs were found (``source`` is not None)."""
        return self.source is not None

    @property
    def batch_size(self) -> int | None:
        """Size of the batch dim of the first tensor input; None without tensor inputs."""
        first = next(self._specs(), None)
        if first is None or len(first.shape) <= self._batch_dim_of(first):
            return None
        return first.shape[self._batch_dim_of(first)]

    def describe(self) -> str:
        """Returns the inputs in a few words: ``(8, 512) float32, mask: (8, 32) bool``."""
        parts = [_describe_value(v) for v in self.args]
        parts += [f"{k}: {_describe_value(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts) if parts else "no inputs"

    def with_batch(self, size: int) -> ExampleInputs:
        """The same inputs with ``size`` samples: every tensor input whose batch dim matches the
        first input's is resized; the user's own tensors are cut down (never padded)."""
        old = self.batch_size
        if old is None or size == old:
            return self

        def resize(value: Any) -> Any:
            if isinstance(value, SequenceLengths) and value.batch == old:
                return replace(value, batch=size)
            if not isinstance(value, TensorSpec):
                return value
            dim = self._batch_dim_of(value)
            if len(value.shape) > dim and value.shape[dim] == old:
                shape = list(value.shape)
                shape[dim] = size
                return replace(value, shape=tuple(shape))
            return value

        def cut(value: Any) -> Any:
            import torch

            if isinstance(value, torch.Tensor) and value.dim() > self.batch_dim and value.shape[self.batch_dim] == old:
                return value.narrow(self.batch_dim, 0, min(size, old))
            return value

        concrete = None
        if self.concrete is not None and size <= old:
            c_args, c_kwargs = self.concrete
            concrete = (tuple(cut(v) for v in c_args), {k: cut(v) for k, v in c_kwargs.items()})
        return replace(self, args=_map(self.args, resize), kwargs=_map(self.kwargs, resize), concrete=concrete)

    def materialize(self, device: Any = "cpu", generator: torch.Generator | None = None,
                    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Draws real tensors per the measurement protocol.

        Integer inputs without a vocab cannot be redrawn; the user's own tensors are reused.

        Args:
            device: Where the tensors go.
            generator: Random source for the draws.

        Returns:
            ``(args, kwargs)`` to call the model with.
        """
        c_args, c_kwargs = self.concrete if self.concrete is not None else ((), {})

        def draw(value: Any, original: Any) -> Any:
            if not isinstance(value, TensorSpec):
                return _map(value, lambda v: v.materialize(device, generator) if isinstance(v, TensorSpec)
                            else _plain(v))
            if value.vocab is None and not value.is_float and value.dtype != "bool" and original is not None:
                return original.to(device)
            return value.materialize(device, generator)

        args = tuple(draw(v, c_args[i] if i < len(c_args) else None) for i, v in enumerate(self.args))
        kwargs = {k: draw(v, c_kwargs.get(k)) for k, v in self.kwargs.items()}
        return args, kwargs

    def meta(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Returns ``(args, kwargs)`` with every tensor input as an empty meta tensor."""
        def to_meta(value: Any) -> Any:
            return value.meta() if isinstance(value, TensorSpec) else _plain(value)

        return _map(self.args, to_meta), _map(self.kwargs, to_meta)




def spec_for(value: Any, float_dtype: str) -> TensorSpec:
    """The spec of a declared input: a shape (a float tensor of ``float_dtype``) or ``Tokens``."""
    if isinstance(value, Tokens):
        return TensorSpec(value.shape, TOKEN_DTYPES[value.dtype], value.vocab)
    return TensorSpec(check_shape(value), float_dtype)
