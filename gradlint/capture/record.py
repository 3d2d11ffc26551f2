"""The graph ``torch.export`` would give, written down from one forward on fake tensors.

``torch.export`` spends about a millisecond per op on machinery gradlint never reads: proxies,
symbolic shapes, graph recompiles, full stack-trace capture. Running the forward (the user's
model on fake tensors, ``gradlint.capture.fake``, or a meta copy of a meta-device model)
under a pre-dispatch mode sees the same ATen ops export records (``aten.linear``,
``aten.lstm``, ``aten.scaled_dot_product_attention``: above autograd, so composite ops are not
yet decomposed) at a quarter of the cost.

What export's passes change afterwards is redone here: no-grad regions become
``wrap_with_set_grad_enabled`` nodes, tied weights read through their last name, plain tensor
attributes are lifted constants. A value the forward reads (``.item()``, ``if mask.any()``)
is answered by ``gradlint.capture.reads``, which export cannot do. What this path cannot
reproduce exactly it refuses with ``Unsupported``, and the caller uses ``torch.export``: an
autocast block, a grad-mode change outside ``torch.set_grad_enabled`` (inference mode),
``.data``, a module registered under two names, higher-order ops, a value read from the
weights, and any forward that raises. ``tests/test_recording.py`` checks that the two paths
give equal graphs on the corpus, hard cases and a tiny Mixtral, and equal reports on the
examples and on fuzzed models.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import operator
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensor
from torch.fx.experimental.proxy_tensor import ProxyTorchDispatchMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_leaves

from gradlint.capture.aten import _GRADLINT_DIR, _TORCH_DIR
from gradlint.capture.fakemode import SlowKernels

if TYPE_CHECKING:
    from gradlint.capture.reads import ValueReader

_SKIPPED_DIRS = (_TORCH_DIR, _GRADLINT_DIR)
# Ops handed to the value reader whenever there is one: their kernels read the values of the data
# they move, so they run on no fake tensor, even where only the result's shape is needed. The
# reader computes a packed sequence's batch_sizes (and the lengths padding returns) for real,
# as the packed nn.GRU / LSTM / RNN kernels need them (gradlint.capture.reads).
_PACKING = {torch.ops.aten._pack_padded_sequence.default, torch.ops.aten._pad_packed_sequence.default}


class Unsupported(Exception):
    """The forward does something only ``torch.export`` represents faithfully."""


@dataclass
class Signature:
    """The parts of ``torch.export.ExportGraphSignature`` that ``aten.Converter`` reads."""

    inputs_to_parameters: dict[str, str] = field(default_factory=dict)
    inputs_to_buffers: dict[str, str] = field(default_factory=dict)
    inputs_to_lifted_tensor_constants: dict[str, str] = field(default_factory=dict)
    user_inputs: list[str] = field(default_factory=list)


@dataclass
class RecordedProgram:
    """Duck-types the two attributes of an ``ExportedProgram`` that ``aten.Converter`` reads."""

    graph_signature: Signature
    graph_module: _GraphHolder
    random_reads: tuple[str, ...] = ()  # where the forward read values computed from random numbers
    own_backward: tuple[str, ...] = ()  # what the graph cannot show (``capture.own_backward.found``)


def _storage_key(t: torch.Tensor) -> tuple | None:
    try:
        return (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
    except (RuntimeError, NotImplementedError):
        return None


def _placeholder_name(prefix: str, fqn: str) -> str:
    return prefix + fqn.replace(".", "_").lower()


class _Builder:
    """The graph under construction: tensors are matched to the node that produced them by id."""

    def __init__(self, model: nn.Module):
        self.graph = fx.Graph()
        self.taken: set[str] = set()
        self.sig = Signature()
        self.by_id: dict[int, fx.Node] = {}
        self.keep: list[Any] = []  # every recorded value stays alive, so no id is reused
        self.fresh: dict[tuple, tuple[fx.Node, bool]] = {}  # storage key -> (node, required grad)
        # One placeholder per qualified name, as export makes them; a tied tensor is then
        # read through its last name (GPT-2's embedding reads ``lm_head.weight``), as in export.
        for fqn, p in model.named_parameters(remove_duplicate=False):
            self._placeholder(p, _placeholder_name("p_", fqn), fqn, self.sig.inputs_to_parameters)
        for fqn, b in model.named_buffers(remove_duplicate=False):
            self._placeholder(b, _placeholder_name("b_", fqn), fqn, self.sig.inputs_to_buffers)
        self.n_constants = 0
        self.ambient = self.grad = torch.is_grad_enabled()  # the caller's mode, and the forward's now
        self.first_input: fx.Node | None = None  # lifted constants go before the user's inputs
        # Plain tensor attributes are lifted under their qualified names, others as lifted_tensor_N.
        self.attributes = {id(v): f"{path}.{attr}" if path else attr for path, mod in model.named_modules()
                           for attr, v in vars(mod).items() if isinstance(v, torch.Tensor)}
        self.module_stack: list[tuple[str, str]] = []
        self.names: dict[int, str] = {}
        self.aliased: set[int] = set()
        for n, m in model.named_modules(remove_duplicate=False):
            if id(m) in self.names:
                self.aliased.add(id(m))
            else:
                self.names[id(m)] = n

    def _set_module_stack(self, node: fx.Node) -> None:
        if self.module_stack:
            node.meta["nn_module_stack"] = {path: (path, typ) for path, typ in self.module_stack}

    def _remember(self, t: torch.Tensor, node: fx.Node) -> None:
        if (key := _storage_key(t)) is not None:
            self.fresh[key] = (node, t.requires_grad)

    def _named_placeholder(self, name: str) -> fx.Node:
        node = self.graph.placeholder(name)
        if node.name != name and name not in self.taken:
            node.name = name  # fx avoids builtins such as `input`; export keeps the forward's names
        self.taken.add(node.name)
        return node

    def _placeholder(self, t: torch.Tensor, name: str, fqn: str | None, table: dict | None) -> fx.Node:
        node = self._named_placeholder(name)
        node.meta["val"] = t
        if table is not None:
            table[node.name] = fqn
        self.by_id[id(t)] = node
        self.keep.append(t)
        self._remember(t, node)
        return node

    def user_inputs(self, sig_names: list[str], leaves: list[Any]) -> None:
        for name, leaf in zip(sig_names, leaves):
            node = self._named_placeholder(name)
            node.meta["val"] = leaf
            self.first_input = self.first_input or node
            self.sig.user_inputs.append(node.name)
            if isinstance(leaf, torch.Tensor):
                self.by_id[id(leaf)] = node
                self.keep.append(leaf)
                self._remember(leaf, node)

    def arg(self, a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        node = self.by_id.get(id(a))
        if node is None and (found := self.fresh.get(_storage_key(a) or ())) is not None:
            node, required_grad = found
            if required_grad and not a.requires_grad:
                # The same storage without the graph: `.data` (export fails on it), which
                # would otherwise read as the tensor itself, gradient and all.
                raise Unsupported("a tensor detached without an op (.data)")
            self.by_id[id(a)] = node
            self.keep.append(a)
        if node is None:
            # A tensor the forward did not compute: a plain tensor attribute or a global,
            # lifted as a constant the way export lifts it.
            ctx = self.graph.inserting_before(self.first_input) if self.first_input else contextlib.nullcontext()
            fqn = self.attributes.get(id(a))
            if fqn is None:
                fqn = f"lifted_tensor_{self.n_constants}"
                self.n_constants += 1
            with ctx:
                node = self._placeholder(a, _placeholder_name("c_", fqn), fqn,
                                         self.sig.inputs_to_lifted_tensor_constants)
        return node

    def record(self, func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: Any, grad: bool) -> fx.Node:
        if grad != self.grad and not _in_custom_function():
            raise Unsupported("grad mode changed other than through torch.set_grad_enabled (inference_mode?)")
        if func is torch.ops.aten.lift_fresh.default:
            func = torch.ops.aten.lift_fresh_copy.default  # as proxy tracing writes a torch.tensor() literal
        fx_args = _map_args(self.arg, args)
        fx_kwargs = {k: _map_args(self.arg, v) for k, v in kwargs.items()}
        node = self.graph.create_node("call_function", func, fx_args, fx_kwargs,
                                      name=self.graph._target_to_str(func.overloadpacket.__name__))
        node.meta["val"] = out
        self._set_module_stack(node)
        node.meta["stack_trace"] = _user_frames()
        if isinstance(out, torch.Tensor):
            self.by_id[id(out)] = node
            self.keep.append(out)
            # Autograd hands a factory op's caller (zeros, full_like) a shallow copy of what
            # the op returned: a new tensor on the same storage, so it is found by storage.
            self._remember(out, node)
        elif isinstance(out, (tuple, list)):
            for i, o in enumerate(out):
                if isinstance(o, torch.Tensor):
                    item = self.graph.create_node("call_function", operator.getitem, (node, i), name="getitem")
                    item.meta["val"] = o
                    item.meta.update({k: node.meta[k] for k in ("nn_module_stack", "stack_trace") if k in node.meta})
                    self.by_id[id(o)] = item
                    self.keep.append(o)
        return node

    def finish(self, out: Any) -> _GraphHolder:
        from gradlint.capture.outputs import output_tensors

        # A dataclass of tensors is a leaf to pytree: its fields are the outputs.
        leaves = output_tensors(out) if _has_dataclass(out) else tree_leaves(out)
        self.graph.output(tuple(self.arg(v) for v in leaves))
        self._wrap_grad_regions()
        return _GraphHolder(self.graph)

    def mark_grad(self, enabled: bool) -> None:
        """A ``torch._C._set_grad_enabled`` call, kept as export keeps it until ``finish``."""
        node = self.graph.create_node("call_function", torch._C._set_grad_enabled, (enabled,), name="_set_grad_enabled")
        self._set_module_stack(node)
        self.grad = enabled

    def _wrap_grad_regions(self) -> None:
        """Export's set-grad pass (torch/_export/passes/replace_set_grad_with_hop_pass.py), redone.

        The graph is split at each ``_set_grad_enabled`` call; a piece that sets the mode
        other than the caller's (``ambient``) becomes one ``wrap_with_set_grad_enabled`` node, whose
        arguments are the piece's outside inputs in order of first use and whose results are
        read through one ``getitem`` per value used after the piece, named as that value.
        A piece with no ops disappears; the other pieces stay inline.
        """
        pieces: list[list[fx.Node]] = [[]]
        for node in self.graph.nodes:
            if node.op == "call_function" and node.target is torch._C._set_grad_enabled:
                pieces.append([])
            if node.op == "call_function":
                pieces[-1].append(node)
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        for piece in pieces[1:]:
            marker, body = piece[0], piece[1:]
            if marker.args[0] == self.ambient:
                self.graph.erase_node(marker)
                continue
            members = set(piece)
            inputs = list(dict.fromkeys(a for n in body for a in n.all_input_nodes if a not in members))
            if not marker.args[0]:
                _read_updated_leaves(body, inputs, members)
            uses = sorted(((order[u], n) for n in body for u in n.users if u not in members), key=lambda t: t[0])
            outputs = list(dict.fromkeys(n for _, n in uses))
            if body:
                with self.graph.inserting_before(marker):
                    hop = self.graph.create_node("call_function", torch.ops.higher_order.wrap_with_set_grad_enabled,
                                                 (marker.args[0], None, *inputs))
                    if "nn_module_stack" in marker.meta:
                        hop.meta["nn_module_stack"] = marker.meta["nn_module_stack"]
                    hop.meta["val"] = tuple(n.meta.get("val") for n in outputs)
                    items = [self.graph.create_node("call_function", operator.getitem, (hop, i))
                             for i in range(len(outputs))]
                for n, item in zip(outputs, items):
                    item.meta = dict(n.meta)
                    n.replace_all_uses_with(item, delete_user_cb=lambda user, members=members: user not in members)
            for n in reversed(piece):
                self.graph.erase_node(n)
            if len(outputs) == 1:
                hop.name = outputs[0].name  # one value: the node is named for it, its getitem is plain
            elif outputs:
                for n, item in zip(outputs, items):
                    item.name = n.name


def _read_updated_leaves(body: list[fx.Node], inputs: list[fx.Node], members: set[fx.Node]) -> None:
    """Uses after a no_grad piece of an in-place update of a parameter made inside it
    (``with torch.no_grad(): p.clamp_(-c, c)``, a WGAN critic's weight clip) read the parameter
    itself, as autograd does: the op returns the same leaf tensor, which keeps its gradient."""
    leaves = {id(a.meta.get("val")): a for a in inputs if a.op in ("get_attr", "placeholder")
              and isinstance(a.meta.get("val"), torch.Tensor) and a.meta["val"].requires_grad}
    for n in body:
        val = n.meta.get("val")
        leaf = leaves.get(id(val)) if isinstance(val, torch.Tensor) else None
        if leaf is not None:
            n.replace_all_uses_with(leaf, delete_user_cb=lambda user: user not in members)


def _has_dataclass(out: Any) -> bool:
    import dataclasses

    return any(dataclasses.is_dataclass(x) and not isinstance(x, type) for x in tree_leaves(out))


@dataclass
class _GraphHolder:
    """Stands in for a GraphModule: the Converter reads only ``.graph`` (no code generation)."""

    graph: fx.Graph


def _map_args(f: Callable[[Any], Any], a: Any) -> Any:
    """``tree_map`` over an aten op's arguments, which nest only in lists and tuples: without
    pytree's type registry, a tenth of recording's own time per op."""
    if type(a) in (list, tuple):
        return type(a)(_map_args(f, x) for x in a)
    return f(a)


def _user_frames() -> str:
    """The frames ``aten.call_site`` chooses from, formatted as a stack trace.

    Export keeps only frames of functions named ``forward`` (and registered stack-trace
    anchors); of those, ``call_site`` takes the innermost outside torch and gradlint,
    preferring one outside site-packages. Only those two candidates are formatted.
    """
    from torch.fx.proxy import _STACK_TRACE_ANCHORS

    innermost = own = None
    frame = sys._getframe(2)
    while frame is not None and own is None:
        code = frame.f_code
        path = code.co_filename
        if (code.co_name == "forward" or (path, code.co_name) in _STACK_TRACE_ANCHORS) \
                and not path.startswith(_SKIPPED_DIRS) and "<frozen" not in path and "<eval_with_key>" not in path:
            if innermost is None:
                innermost = frame
            if "site-packages" not in path and "dist-packages" not in path:
                own = frame
        frame = frame.f_back
    picked = [f for f in dict.fromkeys((own, innermost)) if f is not None]
    return "\n".join(f'File "{f.f_code.co_filename}", line {f.f_lineno}, in {f.f_code.co_name}\n'
                     f'    {linecache.getline(f.f_code.co_filename, f.f_lineno).strip()}' for f in picked)


def _user_site() -> str:
    """``file:line`` of the innermost frame of the user's code (outside torch and gradlint)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_SKIPPED_DIRS) and "<frozen" not in path:
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "an unknown line"


class _Recorder(ProxyTorchDispatchMode):
    """A pre-dispatch mode that writes each op down and runs it on meta tensors.

    It subclasses ProxyTorchDispatchMode only because torch's pre-dispatch mode slot accepts
    no other kind (``torch._ops._set_mode_pre_dispatch``); none of the proxy machinery runs.
    """

    def __init__(self, builder: _Builder, reader: ValueReader | None):
        TorchDispatchMode.__init__(self, torch._C.DispatchKey.PreDispatch)
        self.pre_dispatch = True
        self._mode_key = torch._C._TorchDispatchModeKey.PROXY
        self.enter_stack = []
        self.builder = builder
        self.reader = reader
        self.slow = SlowKernels()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:
            return func(*args, **kwargs)
        if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
            raise Unsupported("the forward enables autocast")
        if not isinstance(func, torch._ops.OpOverload):
            raise Unsupported(f"higher-order op {func}")
        # Below this mode the op only needs its meta kernel: C++, without the Python
        # dispatcher's reference implementations (five times faster).
        try:
            if func in _PACKING and self.reader is not None:
                raise DynamicOutputShapeException(func)
            with torch._C._DisablePythonDispatcher():
                out = self.slow(func, args, kwargs, lambda: func(*args, **kwargs))
        except (DataDependentOutputException, DynamicOutputShapeException):
            # A value the forward reads (.item(), `if mask.any()`, x[mask]) on fake tensors.
            if self.reader is None:
                raise
            out = self.reader.read(self.builder, func, args, kwargs, _user_site())
            self.reader.bind(self.builder.record(func, args, kwargs, out, torch.is_grad_enabled()))
            return out
        self.builder.record(func, args, kwargs, out, torch.is_grad_enabled())
        return out


_FUNCTION_PY = os.path.join("torch", "autograd", "function.py")


def _in_custom_function() -> bool:
    """Whether the forward of a custom ``torch.autograd.Function`` is running (``Function.apply``
    is on the stack). Autograd runs it without grad, and its own backward stands for the ops it
    records: they are recorded as differentiable, the derivative of that forward, which is what
    the static prediction assumes of every op (its verdict is unknown until trusted or probed:
    ``capture.own_backward``). A checkpointing Function's ``torch.no_grad()`` inside its forward
    (guided diffusion's attention blocks) then does not read as a blocked path."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "apply" and frame.f_code.co_filename.endswith(_FUNCTION_PY):
            return True
        frame = frame.f_back
    return False


class _GradCalls(TorchFunctionMode):
    """Sees the calls export keeps that reach no dispatcher: grad-mode switches and autocast;
    and ``.numpy()``, which reads values without a dispatcher op (``ValueReader.numpy``)."""

    def __init__(self, builder: _Builder, reader: ValueReader | None):
        super().__init__()
        self.builder = builder
        self.reader = reader

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch._C._set_grad_enabled and not _in_custom_function():
            self.builder.mark_grad(bool(args[0]))
        elif func is torch.amp._enter_autocast and self.builder.grad == self.builder.ambient:
            # Export wraps an autocast block in a higher-order op of its own; inside a grad
            # region it ends up in that region's subgraph, which gradlint never reads.
            raise Unsupported("the forward enters an autocast block")
        elif func is torch.Tensor.numpy and isinstance(args[0], FakeTensor):
            if self.reader is None:
                raise Unsupported("the forward reads values through NumPy (.numpy())")
            return self.reader.numpy(self.builder, args[0])
        return func(*args, **(kwargs or {}))


def _input_names(model: nn.Module, args: tuple, kwargs: dict, n_leaves: list[int]) -> list[str]:
    """Placeholder names as export gives them: the forward's parameter names (``args_0`` for
    the first of ``*args``), with an index per leaf for nested inputs."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), "args")
    keys = [positional[i] if i < len(positional) else f"{var}_{i - len(positional)}" for i in range(len(args))]
    keys += list(kwargs)
    names: list[str] = []
    for key, n in zip(keys, n_leaves):
        names += [key] if n == 1 else [f"{key}_{i}" for i in range(n)]
    return names


