"""What a module's ``forward`` does with each of its parameters, read from its source.

For each parameter: the first submodule call it reaches (``self.encoder(src)``, through helper
methods such as ``self.encode_text(text)``, loops over ``ModuleList`` s and shape-keeping layers),
which argument of that call it is, and how the tensor was changed on the way (flattened, split,
one-hot encoded, indexed per time step). Nothing runs: this only reads the code, so input
inference can draw each input for the layer that takes it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Flow", "Signature", "Use", "parameter_uses", "signature_of"]

# Tensor methods that keep the shape; ones that only read the shape give no tensor at all.
_SAME = frozenset({
    "float", "double", "half", "bfloat16", "long", "int", "bool", "type", "to", "contiguous", "clone", "detach",
    "cuda", "cpu", "type_as", "requires_grad_", "abs", "neg", "exp", "log", "sqrt", "tanh", "sigmoid", "relu",
    "clamp", "clamp_", "masked_fill", "add", "sub", "mul", "div", "pow", "fill_", "zero_", "data", "squeeze_",
})
_READS_SHAPE = frozenset({"size", "dim", "numel", "shape", "ndim", "ndimension", "device", "dtype", "item", "tolist",
                          "is_cuda", "data_ptr", "stride", "get_device", "nelement", "element_size"})
_FLATTEN = frozenset({"flatten", "view", "reshape"})
_SPLIT = frozenset({"split", "chunk", "tensor_split", "split_with_sizes"})
# torch functions (torch.x, F.x) that keep their first argument's shape.
_SAME_FUNCTIONS = frozenset({
    "relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "elu", "leaky_relu", "softplus", "mish", "hardtanh",
    "dropout", "dropout2d", "dropout3d", "alpha_dropout", "pad", "interpolate", "upsample", "normalize",
    "softmax", "log_softmax", "abs", "exp", "log", "sqrt", "rsqrt", "clamp", "where", "sin", "cos", "square",
})
_TORCH_ROOTS = frozenset({"torch", "th", "F", "functional", "nn", "t"})
_UNKNOWN = object()


@dataclass(frozen=True)
class Flow:
    """A value derived from one forward parameter.

    Attributes:
        param: The parameter's name.
        how: ``"exact"`` (same shape), ``"flatten"`` (to (batch, -1)), ``"split"`` (split along
            the last dim into ``sizes``), ``"one_hot"`` (one-hot over ``sizes[0]`` classes),
            ``"step"`` (one time step of a sequence, per loop iteration), ``"reshaped"`` (some
            other shape change) or ``"opaque"`` (through a function gradlint does not read).
        sizes: The split sizes, or the number of classes of a one-hot encoding.
        time_first: For ``"step"``: the sequence is indexed ``x[t]`` (time first), not ``x[:, t]``.
    """

    param: str
    how: str = "exact"
    sizes: tuple[int, ...] = ()
    time_first: bool = False

    def then(self, how: str, sizes: tuple[int, ...] = (), time_first: bool = False) -> Flow:
        """This flow after one more change."""
        if how == "exact":
            return self
        if self.how == "exact":
            return replace(self, how=how, sizes=sizes, time_first=time_first)
        if self.how == "one_hot" and how == "reshaped":
            return self  # one_hot(x, n).permute(...): the ids' shape is still what counts
        return replace(self, how="opaque" if "opaque" in (how, self.how) else "reshaped")


@dataclass(frozen=True)
class Use:
    """Where a parameter first reaches a submodule.

    Attributes:
        path: The submodule, relative to the module read (``"encoder"``, ``"input_blocks.0"``).
        arg: Which argument of that call: a position, or a keyword's name.
        flow: How the parameter was changed before it got there.
    """

    path: str
    arg: int | str
    flow: Flow


@dataclass(frozen=True)
class Signature:
    """The parameters of a ``forward``.

    Attributes:
        required: Parameters without a default, in order (keyword-only ones last).
        keyword_only: Those of ``required`` that must be passed by keyword.
        optional: Parameters with a default.
        defaults: Their defaults.
        path: The source file of ``forward``; None if unknown.
        line: The line of its ``def``; None if unknown.
        qualname: ``Class.forward``.
    """

    required: tuple[str, ...]
    keyword_only: tuple[str, ...]
    optional: tuple[str, ...]
    defaults: dict[str, Any]
    path: str | None
    line: int | None
    qualname: str

    @property
    def where(self) -> str:
        """``file:line`` of the ``def``, or the qualified name when the source is unknown."""
        return f"{self.path}:{self.line}" if self.path and self.line else self.qualname


def signature_of(module: nn.Module) -> Signature | None:
    """The parameters of ``module.forward``; None when Python cannot say."""
    forward = module.forward
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return None
    function = getattr(forward, "__func__", forward)
    code = getattr(function, "__code__", None)
    required = [p.name for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    keyword_only = [p.name for p in params if p.default is p.empty and p.kind == p.KEYWORD_ONLY]
    optional = [p.name for p in params if p.default is not p.empty]
    return Signature(tuple(required), tuple(keyword_only), tuple(optional),
                     {p.name: p.default for p in params if p.default is not p.empty},
                     code.co_filename if code is not None else None,
                     code.co_firstlineno if code is not None else None,
                     getattr(function, "__qualname__", type(module).__name__ + ".forward"))


@functools.lru_cache(maxsize=1024)
def _parsed(function: Any) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    func = tree.body[0] if tree.body else None
    if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) and func.args.args:
        return func
    return None


def _int_constant(node: ast.AST, module: nn.Module) -> int | None:
    """An int a node spells: a literal, ``-1``, or an int attribute of ``self`` or its config."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_constant(node.operand, module)
        return -inner if inner is not None else None
    chain = []
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and chain:
        value: Any = module
        for attr in reversed(chain):
            value = getattr(value, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class _Reader:
    """Walks one function body in evaluation order, following the parameters' values."""

    def __init__(self, module: nn.Module, self_name: str, env: dict[str, list[Flow]], uses: dict[str, Use],
                 keeps_shape: Callable[[Any], str | None], depth: int) -> None:
        self.module = module
        self.self_name = self_name
        self.env = env
        self.uses = uses
        self.keeps_shape = keeps_shape
        self.depth = depth
        self.submodules: dict[str, str] = {}  # local names bound to a submodule path (loop variables)
        self.loop_vars: set[str] = set()

    # -- submodules ---------------------------------------------------------------------------

    def _resolve(self, node: ast.AST) -> tuple[str, Any] | None:
        """The submodule a ``self.a.b[0]`` expression names, as (path, module)."""
        steps: list[tuple[str, ast.AST | None]] = []
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            if isinstance(node, ast.Attribute):
                steps.append(("attr", ast.Constant(node.attr)))
            else:
                steps.append(("item", node.slice))
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.submodules:
            path = self.submodules[node.id]
            current = self.module.get_submodule(path) if path else self.module
        elif isinstance(node, ast.Name) and node.id == self.self_name:
            path, current = "", self.module
        else:
            return None
        for kind, key in reversed(steps):
            children = getattr(current, "_modules", None)
            if children is None:
                return None
            if kind == "attr":
                name = key.value  # type: ignore[union-attr]
            elif isinstance(key, ast.Constant) and isinstance(key.value, (int, str)):
                name = str(key.value)
                if isinstance(key.value, int) and key.value < 0:
                    name = str(len(children) + key.value)
            else:
                name = next(iter(children), None)  # self.blocks[i]: the first iteration
            child = children.get(name) if name is not None else None
            if child is None:
                return None
            current, path = child, f"{path}.{name}" if path else name
        return (path, current) if path else None

    def _first_child(self, node: ast.AST) -> str | None:
        """For ``for m in self.blocks`` (or ``enumerate``, ``.children()``, ``.values()``): blocks' first child."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "enumerate" and node.args:
            return self._first_child(node.args[0])
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("children", "values") and not node.args):
            node = node.func.value
        if isinstance(node, ast.Name) and node.id == self.self_name:
            resolved: tuple[str, Any] | None = ("", self.module)
        else:
            resolved = self._resolve(node)
        if resolved is None:
            return None
        path, container = resolved
        first = next((name for name, child in container._modules.items() if child is not None), None)
        if first is None:
            return None
        return f"{path}.{first}" if path else first

    def _record(self, path: str, arg: int | str, flows: list[Flow]) -> None:
        for flow in flows:
            self.uses.setdefault(flow.param, Use(path, arg, flow))

    # -- expressions --------------------------------------------------------------------------

    def flows(self, node: ast.AST | None) -> list[Flow]:
        """The parameters an expression's value comes from, visiting calls inside it."""
        if node is None:
            return []
        if isinstance(node, ast.Name):
            return list(self.env.get(node.id, []))
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            inner = self.flows(node.value)
            if node.attr in _READS_SHAPE:
                return []
            return inner if node.attr in ("data", "T", "mT", "real") else [f.then("reshaped") for f in inner]
        if isinstance(node, ast.Subscript):
            return self._subscript(node)
        if isinstance(node, ast.BinOp):
            how = "reshaped" if isinstance(node.op, ast.MatMult) else "exact"
            return [f.then(how) for f in self.flows(node.left) + self.flows(node.right)]
        if isinstance(node, ast.UnaryOp):
            return self.flows(node.operand)
        if isinstance(node, ast.IfExp):
            self.flows(node.test)
            return self.flows(node.body) + self.flows(node.orelse)
        if isinstance(node, (ast.Tuple, ast.List)):
            return [f for elt in node.elts for f in self.flows(elt)]
        if isinstance(node, ast.Starred):
            return self.flows(node.value)
        if isinstance(node, (ast.Compare, ast.BoolOp)):
            for child in ast.iter_child_nodes(node):
                self.flows(child)
            return []
        if isinstance(node, ast.NamedExpr):
            found = self.flows(node.value)
            self.env[node.target.id] = found
            return found
        return []

    def _subscript(self, node: ast.Subscript) -> list[Flow]:
        inner = self.flows(node.value)
        index = node.slice
        if not inner:
            self.flows(index)
            return []
        if isinstance(index, ast.Name) and index.id in self.loop_vars:
            return [f.then("step", time_first=True) for f in inner]
        if (isinstance(index, ast.Tuple) and len(index.elts) >= 2 and isinstance(index.elts[0], ast.Slice)
                and isinstance(index.elts[1], ast.Name) and index.elts[1].id in self.loop_vars):
            return [f.then("step", time_first=False) for f in inner]
        return [f.then("reshaped") for f in inner]

    def _call(self, node: ast.Call) -> list[Flow]:
        args = [self.flows(a) for a in node.args]
        keywords = {k.arg: self.flows(k.value) for k in node.keywords}
        func = node.func
        resolved = self._resolve(func) if isinstance(func, (ast.Attribute, ast.Subscript, ast.Name)) else None
        if resolved is not None:
            path, sub = resolved
            kind = self.keeps_shape(sub)
            if kind == "same":
                return args[0] if args else []
            if kind == "flatten":
                return [f.then("flatten") for f in (args[0] if args else [])]
            for i, found in enumerate(args):
                self._record(path, i, found)
            for name, found in keywords.items():
                if name is not None:
                    self._record(path, name, found)
            return []
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == self.self_name and func.attr not in self.module._modules):
            self._method(func.attr, node, args, keywords)
            return []
        if isinstance(func, ast.Attribute):
            receiver = self.flows(func.value)
            if receiver:
                return self._tensor_method(func.attr, node, receiver)
            root = func.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in _TORCH_ROOTS and args:
                return self._torch_function(func.attr, node, args)
        if isinstance(func, ast.Name):
            if func.id in ("len", "isinstance", "hasattr", "getattr", "print", "range", "type", "id"):
                return []
            if func.id in _SAME_FUNCTIONS | {"one_hot", "flatten", "split"} and args:
                return self._torch_function(func.id, node, args)
        # A function gradlint does not read: whatever comes out depends on the inputs somehow.
        return [f.then("opaque") for found in [*args, *keywords.values()] for f in found]

    def _tensor_method(self, name: str, node: ast.Call, receiver: list[Flow]) -> list[Flow]:
        if name in _READS_SHAPE:
            return []
        if name in _SAME:
            return receiver
        if name in _FLATTEN and self._flattens(name, node.args, node.keywords, offset=0):
            return [f.then("flatten") for f in receiver]
        if name in _SPLIT:
            return [f.then("split", self._split_sizes(node.args[:1])) for f in receiver]
        return [f.then("reshaped") for f in receiver]

    def _torch_function(self, name: str, node: ast.Call, args: list[list[Flow]]) -> list[Flow]:
        first = args[0]
        if name == "one_hot":
            classes = _int_constant(node.args[1], self.module) if len(node.args) > 1 else None
            return [f.then("one_hot", (classes,) if classes else ()) for f in first]
        if name == "flatten" and self._flattens(name, node.args[1:], node.keywords, offset=0):
            return [f.then("flatten") for f in first]
        if name in ("split", "split_with_sizes", "chunk"):
            return [f.then("split", self._split_sizes(node.args[1:2])) for f in first]
        if name in _SAME_FUNCTIONS:
            return first
        return [f.then("reshaped") for found in args for f in found]

    def _flattens(self, name: str, args: list[ast.expr], keywords: list[ast.keyword], offset: int) -> bool:
        """``x.flatten(1)``, ``torch.flatten(x, 1)``, ``x.view(x.size(0), -1)``, ``x.reshape(b, -1)``."""
        if name == "flatten":
            start = args[0] if args else next((k.value for k in keywords if k.arg == "start_dim"), None)
            return start is not None and _int_constant(start, self.module) == 1
        if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
            args = list(args[0].elts)
        return len(args) == 2 and _int_constant(args[1], self.module) == -1

    def _split_sizes(self, args: list[ast.expr]) -> tuple[int, ...]:
        if args and isinstance(args[0], (ast.List, ast.Tuple)):
            sizes = [_int_constant(e, self.module) for e in args[0].elts]
            if all(s is not None and s > 0 for s in sizes):
                return tuple(sizes)  # type: ignore[arg-type]
        return ()

    def _method(self, name: str, node: ast.Call, args: list[list[Flow]],
                keywords: dict[str | None, list[Flow]]) -> None:
        """A helper method of the same module (``self.encode_text(text)``): read it in place."""
        method = getattr(type(self.module), name, None)
        if not inspect.isfunction(method) or self.depth <= 0:
            return
        func = _parsed(method)
        if func is None:
            return
        names = [a.arg for a in func.args.args]
        env: dict[str, list[Flow]] = {}
        for i, found in enumerate(args):
            if i + 1 < len(names) and found:
                env[names[i + 1]] = found
        for key, found in keywords.items():
            if key is not None and found:
                env[key] = found
        if env:
            read_body(self.module, func, env, self.uses, self.keeps_shape, self.depth - 1)

    # -- statements ---------------------------------------------------------------------------

    def _bind(self, target: ast.AST, found: list[Flow]) -> None:
        if isinstance(target, ast.Name):
            if found:
                self.env[target.id] = found
            else:
                self.env.pop(target.id, None)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._bind(elt.value if isinstance(elt, ast.Starred) else elt, found)
        else:
            self.flows(target)

    def statements(self, body: list[ast.stmt]) -> None:
        for statement in body:
            self.statement(statement)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Assign):
            found = self.flows(node.value)
            resolved = self._resolve(node.value) if isinstance(node.value, (ast.Attribute, ast.Subscript)) else None
            for target in node.targets:
                if resolved is not None and isinstance(target, ast.Name):
                    self.submodules[target.id] = resolved[0]
                self._bind(target, found)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self._bind(node.target, self.flows(node.value))
        elif isinstance(node, ast.AugAssign):
            found = self.flows(node.value)
            if isinstance(node.target, ast.Name):
                self.env[node.target.id] = self.env.get(node.target.id, []) + found
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self._for(node)
        elif isinstance(node, ast.While):
            self.flows(node.test)
            self.statements(node.body)
            self.statements(node.orelse)
        elif isinstance(node, ast.If):
            self.flows(node.test)
            taken = self._static_truth(node.test)
            if taken is not False:
                self.statements(node.body)
            if taken is not True:
                self.statements(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.flows(item.context_expr)
            self.statements(node.body)
        elif isinstance(node, ast.Try):
            self.statements(node.body)
            for handler in node.handlers:
                self.statements(handler.body)
            self.statements(node.orelse)
            self.statements(node.finalbody)
        elif isinstance(node, (ast.Return, ast.Expr)):
            self.flows(node.value)

    def _static_truth(self, test: ast.expr) -> bool | None:
        """The value of a branch condition on the module's own settings (``if self.use_viewdirs:``,
        ``if self.num_classes is not None:``); None when it depends on anything else."""
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self._static_truth(test.operand)
            return None if inner is None else not inner
        if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Is, ast.IsNot))
                and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None):
            value = self._setting(test.left)
            if value is _UNKNOWN:
                return None
            return (value is None) == isinstance(test.ops[0], ast.Is)
        value = self._setting(test)
        return bool(value) if isinstance(value, (bool, int, type(None))) else None

    def _setting(self, node: ast.expr) -> Any:
        """The value of ``self.a.b`` when it is a plain setting (bool, number, str, None)."""
        chain = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        if not (isinstance(node, ast.Name) and node.id == self.self_name and chain):
            return _UNKNOWN
        value: Any = self.module
        for attr in reversed(chain):
            try:
                value = inspect.getattr_static(value, attr)
            except AttributeError:
                return _UNKNOWN
        return value if isinstance(value, (bool, int, float, str, type(None))) else _UNKNOWN

    def _for(self, node: ast.For | ast.AsyncFor) -> None:
        first = self._first_child(node.iter)
        target = node.target
        if first is not None:
            # for m in self.blocks / for i, m in enumerate(self.blocks): m is the first block.
            name = target.elts[-1] if isinstance(target, ast.Tuple) and target.elts else target
            if isinstance(name, ast.Name):
                self.submodules[name.id] = first
        else:
            found = self.flows(node.iter)
            iterated = isinstance(node.iter, ast.Call) and isinstance(node.iter.func, ast.Name) \
                and node.iter.func.id == "range"
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    if iterated or not found:
                        self.loop_vars.add(name.id)
                    if found:
                        # for x_t in x (or x.unbind(0)): one time step per iteration.
                        self.env[name.id] = [f.then("step", time_first=True) for f in found]
        self.statements(node.body)
        self.statements(node.orelse)


