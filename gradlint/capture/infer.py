"""Example inputs inferred from the model itself, when nothing declares them.

For each parameter ``forward`` needs: the layer it first reaches (``forward_reads``), and the input
that layer takes (``layer_inputs``), sized by what the model states (image sizes, sequence lengths,
class counts); or a convention its name follows (a timestep ``t``, class labels ``y``, a hidden
state from the model's own ``init_hidden``, lengths, a mask that may be None). Candidates are tried
on a meta-device copy of the model, most likely first, until its forward runs: this costs a
forward without arithmetic, never touches the user's weights, and leaves random states as found.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import io
import os
import random
import re
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gradlint.base.targets import Tokens
from gradlint.capture.examples import ExampleInputs, SequenceLengths, TensorSpec, spec_for
from gradlint.capture.forward_reads import Flow, Signature, Use, parameter_uses, signature_of
from gradlint.capture.layer_inputs import Draw, ModelSizes, is_rearrange, layer_draws, rearrange_draws, shape_kind

if TYPE_CHECKING:
    from torch import nn

__all__ = ["infer_inputs", "meta_only", "suggest_input"]

# What only a forward on meta tensors raises: values read into Python (`.item()`, `if x.sum() > 0`)
# and ops without a meta kernel. Real tensors might pass, so the inputs are not known to be wrong.
_META_ONLY = re.compile(r"\bmeta\b|data.dependent", re.IGNORECASE)

_TIMESTEPS = frozenset({"t", "ts", "timestep", "timesteps", "time", "times", "time_step", "time_steps", "step",
                        "steps", "diffusion_step", "diffusion_steps"})
_NOISE_LEVELS = frozenset({"noise_level", "noise_levels", "sigma", "sigmas", "noise_std", "log_snr", "gamma"})
_LABELS = frozenset({"y", "label", "labels", "class_label", "class_labels", "class_idx", "class_ids", "classes",
                     "cls", "cond_label", "label_ids", "class_id"})
_HIDDEN = frozenset({"hidden", "hiddens", "hx", "h", "h0", "hc", "state", "states", "hidden_state", "init_state",
                     "prev_state", "prev_hidden", "initial_state", "h_0", "hidden_cell"})
_LENGTHS = frozenset({"lengths", "length", "input_lengths", "seq_lengths", "seq_lens", "src_lengths", "lens",
                      "src_lens", "text_lengths", "x_lengths", "input_lens"})
_DECODER = frozenset({"trg", "tgt", "target", "targets", "target_ids", "decoder_input", "decoder_inputs",
                      "decoder_input_ids", "dec_input", "tgt_input", "tgt_tokens", "trg_input", "target_variable"})
_INIT_METHODS = ("init_hidden", "init_hiddens", "init_hidden_state", "initHidden", "init_state", "init_states",
                 "initial_state", "get_initial_state", "zero_state", "begin_state", "init_memory")
_DEFAULT_TIMESTEPS = 1000
_MAX_TRIES = 16
_MAX_SECONDS = 30.0
_NOTHING_INFERRED = (
    "; the analysis runs from parameter shapes only, which leaves out every estimate that needs "
    "a forward pass (activation and backpropagated-gradient scales per layer, and the parameter "
    "gradients that depend on them)")
_DECLARE = "declare inputs with @gradlint.target(inputs=...), `inputs` in the target's [tool.gradlint] entry, " \
           "or --input-shape"


def meta_only(exc: BaseException) -> bool:
    """Whether an exception from a meta-device forward may come from the meta device alone."""
    return isinstance(exc, NotImplementedError) or bool(_META_ONLY.search(f"{type(exc).__name__}: {exc}"))


def suggest_input(layer: nn.Module, batch: int, model: nn.Module) -> Any:
    """A shape (or ``Tokens``) ``layer`` takes when it is the first layer; None if unknown."""
    draws = layer_draws(layer, batch, sizes=ModelSizes.read(model))
    return draws[0].value if draws else None


# --- the first layer in call order, for a forward gradlint cannot follow per parameter ----------

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
    if not children or layer_draws(module, 1) is not None:
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



# --- where each parameter goes --------------------------------------------------------------------

@dataclass
class _Context:
    model: nn.Module
    batch: int
    float_dtype: str
    sizes: ModelSizes
    seq_first: bool
    copy: Any = None
    copy_failed: bool = False

    @functools.cached_property
    def slow_kernels(self) -> Any:
        """One mode for all trial forwards, which keeps BatchNorm's outputs per signature."""
        from gradlint.capture.fakemode import SlowKernelsSkipped

        return SlowKernelsSkipped()

    def meta_copy(self) -> Any:
        if self.copy is None and not self.copy_failed:
            from gradlint.capture.meta import meta_copy

            try:
                self.copy = meta_copy(self.model).train()
            except Exception:  # noqa: BLE001 - a model deepcopy refuses: no trial forwards then
                self.copy_failed = True
        return self.copy


