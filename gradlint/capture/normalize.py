"""One normalizer per ATen op (or family): from the op's bound arguments to the transfer
``kind``, the activation inputs, the parameters and the attributes its rule needs, added to the
graph ``aten.Converter`` builds. Ops that only move data become ``datamove``/``identity`` with
the dims they touch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from gradlint.capture import einsum, writes

if TYPE_CHECKING:
    from gradlint.capture.aten import Converter

aten = torch.ops.aten


def op_name(target: Any) -> str:
    """The short name of an fx call target (``linear`` for ``aten.linear.default``)."""
    if isinstance(target, torch._ops.OpOverload):
        name = target._overloadpacket.__name__
    elif isinstance(target, torch._ops.OpOverloadPacket):
        name = target.__name__
    else:
        name = getattr(target, "__name__", str(target))
    # In-place and out-of-place variants share their statistics.
    if name.endswith("_") and not name.startswith("_") and name not in {"fill_diagonal_"}:
        name = name[:-1]
    return name



def _shape(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return tuple(int(d) for d in val.shape)
    if isinstance(val, (tuple, list)):
        return tuple(_shape(v) for v in val)
    return None


def _first_tensor(b: dict) -> Any:
    for v in b.values():
        if isinstance(v, fx.Node):
            return v
    return None


def _ints(x: Any) -> list[int]:
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return [int(v) for v in x]


NORMALIZERS: dict[str, Callable[[Converter, fx.Node, dict], None]] = {}


def normalizer(*names: str):
    def deco(fn):
        for n in names:
            assert n not in NORMALIZERS, n
            NORMALIZERS[n] = fn
        return fn
    return deco


def _weighted(c: Converter, fxn, kind: str, x: Any, weight: Any, bias: Any, attrs: dict) -> None:
    """A Linear or convolution. Its weight and bias are parameters, or tensors computed in
    forward (weight_norm, spectral norm, a scaled parameter): those are operands (kind
    ``linear_w``/``conv_w``) whose gradient flows back through the ops that made them."""
    w, bp = c.param_of(weight), c.param_of(bias)
    if w is not None and (bp is not None or not isinstance(bias, fx.Node)):
        c.add(fxn, kind, [x], {"weight": w} | ({"bias": bp} if bp else {}), attrs)
        return
    computed_bias = isinstance(bias, fx.Node) and bp is None
    c.add(fxn, kind + "_w", [x, weight] + ([bias] if computed_bias else []), {"bias": bp} if bp else {},
          attrs | {"bias_operand": computed_bias})


@normalizer("linear")
def _linear(c: Converter, fxn, b):
    _weighted(c, fxn, "linear", b["input"], b["weight"], b.get("bias"), {"layout": "out_in"})


@normalizer("addmm")
def _addmm(c: Converter, fxn, b):
    # HF's Conv1D: addmm(bias, x, W) with W stored as (in, out).
    mat2 = b["mat2"]
    if c.param_of(mat2) is None and c.param_of(b["self"]) is None:
        c.add(fxn, "matmul", [b["mat1"], mat2], attrs={})  # a product of two activations (plus a term)
        return
    _weighted(c, fxn, "linear", b["mat1"], mat2, b["self"], {"layout": "in_out"})


@normalizer("mv", "dot", "vdot", "inner")
def _vector_product(c: Converter, fxn, b):
    """A matrix times a vector, or a dot product (spectral norm's u·Wv)."""
    x, y = b.get("self", b.get("input")), b.get("vec", b.get("tensor", b.get("other")))
    c.add(fxn, "matmul", [x, y], attrs={"vector": "mv" if op_name(fxn.target) == "mv" else "dot"})


@normalizer("mm", "matmul", "bmm")
def _mm(c: Converter, fxn, b):
    x, y = b.get("self", b.get("input")), b.get("mat2", b.get("other"))
    w = c.param_of(y)
    if w is not None:
        c.add(fxn, "linear", [x], {"weight": w}, {"layout": "in_out"})
        return
    c.add(fxn, "matmul", [x, y], attrs={})


@normalizer("baddbmm")
def _baddbmm(c: Converter, fxn, b):
    c.add(fxn, "matmul", [b["batch1"], b["batch2"]], attrs={"add": b.get("self"), "alpha": b.get("alpha", 1)})


@normalizer("einsum")
def _einsum(c: Converter, fxn, b):
    """A batched matrix product stays ``matmul``; any other einsum is spelled out as broadcast
    products and a sum (``capture.einsum``)."""
    ops = list(fxn.args[1])
    shapes = [_shape(o.meta.get("val")) if isinstance(o, fx.Node) else None for o in ops]
    p = einsum.plan(str(fxn.args[0]), shapes) if all(isinstance(s, tuple) for s in shapes) else None
    if p is None or p.matmul:
        # A product's index letters, read once here for attention fusion, the wkv unit and the
        # matmul rule's counts.
        c.add(fxn, "matmul" if len(ops) == 2 else "unknown", ops,
              attrs={"equation": fxn.args[0], "target": "einsum", "terms": p.terms if p is not None else ()})
        return
    steps = [(f"{fxn.name}_in{i}_{k}", s, i) for i, seq in enumerate(p.operands) for k, s in enumerate(seq)]
    steps += [(f"{fxn.name}_{s.kind}{k}", s, None) for k, s in enumerate(p.tail)]
    cur = [c.ref(o) for o in ops]
    for k, (name, s, i) in enumerate(steps):
        name = fxn.name if k == len(steps) - 1 else name
        if s.kind == "permute":
            c.add(fxn, "identity", [cur[i]], attrs={"op": "permute", "args": {"dims": s.arg}}, name=name, shape=s.shape)
        elif s.kind == "unsqueeze":
            c.add(fxn, "identity", [cur[i]], attrs={"op": "unsqueeze", "args": {"dim": s.arg}}, name=name,
                  shape=s.shape)
        elif s.kind == "mul":
            c.add(fxn, "mul", [cur[0], cur[s.arg]], attrs={"op": "mul", "alpha": 1}, name=name, shape=s.shape)
            i = 0
        else:
            c.add(fxn, "reduce", [cur[0]], attrs={"op": "sum", "dims": s.arg, "keepdim": False, "correction": None},
                  name=name, shape=s.shape)
            i = 0
        cur[i] = name
    if not steps:  # einsum("ij->ij", x): a copy
        c.add(fxn, "identity", ops[:1], attrs={"op": "clone", "args": {}})


@normalizer("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "_convolution")
def _conv(c: Converter, fxn, b):
    name = op_name(fxn.target)
    transposed = bool(b.get("transposed", False)) or name.startswith("conv_transpose")
    x = b["input"]
    wshape = _shape(b["weight"].meta.get("val"))
    attrs = {"stride": _ints(b.get("stride")), "padding": b.get("padding"), "dilation": _ints(b.get("dilation")),
             "groups": int(b.get("groups") or 1), "transposed": transposed, "weight_shape": wshape,
             "output_padding": _ints(b.get("output_padding"))}
    _weighted(c, fxn, "conv", x, b["weight"], b.get("bias"), attrs)


@normalizer("_weight_norm")
def _weight_norm(c: Converter, fxn, b):
    c.add(fxn, "weight_norm", [b["v"], b["g"]], attrs={"dim": int(b.get("dim") or 0)})


@normalizer("embedding")
def _embedding(c: Converter, fxn, b):
    """A table lookup. A table computed in forward (spectral norm's weight_orig / sigma) is a
    second operand whose gradient flows back through the ops that made it."""
    w = c.param_of(b["weight"])
    pad = b.get("padding_idx", -1)
    computed = w is None and isinstance(b["weight"], fx.Node)
    c.add(fxn, "embedding", [b["indices"]] + ([b["weight"]] if computed else []), {"weight": w} if w else {},
          {"padding_idx": None if pad is None or pad < 0 else int(pad)})


@normalizer("layer_norm", "native_layer_norm")
def _layer_norm(c: Converter, fxn, b):
    params = {k: p for k in ("weight", "bias") if (p := c.param_of(b.get(k)))}
    c.add(fxn, "layer_norm", [b["input"]], params,
          {"normalized_shape": _ints(b.get("normalized_shape")), "eps": float(b.get("eps") or 1e-5)})


@normalizer("rms_norm")
def _rms_norm(c: Converter, fxn, b):
    params = {"weight": p} if (p := c.param_of(b.get("weight"))) else {}
    eps = b.get("eps")
    c.add(fxn, "rms_norm", [b["input"]], params,
          {"normalized_shape": _ints(b.get("normalized_shape")), "eps": None if eps is None else float(eps)})


@normalizer("group_norm")
def _group_norm(c: Converter, fxn, b):
    params = {k: p for k in ("weight", "bias") if (p := c.param_of(b.get(k)))}
    c.add(fxn, "group_norm", [b["input"]], params, {"groups": int(b["num_groups"]), "eps": float(b.get("eps") or 1e-5)})


@normalizer("instance_norm")
def _instance_norm(c: Converter, fxn, b):
    params = {k: p for k in ("weight", "bias") if (p := c.param_of(b.get(k)))}
    shape = _shape(b["input"].meta.get("val"))
    c.add(fxn, "group_norm", [b["input"]], params,
          {"groups": shape[1] if shape else 1, "eps": float(b.get("eps") or 1e-5)})


@normalizer("batch_norm", "_native_batch_norm_legit_functional", "_native_batch_norm_legit",
            "native_batch_norm", "_batch_norm_with_update", "cudnn_batch_norm")
def _batch_norm(c: Converter, fxn, b):
    params = {k: p for k in ("weight", "bias") if (p := c.param_of(b.get(k)))}
    training = b.get("training", b.get("train", True))
    c.add(fxn, "batch_norm", [b["input"]], params, {"training": bool(training), "eps": float(b.get("eps") or 1e-5)})


@normalizer("dropout", "native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
def _dropout(c: Converter, fxn, b):
    train = b.get("train", True)
    c.add(fxn, "dropout", [b["input"]],
          attrs={"p": float(b.get("p") or 0.0), "train": bool(True if train is None else train)})


def _binary(kind):
    def fn(c: Converter, fxn, b):
        a, o = b.get("self", b.get("input")), b.get("other")
        alpha = b.get("alpha", 1)
        if kind == "sub":
            alpha = -(alpha if alpha is not None else 1)
        if kind == "rsub":
            # rsub(self, other, alpha) = other - alpha * self: the scalar (or tensor) comes first.
            a, o, alpha = o, a, -(alpha if alpha is not None else 1)
        tensors = [t for t in (a, o) if isinstance(t, fx.Node)]
        attrs = {"op": kind, "alpha": 1 if alpha is None else alpha}
        if not isinstance(a, fx.Node):
            attrs["scalar"], attrs["scalar_first"] = a, True  # c + alpha * x
        elif not isinstance(o, fx.Node):
            attrs["scalar"] = o  # x + alpha * c
        # Division is the "mul" rule's (op "div"): a scale by 1/c, which fusion and the rules
        # read as one; a kind of its own had no transfer rule and passed x / c through unscaled.
        c.add(fxn, {"add": "add", "sub": "add", "rsub": "add", "div": "mul"}.get(kind, kind), tensors, attrs=attrs)
    return fn


normalizer("add")(_binary("add"))
normalizer("sub")(_binary("sub"))
normalizer("rsub")(_binary("rsub"))
normalizer("mul")(_binary("mul"))
normalizer("div")(_binary("div"))


@normalizer("addcmul", "addcdiv")
def _addc(c, fxn, b):
    """addcmul(x, t1, t2, value) = x + value·t1·t2 (addcdiv: t1/t2): a product node, then a sum."""
    t1, t2 = b.get("tensor1"), b.get("tensor2")
    op = "div" if op_name(fxn.target) == "addcdiv" else "mul"
    prod = f"{fxn.name}_{op}"
    c.add(fxn, "mul", [t for t in (t1, t2) if isinstance(t, fx.Node)], attrs={"op": op}, name=prod)
    value = b.get("value", 1)
    c.add(fxn, "add", [b["self"], prod], attrs={"op": "add", "alpha": 1 if value is None else value})


@normalizer("glu")
def _glu(c, fxn, b):
    """F.glu(x, dim) = a * sigmoid(b), a and b the two halves of x along dim: two selections (two
    variables, as x.chunk(2) gives), a sigmoid and a product, each with the output's shape."""
    x, dim = b.get("self", b.get("input")), int(b.get("dim", -1))
    halves = [f"{fxn.name}_half{i}" for i in (0, 1)]
    for i, half in enumerate(halves):
        c.add(fxn, "select", [x], attrs={"op": "narrow", "where": f"glu[dim={dim}, half={i}]"}, name=half)
    gate = f"{fxn.name}_gate"
    c.add(fxn, "act", [halves[1]], attrs={"fn": "sigmoid"}, name=gate)
    c.add(fxn, "mul", [halves[0], gate], attrs={"op": "mul"})


@normalizer("lerp")
def _lerp(c, fxn, b):
    """lerp(x, end, w) = (1 - w)·x + w·end for a number w; a tensor w has no rule."""
    x, end, w = b.get("self"), b.get("end"), b.get("weight")
    if isinstance(w, fx.Node) or not isinstance(x, fx.Node) or not isinstance(end, fx.Node):
        tensors = [t for t in (x, end, w) if isinstance(t, fx.Node)]
        c.add(fxn, "unknown", tensors, attrs={"target": "lerp"})
        return
    kept = f"{fxn.name}_kept"
    c.add(fxn, "mul", [x], attrs={"op": "mul", "scalar": 1.0 - float(w)}, name=kept)
    c.add(fxn, "add", [kept, end], attrs={"op": "add", "alpha": float(w)})


@normalizer("neg")
def _neg(c, fxn, b):
    c.add(fxn, "mul", [b["self"]], attrs={"op": "mul", "scalar": -1.0})


@normalizer("mean", "sum", "amax", "max", "min", "amin", "var", "std", "logsumexp", "prod", "cumsum")
def _reduce(c, fxn, b):
    x = b.get("self", b.get("input"))
    dims = b.get("dim")
    name = op_name(fxn.target)
    if name == "cumsum":  # a running sum along one dim (docs/design.md §4.3: P4); cumprod stays unknown
        c.add(fxn, "cumulative", [x], attrs={"op": name, "dim": int(dims)})
        return
    if name in ("max", "min") and isinstance(b.get("other"), fx.Node):
        c.add(fxn, "extremum", [x, b["other"]], attrs={"op": name})
        return
    correction = b.get("correction")
    if name in ("var", "std") and correction is None and b.get("unbiased") is False:
        correction = 0
    c.add(fxn, "reduce", [x], attrs={"op": name, "dims": None if dims is None else _ints(dims),
                                      "keepdim": bool(b.get("keepdim") or False),
                                      "correction": correction if isinstance(correction, (int, float)) else None})


@normalizer("linalg_vector_norm", "norm")
def _vector_norm(c, fxn, b):
    x, order, dims = b.get("self", b.get("input")), b.get("ord", b.get("p", 2)), b.get("dim")
    if order not in (2, 2.0, None):
        c.add(fxn, "unknown", [x], attrs={"target": op_name(fxn.target)})
        return
    c.add(fxn, "reduce", [x], attrs={"op": "norm", "dims": None if dims is None else _ints(dims),
                                      "keepdim": bool(b.get("keepdim") or False)})


@normalizer("maximum", "minimum", "fmax", "fmin")
def _extremum(c, fxn, b):
    """Element-wise max/min of two tensors (torch.maximum; RWKV's running maximum)."""
    x, other = b.get("self"), b.get("other")
    if not isinstance(other, fx.Node):
        c.add(fxn, "unknown", [x], attrs={"target": op_name(fxn.target)})
        return
    c.add(fxn, "extremum", [x, other], attrs={"op": "max" if op_name(fxn.target) in ("maximum", "fmax") else "min"})


@normalizer("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax")
def _softmax(c, fxn, b):
    c.add(fxn, "softmax", [b.get("self", b.get("input"))],
          attrs={"dim": int(b.get("dim")), "log": "log" in op_name(fxn.target)})


@normalizer("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")
def _sdpa(c, fxn, b):
    mask = b.get("attn_mask", b.get("attn_bias"))
    c.add(fxn, "attention", [b["query"], b["key"], b["value"], mask if isinstance(mask, fx.Node) else None],
          attrs={"scale": b.get("scale"), "causal": bool(b.get("is_causal") or False),
                 "dropout": float(b.get("dropout_p") or 0.0), "gqa": bool(b.get("enable_gqa") or False)})


@normalizer("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
            "max_pool1d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")
def _maxpool(c, fxn, b):
    c.add(fxn, "max_pool", [b["self"]], attrs={"kernel_size": _ints(b.get("kernel_size") or b.get("output_size")),
                                               "stride": _ints(b.get("stride")),
                                               "adaptive": "adaptive" in op_name(fxn.target)})


@normalizer("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
            "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d")
def _avgpool(c, fxn, b):
    c.add(fxn, "avg_pool", [b["self"]], attrs={"kernel_size": _ints(b.get("kernel_size")),
                                               "stride": _ints(b.get("stride")),
                                               "adaptive": "adaptive" in op_name(fxn.target)})


@normalizer("cat", "concat", "concatenate", "stack", "hstack", "vstack")
def _cat(c, fxn, b):
    tensors = list(b.get("tensors") or [])
    c.add(fxn, "cat", tensors, attrs={"dim": int(b.get("dim") or 0), "stack": op_name(fxn.target) == "stack"})


# Losses: reduction 0 none, 1 mean, 2 sum (aten's enum); the gradient's moments follow from the
# operands' statistics (engine/transfers/losses.py, docs/design.md §4.9).
LOSSES = {"cross_entropy_loss": "cross_entropy", "nll_loss": "nll", "nll_loss_nd": "nll", "nll_loss2d": "nll",
          "mse_loss": "mse", "l1_loss": "l1", "smooth_l1_loss": "smooth_l1", "huber_loss": "huber",
          "binary_cross_entropy": "bce", "binary_cross_entropy_with_logits": "bce_logits"}


@normalizer(*LOSSES)
def _loss(c, fxn, b):
    x, t = b.get("self", b.get("input")), b.get("target")
    extra = {k: b.get(k) for k in ("beta", "delta", "label_smoothing", "ignore_index")
             if isinstance(b.get(k), (int, float))}
    weighted = any(isinstance(b.get(k), fx.Node) for k in ("weight", "pos_weight"))
    c.add(fxn, "loss", [x, t], attrs={"op": LOSSES[op_name(fxn.target)], "reduction": int(b.get("reduction", 1)),
                                      "weighted": weighted, **extra})


@normalizer("broadcast_tensors")
def _broadcast_tensors(c, fxn, b):
    c.add(fxn, "broadcast", list(b.get("tensors") or []))


@normalizer("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split", "unsafe_chunk")
def _split(c, fxn, b):
    c.add(fxn, "split", [b["self"]], attrs={"dim": int(b.get("dim") or 0)})


@normalizer("select", "slice", "index_select", "narrow", "index", "diagonal", "gather", "take", "masked_select")
def _select(c, fxn, b):
    op = op_name(fxn.target)
    c.add(fxn, "select", [b.get("self", b.get("input"))],
          attrs={"op": op, "where": writes.selection_key(c.ref, op, b)})


@normalizer("expand", "expand_as", "repeat", "repeat_interleave", "broadcast_to", "tile")
def _expand(c, fxn, b):
    c.add(fxn, "expand", [b.get("self", b.get("input"))], attrs={"op": op_name(fxn.target)})


@normalizer("zero", "fill")
def _fill(c, fxn, b):
    value = b.get("value", 0.0)
    c.add(fxn, "const", attrs={"op": op_name(fxn.target), "value": value if isinstance(value, (int, float)) else None})


@normalizer("copy")
def _copy(c, fxn, b):
    # copy(self, src) (functionalized copy_): src's values in self's shape.
    c.add(fxn, "expand", [b["src"]], attrs={"op": "copy"})


@normalizer("index_put", "index_copy", "index_add", "scatter", "scatter_add", "slice_scatter", "select_scatter",
            "masked_scatter")
def _scatter(c, fxn, b):
    """Out-of-place writes: the base with a region replaced by (or added to) the values."""
    name = op_name(fxn.target)
    base = b["self"]
    values = b.get("values", b.get("src", b.get("source")))
    if not isinstance(values, fx.Node):
        _datamove(c, fxn, b)  # a scalar written: masking
        return
    index = b.get("index")
    whole, n_values = writes.numel(base), writes.numel(values)
    used = 1.0
    if name in ("scatter", "scatter_add"):
        region = writes.numel(index)
        used = writes.share(region, n_values) or 1.0  # only index-shaped part of src is read
    elif name == "index_put":
        region = writes.index_region(base, list(b.get("indices") or []))
    elif name == "masked_scatter":
        region = None  # how many elements the mask selects is data
    else:
        region = n_values
    accumulate = name in ("scatter_add", "index_add") or bool(b.get("accumulate"))
    c.add(fxn, "write", [base, values], attrs={"op": name, "region": writes.share(region, whole),
                                               "accumulate": accumulate, "used": used,
                                               "copies": (region / n_values) if region and n_values else 1.0})


@normalizer("masked_fill", "where", "triu", "tril", "index_fill", "pad", "constant_pad_nd", "reflection_pad1d",
            "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d",
            "_pad_circular", "roll", "flip", "pixel_shuffle", "pixel_unshuffle", "unfold", "im2col", "col2im",
            "upsample_nearest2d", "upsample_bilinear2d", "upsample_nearest1d", "_upsample_nearest_exact2d",
            "upsample_linear1d", "upsample_bicubic2d", "interpolate")
def _datamove(c, fxn, b):
    # Ops that fill, mask or rearrange: the main tensor's statistics carry over, and other
    # tensor operands (masks, fill values) take no part in the signal.
    name = op_name(fxn.target)
    main = b.get("self", b.get("input"))
    if name == "where":
        main = b.get("self") if isinstance(b.get("self"), fx.Node) else b.get("other")
    tensors = [main] + [a for a in torch.utils._pytree.tree_leaves((fxn.args, fxn.kwargs))
                        if isinstance(a, fx.Node) and a is not main]
    attrs = {"op": name}
    if name.startswith("upsample"):  # the interpolation's coordinate map (engine.transfers.resample)
        attrs |= {"align_corners": bool(b.get("align_corners")), "scales": tuple(b.get("scale_factors") or ())}
    if "pad" in name:  # which input element each padded position copies (engine.transfers.resample)
        mode = next((m for m in ("reflect", "replicate", "circular") if m[:6] in name), b.get("mode") or "constant")
        attrs |= {"mode": str(mode), "pad": _ints(b.get("pad", b.get("padding")))}
    c.add(fxn, "datamove", tensors, attrs=attrs)


@normalizer("topk", "sort")
def _topk(c, fxn, b):
    # (values, indices); sort is a top-k of every entry. The indices carry no gradient.
    name = op_name(fxn.target)
    dim = b.get("dim")
    try:
        k = int(b["k"]) if name == "topk" else None
    except (TypeError, ValueError):  # a data-dependent k
        k = None
    largest = bool(b.get("largest", True)) if name == "topk" else not bool(b.get("descending", False))
    c.add(fxn, "topk", [b["self"]], attrs={"op": name, "k": k, "dim": -1 if dim is None else int(dim),
                                           "largest": largest})


_CASTS = {"_to_copy", "to", "alias", "contiguous", "clone", "type_as"}


def _grouped_weight(c: Converter, a: Any) -> tuple[str | None, bool]:
    """The parameter a grouped matmul's 3-D weight operand is, and whether its last two
    dims were swapped on the way (``weight.transpose(-2, -1)``: stored (E, out, in))."""
    swapped = False
    for _ in range(8):
        p = c.param_of(a)
        if p is not None or not isinstance(a, fx.Node) or a.op != "call_function":
            return p, swapped
        name = op_name(a.target)
        if name in ("transpose", "swapaxes"):
            nd = len(_shape(a.meta.get("val")) or ())
            dims = {int(d) % nd for d in a.args[1:3]} if nd and len(a.args) >= 3 else set()
            if dims != {nd - 2, nd - 1}:
                return None, swapped
            swapped = not swapped
        elif name == "permute":
            dims = [int(d) for d in a.args[1]]
            nd = len(dims)
            if dims[:-2] != list(range(nd - 2)) or [d % nd for d in dims[-2:]] != [nd - 1, nd - 2]:
                return None, swapped
            swapped = not swapped
        elif name not in _CASTS:
            return None, swapped
        a = a.args[0]
    return None, swapped


@normalizer("grouped_mm_fallback", "_grouped_mm", "grouped_mm")
def _grouped_mm(c, fxn, b):
    """Grouped matmul of mixture-of-experts layers: transformers' ``grouped_mm_fallback``
    custom op and ATen's ``_grouped_mm``. Rows of a 2-D input, sorted by expert, are cut into
    groups by ``offs``; group e is multiplied by the expert weight W[e] (E, in, out)."""
    x = b.get("input", b.get("self", b.get("mat_a")))
    w = b.get("weight", b.get("mat2", b.get("mat_b")))
    offs = b.get("offs")
    xs, ws = _shape(getattr(x, "meta", {}).get("val")), _shape(getattr(w, "meta", {}).get("val"))
    param, swapped = _grouped_weight(c, w)
    routed = isinstance(offs, fx.Node) and xs is not None and len(xs) == 2
    batched = offs is None and xs is not None and len(xs) == 3
    if param is None or ws is None or len(ws) != 3 or not (routed or batched):
        tensors = [a for a in (x, w, offs) if isinstance(a, fx.Node)]
        c.add(fxn, "unknown", tensors, attrs={"target": op_name(fxn.target)})
        return
    bias = c.param_of(b.get("bias"))
    params = {"weight": param} | ({"bias": bias} if bias else {})
    c.add(fxn, "moe_linear", [x], params, {"layout": "out_in" if swapped else "in_out", "routed": routed,
                                                "offs": c.ref(offs)})


def batch_sizes_of(a: Any) -> tuple[int, ...] | None:
    """A packed sequence's ``batch_sizes``, as capture keeps them: real (``capture.reads``)."""
    val = getattr(a, "meta", {}).get("val")
    if isinstance(val, torch.Tensor) and not isinstance(val, torch._subclasses.FakeTensor) and not val.is_meta:
        return tuple(int(v) for v in val.tolist())
    return None


@normalizer("_pack_padded_sequence", "_pad_packed_sequence")
def _packing(c, fxn, b):
    """A padded batch's valid steps packed time-major (``data`` rows), or padded back; the
    lengths come from the packed ``batch_sizes`` (engine.transfers.recurrent)."""
    name = op_name(fxn.target)
    pack = name == "_pack_padded_sequence"
    x = b["input"] if pack else b["data"]
    attrs = {"op": name, "batch_first": bool(b.get("batch_first"))}
    if not pack:
        attrs["batch_sizes"] = batch_sizes_of(b.get("batch_sizes"))
    c.add(fxn, "packing", [x], attrs=attrs)


@normalizer("lstm", "gru", "rnn_tanh", "rnn_relu")
def _rnn(c, fxn, b):
    name = op_name(fxn.target)
    params = [c.param_of(p) for p in (b.get("params") or [])]
    hx = b.get("hx")
    hx_nodes = list(hx) if isinstance(hx, (list, tuple)) else [hx]
    packed = "data" in b  # lstm.data, gru.data: a PackedSequence's data and batch_sizes
    c.add(fxn, "rnn", [b["data"] if packed else b["input"], *hx_nodes], attrs={
        "mode": {"rnn_tanh": "rnn_tanh", "rnn_relu": "rnn_relu"}.get(name, name),
        "params": params, "has_biases": bool(b.get("has_biases", True)), "num_layers": int(b.get("num_layers") or 1),
        "dropout": float(b.get("dropout") or 0.0), "bidirectional": bool(b.get("bidirectional") or False),
        "batch_first": bool(b.get("batch_first") or False), "n_hx": len(hx_nodes),
        **({"batch_sizes": batch_sizes_of(b.get("batch_sizes"))} if packed else {})})
