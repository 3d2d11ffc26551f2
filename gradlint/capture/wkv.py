"""RWKV time mixing written out in primitives, recognised as one ``wkv`` unit (docs/design.md §4.12).

Two spellings:

* ``decay``: the loop of HF ``rwkv_linear_attention_cpu`` (RWKV-4), per step t
  ``o_t = (e1·num + e2·v_t) / (e1·den + e2)`` with ``e2 = exp(k_t + u − m_t)`` and the states
  decayed by ``w = −exp(time_decay)`` (a running, max-stabilized softmax over time), each o_t
  written into ``output[:, t]``;
* ``matrix``: RWKV-v1, ``einsum(D, exp(z)·v) / cumsum(exp(z))`` (optionally times a gate before
  the division), D a per-head matrix of parameters.

Op by op neither has a rule that holds: the division's denominator is a running sum of
exponentials (positive, but no tensor the element-wise rules can bound) and the weights are
correlated with what they average. The unit is a causal average of values with positive
weights, whose rule (``engine.transfers.wkv``) evaluates it whole.
"""

from __future__ import annotations

from typing import Any

from gradlint.capture.graph import Graph, Node
from gradlint.capture.loops import _common_module

_CASTS = {"_to_copy", "to", "type_as", "alias", "clone", "contiguous"}
_VIEWS = _CASTS | {"view", "reshape", "_unsafe_view"}
# What one step of the decay loop is made of: anything else in the region is not this unit.
_STEP_KINDS = {"select", "identity", "add", "mul", "elementwise", "extremum", "write", "const"}


def _through(g: Graph, name: str | None, ops: set[str]) -> Node | None:
    n = g.by_name.get(name) if name else None
    while n is not None and n.kind == "identity" and n.attrs.get("op") in ops and n.inputs:
        n = g.by_name.get(n.inputs[0])
    return n


def _is_exp(n: Node | None) -> bool:
    return n is not None and n.kind == "elementwise" and "exp" in str(n.attrs.get("target")) \
        and "expm1" not in str(n.attrs.get("target")) and not n.attrs.get("extra")


def _is_op(n: Node | None, kind: str, op: str, arity: int = 2) -> bool:
    # A subtraction is recorded as ``sub`` with alpha −1; any other alpha scales an operand.
    return n is not None and n.kind == kind and n.attrs.get("op") == op and len(n.inputs) == arity \
        and n.attrs.get("alpha", 1) == (-1 if op == "sub" else 1)


def _step_index(n: Node | None) -> tuple[str, int] | None:
    """(sequence, t) of ``seq[:, t]``."""
    if n is None or n.kind != "select" or not isinstance(n.attrs.get("where"), str):
        return None
    where = n.attrs["where"].replace(" ", "")
    if not where.startswith("select[('dim',1),('index',"):
        return None
    try:
        return n.inputs[0], int(where.split("('index',")[1].split(")")[0])
    except (ValueError, IndexError):
        return None


def _other(n: Node, name: str) -> str | None:
    rest = [i for i in n.inputs if i != name]
    return rest[0] if len(rest) == 1 else None


def _decay_step(g: Graph, d: Node) -> dict[str, Any] | None:
    """One step's output o_t = (e1·num + e2·v_t) / (e1·den + e2): its parts, or None."""
    if not _is_op(d, "mul", "div"):
        return None
    a, b = g.by_name.get(d.inputs[0]), g.by_name.get(d.inputs[1])
    if not _is_op(a, "add", "add") or not _is_op(b, "add", "add"):
        return None
    bs = [g.by_name.get(i) for i in b.inputs]
    e2 = next((x for x in bs if _is_exp(x)), None)
    m1 = next((x for x in bs if x is not None and _is_op(x, "mul", "mul")), None)
    if e2 is None or m1 is None:
        return None
    e1 = next((i for i in m1.inputs if _is_exp(g.by_name.get(i))), None)
    amuls = [g.by_name.get(i) for i in a.inputs]
    if e1 is None or not all(x is not None and _is_op(x, "mul", "mul") for x in amuls):
        return None
    with_e2 = [x for x in amuls if e2.name in x.inputs]
    with_e1 = [x for x in amuls if e1 in x.inputs and x not in with_e2]
    if len(with_e2) != 1 or len(with_e1) != 1:
        return None
    vsel = _through(g, _other(with_e2[0], e2.name), _CASTS)
    sub = g.by_name.get(e2.inputs[0])
    if not _is_op(sub, "add", "sub"):
        return None
    x = g.by_name.get(sub.inputs[0])
    if not _is_op(x, "add", "add"):
        return None
    u = next((i for i in x.inputs if g.by_name.get(i) is not None and g.by_name[i].kind == "param"), None)
    ksel = _through(g, _other(x, u) if u else None, _CASTS)
    kk, vv = _step_index(ksel), _step_index(vsel)
    if u is None or kk is None or vv is None or kk[1] != vv[1]:
        return None
    return {"t": kk[1], "K": kk[0], "V": vv[0], "u": g.by_name[u].attrs.get("param"), "ksel": ksel.name,
            "vsel": vsel.name, "div": d.name}


