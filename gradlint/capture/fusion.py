"""Recognise units written out in primitives and hand them to one transfer rule each.

ATen graphs spell out what a layer does: eager attention is matmul, scale, mask, softmax,
matmul; a hand-written RMSNorm is pow, mean, rsqrt, mul; rotary embeddings are mul by
cos/sin tables, rotate-half and add. Op-by-op mean field gets these wrong (the parts are
not independent), so they are rewritten into single ``attention``, ``rms_norm`` /
``layer_norm`` and ``identity`` nodes before the engine runs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch.nn as nn

from gradlint.capture.function_scans import fuse_function_scans
from gradlint.capture.graph import Graph, Node
from gradlint.capture.loops import fuse_loops
from gradlint.capture.params import ParamStats
from gradlint.capture.wkv import fuse_wkv

_PASS = {"identity", "datamove"}
_SCALE_OPS = {"mul"}


def _is_scalar_mul(n: Node) -> bool:
    return n.kind == "mul" and len(n.inputs) == 1 and isinstance(n.attrs.get("scalar"), (int, float))


def _scalar_of(n: Node) -> float:
    c = float(n.attrs["scalar"])
    if n.attrs.get("op") == "div":
        return 1.0 / c if c else 1.0
    return c


def _walk_back(g: Graph, name: str, through: Callable[[Node], bool]) -> tuple[str, list[Node]]:
    path: list[Node] = []
    seen = 0
    while name is not None and seen < 50:
        n = g.by_name.get(name)
        if n is None or not through(n) or not n.inputs:
            break
        path.append(n)
        name = n.inputs[0]
        seen += 1
    return name, path


def _is_transpose_last2(n: Node) -> bool:
    if n.kind != "identity" or n.attrs.get("op") not in ("transpose", "permute", "t"):
        return False
    args = n.attrs.get("args", {})
    if n.attrs.get("op") == "transpose":
        dims = {int(args.get("dim0", 0)), int(args.get("dim1", 1))}
        shape = n.shape if isinstance(n.shape, tuple) else ()
        nd = len(shape)
        return nd >= 2 and {d % nd for d in dims} == {nd - 2, nd - 1}
    if n.attrs.get("op") == "permute":
        dims = list(args.get("dims") or [])
        nd = len(dims)
        return nd >= 2 and dims[:-2] == list(range(nd - 2)) and dims[-2:] == [nd - 1, nd - 2]
    return True


def _projection_source(g: Graph, name: str) -> tuple[str | None, str | None]:
    """The Linear a Q/K/V tensor was projected by, and that Linear's input tensor."""
    def through(n: Node) -> bool:
        return n.kind in ("identity", "select", "getitem", "split", "datamove", "dropout") or _is_scalar_mul(n) \
            or n.kind == "rotary"
    src, _ = _walk_back(g, name, through)
    n = g.by_name.get(src)
    if n is None or n.kind != "linear":
        return None, None
    inp, _ = _walk_back(g, n.inputs[0], lambda m: m.kind in ("identity",))
    return n.name, inp


def _ancestors(g: Graph, name: str | None, limit: int):
    """Nodes reachable backwards from ``name``, depth first, at most ``limit`` of them."""
    stack, seen = [name], set()
    while stack and len(seen) < limit:
        cur = stack.pop()
        if cur is None or cur in seen:
            continue
        seen.add(cur)
        n = g.by_name.get(cur)
        if n is None:
            continue
        yield n
        stack.extend(i for i in n.inputs if i is not None)


def _looks_causal(g: Graph, name: str | None, depth: int = 40) -> bool:
    """A mask built with triu/tril or by comparing position indices is a causal mask."""
    for n in _ancestors(g, name, depth):
        if n.kind == "datamove" and n.attrs.get("op") in ("triu", "tril"):
            return True
        # Causal masks compare query and key indices (two tensors); padding masks compare a
        # tensor with a scalar.
        if n.kind == "block" and n.attrs.get("reason") == "a comparison" and n.attrs.get("n_tensors", 1) >= 2:
            return True
        if "causal" in (n.module_type or "").lower() or "causal" in str(n.attrs.get("op", "")):
            return True
    return False


