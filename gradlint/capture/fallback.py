"""The fallback graphs, when torch.export and recording cannot capture the model.

* ``fx``: without example inputs, ``torch.fx.symbolic_trace`` with known layer types kept as
  leaves (no shapes, so the estimates that need them are left out).
* ``module-order``: when tracing fails, the leaf modules in the order a forward pass on fake
  tensors calls them; failing that, in registration order. A chain: residual paths and
  functional ops are lost.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from gradlint.capture.aten import call_site
from gradlint.capture.fake import fake_forward
from gradlint.capture.graph import Graph, Node, Source
from gradlint.capture.inputs import ExampleInputs, TensorSpec
from gradlint.engine.gaussian import ACTIVATION_PARAMS

# -- layer types the fx and module-order paths understand ----------------------------------------

_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.CELU: "celu",
    nn.SELU: "selu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Mish: "mish", nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh", nn.Hardtanh: "hardtanh", nn.Softplus: "softplus", nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid", nn.LogSigmoid: "logsigmoid", nn.PReLU: "prelu", nn.Softsign: "softsign",
}



LEAF_TYPES: tuple[type, ...] = (
    nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
    nn.RMSNorm, nn.Embedding, nn.RNNBase, nn.MultiheadAttention, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.Flatten, nn.Identity, *tuple(_ACT_MODULES),
)



def module_node(name: str, path: str, mod: nn.Module, inputs: tuple, shape: Any = None,
                src: Source | None = None) -> Node:
    """A graph node for a whole leaf module (the fx and module-order paths)."""
    typ = type(mod).__name__
    prm = {pn: f"{path}.{pn}" if path else pn for pn, _ in mod.named_parameters(recurse=False)}
    base = dict(name=name, op=f"nn.{typ}", inputs=inputs, shape=shape, module=path, module_type=typ, call_site=src)
    if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and "weight" not in prm:
        # A parametrized weight (weight_norm, spectral_norm) is computed, not a parameter.
        return Node(kind="unknown", params=prm, attrs={"target": f"{typ} with a parametrized weight"}, **base)
    if isinstance(mod, nn.Linear):
        return Node(kind="linear", params=prm, attrs={"layout": "out_in"}, **base)
    if isinstance(mod, nn.modules.conv._ConvNd):
        return Node(kind="conv", params=prm, attrs={
            "stride": list(mod.stride), "padding": mod.padding if isinstance(mod.padding, str) else list(mod.padding),
            "dilation": list(mod.dilation), "groups": mod.groups, "transposed": mod.transposed,
            "output_padding": list(mod.output_padding)}, **base)
    if isinstance(mod, nn.modules.batchnorm._NormBase) and not isinstance(mod, nn.modules.instancenorm._InstanceNorm):
        return Node(kind="batch_norm", params=prm, attrs={"training": True, "eps": mod.eps}, **base)
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm):
        return Node(kind="group_norm", params=prm, attrs={"groups": mod.num_features, "eps": mod.eps}, **base)
    if isinstance(mod, nn.LayerNorm):
        return Node(kind="layer_norm", params=prm,
                    attrs={"normalized_shape": list(mod.normalized_shape), "eps": mod.eps}, **base)
    if isinstance(mod, nn.RMSNorm):
        return Node(kind="rms_norm", params=prm,
                    attrs={"normalized_shape": list(mod.normalized_shape), "eps": mod.eps}, **base)
    if isinstance(mod, nn.GroupNorm):
        return Node(kind="group_norm", params=prm, attrs={"groups": mod.num_groups, "eps": mod.eps}, **base)
    if isinstance(mod, nn.Embedding):
        return Node(kind="embedding", params=prm, attrs={"padding_idx": mod.padding_idx}, **base)
    if isinstance(mod, nn.RNNBase):
        mode = {"LSTM": "lstm", "GRU": "gru"}.get(
            mod.mode, "rnn_tanh" if getattr(mod, "nonlinearity", "tanh") == "tanh" else "rnn_relu")
        return Node(kind="rnn", attrs={"mode": mode, "params": list(prm.values()), "batch_first": mod.batch_first},
                    **base)
    if isinstance(mod, nn.Dropout):
        return Node(kind="dropout", attrs={"p": mod.p, "train": True}, **base)
    if type(mod) in _ACT_MODULES:
        attrs: dict[str, Any] = {"fn": _ACT_MODULES[type(mod)]}
        # Only the parameters the function takes: ReLU6 is a Hardtanh, with min_val and
        # max_val attributes that relu6 fixes.
        for a in ACTIVATION_PARAMS.get(attrs["fn"], {}):
            if hasattr(mod, a):
                attrs[a] = float(getattr(mod, a))
        if isinstance(mod, nn.GELU) and mod.approximate == "tanh":
            attrs["fn"] = "gelu_tanh"
        return Node(kind="act", params=prm if isinstance(mod, nn.PReLU) else {}, attrs=attrs, **base)
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        ks = mod.kernel_size if isinstance(mod.kernel_size, (list, tuple)) else [mod.kernel_size]
        return Node(kind="max_pool", attrs={"kernel_size": list(ks)}, **base)
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        ks = mod.kernel_size if isinstance(mod.kernel_size, (list, tuple)) else [mod.kernel_size]
        st = mod.stride if isinstance(mod.stride, (list, tuple)) else [mod.stride]
        return Node(kind="avg_pool", attrs={"kernel_size": list(ks), "stride": list(st)}, **base)
    if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return Node(kind="avg_pool", attrs={"adaptive": True}, **base)
    if isinstance(mod, (nn.Flatten, nn.Identity)):
        return Node(kind="identity", attrs={"op": typ.lower()}, **base)
    return Node(kind="unknown", params=prm, attrs={"target": typ}, **base)



def _shape_of(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return tuple(int(d) for d in v.shape)
    if isinstance(v, (tuple, list)) and v and isinstance(v[0], torch.Tensor):
        # Flat, tensors only, as export lists a multi-output op's values: an LSTM's
        # (out, (h, c)) gives three shapes, attention's (out, None) one.
        return tuple(_shape_of(x) for x in torch.utils._pytree.tree_leaves(v) if isinstance(x, torch.Tensor))
    return None



def _chain_graph(model: nn.Module, order: list[tuple[str, nn.Module, Any, Any]], inputs: ExampleInputs | None,
                 analysis: str) -> Graph:
    nodes: list[Node] = []
    first_shape = order[0][2] if order and order[0][2] is not None else None
    spec = next((a for a in (inputs.args if inputs else ()) if isinstance(a, TensorSpec)), None)
    shape = tuple(spec.shape) if spec else first_shape
    dtype = "float" if spec is None or spec.is_float else "int"
    nodes.append(Node(name="input", kind="input", op="input", shape=shape, dtype=dtype,
                      attrs={"vocab": spec.vocab if spec else None}))
    prev = "input"
    for i, (path, mod, _in_shape, out_shape) in enumerate(order):
        node = module_node(f"{path or 'model'}#{i}", path, mod, (prev,), out_shape)
        nodes.append(node)
        prev = node.name
        if node.kind == "rnn" or (isinstance(out_shape, tuple) and out_shape and isinstance(out_shape[0], tuple)):
            # Tuple-valued modules (RNNs' (output, h_n), attention's (output, weights)) feed
            # the next module their first element, as the forward most likely does.
            first = (out_shape[0] if isinstance(out_shape, tuple) and out_shape and isinstance(out_shape[0], tuple)
                     else None)
            nodes.append(Node(name=f"{node.name}[0]", kind="getitem", op="getitem", inputs=(prev,),
                              attrs={"index": 0}, shape=first, module=path, module_type=node.module_type))
            prev = nodes[-1].name
    batch = inputs.batch_size if inputs else (shape[0] if shape else None)
    return Graph(nodes, [prev], analysis, batch)



def module_order_graph(model: nn.Module, inputs: ExampleInputs | None) -> Graph:
    """Leaf modules in the order a forward on fake tensors calls them; else registration order."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children()) or isinstance(m, LEAF_TYPES)]
    leaves = [(n, m) for n, m in leaves if not any(n.startswith(o + ".") for o, _ in leaves if o and o != n)]
    order: list[tuple[str, nn.Module, Any, Any]] = []
    analysis = "module-order"
    if inputs is not None and inputs.found:
        def hook(mod, args, out):
            name = names.get(id(mod), "")
            order.append((name, model.get_submodule(name) if name else model,
                          _shape_of(args[0]) if args else None, _shape_of(out)))

        try:
            with fake_forward(model, inputs) as run:
                names = {id(m): n for n, m in run.model.named_modules()}
                handles = [m.register_forward_hook(hook) for n, m in run.model.named_modules()
                           if n and (not list(m.children()) or isinstance(m, LEAF_TYPES))
                           and not any(n.startswith(o + ".") for o, _ in leaves if o and o != n)]
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        run.model(*run.args, **run.kwargs)
                finally:
                    for h in handles:
                        h.remove()
        except Exception:  # noqa: BLE001 - the user's forward on fake tensors: any failure means no shapes
            order = []
    if not order:
        order = [(n, m, None, None) for n, m in leaves
                 if n and (list(m.parameters(recurse=False)) or type(m) in _ACT_MODULES)]
    return _chain_graph(model, order, inputs, analysis)



