"""From torch.export's ATen graph to gradlint's ``Graph``.

Each ATen op is bound to its schema (argument names), then its normalizer
(``capture.normalize``) picks the transfer ``kind``, the activation inputs, the parameters
and the attributes the transfer rule needs.
"""

from __future__ import annotations

import operator
import os
import re
from typing import Any

import torch
import torch.fx as fx

from gradlint.capture import writes
from gradlint.capture.graph import Graph, Node, Source
from gradlint.capture.normalize import NORMALIZERS, _first_tensor, _shape, op_name
from gradlint.capture.views import FUNCTIONALIZED

_TORCH_DIR = os.path.dirname(torch.__file__)
_GRADLINT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the gradlint package
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n?(?:\s+(.*))?')

# Activation ops and the name gradlint.engine.gaussian knows them by.
ACTIVATIONS = {
    "relu": "relu", "relu6": "relu6", "leaky_relu": "leaky_relu", "elu": "elu", "celu": "celu",
    "selu": "selu", "gelu": "gelu", "silu": "silu", "mish": "mish", "sigmoid": "sigmoid",
    "tanh": "tanh", "hardtanh": "hardtanh", "softplus": "softplus", "hardswish": "hardswish",
    "hardsigmoid": "hardsigmoid", "log_sigmoid_forward": "logsigmoid", "prelu": "prelu",
    "_prelu_kernel": "prelu", "logsigmoid": "logsigmoid",
}
# Ops that only re-index elements: statistics pass through unchanged.
RESHAPES = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "contiguous", "clone",
    "unsqueeze", "squeeze", "flatten", "unflatten", "alias", "_to_copy", "to", "type_as",
    "lift_fresh_copy", "view_as", "movedim", "swapaxes", "numpy_T", "mT", "dropout_identity",
    "fill_diagonal_",
}
# Ops through which no gradient flows.
BLOCKERS = {
    "_has_compatible_shallow_copy_type": "a .data assignment's type check",
    "detach": "detach()", "argmax": "argmax", "argmin": "argmin", "round": "round",
    "sign": "sign", "floor": "floor", "ceil": "ceil", "trunc": "trunc", "gt": "a comparison",
    "lt": "a comparison", "ge": "a comparison", "le": "a comparison", "eq": "a comparison",
    "ne": "a comparison", "logical_not": "a logical op", "logical_and": "a logical op",
    "logical_or": "a logical op", "bitwise_not": "a logical op",
    "bucketize": "bucketize", "searchsorted": "searchsorted",
    "heaviside": "heaviside", "isnan": "isnan", "isinf": "isinf", "isfinite": "isfinite",
    # Index arithmetic of mixture-of-experts dispatch: integer results, zero derivative.
    "floor_divide": "floor_divide", "histc": "histc", "bincount": "bincount", "argsort": "sort indices",
    "one_hot": "one_hot",  # integer ids in, integer codes out
}
# Ops that make tensors from nothing (shapes and constants only).
CREATORS = {
    "zeros", "ones", "full", "empty", "arange", "zeros_like", "ones_like", "full_like",
    "empty_like", "scalar_tensor", "tensor", "eye", "linspace", "new_zeros", "new_ones",
    "new_full", "new_empty", "rand", "randn", "randint", "rand_like", "randn_like",
    "randint_like", "_local_scalar_dense", "item", "empty_strided", "new_empty_strided",
}
# Element-wise maths without a closed-form rule: evaluated on the Gaussian grid.
ELEMENTWISE = {
    "exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "erf", "reciprocal", "square",
    "log1p", "expm1", "exp2", "sinh", "cosh", "atan", "asinh", "clamp", "clamp_min",
    "clamp_max", "clip", "pow", "softsign", "sgn", "erfc", "atanh", "acos", "asin", "tan",
    "sigmoid_", "nan_to_num",
}
SKIP = {"sym_size", "sym_numel", "sym_stride", "_assert_async", "_assert_scalar", "_assert_tensor_metadata",
        "sym_constrain_range_for_size", "_set_grad_enabled", "add_.Scalar"}