def _is_const_mask_mul(g: Graph, n: Node, prev: str) -> bool:
    """``probabilities * mask`` with a mask no input or parameter reaches: it zeroes whole
    rows or keys but leaves the probabilities the attention transfer models."""
    if n.kind != "mul" or len(n.inputs) != 2 or prev not in n.inputs:
        return False
    other = n.inputs[1] if n.inputs[0] == prev else n.inputs[0]
    return other is not None and _all_const(g, other)


def _attention_product(n: Node, scores: bool) -> bool:
    """An einsum is attention's score product (queries by keys over the features: the output's
    last letter, the key, comes from b alone) or its value product (the probabilities' last
    letter, the key, is contracted against b). A product over another letter (talking heads
    mixing the heads of the scores, ``bhij,hg->bgij``) is neither. Other matmuls qualify."""
    if n.attrs.get("target") != "einsum":
        return True
    if len(n.attrs.get("terms", ())) != 3:
        return False
    a, b, out = n.attrs["terms"]
    if scores:
        key, query = out[-1], out[-2]
        return key in b and key not in a and query in a and query not in b and bool(set(a) & set(b) - set(out))
    return a[-1] in b and a[-1] not in out and a[-2] in out


def _fan_in(stats: dict[str, ParamStats], node: Node) -> int:
    w = stats.get(node.params.get("weight", ""))
    if w is None:
        return 0
    return w.shape[0] if node.attrs.get("layout") == "in_out" else w.shape[-1]


def fuse_attention(g: Graph, stats: dict[str, ParamStats]) -> int:
    """Rewrite matmul -> [scale, mask] -> softmax -> [dropout] -> matmul into ``attention``.

    Also fills ``e_in`` and ``causal`` on attention nodes that came from SDPA directly.
    """
    count = 0
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    for sm in [n for n in g.nodes if n.kind == "softmax" and not n.attrs.get("log")]:
        scale = 1.0
        mask_names: list[str] = []
        fill_masks: list[str] = []
        cur = sm.inputs[0]
        m1 = None
        for _ in range(20):
            n = g.by_name.get(cur)
            if n is None:
                break
            if n.kind == "matmul":
                m1 = n if _attention_product(n, scores=True) else None
                break
            if _is_scalar_mul(n):
                scale *= _scalar_of(n)
            elif n.kind == "add" and len(n.inputs) == 2:
                a, b = n.inputs
                # Follow the branch that leads to the score matmul; the other is a mask or bias.
                main = a if _reaches(g, a, "matmul") else b
                other = b if main == a else a
                mask_names.append(other)
                cur = main
                continue
            elif n.kind not in _PASS:
                break
            elif n.attrs.get("op") == "masked_fill" and len(n.inputs) > 1 and n.inputs[1] is not None:
                # A boolean mask says which keys are seen (causal or not); it adds no score bias.
                fill_masks.append(n.inputs[1])
            cur = n.inputs[0] if n.inputs else None
        if m1 is None or len(m1.inputs) < 2:
            continue
        users = g.users.get(sm.name, [])
        m2 = None
        p_drop = 0.0
        for u in users:
            cur_u, prev = u, sm.name
            for _ in range(6):
                un = g.by_name.get(cur_u)
                if un is None:
                    break
                if un.kind == "matmul" and un.inputs and un.inputs[0] == prev:  # probabilities @ V
                    m2 = un if _attention_product(un, scores=False) else None
                    break
                if un.kind == "dropout":
                    p_drop = float(un.attrs.get("p", 0.0)) if un.attrs.get("train", True) else 0.0
                elif _is_const_mask_mul(g, un, prev):
                    pass  # probabilities times a fixed mask (PixelSNAIL's start_mask zeroing row 0)
                elif un.kind not in _PASS:
                    break
                nxt = g.users.get(un.name, [])
                if len(nxt) != 1:
                    break
                cur_u, prev = nxt[0], un.name
            if m2 is not None:
                break
        if m2 is None:
            continue
        q_name, q_path = _walk_back(g, m1.inputs[0], lambda n: _is_scalar_mul(n))
        for n in q_path:
            scale *= _scalar_of(n)
        k_name = m1.inputs[1]
        k_transposed = not m1.attrs.get("transpose_b", False)
        kn = g.by_name.get(k_name)
        k_path_scale = 1.0
        k_src, k_path = _walk_back(g, k_name, lambda n: _is_scalar_mul(n))
        for n in k_path:
            k_path_scale *= _scalar_of(n)
        kn = g.by_name.get(k_src)
        if k_transposed and kn is not None and _is_transpose_last2(kn):
            k_name, k_transposed = kn.inputs[0], False
        else:
            k_name = k_src
        scale *= k_path_scale
        v_name = m2.inputs[1]
        attrs = {"scale": scale, "causal": any(_looks_causal(g, mn) for mn in mask_names + fill_masks),
                 "dropout": p_drop, "k_transposed": k_transposed, "masks": mask_names}
        new = replace(m2, kind="attention", op="attention (fused)", inputs=(q_name, k_name, v_name, None),
                      attrs=attrs, fused=(m1.name, sm.name, m2.name), params={})
        g.nodes[pos[m2.name]] = new
        g.by_name[new.name] = new
        count += 1
    g.reindex()
    for i, n in enumerate(g.nodes):
        if n.kind != "attention":
            continue
        attrs = dict(n.attrs)
        lk, src_k = _projection_source(g, n.inputs[1])
        lv, src_v = _projection_source(g, n.inputs[2])
        e_in = 0
        if lk is not None and lv is not None and (lk == lv or (src_k is not None and src_k == src_v)):
            e_in = _fan_in(stats, g.by_name[lk])
        attrs["e_in"] = e_in
        if n.inputs[3] is not None and not attrs.get("causal"):
            attrs["causal"] = _looks_causal(g, n.inputs[3])
        biases = [m for m in [*attrs.get("masks", []), n.inputs[3]]
                  if m is not None and m in g.by_name and not _all_const(g, m)]
        g.nodes[i] = replace(n, attrs=attrs, inputs=tuple(n.inputs[:4]) + tuple(dict.fromkeys(biases)))
    g.reindex()
    return count