def _sequence_first(model: nn.Module) -> bool:
    """Whether the model's sequence layers (RNNs, attention, transformers) all take (sequence, batch)."""
    from torch import nn

    layers = [m for m in model.modules() if isinstance(m, (nn.RNNBase, nn.MultiheadAttention, nn.Transformer))]
    return bool(layers) and not any(getattr(m, "batch_first", False) for m in layers)


def _param_at(module: nn.Module, arg: int | str) -> str | None:
    if isinstance(arg, str):
        return arg
    sig = signature_of(module)
    if sig is None:
        return None
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return None
    return params[arg].name if arg < len(params) else None


def _rnn_state(module: nn.Module, batch: int, label: str) -> list[Draw] | None:
    """The initial state an RNN or RNN cell takes as its second argument."""
    from torch import nn

    if isinstance(module, nn.RNNBase):
        layers = module.num_layers * (2 if module.bidirectional else 1)
        h_width = module.proj_size or module.hidden_size
        h = TensorSpec((layers, batch, h_width), batch_dim=1)
        value: Any = (h, TensorSpec((layers, batch, module.hidden_size), batch_dim=1)) \
            if isinstance(module, nn.LSTM) else h
    elif isinstance(module, nn.modules.rnn.RNNCellBase):
        h = TensorSpec((batch, module.hidden_size))
        value = (h, h) if isinstance(module, nn.LSTMCell) else h
    else:
        return None
    return [Draw(value, f"{{value}}, the initial state {label} = {type(module).__name__}"
                       f"(hidden_size={module.hidden_size}) takes", layer=False)]


def _descend(ctx: _Context, path: str, arg: int | str, flow: Flow, depth: int = 12) -> list[Draw] | None:
    """The inputs the submodule at ``path`` takes in its argument ``arg``, after ``flow``."""
    module = ctx.model.get_submodule(path) if path else ctx.model
    label = path
    if arg not in (0, _param_at(module, 0)):
        return _rnn_state(module, ctx.batch, label) if arg in (1, "hx", "hidden") else None
    draws = layer_draws(module, ctx.batch, flow.how, ctx.sizes, ctx.seq_first, flow.sizes, flow.time_first, label)
    if draws is not None or depth <= 0 or not module._modules:
        return draws
    if _reads_children_in_order(module):
        children = [(n, c) for n, c in module._modules.items() if c is not None]
        for i, (name, child) in enumerate(children):
            kind = shape_kind(child)
            if kind == "same":
                continue
            if kind == "flatten":
                flow = flow.then("flatten")
                continue
            where = f"{path}.{name}" if path else name
            if is_rearrange(child):
                following = children[i + 1][1] if i + 1 < len(children) else None
                return rearrange_draws(child, following, ctx.batch, ctx.sizes, where)
            return _descend(ctx, where, 0, flow, depth - 1)
        return None
    uses = parameter_uses(module, shape_kind)
    param = _param_at(module, 0)
    use = uses.get(param) if uses and param else None
    if use is None:
        return None
    inner = flow.then(use.flow.how, use.flow.sizes, use.flow.time_first)
    return _descend(ctx, f"{path}.{use.path}" if path else use.path, use.arg, inner, depth - 1)