def _ancestors(g: Graph, root: str, stop: set[str]) -> set[str]:
    seen, stack = set(), [root]
    while stack:
        cur = stack.pop()
        if cur in seen or cur in stop:
            continue
        seen.add(cur)
        stack.extend(i for i in g.by_name[cur].inputs if i is not None)
    return seen


def _decay_param(g: Graph, members: set[str]) -> str | None:
    """The θ of w = −exp(θ) that the states are decayed by: the one such operand of the region."""
    found = set()
    for m in members:
        for i in g.by_name[m].inputs:
            n = g.by_name.get(i) if i else None
            if n is None or i in members or n.kind != "mul" or n.attrs.get("scalar") != -1.0 or len(n.inputs) != 1:
                continue
            e = g.by_name.get(n.inputs[0])
            p = g.by_name.get(e.inputs[0]) if _is_exp(e) and e.inputs else None
            if p is not None and p.kind == "param":
                found.add(p.attrs.get("param"))
    return found.pop() if len(found) == 1 else None


def _writes(g: Graph, steps: list[dict]) -> list[str] | None:
    """The chain of writes of each step's output into one buffer, in step order."""
    out, prev = [], None
    for s in steps:
        users = [g.by_name[u] for u in g.users.get(s["div"], ())]
        while len(users) == 1 and users[0].kind == "identity" and users[0].attrs.get("op") in _CASTS:
            users = [g.by_name[u] for u in g.users.get(users[0].name, ())]
        w = [u for u in users if u.kind == "write"]
        if len(w) != 1 or (prev is not None and w[0].inputs[0] != prev):
            return None
        prev = w[0].name
        out.append(prev)
    return out


def _region(g: Graph, final: str, bounds: set[str]) -> set[str] | None:
    """The unit's nodes: what the final write is computed from that depends on ``bounds``, and
    the parts only the unit reads (the last step's states, unused). None when a value of the
    unit is read outside."""
    anc = _ancestors(g, final, bounds)
    members: set[str] = set()
    for n in g.nodes:
        if n.name in anc and any(i in bounds or i in members for i in n.inputs if i is not None):
            members.add(n.name)
    outputs = set(g.outputs)
    # What the model's outputs need other than through the unit's result: the rest is dead
    # code of the unit (the last step's state update, reads of the output buffer).
    live: set[str] = set()
    for o in outputs:
        live |= _ancestors(g, o, {final} | live)
    stack = [u for m in members if m != final for u in g.users.get(m, ())]
    while stack:
        u = stack.pop()
        if u in members or u in live:
            continue
        members.add(u)
        stack.extend(g.users.get(u, ()))
    for m in members:
        if m != final and (m in outputs or any(u not in members for u in g.users.get(m, ()))):
            return None
        if g.by_name[m].kind not in _STEP_KINDS or g.by_name[m].params:
            return None
    return members


def _fuse_decay(g: Graph) -> int:
    groups: dict[tuple, list[dict]] = {}
    for n in g.nodes:
        s = _decay_step(g, n)
        if s is not None:
            groups.setdefault((s["K"], s["V"], s["u"]), []).append(s)
    count = 0
    for (K, V, u), steps in groups.items():
        steps.sort(key=lambda s: s["t"])
        kshape = g.by_name[K].shape
        T = len(steps)
        if [s["t"] for s in steps] != list(range(T)) or T < 2 or not isinstance(kshape, tuple) or len(kshape) != 3 \
                or kshape[1] != T or g.by_name[V].shape != kshape:
            continue
        writes = _writes(g, steps)
        if writes is None or g.by_name[writes[-1]].shape != kshape:
            continue
        final = writes[-1]
        members = _region(g, final, {K, V})
        theta = _decay_param(g, members) if members else None
        if members is None or theta is None:
            continue
        last = steps[-1]["div"]
        cast = [x for x in g.users.get(last, ()) if g.by_name[x].kind == "identity"]
        f = g.by_name[final]
        node = Node(name=final, kind="wkv", op=f"RWKV time mixing over {T} steps (fused)", inputs=(K, V),
                    params={"time_decay": theta, "time_first": u},
                    attrs={"form": "decay", "steps": T, "decay": theta, "first": u,
                           "lag_inputs": [(s["ksel"], s["vsel"]) for s in steps],
                           "lag_output": cast[0] if len(cast) == 1 else last},
                    shape=f.shape, dtype="float", module=_common_module([g.by_name[m].module for m in members]),
                    module_type=f.module_type, call_site=g.by_name[steps[0]["div"]].call_site,
                    fused=tuple(n.name for n in g.nodes if n.name in members))
        g.nodes[:] = [node if n.name == final else n for n in g.nodes if n.name not in members or n.name == final]
        g.reindex()
        count += 1
    return count