def read_body(module: nn.Module, func: ast.FunctionDef | ast.AsyncFunctionDef, env: dict[str, list[Flow]],
              uses: dict[str, Use], keeps_shape: Callable[[Any], str | None], depth: int) -> None:
    """Reads one function body of ``module`` with ``env`` bound, adding to ``uses``."""
    reader = _Reader(module, func.args.args[0].arg, env, uses, keeps_shape, depth)
    reader.statements(func.body)


def parameter_uses(module: nn.Module, keeps_shape: Callable[[Any], str | None],
                   depth: int = 3) -> dict[str, Use] | None:
    """Where each parameter of ``module.forward`` first reaches a submodule.

    Args:
        module: The module whose ``forward`` to read.
        keeps_shape: For a submodule: ``"same"`` when its output has its input's shape (dropout,
            activations, padding), ``"flatten"`` for ``nn.Flatten``, None otherwise. Calls of
            the first two are followed through instead of counted as uses.
        depth: How deep to follow helper methods.

    Returns:
        Parameter name -> its first use; parameters that reach no submodule are absent. None
        when the source of ``forward`` cannot be read.
    """
    forward = getattr(type(module), "forward", None)
    if not inspect.isfunction(forward):
        return None
    func = _parsed(forward)
    if func is None:
        return None
    params = [a.arg for a in (*func.args.posonlyargs, *func.args.args[1:], *func.args.kwonlyargs)
              if a is not func.args.args[0]]
    env = {name: [Flow(name)] for name in params}
    uses: dict[str, Use] = {}
    read_body(module, func, env, uses, keeps_shape, depth)
    return uses