def _hidden_draws(ctx: _Context) -> list[Draw]:
    """A hidden state from the model's own ``init_hidden(batch)``-style method, run on its meta copy."""
    copy = ctx.meta_copy()
    if copy is None:
        return []
    for name in _INIT_METHODS:
        method = getattr(copy, name, None)
        if not callable(method):
            continue
        try:
            with _kept_as_found():
                first, second = method(ctx.batch), method(ctx.batch + 1)
        except Exception:  # noqa: BLE001 - a method that needs more than the batch size
            continue
        value = _specs_of(first, second, ctx.batch)
        if value is not None:
            return [Draw(value, f"{{value}} from {type(ctx.model).__name__}.{name}({ctx.batch})", layer=False)]
    return []


def _specs_of(value: Any, other: Any, batch: int) -> Any:
    """Specs of what an init method returned; the batch dim is the one that grew with the batch."""
    import torch

    if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor):
        grew = [i for i, (a, b) in enumerate(zip(value.shape, other.shape)) if a == batch and b == batch + 1]
        spec = TensorSpec.from_tensor(value) if value.device.type != "meta" else \
            TensorSpec(tuple(value.shape), str(value.dtype).removeprefix("torch."))
        return replace(spec, vocab=None, batch_dim=grew[0] if grew else None) if spec.is_float else None
    if isinstance(value, (tuple, list)) and isinstance(other, (tuple, list)) and len(value) == len(other) and value:
        parts = [_specs_of(a, b, batch) for a, b in zip(value, other)]
        return None if any(p is None for p in parts) else type(value)(parts)
    return None


def _class_count(ctx: _Context, consumer: nn.Module | None) -> tuple[int, str] | None:
    from torch import nn

    if isinstance(consumer, (nn.Embedding, nn.EmbeddingBag)):
        return consumer.num_embeddings, f"the num_embeddings of {_path_of(ctx.model, consumer)}"
    if ctx.sizes.classes:
        size = ctx.sizes.classes[0]
        return size.value, size.said
    return None


def _path_of(model: nn.Module, module: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if m is module), type(module).__name__)