def _all_const(g: Graph, name: str, depth: int = 60) -> bool:
    """True when no float input and no parameter reaches ``name`` (masks, position tables)."""
    for n in _ancestors(g, name, depth):
        if n.kind in ("input", "param") or n.params:
            return n.kind == "input" and n.dtype != "float"
    return True


def _reaches(g: Graph, name: str, kind: str, depth: int = 12) -> bool:
    cur = name
    for _ in range(depth):
        n = g.by_name.get(cur)
        if n is None:
            return False
        if n.kind == kind:
            return True
        if not n.inputs:
            return False
        cur = n.inputs[0]
    return False


def fuse_rotary(g: Graph) -> int:
    """x*cos + rotate_half(x)*sin keeps every statistic of x: rewrite it to ``identity``."""
    count = 0
    for i, n in enumerate(g.nodes):
        if n.kind != "add" or len(n.inputs) != 2:
            continue
        sides = []
        for name in n.inputs:
            m = g.by_name.get(name)
            if m is None or m.kind != "mul" or len(m.inputs) != 2:
                break
            a, b = (g.by_name.get(x) for x in m.inputs)
            if a is None or b is None:
                break
            if _all_const(g, b.name) and not _all_const(g, a.name):
                sides.append(a.name)
            elif _all_const(g, a.name) and not _all_const(g, b.name):
                sides.append(b.name)
            else:
                break
        if len(sides) != 2:
            continue
        roots = {_rotate_root(g, s) for s in sides}
        if len(roots) == 1 and None not in roots:
            # The operand that is not the rotated copy is x itself, in the layout the sum has.
            x = next((sd for sd in sides if g.by_name[sd].kind != "cat"), roots.pop())
            g.nodes[i] = replace(n, kind="identity", op="rotary embedding (fused)", inputs=(x,),
                                 attrs={"op": "rotary"})
            count += 1
    g.reindex()
    return count