def record_program(model: nn.Module, args: tuple, kwargs: dict, reader: ValueReader | None = None) -> RecordedProgram:
    """Runs ``model`` (on fake or meta tensors) on such inputs and writes down its ops.

    Args:
        model: The model to run, its parameters and buffers already fake (or meta).
        args: Positional inputs, likewise.
        kwargs: Keyword inputs, likewise.
        reader: Answers the values the forward reads (``gradlint.capture.reads``); None
            refuses such a forward.

    Raises:
        Unsupported: When only ``torch.export`` can represent the forward (see the module doc).
    """
    from torch._dispatch.python import enable_python_dispatcher

    from gradlint.capture.own_backward import HookCalls, found

    builder = _Builder(model)
    calls = HookCalls()
    leaves_per_input = [tree_flatten(a)[0] for a in (*args, *kwargs.values())]
    if any(not isinstance(x, (torch.Tensor, int, float, bool, str)) for ls in leaves_per_input for x in ls):
        raise Unsupported("an input that is not a tensor or a plain constant")
    builder.user_inputs(_input_names(model, args, kwargs, [len(ls) for ls in leaves_per_input]),
                        [x for ls in leaves_per_input for x in ls])

    def pre_hook(mod, _args):
        if id(mod) in builder.aliased:
            # Export names a module registered under two names by the one the forward
            # called it through; that access path is not visible from a hook.
            raise Unsupported(f"module {builder.names[id(mod)]} is registered under several names")
        name = builder.names.get(id(mod))
        if name is not None:
            cls = type(mod)
            builder.module_stack.append((name, f"{cls.__module__}.{cls.__qualname__}"))

    def post_hook(mod, _args, _out):
        if builder.names.get(id(mod)) is not None:
            builder.module_stack.pop()

    pre = nn.modules.module.register_module_forward_pre_hook(pre_hook)
    post = nn.modules.module.register_module_forward_hook(post_hook, always_call=True)
    # The forward sees what it sees under export: code that checks
    # torch.compiler.is_exporting() (transformers' mask builders do) takes the same branch.
    flags = torch.compiler._is_compiling_flag, torch.compiler._is_exporting_flag
    torch.compiler._is_compiling_flag = torch.compiler._is_exporting_flag = True
    # A forward that draws from Python's random (teacher forcing: random.random() < ratio) takes
    # the path this draw picks; the caller puts the generator back, and the probe starts every
    # forward from it, so the path measured is this one (docs/design.md §6, R7).
    py_rng = random.getstate()
    try:
        with enable_python_dispatcher(), torch._C._EnablePreDispatch(), _Recorder(builder, reader), \
                _GradCalls(builder, reader), calls:
            out = model(*args, **kwargs)
    except Unsupported:
        raise
    except Exception as e:
        raise Unsupported(f"{type(e).__name__}: {e}") from e
    finally:
        torch.compiler._is_compiling_flag, torch.compiler._is_exporting_flag = flags
        pre.remove()
        post.remove()
    chance = tuple(reader.random_reads) if reader is not None else ()
    if random.getstate() != py_rng:
        chance += ("Python's random module",)
    return RecordedProgram(builder.sig, builder.finish(out), own_backward=found(out, calls.hooks),
                           random_reads=chance)