def _timestep_count(ctx: _Context) -> tuple[int, str]:
    for name in ("num_timesteps", "timesteps", "n_timesteps", "num_train_timesteps", "T", "n_steps", "num_steps"):
        value = getattr(ctx.model, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 1 < value < 100_000:
            return value, f"{name}={value} from model"
    return _DEFAULT_TIMESTEPS, "a default"


def _candidates(ctx: _Context, name: str, use: Use | None, first: bool) -> list[Draw]:
    """Candidate inputs for one parameter of forward, most likely first."""
    from torch import nn

    lower = name.lower()
    consumer = None
    if use is not None:
        consumer = ctx.model.get_submodule(use.path) if use.path else None
    from_layer = (_descend(ctx, use.path, use.arg, use.flow) or []) if use is not None else []
    draws: list[Draw] = []
    is_state = isinstance(consumer, (nn.RNNBase, nn.modules.rnn.RNNCellBase)) and use is not None and use.arg != 0
    if lower in _HIDDEN or is_state:
        draws += _hidden_draws(ctx)
    if lower in _TIMESTEPS or lower in _NOISE_LEVELS:
        count, said = _timestep_count(ctx)
        as_int = Draw(TensorSpec((ctx.batch,), "int64", count),
                      f"({ctx.batch},) int64 timesteps below {count} (by name; "
                      + (f"{count} is a default)" if said == "a default" else f"{said})"), layer=False)
        as_float = Draw(TensorSpec((ctx.batch,), ctx.float_dtype), "{value} noise levels (by name)", layer=False)
        draws += [as_float, as_int] if lower in _NOISE_LEVELS else [as_int, as_float]
    if lower in _LABELS:
        count = _class_count(ctx, consumer)
        if count is not None:
            draws.append(Draw(TensorSpec((ctx.batch,), "int64", count[0]),
                              f"({ctx.batch},) int64 class labels below {count[0]} (by name; {count[1]})",
                              layer=False))
    if lower in _LENGTHS:
        draws.append(Draw(SequenceLengths(ctx.batch, 0), "{value}, full lengths (by name)", layer=False))
    draws += from_layer
    if "mask" in lower:
        draws.append(Draw(None, "None, a mask (by name) that forward runs without", layer=False))
    if not draws and lower in _DECODER:
        draws += _decoder_draws(ctx)
    if not draws and first:
        draws += _first_layer_draws(ctx)[0]
    return draws


def _decoder_draws(ctx: _Context) -> list[Draw]:
    """Token ids for a decoder input: the embedding whose name says it is the decoder's or the target's."""
    from torch import nn

    for path, module in ctx.model.named_modules():
        last = path.rsplit(".", 1)[-1].lower()
        if isinstance(module, nn.Embedding) and any(k in last for k in ("tgt", "trg", "dec", "target")):
            return _descend(ctx, path, 0, Flow(path)) or []
    return []


def _first_layer_draws(ctx: _Context) -> tuple[list[Draw], str]:
    """The single-input rule: the first layer forward calls (registration order without source).

    Returns:
        The candidates, and why there are none when there are none.
    """
    leaves = list(_leaves(ctx.model))
    how = "exact"
    for i, (name, leaf, guessed) in enumerate(leaves):
        if is_rearrange(leaf):
            following = leaves[i + 1][1] if i + 1 < len(leaves) else None
            draws = rearrange_draws(leaf, following, ctx.batch, ctx.sizes, name)
        else:
            draws = layer_draws(leaf, ctx.batch, how, sizes=ctx.sizes, seq_first=ctx.seq_first, label=name)
        if draws is None:
            kind = shape_kind(leaf)
            if kind == "same":
                continue
            if kind == "flatten" and how == "exact":
                how = "flatten"
                continue
            label = f"{name} = {type(leaf).__name__}," if name else f"the model itself, a {type(leaf).__name__},"
            return [], f"the first layer, {label} does not fix the input shape"
        if not name:
            return [replace(d, said=f"the model itself, a {d.said}", layer=False) for d in draws], ""
        order = ("the first layer in registration order (forward's source could not be read)" if guessed
                 else "the first layer forward calls")
        return [replace(d, said=f"{d.said}, {order}", layer=False) for d in draws], ""
    return [], "the model has no layer gradlint can read an input shape from"


# --- trying candidates ----------------------------------------------------------------------------

@contextlib.contextmanager
def _kept_as_found() -> Iterator[None]:
    """Random states (Python's, NumPy's, torch's) and stdout as found: a trial forward changes nothing."""
    import torch

    py_state = random.getstate()
    torch_state = torch.random.get_rng_state()
    numpy = sys.modules.get("numpy")
    np_state = numpy.random.get_state() if numpy is not None else None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        random.setstate(py_state)
        torch.random.set_rng_state(torch_state)
        if numpy is not None and np_state is not None:
            numpy.random.set_state(np_state)


def _value(draw: Draw, float_dtype: str, length: int | None) -> Any:
    value = draw.value
    if isinstance(value, SequenceLengths):
        return replace(value, length=length or 1)
    if isinstance(value, (Tokens, tuple)) and (isinstance(value, Tokens) or all(isinstance(d, int) for d in value)):
        spec = spec_for(value, float_dtype)
        return replace(spec, batch_dim=draw.batch_dim) if draw.batch_dim else spec
    return value


def _call(ctx: _Context, sig: Signature | None, names: list[str], draws: list[Draw], extra: dict[str, Draw],
          ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The forward call of one combination: required parameters by position, the rest by keyword."""
    length = next((_seq_len(d) for d in [*draws, *extra.values()] if _seq_len(d)), None)
    keyword = set(sig.keyword_only) if sig is not None else set()
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, draw in zip(names, draws):
        if name in keyword:
            kwargs[name] = _value(draw, ctx.float_dtype, length)
        else:
            args.append(_value(draw, ctx.float_dtype, length))
    for name, draw in extra.items():
        kwargs[name] = _value(draw, ctx.float_dtype, length)
    return tuple(args), kwargs


def _seq_len(draw: Draw) -> int | None:
    value = draw.value
    shape = value.shape if isinstance(value, Tokens) else value if isinstance(value, tuple) else None
    if draw.seq_dim is None or not shape or not all(isinstance(d, int) for d in shape):
        return None
    return shape[draw.seq_dim] if draw.seq_dim < len(shape) else None


def _attempt(ctx: _Context, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``"runs"``, ``"fails"``, or ``"unsure"`` (the error may come from the meta device alone);
    ``_search`` says ``"untried"`` where there was only one candidate."""
    from gradlint.capture.fakemode import compiler_unloaded, unused_imports_deferred
    from gradlint.capture.meta import caches_kept, quiet

    copy = ctx.meta_copy()
    if copy is None:
        return "unsure"
    meta_args, meta_kwargs = ExampleInputs(args, kwargs).meta()
    import torch

    try:
        # Without autograd: whether a forward runs on these shapes does not depend on it (it
        # only refuses more, e.g. in-place writes on leaves), and a meta forward with it costs
        # 2.5x as much (a 100-block conv/BatchNorm stack: 0.87 s against 0.34 s).
        # Meta kernels written in Python (BatchNorm's) sit behind torch's _disable_dynamo
        # wrappers, whose first call imports the compiler: 1.1 s of a first check that infers
        # a CIFAR MobileNetV2's inputs.
        with _kept_as_found(), quiet(), torch.no_grad(), caches_kept(copy), compiler_unloaded(), \
                unused_imports_deferred(), ctx.slow_kernels:
            copy(*meta_args, **meta_kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's forward on a trial input: any failure counts
        return "unsure" if meta_only(exc) else "fails"
    return "runs"


def _combos(lengths: list[int]) -> Iterator[tuple[int, ...]]:
    """Index combinations, by the sum of their indices: first choices first."""
    def at(level: int, sizes: list[int]) -> Iterator[tuple[int, ...]]:
        if not sizes:
            if level == 0:
                yield ()
            return
        for i in range(min(level, sizes[0] - 1) + 1):
            for rest in at(level - i, sizes[1:]):
                yield (i, *rest)

    for level in range(sum(n - 1 for n in lengths) + 1):
        yield from at(level, lengths)


@dataclass(frozen=True)
class _Choice:
    draws: tuple[Draw, ...]
    extra: dict[str, Draw]
    status: str


def _search(ctx: _Context, sig: Signature | None, names: list[str], lists: list[list[Draw]],
            extras: dict[str, list[Draw]]) -> _Choice:
    """The first combination whose forward runs (or may run: meta-only errors); else the first one."""
    first: _Choice | None = None
    started = time.perf_counter()
    tries = 0
    extra_first = {name: draws[0] for name, draws in extras.items()}
    if all(len(c) == 1 for c in lists) and not extra_first \
            and not any(c[0].value is None and c[0].said.startswith("None: nothing") for c in lists):
        # One candidate: nothing to choose, and the capture runs this forward and reports its
        # error anyway. A trial forward of a deep model on the meta device costs seconds.
        return _Choice(tuple(c[0] for c in lists), {}, "untried")
    for combo in _combos([len(c) for c in lists]):
        draws = tuple(c[i] for c, i in zip(lists, combo))
        for extra in ([{}, extra_first] if extra_first else [{}]):
            tries += 1
            status = _attempt(ctx, *_call(ctx, sig, names, list(draws), extra))
            choice = _Choice(draws, extra, status)
            first = first or choice
            if status in ("runs", "unsure"):
                return choice
            if tries >= _MAX_TRIES or time.perf_counter() - started > _MAX_SECONDS:
                return first
    return first or _Choice(tuple(c[0] for c in lists), {}, "fails")


# --- the answer -----------------------------------------------------------------------------------

def _said_defaults(batch: int, defaults: list[str]) -> str:
    defaults = [f"batch size {batch}", *dict.fromkeys(defaults)]
    return (f"{defaults[0]} is a default" if len(defaults) == 1
            else f"{', '.join(defaults[:-1])} and {defaults[-1]} are defaults")


def _what(value: Any) -> str:
    if isinstance(value, TensorSpec):
        if value.vocab:
            return f"token ids {value.shape} over a vocabulary of {value.vocab}"
        return f"input {value.shape}"
    return ExampleInputs((value,)).describe()


def _note(ctx: _Context, names: list[str], choice: _Choice, values: list[Any], extra_values: dict[str, Any]) -> str:
    defaults = [d for draw in (*choice.draws, *choice.extra.values()) for d in draw.defaults]
    single = len(values) == 1 and not extra_values
    parts = []
    for name, draw, value in [*zip(names, choice.draws, values),
                              *((n, choice.extra[n], v) for n, v in extra_values.items())]:
        said = draw.said
        if draw.layer:
            said = f"{said}, the first layer forward calls" if single else f"{said}, the first layer {name} reaches"
        if draw.detail:
            said = f"{said}, {draw.detail}"
        legacy = draw.layer or said.startswith("the model itself") or "the first layer" in said
        if single and legacy:
            what = _what(value)
            if isinstance(value, TensorSpec) and value.vocab and "Embedding(" in draw.said:
                what += " (num_embeddings)"
            parts.append(f"{what} from {said}")
        elif draw.layer:
            parts.append(f"{name}: {ExampleInputs((value,)).describe()} from {said}")
        else:
            parts.append(f"{name}: {said.replace('{value}', ExampleInputs((value,)).describe())}")
    # Masks passed as None (and other inputs said alike) are named together.
    grouped: dict[str, list[str]] = {}
    for part in parts:
        name, _, text = part.partition(": ")
        grouped.setdefault(text if text.startswith("None") else part, []).append(name)
    parts = [f"{', '.join(names)}: {text}" if text.startswith("None") else text for text, names in grouped.items()]
    return f"inferred {'; '.join(parts)}; {_said_defaults(ctx.batch, defaults)}"


def _shown(path: str) -> str:
    """A path as the user would write it: relative to the working directory when below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith("..") else relative


def _example_value(draws: list[Draw], name: str) -> str:
    value = draws[0].value if draws else None
    if isinstance(value, Tokens):
        return f"gradlint.tokens({value.shape}, vocab={value.vocab})"
    if isinstance(value, TensorSpec):
        return repr(value.shape) if value.vocab is None else f"gradlint.tokens({value.shape}, vocab={value.vocab})"
    if isinstance(value, tuple) and all(isinstance(d, int) for d in value):
        return repr(value)
    return f"<shape of {name}>"


def _not_inferred(sig: Signature | None, reason: str, names: list[str] | None = None,
                  lists: list[list[Draw]] | None = None) -> ExampleInputs:
    where = f" ({_shown(sig.path)}:{sig.line})" if sig is not None and sig.path and sig.line else ""
    declare = _DECLARE
    if names and lists:
        example = ", ".join(_example_value(draws, name) for name, draws in zip(names, lists))
        declare = (f"declare them, e.g. @gradlint.target(inputs=[{example}]), `inputs` in the target's "
                   "[tool.gradlint] entry, or --input-shape once per input")
    return ExampleInputs(note=f"could not infer example inputs: {reason.format(where=where)}" + _NOTHING_INFERRED +
                         f"; {declare}")


def infer_inputs(model: nn.Module, batch: int = 8, float_dtype: str = "float32") -> ExampleInputs:
    """Infers example inputs from the model itself.

    Args:
        model: The model (its weights are never read; trial forwards run on a meta-device copy).
        batch: The batch size.
        float_dtype: The dtype of float inputs (the model's).

    Returns:
        The inputs and a note saying what each was inferred from; ``source`` is None when a
        parameter could not be inferred, and the note then names it and where forward is defined.
    """
    ctx = _Context(model, batch, float_dtype, ModelSizes.read(model), _sequence_first(model))
    sig = signature_of(model)
    # torch's own modules (Sequential, TransformerEncoderLayer) run their children in registration order.
    uses = parameter_uses(model, shape_kind) if sig is not None and not _reads_children_in_order(model) else None
    names = list(sig.required) if sig is not None else []
    if not names:
        # forward(*args) or every parameter optional (input_ids=None, ...): one positional input.
        draws, reason = _first_layer_draws(ctx)
        if sig is not None and uses:
            positional = _positional(model)
            if positional and uses.get(positional[0]) is not None:
                use = uses[positional[0]]
                draws = _descend(ctx, use.path, use.arg, use.flow) or draws
        if not draws:
            return _not_inferred(None, reason)
        names, lists = ["input"], [draws]
    else:
        lists = []
        for i, name in enumerate(names):
            draws = _candidates(ctx, name, (uses or {}).get(name), first=i == 0)
            if not draws and i == 0 and len(names) == 1:
                return _not_inferred(sig, _first_layer_draws(ctx)[1] + f" of forward's parameter {name!r}{{where}}")
            if not draws:
                # Nothing says what it takes: forward may still run without it.
                draws = [Draw(None, "None: nothing says what it takes, and forward runs without it", layer=False)]
            lists.append(draws)
    extras = _optional_extras(ctx, sig, uses)
    choice = _search(ctx, sig, names, lists, extras)
    unknown = [n for n, d in zip(names, choice.draws) if d.value is None and d.said.startswith("None: nothing")]
    if unknown and choice.status == "fails":
        name = unknown[0]
        known = [[] if n in unknown else draws for n, draws in zip(names, lists)]
        return _not_inferred(sig, f"nothing says what forward's parameter {name!r}{{where}} takes: no layer gradlint "
                                  "knows reads it, and its name follows no convention", names, known)
    args, kwargs = _call(ctx, sig, names, list(choice.draws), choice.extra)
    values = list(args) + [kwargs[n] for n in names if n in kwargs]
    extra_values = {n: kwargs[n] for n in choice.extra}
    batch_dim = next((d.batch_dim for d in choice.draws if isinstance(d.value, (Tokens, tuple))
                      and not isinstance(d.value, TensorSpec)), 0)
    note = _note(ctx, names, choice, values, extra_values)
    if choice.status == "fails":
        note += "; the forward raised on every combination tried"
    return ExampleInputs(args, kwargs, "inferred", note=note, batch_dim=batch_dim)


def _positional(model: nn.Module) -> list[str]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _optional_extras(ctx: _Context, sig: Signature | None, uses: dict[str, Use] | None) -> dict[str, list[Draw]]:
    """Optional parameters a forward may need after all: class labels of a class-conditional
    model (``y=None`` with ``num_classes`` set) and sequence lengths."""
    if sig is None:
        return {}
    extras = {}
    for name in sig.optional:
        lower = name.lower()
        if sig.defaults.get(name) is not None or lower not in _LABELS | _LENGTHS:
            continue
        draws = [d for d in _candidates(ctx, name, (uses or {}).get(name), first=False) if d.value is not None]
        if draws:
            extras[name] = draws[:1]
    return extras
