"""Example inputs: what gradlint feeds a model, and where that came from.

The inputs come, in this order, from ``@gradlint.target(inputs=...)``, the model's
``example_input_array`` (the PyTorch Lightning convention), ``--input-shape`` on the command
line, or a guess from the model's first layer. Values are described by ``TensorSpec`` and drawn
per the measurement protocol (floats ~ N(0, 1), token ids uniform over the vocabulary), so the
static estimate and a probe refer to the same experiment.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import os
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gradlint.base.errors import InputError
from gradlint.base.targets import TOKEN_DTYPES, TargetOptions, Tokens, check_shape
from gradlint.load import format_user_traceback, innermost_line, user_code

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ExampleInputs", "TensorSpec", "resolve_inputs", "DEFAULT_SEQ_LEN", "DEFAULT_SPATIAL"]

DEFAULT_SEQ_LEN = 32
# Per spatial rank: small enough for CPU, large enough for a few stride-2 stages.
DEFAULT_SPATIAL = {1: 64, 2: 32, 3: 16}

_DTYPES = frozenset({
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "int8", "uint8", "int16", "int32", "int64", "bool",
})
_FLOAT_ALIASES = {"float": "float32", "double": "float64", "half": "float16"}
_NOTHING_INFERRED = (
    "; the analysis runs from parameter shapes only, which leaves out every estimate that needs "
    "a forward pass (activation and backpropagated-gradient scales per layer, and the parameter "
    "gradients that depend on them); declare inputs with @gradlint.target(inputs=...) or --input-shape")


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor input, described rather than held.

    Attributes:
        shape: The tensor's shape.
        dtype: A torch dtype name: ``"float32"``, ``"int64"``, ...
        vocab: For token ids, the number of distinct ids; None otherwise.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    vocab: int | None = None

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
class ExampleInputs:
    """The inputs a model is analyzed with.

    Attributes:
        args: Positional inputs: ``TensorSpec`` or a constant passed as is.
        kwargs: Keyword inputs, likewise.
        source: ``"decorator"``, ``"argument"`` (given to ``gradlint.check``), ``"example_input_array"``,
            ``"cli"``, ``"inferred"``, or None
            when nothing could be found (the analysis then runs from parameter shapes only).
        note: A sentence for the report saying where the inputs came from.
        concrete: ``(args, kwargs)`` of the real tensors the user supplied (an inputs callable or
            ``example_input_array``), kept for a real backward pass; None otherwise.
        batch_dim: Which dim of the first tensor input is the batch (1 for sequence-first RNN and
            attention inputs that gradlint inferred).
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str | None = None
    note: str = ""
    concrete: tuple[tuple[Any, ...], dict[str, Any]] | None = field(
        default=None, compare=False, hash=False, repr=False)
    batch_dim: int = 0

    def _specs(self) -> Iterator[TensorSpec]:
        for value in (*self.args, *self.kwargs.values()):
            if isinstance(value, TensorSpec):
                yield value

    @property
    def found(self) -> bool:
        """Whether any inputs were found (``source`` is not None)."""
        return self.source is not None

    @property
    def batch_size(self) -> int | None:
        """Size of the batch dim of the first tensor input; None without tensor inputs."""
        first = next(self._specs(), None)
        if first is None or len(first.shape) <= self.batch_dim:
            return None
        return first.shape[self.batch_dim]

    def describe(self) -> str:
        """Returns the inputs in a few words: ``(8, 512) float32, mask: (8, 32) bool``."""
        parts = [v.describe() if isinstance(v, TensorSpec) else repr(v) for v in self.args]
        parts += [f"{k}: {v.describe() if isinstance(v, TensorSpec) else repr(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts) if parts else "no inputs"

    def with_batch(self, size: int) -> ExampleInputs:
        """The same inputs with ``size`` samples: every tensor input whose batch dim matches the
        first input's is resized; the user's own tensors are cut down (never padded)."""
        old = self.batch_size
        if old is None or size == old:
            return self

        def resize(value: Any) -> Any:
            if (isinstance(value, TensorSpec) and len(value.shape) > self.batch_dim
                    and value.shape[self.batch_dim] == old):
                shape = list(value.shape)
                shape[self.batch_dim] = size
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
        return replace(self, args=tuple(resize(v) for v in self.args),
                       kwargs={k: resize(v) for k, v in self.kwargs.items()}, concrete=concrete)

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
                return value
            if value.vocab is None and not value.is_float and value.dtype != "bool" and original is not None:
                return original.to(device)
            return value.materialize(device, generator)

        args = tuple(draw(v, c_args[i] if i < len(c_args) else None) for i, v in enumerate(self.args))
        kwargs = {k: draw(v, c_kwargs.get(k)) for k, v in self.kwargs.items()}
        return args, kwargs

    def meta(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Returns ``(args, kwargs)`` with every tensor input as an empty meta tensor."""
        def to_meta(value: Any) -> Any:
            return value.meta() if isinstance(value, TensorSpec) else value

        return tuple(to_meta(v) for v in self.args), {k: to_meta(v) for k, v in self.kwargs.items()}


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


def _spec_for(value: Any, float_dtype: str) -> TensorSpec:
    if isinstance(value, Tokens):
        return TensorSpec(value.shape, TOKEN_DTYPES[value.dtype], value.vocab)
    return TensorSpec(check_shape(value), float_dtype)


def _from_declaration(inputs: Any, float_dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, Mapping):
        return (), {name: _spec_for(value, float_dtype) for name, value in inputs.items()}
    if isinstance(inputs, list):
        return tuple(_spec_for(value, float_dtype) for value in inputs), {}
    return (_spec_for(inputs, float_dtype),), {}


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

    return tuple(spec(v) for v in args), {k: spec(v) for k, v in kwargs.items()}


def _example_input_array(model: nn.Module) -> Any:
    try:
        return getattr(model, "example_input_array", None)
    except Exception:  # noqa: BLE001 - a failing Lightning property means "not set"
        return None


# --- inference from the first layer -----------------------------------------------------------

def _is_transparent(module: nn.Module) -> bool:
    """Whether a leaf keeps its input's shape and says nothing about it."""
    from torch import nn

    if isinstance(module, (nn.Identity, nn.modules.dropout._DropoutNd)):
        return True
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and not module._modules:
        return True
    return (type(module).__module__ == "torch.nn.modules.activation"
            and not isinstance(module, nn.MultiheadAttention))


@dataclass(frozen=True)
class _Guess:
    """An input guessed from one layer."""

    value: Any
    layer: str
    defaults: tuple[str, ...] = ()
    batch_dim: int = 0


def _image_size(model: nn.Module) -> tuple[int, int] | None:
    # Vision transformers check the image size against their config; Hugging Face models say it there.
    size = getattr(getattr(model, "config", None), "image_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size)):
        return size[0], size[1]
    return None


def _guess(module: nn.Module, batch: int, image: tuple[int, int] | None = None) -> _Guess | None:
    """The input a model needs when ``module`` is the first layer it calls; None if unknown."""
    from torch import nn
    from torch.nn.modules.conv import _ConvNd
    from torch.nn.modules.lazy import LazyModuleMixin

    if isinstance(module, LazyModuleMixin):
        return None
    seq, name = DEFAULT_SEQ_LEN, type(module).__name__
    seq_default = (f"sequence length {seq}",)
    if isinstance(module, nn.Linear):
        return _Guess((batch, module.in_features), f"Linear(in_features={module.in_features})")
    if isinstance(module, _ConvNd):
        rank = len(module.kernel_size)
        layer = f"{name}(in_channels={module.in_channels})"
        if rank == 2 and image is not None:
            return _Guess((batch, module.in_channels, *image), f"{layer} with model.config.image_size {image}")
        if rank not in DEFAULT_SPATIAL:
            return None
        size = DEFAULT_SPATIAL[rank]
        return _Guess((batch, module.in_channels, *[size] * rank), layer, (f"spatial size {size}",))
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return _Guess(Tokens((batch, seq), module.num_embeddings),
                      f"{name}(num_embeddings={module.num_embeddings})", seq_default)
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
        width = module.input_size if isinstance(module, nn.RNNBase) else module.embed_dim
        field_name = "input_size" if isinstance(module, nn.RNNBase) else "embed_dim"
        first = module.batch_first
        return _Guess((batch, seq, width) if first else (seq, batch, width),
                      f"{name}({field_name}={width}, batch_first={first})", seq_default, 0 if first else 1)
    if isinstance(module, nn.LayerNorm):
        dims = tuple(module.normalized_shape)
        layer = f"LayerNorm(normalized_shape={dims})"
        # LayerNorm(d) sees (B, T, d); LayerNorm([C, H, W]) normalizes whole samples.
        if len(dims) == 1:
            return _Guess((batch, seq, *dims), layer, seq_default)
        return _Guess((batch, *dims), layer)
    rank = {nn.BatchNorm1d: 0, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}.get(type(module))
    if rank is not None:
        size = DEFAULT_SPATIAL.get(rank, 0)
        return _Guess((batch, module.num_features, *[size] * rank), f"{name}(num_features={module.num_features})",
                      (f"spatial size {size}",) if rank else ())
    return None


class _CallOrder(ast.NodeVisitor):
    """Collects the submodules a forward() reaches through ``self``, in the order they run.

    Call arguments are visited before the callee and assignment values before their targets,
    so ``self.fc2(self.fc1(x))`` yields fc1 first.
    """

    def __init__(self, module: nn.Module, self_name: str, depth: int) -> None:
        self.module = module
        self.self_name = self_name
        self.depth = depth
        self.found: list[str] = []

    def _chain(self, node: ast.AST) -> list[str] | None:
        attrs = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == self.self_name:
            return attrs[::-1]
        return None

    def _record(self, chain: list[str]) -> bool:
        current, names = self.module, []
        for attr in chain:
            child = current._modules.get(attr)
            if child is None:
                break
            current, names = child, [*names, attr]
        if names:
            self.found.append(".".join(names))
        return bool(names)

    def visit_Call(self, node: ast.Call) -> None:
        for arg in node.args:
            self.visit(arg)
        for keyword in node.keywords:
            self.visit(keyword.value)
        chain = self._chain(node.func)
        if chain is not None and len(chain) == 1 and chain[0] not in self.module._modules:
            # A helper method on the same module (self.forward_features(x)): read it in place.
            method = getattr(type(self.module), chain[0], None)
            if inspect.isfunction(method) and self.depth > 0:
                self.found.extend(_forward_refs(self.module, method, self.depth - 1) or [])
            return
        self.visit(node.func)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = self._chain(node)
        if chain is None or not self._record(chain):
            self.generic_visit(node)


def _forward_refs(module: nn.Module, fn: Any, depth: int = 2) -> list[str] | None:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    func = tree.body[0] if tree.body else None
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) or not func.args.args:
        return None
    visitor = _CallOrder(module, func.args.args[0].arg, depth)
    for statement in func.body:
        visitor.visit(statement)
    return list(dict.fromkeys(visitor.found))


def _reads_children_in_order(module: nn.Module) -> bool:
    forward = getattr(type(module), "forward", None)
    # Containers (Sequential, ModuleList, ModuleDict) run or hold children in registration order.
    return forward is None or (getattr(forward, "__module__", None) or "").startswith("torch.nn.")


def _leaves(module: nn.Module, prefix: str = "", guessed: bool = False,
            ) -> Iterator[tuple[str, nn.Module, bool]]:
    """Yields leaves, and layers gradlint can guess from, in the order forward likely calls them.

    Each comes with whether the order had to be guessed from registration order somewhere on
    the way down (a custom forward() whose source could not be read).
    """
    children = module._modules
    if not children or _guess(module, 1, (1, 1)) is not None:
        yield prefix, module, guessed
        return
    order = None if _reads_children_in_order(module) else _forward_refs(module, type(module).forward)
    if not order:
        guessed = guessed or not _reads_children_in_order(module)
        order = [name for name, child in children.items() if child is not None]
    seen: set[int] = set()
    for ref in order:
        child = module.get_submodule(ref)
        if id(child) not in seen:
            seen.add(id(child))
            yield from _leaves(child, f"{prefix}.{ref}" if prefix else ref, guessed)


def _required_inputs(model: nn.Module) -> list[str] | None:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    return [p.name for p in params if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _infer(model: nn.Module, batch: int, float_dtype: str) -> ExampleInputs:
    required = _required_inputs(model)
    if required is not None and len(required) > 1:
        return ExampleInputs(note=(
            f"could not infer example inputs: forward({', '.join(required)}) needs {len(required)} "
            "inputs and gradlint only guesses single-input models" + _NOTHING_INFERRED))
    image = _image_size(model)
    for name, leaf, guessed in _leaves(model):
        guess = _guess(leaf, batch, image)
        if guess is None:
            if _is_transparent(leaf):
                continue
            label = f"{name} = {type(leaf).__name__}," if name else f"the model itself, a {type(leaf).__name__},"
            return ExampleInputs(note=(
                f"could not infer example inputs: the first layer, {label} "
                "does not fix the input shape" + _NOTHING_INFERRED))
        spec = _spec_for(guess.value, float_dtype)
        what = (f"token ids {spec.shape} over a vocabulary of {spec.vocab} (num_embeddings)" if spec.vocab
                else f"input {spec.shape}")
        if not name:
            where = f"the model itself, a {guess.layer}"
        elif guessed:
            where = (f"{name} = {guess.layer}, the first layer in registration order "
                     "(forward's source could not be read)")
        else:
            where = f"{name} = {guess.layer}, the first layer forward calls"
        defaults = [f"batch size {batch}", *guess.defaults]
        said = (f"{defaults[0]} is a default" if len(defaults) == 1
                else f"{', '.join(defaults[:-1])} and {defaults[-1]} are defaults")
        note = f"inferred {what} from {where}; {said}"
        return ExampleInputs(args=(spec,), source="inferred", note=note, batch_dim=guess.batch_dim)
    return ExampleInputs(note="could not infer example inputs: the model has no layer gradlint can read "
                              "an input shape from" + _NOTHING_INFERRED)


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

    return _infer(model, default_batch, float_dtype)


# --- a forward that fails by itself ---------------------------------------------------------