def bind(node: fx.Node) -> dict[str, Any]:
    """Bind an ATen call's args and kwargs to its schema's argument names."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return {f"arg{i}": a for i, a in enumerate(node.args)} | dict(node.kwargs)
    out: dict[str, Any] = {}
    for i, arg in enumerate(target._schema.arguments):
        if i < len(node.args) and not arg.kwarg_only:
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def call_site(stack_trace: str | None) -> Source | None:
    """The frame of a node's stack trace that is most likely the user's own code.

    Innermost frame outside torch and gradlint, preferring frames outside site-packages, so
    a user's model points at their line while a transformers model points at transformers.
    """
    if not stack_trace:
        return None
    frames = [(p, int(line), (code or "").strip()) for p, line, code in _FRAME.findall(stack_trace)]
    frames = [f for f in frames if not f[0].startswith(_TORCH_DIR) and not f[0].startswith(_GRADLINT_DIR)
              and "<frozen" not in f[0] and "<eval_with_key>" not in f[0]]
    if not frames:
        return None
    own = [f for f in frames if "site-packages" not in f[0] and "dist-packages" not in f[0]]
    path, line, code = (own or frames)[-1]
    return Source(path, line, code)


def _dtype(val: Any) -> str:
    if isinstance(val, (tuple, list)) and val:
        return _dtype(val[0])
    if isinstance(val, torch.Tensor):
        if val.dtype == torch.bool:
            return "bool"
        return "float" if (val.dtype.is_floating_point or val.dtype.is_complex) else "int"
    return "none"


class Converter:
    """Turns an ExportedProgram's graph into a ``Graph``.

    Args:
        ep: The exported program (traced on the meta device).
        input_specs: Per user-input placeholder name, the ``vocab`` for token inputs (or None).
    """

    def __init__(self, ep: torch.export.ExportedProgram, vocabs: dict[str, int | None]):
        sig = ep.graph_signature
        self.params = dict(sig.inputs_to_parameters)
        self.buffers = dict(sig.inputs_to_buffers)
        self.constants = dict(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        self.user_inputs = list(sig.user_inputs)
        self.vocabs = vocabs
        self.gm = ep.graph_module
        self.nodes: list[Node] = []
        self.alias: dict[str, str] = {}  # fx node name -> gradlint node name (skipped ops)
        self.notes: list[tuple[str, str]] = []

    # -- helpers -------------------------------------------------------------------------
    def ref(self, a: Any) -> str | None:
        if isinstance(a, fx.Node):
            return self.alias.get(a.name, a.name)
        if isinstance(a, str):
            return a  # a node a normalizer added without an fx node of its own
        return None

    def param_of(self, a: Any) -> str | None:
        """The parameter a weight argument is, looking through casts and transposes."""
        seen = 0
        while isinstance(a, fx.Node) and seen < 6:
            if a.op == "placeholder" and a.name in self.params:
                return self.params[a.name]
            if a.op == "call_function" and op_name(a.target) in {"_to_copy", "to", "t", "alias", "view",
                                                                  "contiguous", "clone", "type_as", "squeeze",
                                                                  "unsqueeze", "reshape", "_unsafe_view"}:
                a = a.args[0]
                seen += 1
                continue
            return None
        return None

    def add(self, fxn: fx.Node, kind: str, inputs=(), params=None, attrs=None, name: str | None = None,
            like: fx.Node | None = None, shape: tuple[int, ...] | None = None) -> None:
        """Add a node for ``fxn`` (named ``name`` instead, with ``like``'s shape or ``shape``, for
        a node that has no fx node of its own)."""
        stack = fxn.meta.get("nn_module_stack") or {}
        module, module_type = ("", "")
        if stack:
            path, typ = list(stack.values())[-1]
            module = path
            module_type = typ.rsplit(".", 1)[-1] if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
        val = (like if like is not None else fxn).meta.get("val")
        self.nodes.append(Node(
            name=name or fxn.name, kind=kind, op=str(fxn.target), inputs=tuple(self.ref(i) for i in inputs),
            params=params or {}, attrs=attrs or {}, shape=_shape(val) if shape is None else shape, dtype=_dtype(val),
            module=module, module_type=module_type, call_site=call_site(fxn.meta.get("stack_trace"))))

    # -- conversion ----------------------------------------------------------------------
    def convert(self) -> Graph:
        from gradlint.capture.views import functionalize

        # Writes through views (`outputs[:, t] = h`) become data flow; the graph is edited in place.
        functionalize(self.gm.graph)
        outputs: list[str] = []
        for fxn in self.gm.graph.nodes:
            if fxn.op == "placeholder":
                self.placeholder(fxn)
            elif fxn.op == "call_function":
                self.call(fxn)
            elif fxn.op == "get_attr":
                continue  # submodules of higher-order ops; handled by their caller
            elif fxn.op == "output":
                for a in torch.utils._pytree.tree_leaves(fxn.args[0]):
                    r = self.ref(a)
                    if r is not None:
                        outputs.append(r)
        batch = None
        for n in self.nodes:
            if n.kind == "input" and isinstance(n.shape, tuple) and n.shape:
                batch = n.shape[0]
                break
        return Graph(self.nodes, outputs, "export", batch, self.notes)

    def placeholder(self, fxn: fx.Node) -> None:
        name = fxn.name
        if name in self.params:
            # Weights are read by name by the ops that use them; a parameter used as a plain
            # operand (LayerScale, a position table, a CLS token) is a node of its own.
            self.add(fxn, "param", attrs={"param": self.params[name]})
            return
        val = fxn.meta.get("val")
        if name in self.buffers or name in self.constants:
            self.add(fxn, "const", attrs={"buffer": self.buffers.get(name) or self.constants.get(name)})
            return
        if not isinstance(val, torch.Tensor):
            self.add(fxn, "const", attrs={"value": val})
            return
        self.add(fxn, "input", attrs={"vocab": self.vocabs.get(name)})

    def call(self, fxn: fx.Node) -> None:
        target = fxn.target
        if target is operator.getitem:
            self.add(fxn, "getitem", [fxn.args[0]], attrs={"index": fxn.args[1]})
            return
        name = op_name(target)
        if name in SKIP or getattr(target, "__module__", "") == "torch._ops.higher_order" and name == "":
            return
        if name == "wrap_with_set_grad_enabled":
            enabled, _sub, *args = fxn.args
            self.add(fxn, "grad_region", args, attrs={"enabled": bool(enabled)})
            return
        if name in {"wrap_with_autocast", "autocast"}:
            self.add(fxn, "grad_region", fxn.args[5:] if len(fxn.args) > 5 else fxn.args, attrs={"enabled": True})
            return
        b = bind(fxn)
        if writes.mutates_self(target) and isinstance(b.get("self"), fx.Node):
            self.inplace(fxn, b, name)
        else:
            self.dispatch(fxn, b, name)

    def dispatch(self, fxn: fx.Node, b: dict, name: str) -> None:
        target = fxn.target
        fn = NORMALIZERS.get(name)
        if fn is not None:
            fn(self, fxn, b)
        elif name in ACTIVATIONS:
            self.activation(fxn, b, ACTIVATIONS[name])
        elif name in RESHAPES:
            self.reshape(fxn, b)
        elif name in BLOCKERS:
            n_tensors = sum(isinstance(v, fx.Node) for v in b.values())
            self.add(fxn, "block", [_first_tensor(b)], attrs={"reason": BLOCKERS[name], "n_tensors": n_tensors})
        elif name in CREATORS:
            self.add(fxn, "const", attrs={"op": name})
        elif name in ELEMENTWISE:
            self.add(fxn, "elementwise", [b.get("self", b.get("input"))],
                     attrs={"target": target, "extra": {k: v for k, v in b.items() if k not in ("self", "input")}})
        else:
            tensors = [a for a in torch.utils._pytree.tree_leaves((fxn.args, fxn.kwargs)) if isinstance(a, fx.Node)]
            self.add(fxn, "unknown", tensors, attrs={"target": name})

    def inplace(self, fxn: fx.Node, b: dict, name: str) -> None:
        """An op that writes into its first argument: later reads of that tensor, and of the
        tensor it is a view of, see the written value (``writes``)."""
        dst = b["self"]
        if name == "copy":
            new = b.get("src")
        elif name in ("fill", "zero"):
            value = b.get("value", 0.0)
            self.add(fxn, "const", attrs={"op": name, "value": value if isinstance(value, (int, float)) else None})
            new = fxn
        else:
            self.dispatch(fxn, b, name)  # the out-of-place op computes the new value
            new = fxn
        if not isinstance(new, fx.Node):
            return
        base = writes.base_of(dst, op_name)
        self.alias[dst.name] = self.ref(new)
        if new is not fxn:
            self.alias[fxn.name] = self.ref(new)
        if base is dst or not isinstance(base, fx.Node) or fxn.meta.get(FUNCTIONALIZED):
            # A write views.functionalize rewrote: its scatter into the base is in the graph
            # already, and a write node here would route the written value's gradient twice.
            return
        write = f"{fxn.name}_into_{base.name}"
        self.add(fxn, "write", [base, new], name=write, like=base,
                 attrs={"op": name, "region": writes.share(writes.numel(dst), writes.numel(base)),
                        "accumulate": False, "used": 1.0, "region_key": writes.region_key(dst, base, op_name)})
        self.alias[base.name] = write

    def activation(self, fxn, b, fn_name):
        attrs: dict[str, Any] = {"fn": fn_name}
        params = {}
        if fn_name == "leaky_relu":
            attrs["negative_slope"] = float(b.get("negative_slope", 0.01))
        elif fn_name in ("elu", "celu"):
            attrs["alpha"] = float(b.get("alpha", 1.0))
        elif fn_name == "hardtanh":
            attrs["min_val"], attrs["max_val"] = float(b.get("min_val", -1.0)), float(b.get("max_val", 1.0))
        elif fn_name == "softplus":
            attrs["beta"], attrs["threshold"] = float(b.get("beta", 1.0)), float(b.get("threshold", 20.0))
        elif fn_name == "gelu":
            if b.get("approximate") == "tanh":
                attrs["fn"] = "gelu_tanh"
        elif fn_name == "prelu":
            p = self.param_of(b.get("weight"))
            if p:
                params["weight"] = p
        self.add(fxn, "act", [b.get("self", b.get("input"))], params, attrs)

    def reshape(self, fxn, b):
        x = b.get("self", b.get("input"))
        args = {k: v for k, v in b.items() if not isinstance(v, fx.Node) and k not in ("self", "input")}
        self.add(fxn, "identity", [x], attrs={"op": op_name(fxn.target), "args": args})