def _rotate_root(g: Graph, name: str) -> str | None:
    """The tensor a rotate-half (slices, negation, concat) was taken of."""
    n = g.by_name.get(name)
    hops = 0
    while n is not None and hops < 12:
        if n.kind == "cat":
            roots = {_rotate_root(g, x) for x in n.inputs if x is not None}
            return roots.pop() if len(roots) == 1 else None
        if n.kind in ("select", "identity", "datamove") or _is_scalar_mul(n):
            if n.kind == "select" or _is_scalar_mul(n):
                n = g.by_name.get(n.inputs[0])
                hops += 1
                continue
            n = g.by_name.get(n.inputs[0])
            hops += 1
            continue
        return n.name
    return n.name if n is not None else None


class _Splice:
    """Replaces groups of nodes by one node each, keeping ``by_name`` and ``users`` exactly as a
    ``reindex`` after every replacement would leave them, while the node list is rebuilt once
    in ``finish``: rebuilding and reindexing per group made fusion quadratic in the depth."""

    def __init__(self, g: Graph):
        self.g = g
        self.pos = {n.name: i for i, n in enumerate(g.nodes)}
        self.replaced: dict[str, Node] = {}
        self.removed: set[str] = set()

    def replace(self, names: set[str], new: Node) -> None:
        g, out = self.g, new.name
        gone = names - {out}
        for name in names:
            for i in g.by_name[name].inputs:
                if i is not None and i not in gone and name in g.users.get(i, ()):
                    g.users[i].remove(name)
        for k in gone:
            del g.by_name[k]
            g.users.pop(k, None)
        g.users[out] = [u for u in g.users[out] if u not in gone]
        for i in dict.fromkeys(x for x in new.inputs if x is not None):
            if out not in g.users[i]:
                # Users stay in graph order, as reindex lists them.
                bisect.insort(g.users[i], out, key=self.pos.__getitem__)
        g.by_name[out] = new
        self.replaced[out] = new
        self.removed |= gone

    def finish(self) -> None:
        if self.replaced:
            g = self.g
            g.nodes[:] = [self.replaced.get(n.name, n) for n in g.nodes if n.name not in self.removed]
            g.reindex()


_NORM_OPS = {"identity", "reduce", "elementwise", "add", "mul", "const", "param", "datamove"}


def fuse_norm_modules(g: Graph, model: nn.Module | None, stats: dict[str, ParamStats]) -> int:
    """A module whose ops are a hand-written normalization (pow/mean/rsqrt...) becomes one node."""
    groups: dict[str, list[Node]] = {}
    for n in g.nodes:
        if n.module:
            groups.setdefault(n.module, []).append(n)
    count = 0
    splice = _Splice(g)
    for path, members in groups.items():
        kinds = {m.kind for m in members}
        if not kinds <= _NORM_OPS or "reduce" not in kinds or len(members) > 40:
            continue
        targets = {str(m.attrs.get("target", "")) for m in members if m.kind == "elementwise"}
        if not any(("rsqrt" in t or "sqrt" in t) for t in targets) and not any(
                m.kind == "mul" and m.attrs.get("op") == "div" and len(m.inputs) == 2 for m in members):
            continue
        names = {m.name for m in members}
        ext_in = [i for m in members for i in m.inputs if i is not None and i not in names
                  and g.by_name.get(i) is not None and g.by_name[i].kind not in ("param", "const")]
        if len(set(ext_in)) != 1:
            continue
        x = ext_in[0]
        # Casts of the input (x.to(float32)) may be shared with the residual path: they stay.
        alias = set()
        for m in members:
            if m.kind == "identity" and m.inputs and (m.inputs[0] == x or m.inputs[0] in alias):
                alias.add(m.name)
        outs = [m for m in members if m.name not in alias and (
            any(u not in names for u in g.users.get(m.name, [])) or m.name in g.outputs)]
        if len(outs) != 1:
            continue
        names -= alias
        means = [m for m in members if m.kind == "reduce" and m.attrs.get("op") == "mean"]
        centred = any(m.kind == "add" and len(m.inputs) == 2 and m.attrs.get("op") == "sub" for m in members) \
            or len(means) >= 2
        xs = g.by_name[x].shape if isinstance(g.by_name[x].shape, tuple) else ()
        dims = means[0].attrs.get("dims") or [-1]
        d = math.prod(xs[k] for k in dims) if xs else 1
        params: dict[str, str] = {}
        # Parameter placeholders carry no module of their own: find them among the operands.
        operands = [g.by_name.get(i) for m in members for i in m.inputs if i is not None]
        for p in [*members, *operands]:
            if p is not None and p.kind == "param":
                pname = p.attrs["param"]
                role = "bias" if pname.endswith("bias") else "weight"
                params.setdefault(role, pname)
        eps = None
        for m in members:
            if m.kind == "add" and len(m.inputs) == 1 and isinstance(m.attrs.get("scalar"), (int, float)):
                eps = float(m.attrs["scalar"])
        out = outs[0]
        new = Node(name=out.name, kind="layer_norm" if centred else "rms_norm",
                   op=f"{members[0].module_type} (fused)", inputs=(x,), params=params,
                   attrs={"normalized_shape": [d], "eps": eps if eps is not None else (1e-5 if centred else 1e-6),
                          "dims": dims},
                   shape=out.shape, dtype=out.dtype, module=path, module_type=members[0].module_type,
                   call_site=members[0].call_site, fused=tuple(m.name for m in members))
        splice.replace(names, new)
        count += 1
    splice.finish()
    return count