def _views_back(g: Graph, name: str) -> tuple[Node | None, list[str]]:
    path, n = [], g.by_name.get(name)
    while n is not None and n.kind == "identity" and n.attrs.get("op") in _VIEWS and n.inputs:
        path.append(n.name)
        n = g.by_name.get(n.inputs[0])
    return n, path


def _matrix_unit(g: Graph, d: Node) -> dict[str, Any] | None:
    """``[gate ·] view(einsum(D, view(exp(z)·v))) / cumsum(exp(z), time)``: its parts, or None."""
    if not _is_op(d, "mul", "div") or not isinstance(d.shape, tuple) or len(d.shape) != 3:
        return None
    S = g.by_name.get(d.inputs[1])
    if S is None or S.kind != "cumulative" or S.attrs.get("op") != "cumsum" or S.attrs.get("dim") not in (1, -2):
        return None
    E = g.by_name.get(S.inputs[0])
    if not _is_exp(E) or E.shape != d.shape:
        return None
    x = g.by_name.get(d.inputs[0])
    gate, removed = None, [d.name, S.name]
    root, path = _views_back(g, x.name) if x is not None else (None, [])
    if x is not None and _is_op(x, "mul", "mul") and (root is None or root.kind != "matmul"):
        for i in x.inputs:
            r, p = _views_back(g, i)
            if r is not None and r.kind == "matmul":
                gate, root, path = _other(x, i), r, p
                removed.append(x.name)
                break
    if root is None or root.kind != "matmul" or not isinstance(root.attrs.get("equation"), str) \
            or len(root.inputs) != 2:
        return None
    removed += path + [root.name]
    kv = None
    for j, i in enumerate(root.inputs):
        r, p = _views_back(g, i)
        if r is not None and _is_op(r, "mul", "mul") and E.name in r.inputs:
            kv, kv_path, kv_pos, mul = i, p, j, r
    if kv is None:
        return None
    V = _other(mul, E.name)
    dn = root.inputs[1 - kv_pos]
    removed += kv_path + [mul.name]
    if len(root.attrs.get("terms", ())) != 3:
        return None
    *ops, out = root.attrs["terms"]
    if len(ops[kv_pos]) != 4 or len(out) != 4 or len(ops[1 - kv_pos]) != 3:
        return None
    kvl, dl = ops[kv_pos], ops[1 - kv_pos]
    b, i_, h, c = kvl
    t = out[1]
    B, T, C = d.shape
    kv_shape = g.by_name[kv].shape
    if out != b + t + h + c or t in kvl or set(dl) != {h, t, i_} or not isinstance(kv_shape, tuple) \
            or tuple(kv_shape[:2]) != (B, T) or kv_shape[2] * kv_shape[3] != C or g.by_name[V].shape != d.shape:
        return None
    return {"z": E.inputs[0], "E": E.name, "V": V, "D": dn, "gate": gate, "removed": removed,
            "perm": [dl.index(h), dl.index(t), dl.index(i_)], "heads": kv_shape[2], "T": T, "C": C}


def _fuse_matrix(g: Graph) -> int:
    count = 0
    for d in list(g.nodes):
        if d.name not in g.by_name:
            continue
        unit = _matrix_unit(g, d)
        if unit is None:
            continue
        removed = set(unit["removed"])
        if all(u in removed for u in g.users.get(unit["E"], ())):
            removed.add(unit["E"])
        if any(u not in removed for r in removed - {d.name} for u in g.users.get(r, ())):
            continue
        name = d.name if unit["gate"] is None else f"wkv:{d.name}"
        node = Node(name=name, kind="wkv", op=f"RWKV time mixing over {unit['T']} steps (fused)",
                    inputs=(unit["z"], unit["V"], unit["D"]),
                    attrs={"form": "matrix", "steps": unit["T"], "perm": unit["perm"], "channels": unit["C"],
                           "params": sorted({g.by_name[a].attrs.get("param") for a in _ancestors(g, unit["D"], set())
                                             if g.by_name[a].kind == "param"})},
                    shape=d.shape, dtype="float", module=d.module, module_type=d.module_type, call_site=d.call_site,
                    fused=tuple(n.name for n in g.nodes if n.name in removed))
        new = [node]
        if unit["gate"] is not None:
            new.append(Node(name=d.name, kind="mul", op="aten.mul.Tensor", inputs=(unit["gate"], name),
                            attrs={"op": "mul", "alpha": 1}, shape=d.shape, dtype="float", module=d.module,
                            module_type=d.module_type, call_site=d.call_site))
        nodes: list[Node] = []
        for n in g.nodes:
            if n.name == d.name:
                nodes.extend(new)
            elif n.name not in removed:
                nodes.append(n)
        g.nodes[:] = nodes
        g.reindex()
        count += 1
    return count


def fuse_wkv(g: Graph) -> int:
    """Replace every RWKV time mixing of either spelling by one ``wkv`` node."""
    return _fuse_decay(g) + _fuse_matrix(g)