class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_TYPES) or super().is_leaf_module(m, qualname)



_FX_FUNCS = {
    torch.relu: ("act", {"fn": "relu"}), F.relu: ("act", {"fn": "relu"}), torch.tanh: ("act", {"fn": "tanh"}),
    torch.sigmoid: ("act", {"fn": "sigmoid"}), F.gelu: ("act", {"fn": "gelu"}), F.silu: ("act", {"fn": "silu"}),
    F.sigmoid: ("act", {"fn": "sigmoid"}), F.tanh: ("act", {"fn": "tanh"}), F.elu: ("act", {"fn": "elu"}),
    F.leaky_relu: ("act", {"fn": "leaky_relu", "negative_slope": 0.01}), F.softplus: ("act", {"fn": "softplus"}),
    operator.add: ("add", {"op": "add", "alpha": 1}), torch.add: ("add", {"op": "add", "alpha": 1}),
    operator.mul: ("mul", {"op": "mul"}), torch.mul: ("mul", {"op": "mul"}),
    operator.sub: ("add", {"op": "sub", "alpha": -1}), operator.truediv: ("mul", {"op": "div"}),
    torch.flatten: ("identity", {"op": "flatten"}), torch.cat: ("cat", {"dim": 0}),
}



def fx_graph(model: nn.Module) -> Graph:
    """``torch.fx.symbolic_trace`` with layers as leaves; no shapes are known on this path."""
    tracer = _LeafTracer()
    tracer.record_stack_traces = True
    g = tracer.trace(model)
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    nodes: list[Node] = []
    outputs: list[str] = []
    for n in g.nodes:
        src = call_site(n.stack_trace)
        tensors = tuple(a.name for a in torch.utils._pytree.tree_leaves((n.args, n.kwargs)) if isinstance(a, fx.Node))
        if n.op == "placeholder":
            nodes.append(Node(name=n.name, kind="input", op="input"))
        elif n.op == "call_module":
            mod = model.get_submodule(n.target)
            nodes.append(module_node(n.name, n.target, mod,
                                     tensors[:1] if not isinstance(mod, nn.MultiheadAttention) else tensors, None, src))
        elif n.op == "call_function" or n.op == "call_method":
            kind, attrs = _FX_FUNCS.get(n.target, (None, None))
            if n.op == "call_method":
                kind, attrs = {"relu": ("act", {"fn": "relu"}), "tanh": ("act", {"fn": "tanh"}),
                               "sigmoid": ("act", {"fn": "sigmoid"}), "view": ("identity", {"op": "view"}),
                               "reshape": ("identity", {"op": "reshape"}), "flatten": ("identity", {"op": "flatten"}),
                               "detach": ("block", {"reason": "detach()"}),
                               "mean": ("reduce", {"op": "mean", "dims": None}),
                               "size": (None, None)}.get(n.target, ("unknown", {"target": n.target}))
                if kind is None:
                    continue
            if n.target is operator.getitem and len(n.args) > 1 and isinstance(n.args[1], int):
                kind, attrs = "getitem", {"index": n.args[1]}  # (output, h_n)[0] after an RNN
            if kind is None:
                kind, attrs = "unknown", {"target": getattr(n.target, "__name__", str(n.target))}
            attrs = dict(attrs)
            scalars = [a for a in n.args if isinstance(a, (int, float))]
            if kind in ("add", "mul") and scalars:
                attrs["scalar"] = scalars[0]
            nodes.append(Node(name=n.name, kind=kind, op=str(n.target), inputs=tensors, attrs=attrs, call_site=src))
        elif n.op == "get_attr":
            if n.target in params:
                nodes.append(Node(name=n.name, kind="param", attrs={"param": n.target}))
            else:  # a buffer or a plain tensor attribute
                nodes.append(Node(name=n.name, kind="const", op="get_attr", attrs={"buffer": n.target}))
        elif n.op == "output":
            outputs = list(tensors)
    return Graph(nodes, outputs, "fx", None)