def fuse_activation_modules(g: Graph, model: nn.Module | None) -> int:
    """A parameter-free module made only of element-wise maths (NewGELU, a custom Swish)
    becomes one ``act_module`` node whose Gaussian moments come from running the module
    itself on the quadrature grid."""
    if model is None:
        return 0
    groups: dict[str, list[Node]] = {}
    for n in g.nodes:
        if n.module:
            groups.setdefault(n.module, []).append(n)
    count = 0
    splice = _Splice(g)
    for path, members in groups.items():
        kinds = {m.kind for m in members}
        if not kinds <= {"elementwise", "add", "mul", "act", "identity"} or not kinds & {"elementwise", "act"}:
            continue
        if len(members) == 1:
            continue
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if any(True for _ in mod.parameters()):
            continue
        names = {m.name for m in members}
        ext_in = {i for m in members for i in m.inputs if i is not None and i not in names}
        outs = [m for m in members if any(u not in names for u in g.users.get(m.name, [])) or m.name in g.outputs]
        if len(ext_in) != 1 or len(outs) != 1:
            continue
        out = outs[0]
        new = Node(name=out.name, kind="act_module", op=f"{members[0].module_type} (fused)", inputs=(ext_in.pop(),),
                   attrs={"module": mod}, shape=out.shape, dtype=out.dtype, module=path,
                   module_type=members[0].module_type, call_site=members[0].call_site,
                   fused=tuple(m.name for m in members))
        splice.replace(names, new)
        count += 1
    splice.finish()
    return count


_CAST_OPS = {"_to_copy", "to", "type_as", "alias", "clone", "contiguous", "lift_fresh_copy"}


def _is_cast(n: Node) -> bool:
    return n.kind == "identity" and n.attrs.get("op") in _CAST_OPS


def _cast_chain(g: Graph, name: str) -> list[str]:
    """``name`` and the casts applied to it one after another (``x.float()``, ``.to(dtype)``)."""
    chain = [name]
    while True:
        users = [u for u in g.users.get(chain[-1], []) if _is_cast(g.by_name[u])]
        if len(users) != 1:
            return chain
        chain.append(users[0])


def _same_dim(a: Any, b: Any, ndim: int) -> bool:
    try:
        return ndim > 0 and int(a) % ndim == int(b) % ndim
    except (TypeError, ValueError):
        return False


def _renormalized(g: Graph, values: list[str], dim: int, ndim: int) -> str | None:
    """The node dividing top-k values by their own sum over ``dim`` (``w /= w.sum(-1, keepdim=True)``)."""
    for v in values:
        for u in g.users.get(v, []):
            d = g.by_name[u]
            if not (d.kind == "mul" and d.attrs.get("op") == "div" and len(d.inputs) == 2 and d.inputs[0] == v):
                continue
            s = g.by_name.get(d.inputs[1])
            if (s is not None and s.kind == "reduce" and s.attrs.get("op") == "sum" and s.inputs
                    and s.inputs[0] in values and s.attrs.get("keepdim")
                    and len(s.attrs.get("dims") or []) == 1 and _same_dim(s.attrs["dims"][0], dim, ndim)):
                return d.name
    return None


def fuse_router(g: Graph) -> int:
    """Rewrite mixture-of-experts routing into one ``router`` node fed by the router logits.

    Two spellings compute the same weights: the top k of softmax(logits), optionally divided
    by their sum (Mixtral, Qwen-MoE, OLMoE); and softmax over the top k logits, which is the
    renormalized form. Op by op, the top-k values would be order statistics of i.i.d. normals
    and the division an unknown scale; the fused rule takes the softmax, the selection and the
    renormalization together (``routing.router_moments``). The top-k indices stay as they are.
    """
    count = 0
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    for tk in [n for n in g.nodes if n.kind == "topk" and n.attrs.get("op") == "topk"
               and n.attrs.get("largest", True) and n.attrs.get("k")]:
        vals = [u for u in g.users.get(tk.name, []) if g.by_name[u].kind == "getitem"
                and g.by_name[u].attrs.get("index") == 0]
        if len(vals) != 1 or not isinstance(tk.shape, tuple) or not tk.shape or not isinstance(tk.shape[0], tuple):
            continue
        dim, ndim = int(tk.attrs.get("dim", -1)), len(tk.shape[0])
        chain = _cast_chain(g, vals[0])
        src, _ = _walk_back(g, tk.inputs[0], _is_cast)
        sm = g.by_name.get(src)
        out, logits, normalize, parts = None, None, False, [tk.name]
        if (sm is not None and sm.kind == "softmax" and not sm.attrs.get("log")
                and _same_dim(sm.attrs.get("dim"), dim, ndim)):
            logits = sm.inputs[0]
            out = _renormalized(g, chain, dim, ndim)
            normalize = out is not None
            parts = [sm.name, tk.name] + (chain + [g.by_name[out].inputs[1]] if normalize else [])
            out = out or vals[0]
        else:  # softmax over the selected logits
            for v in chain:
                for u in g.users.get(v, []):
                    un = g.by_name[u]
                    if un.kind == "softmax" and not un.attrs.get("log") and _same_dim(un.attrs.get("dim"), dim, ndim):
                        out, logits, normalize = un.name, tk.inputs[0], True
                        parts = [tk.name] + chain[:chain.index(v) + 1]
        ln = g.by_name.get(logits) if logits else None
        if out is None or ln is None or not isinstance(ln.shape, tuple) or len(ln.shape) != ndim:
            continue
        old = g.by_name[out]
        new = Node(name=old.name, kind="router", op="top-k routing (fused)", inputs=(logits,),
                   attrs={"experts": int(ln.shape[dim]), "k": int(tk.attrs["k"]), "normalize": normalize, "dim": dim},
                   shape=old.shape, dtype=old.dtype, module=tk.module, module_type=tk.module_type,
                   call_site=tk.call_site, fused=tuple(dict.fromkeys([*parts, old.name])))
        g.nodes[pos[old.name]] = new
        g.by_name[new.name] = new
        count += 1
    # Expert layers read their router's logits: how alike two tokens are routed (so whether
    # their rows meet the same expert weights) follows from how correlated the logits are.
    routers = {f: n for n in g.nodes if n.kind == "router" for f in n.fused}
    for i, n in enumerate(g.nodes):
        if n.kind != "moe_linear" or not n.attrs.get("offs") or len(n.inputs) != 1:
            continue
        tk = next((a for a in _ancestors(g, n.attrs["offs"], 40) if a.kind == "topk" and a.attrs.get("op") == "topk"),
                  None)
        r = routers.get(tk.name) if tk is not None else None
        if r is not None:
            g.nodes[i] = replace(n, inputs=(n.inputs[0], r.inputs[0]), attrs={**n.attrs, "top_k": r.attrs["k"]})
    g.reindex()
    return count


def fuse(g: Graph, model: nn.Module | None, stats: dict[str, ParamStats]) -> Graph:
    """Apply every recognition pass, in an order where each sees the previous one's units."""
    fuse_activation_modules(g, model)
    fuse_norm_modules(g, model, stats)
    fuse_rotary(g)
    fuse_attention(g, stats)
    fuse_router(g)
    fuse_wkv(g)
    fuse_function_scans(g)
    fuse_loops(g)
    return g
