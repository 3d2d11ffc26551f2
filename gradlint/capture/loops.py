"""Recurrences written as Python loops: find the unrolled loop in the graph.

Tracing unrolls a loop over time steps: the same op sequence appears once per step, each
step reading the previous step's state and a slice of the sequence. The gradient at an early
step's input passes through every later step, as in nn.RNN, but op by op nothing says so.
This pass finds the loops and

* fuses a chain of cell ops (``nn.RNNCell`` / ``nn.GRUCell`` / ``nn.LSTMCell``, the ATen
  ``*_cell`` ops) into one ``rnn_loop`` node, which the recurrent engine predicts as it
  predicts nn.RNN / LSTM / GRU (docs/design.md §6, R1–R4);
* fuses a diagonal linear recurrence ``s_t = a_t * s_{t-1} + b_t`` (a selective scan) into
  one ``scan`` node, predicted with the decay of every unit of the state (§6, R5);
* records every other loop (a cell written by hand) in ``graph.loops``: per step its state
  and its inputs, for the long-range gradient over the steps (§6, R6).

A loop is a chain of at least ``MIN_STEPS`` steps whose ops have the same kind, parameters,
attributes and shapes at every step, where every step takes inputs of its own from outside
the loop (a slice of the sequence) that do not depend on the loop itself. Stacks of layers
with distinct weights never qualify (their ops differ); neither do sums that only accumulate
(no op but additions and casts: their Jacobian is the identity).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gradlint.capture.graph import Graph, Node

MIN_STEPS = 3
# Ancestors visited looking for the previous step's copy of an op: a step of a hand-written
# LSTM is about 25 ops, its state path about 10.
_MAX_VISIT = 400
# How far back the operands of an op tell its part in a step apart (a hand-written LSTM's
# input and output gates differ only in which chunk of one projection they read).
_SIG_DEPTH = 3
_CELL_OPS = {"rnn_tanh_cell": "rnn_tanh", "rnn_relu_cell": "rnn_relu", "gru_cell": "gru", "lstm_cell": "lstm"}
_CASTS = {"_to_copy", "to", "type_as", "alias", "clone", "contiguous", "lift_fresh_copy"}
_ACCUMULATE = {"add", "identity", "getitem", "dropout"}


@dataclass(frozen=True)
class Elman:
    """The step h_t = φ(u_t + W·h_{t−1} [+ b]) of a vanilla cell written by hand.

    Attributes:
        weight: the parameter W of the one Linear on the state path, the same at every step.
        bias: that Linear's bias parameter, or None.
        layout: the Linear's weight layout (``out_in``: h·Wᵀ, ``in_out``: h·W).
        drive: per step, u_t: the one value added from outside (x_t's projection).
        init: what the first step's Linear reads: the initial state.
    """

    weight: str
    bias: str | None
    layout: str
    drive: tuple[str, ...]
    init: str | None


@dataclass(frozen=True)
class Loop:
    """A recurrence unrolled over ``steps`` steps.

    Attributes:
        name: The node that names the loop in reports: the last step's state.
        states: Per step, the node holding the state (h_t): what the loop hands on and out.
        inputs: Per step, the nodes fed in from outside the loop at that step (x_t, a slice
            of the sequence, or a projection of it); coefficients that only scale the state
            (``a_t`` of ``a_t * s``) are not among them.
        nodes: Every node of the loop's steps.
        module: The module the loop runs in.
        mode: ``rnn_tanh`` / ``rnn_relu`` for a hand-written vanilla cell, else ``loop``.
        elman: for a vanilla cell whose step is exactly h_t = φ(u_t + W·h_{t−1} [+ b]), what
            the exact-in-W backward (R1w, docs/design.md §6) needs; None otherwise.
    """

    name: str
    states: tuple[str, ...]
    inputs: tuple[tuple[str, ...], ...]
    nodes: frozenset[str]
    module: str
    mode: str = "loop"
    elman: Elman | None = None

    @property
    def steps(self) -> int:
        return len(self.states)


def _is_cast(n: Node) -> bool:
    return n.kind == "identity" and n.attrs.get("op") in _CASTS


def _hashable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (tuple, list)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _hashable(x)) for k, x in v.items()))
    return f"<{type(v).__name__}:{id(v)}>"


def _labels(g: Graph) -> dict[str, tuple]:
    """Per node, what must repeat at every step of a loop: kind, op, shape, parameters
    (by role, or as parameter operands) and attributes. Sources have none."""
    out = {}
    for n in g.nodes:
        if n.kind in ("input", "param", "const"):
            continue
        operands = tuple(g.by_name[i].attrs.get("param") if i in g.by_name and g.by_name[i].kind == "param" else None
                         for i in n.inputs)
        # Which elements a selection reads changes from step to step (x[:, t]): no part of the label.
        attrs = {k: v for k, v in n.attrs.items() if k != "where"}
        out[n.name] = (n.kind, n.op, _hashable(n.shape), n.dtype, tuple(sorted(n.params.items())), operands,
                       _hashable(attrs))
    return out


def _signature(g: Graph, ids: dict[str, int], name: str | None, depth: int) -> Any:
    """A node's label (as an id) with its operands' signatures to ``depth``: ops of one label
    that play different parts in a step (the two gates' products of a GRU) differ in what they
    read. A constant operand (the zero initial state the first step reads instead of the
    previous state) is a wildcard, ``None``."""
    n = g.by_name.get(name) if name else None
    if n is None or n.kind == "const":
        return None
    if n.kind in ("input", "param"):
        return (n.kind, n.attrs.get("param"))
    if depth == 0:
        return ids[n.name]
    return (ids[n.name], tuple(_signature(g, ids, i, depth - 1) for i in n.inputs))


def _compatible(a: Any, b: Any) -> bool:
    if a is None or b is None or a is b:
        return True
    if type(a) is not tuple or type(b) is not tuple or len(a) != 2 or type(a[1]) is not tuple \
            or type(b[1]) is not tuple:
        return a == b
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(_compatible(x, y) for x, y in zip(a[1], b[1]))


def _previous(g: Graph, labels: dict[str, tuple]) -> dict[str, str]:
    """Per node, the nearest ancestor with the same label and a compatible signature: its copy
    one step back."""
    interned: dict[tuple, int] = {}
    ids = {name: interned.setdefault(lab, len(interned)) for name, lab in labels.items()}
    count: dict[int, int] = {}
    for i in ids.values():
        count[i] = count.get(i, 0) + 1
    prev = {}
    sigs: dict[str, Any] = {}

    def sig(name: str) -> Any:
        if name not in sigs:
            sigs[name] = _signature(g, ids, name, _SIG_DEPTH)
        return sigs[name]

    for n in g.nodes:
        lab = ids.get(n.name)
        if lab is None or count[lab] < MIN_STEPS:
            continue
        # The path back to the previous step's copy runs through the loop's own ops, each
        # repeated once per step: ops repeated less often (the model's other layers, the
        # sequence's precomputation) need no visit.
        floor = max(MIN_STEPS, count[lab] // 4)
        seen = {n.name}
        frontier = [i for i in n.inputs if i is not None]
        visited = 0
        found = None
        while frontier and found is None and visited < _MAX_VISIT:
            nxt = []
            for i in frontier:
                if i in seen:
                    continue
                seen.add(i)
                visited += 1
                if ids.get(i) == lab and _compatible(sig(i), sig(n.name)):
                    found = i
                    break
                m = g.by_name.get(i)
                if m is not None and count.get(ids.get(i, -1), 0) >= floor:
                    nxt.extend(x for x in m.inputs if x is not None)
            frontier = nxt
        if found is not None:
            prev[n.name] = found
    return prev


def _chains(g: Graph, prev: dict[str, str]) -> list[list[str]]:
    """Maximal sequences n_0, n_1, ... with n_{t-1} the previous-step copy of n_t."""
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    nxt: dict[str, str] = {}
    for n, p in sorted(prev.items(), key=lambda kv: pos[kv[0]]):
        nxt.setdefault(p, n)
    claimed = set(nxt.values())
    chains = []
    for head in sorted(nxt, key=pos.__getitem__):
        if head in claimed:
            continue
        chain = [head]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        if len(chain) >= MIN_STEPS:
            chains.append(chain)
    return chains


def _groups(g: Graph, chains: list[list[str]]) -> list[list[list[str]]]:
    """Chains that feed each other step by step belong to one loop: element i of one feeds
    element i (or i + 1) of the other, nearly all along. A chain across a model's layers
    touches a loop's chain once, and stays out of it."""
    parent = list(range(len(chains)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner = {n: (i, k) for i, c in enumerate(chains) for k, n in enumerate(c)}
    links: dict[tuple[int, int], list[int]] = {}
    for j, c in enumerate(chains):
        for k, n in enumerate(c):
            for x in g.by_name[n].inputs:
                if x in owner and owner[x][0] != j:
                    i, kx = owner[x]
                    links.setdefault((i, j), []).append(k - kx)
    for (i, j), offsets in links.items():
        short = min(len(chains[i]), len(chains[j]))
        if len(offsets) >= short - 1 and max(offsets) - min(offsets) <= 1 and find(i) != find(j):
            parent[find(j)] = find(i)
    out: dict[int, list[list[str]]] = {}
    for i, c in enumerate(chains):
        out.setdefault(find(i), []).append(c)
    return list(out.values())


def _descendants(g: Graph, start: Iterable[str]) -> set[str]:
    """Float nodes reachable from ``start`` along differentiable values."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        n = stack.pop()
        for u in g.users.get(n, ()):
            if u not in seen and g.by_name[u].dtype == "float":
                seen.add(u)
                stack.append(u)
    return seen


def _state_chain(g: Graph, group: list[list[str]], members: set[str]) -> list[str]:
    """The chain holding the state: not a chain of writes (``out[:, t] = h`` records the states
    into a buffer, each write taking the previous one's value), the longest, then the one read
    most outside the loop, then the one computed last within a step."""
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    outputs = set(g.outputs)

    def read_outside(c: list[str]) -> int:
        return sum(1 for n in c for u in g.users.get(n, ()) if u not in members) + sum(n in outputs for n in c)

    def records(c: list[str]) -> bool:
        return all(g.by_name[n].kind == "write" for n in c)

    return max(group, key=lambda c: (not records(c), len(c), read_outside(c), pos[c[0]]))


def find_loops(g: Graph) -> list[Loop]:
    """Every loop over time steps in ``g`` (see the module docstring)."""
    labels = _labels(g)
    prev = _previous(g, labels)
    if not prev:
        return []
    loops = []
    for group in _groups(g, _chains(g, prev)):
        members = {n for c in group for n in c}
        states = _state_chain(g, group, members)
        # Step t: the loop's nodes that feed state t and not an earlier state.
        step_of: dict[str, int] = {}
        for t, s in enumerate(states):
            stack = [s]
            while stack:
                n = stack.pop()
                if n in step_of or n not in members:
                    continue
                step_of[n] = t
                stack.extend(i for i in g.by_name[n].inputs if i is not None)
        members = set(step_of)
        inside = _descendants(g, members)
        per_step: list[list[str]] = [[] for _ in states]
        seen_in: dict[str, int] = {}
        for n, t in step_of.items():
            for i in g.by_name[n].inputs:
                if i is None or i in members:
                    continue
                src = g.by_name.get(i)
                if src is None or src.kind in ("param", "const") or src.dtype != "float":
                    continue
                if i in inside:
                    seen_in[i] = -2  # depends on the loop: not a recurrence over time
                elif seen_in.setdefault(i, t) != t:
                    seen_in[i] = -1  # read by several steps: a constant of the loop
                per_step[t].append(i)
        if any(v == -2 for v in seen_in.values()):
            continue
        coefficients = _coefficients(g, states, members)
        inputs = tuple(tuple(dict.fromkeys(i for i in step if seen_in.get(i, -1) >= 0 and i not in coefficients))
                       for step in per_step)
        if sum(bool(x) for x in inputs) < len(states) - 1:
            continue
        if {g.by_name[n].kind for n in members} <= _ACCUMULATE:
            continue
        module = _common_module([g.by_name[n].module for n in members])
        mode = _vanilla_mode(g, members)
        elman = _elman(g, states, members, inputs) if mode != "loop" else None
        loops.append(Loop(name=states[-1], states=tuple(states), inputs=inputs, nodes=frozenset(members),
                          module=module, mode=mode, elman=elman))
    return loops


def _coefficients(g: Graph, states: list[str], members: set[str]) -> set[str]:
    """Outside operands that multiply the previous state directly (``a_t`` of ``a_t * s``):
    they scale the state rather than feed it."""
    out = set()
    state_values = set(states)
    for s in states:  # casts of a state read by the next step
        state_values.update(u for u in g.users.get(s, ()) if u in members and _is_cast(g.by_name[u]))
    for n in members:
        node = g.by_name[n]
        # The first step multiplies the initial state, often a constant (zeros).
        if node.kind == "mul" and len(node.inputs) == 2 and any(
                i in state_values or (i in g.by_name and g.by_name[i].kind == "const") for i in node.inputs):
            out.update(i for i in node.inputs if i is not None and i not in members)
    return out


def _common_module(paths: list[str]) -> str:
    parts = [p.split(".") if p else [] for p in paths]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _vanilla_mode(g: Graph, members: set[str]) -> str:
    """``rnn_tanh`` / ``rnn_relu`` for a hand-written Elman cell: per step one weighted op on the
    state, one tanh or ReLU, and no product of two values of the loop (no gate)."""
    nodes = [g.by_name[n] for n in members]
    acts = {str(n.attrs.get("fn")) for n in nodes if n.kind == "act"}
    if any(n.kind == "mul" and len(n.inputs) == 2 and all(i in members for i in n.inputs) for n in nodes):
        return "loop"
    if not any(n.kind in ("linear", "matmul") for n in nodes):
        return "loop"
    if acts == {"tanh"}:
        return "rnn_tanh"
    if acts == {"relu"}:
        return "rnn_relu"
    return "loop"


def _elman(g: Graph, states: list[str], members: set[str], inputs: tuple[tuple[str, ...], ...]) -> Elman | None:
    """The step's parts when every step is exactly state_t = φ(add(u_t, Linear(state_{t−1})))
    (either operand order, casts on the way) and the loop holds nothing else; else None: the
    op-by-op sweep (R6) is all that is known then."""
    seen: set[str] = set()

    def through_casts(name: str | None) -> Node | None:
        n = g.by_name.get(name) if name else None
        while n is not None and n.name in members and _is_cast(n):
            seen.add(n.name)
            n = g.by_name.get(n.inputs[0])
        return n

    parts: set[tuple] = set()
    drive: list[str] = []
    init: str | None = None
    prev: str | None = None
    for t, s in enumerate(states):
        act = through_casts(s)
        if act is None or act.kind != "act" or len(act.inputs) != 1 or act.name not in members:
            return None
        add = through_casts(act.inputs[0])
        if add is None or add.name not in members or add.kind != "add" or len(add.inputs) != 2 \
                or add.attrs.get("op") not in (None, "add") or add.attrs.get("alpha", 1) != 1:
            return None
        lin = [n for n in (through_casts(i) for i in add.inputs) if n is not None and n.name in members]
        outside = [i for i in add.inputs if i is not None and i not in members]
        if len(lin) != 1 or len(outside) != 1 or lin[0].kind != "linear" or len(lin[0].inputs) != 1:
            return None
        lin_node = lin[0]
        u = outside[0]
        if inputs[t] != (u,) or g.by_name[u].shape != add.shape:
            return None
        src = through_casts(lin_node.inputs[0])
        if t == 0:
            if lin_node.inputs[0] in members:
                return None
            init = lin_node.inputs[0]
        elif src is None or src.name != prev:
            return None
        parts.add((str(act.attrs.get("fn")), lin_node.params.get("weight"), lin_node.params.get("bias"),
                   lin_node.attrs.get("layout"), tuple(sorted(lin_node.params))))
        seen.update((act.name, add.name, lin_node.name))
        drive.append(u)
        prev = act.name
    if len(parts) != 1 or seen != members:
        return None
    _, weight, bias, layout, roles = parts.pop()
    if not weight or layout not in ("out_in", "in_out") or set(roles) - {"weight", "bias"}:
        return None
    return Elman(weight=weight, bias=bias, layout=layout, drive=tuple(drive), init=init)


# -- cell ops ----------------------------------------------------------------------------

def normalize_cells(g: Graph) -> int:
    """``aten.*_cell`` ops (from nn.RNNCell / GRUCell / LSTMCell) become ``rnn_cell`` nodes with
    their weights as parameters: inputs (x, h) or (x, h, c)."""
    count = 0
    for idx, n in enumerate(g.nodes):
        mode = _CELL_OPS.get(str(n.attrs.get("target", ""))) if n.kind == "unknown" else None
        if mode is None:
            continue
        n_state = 2 if mode == "lstm" else 1
        tensors = list(n.inputs)
        params = [g.by_name[i].attrs.get("param") if i in g.by_name and g.by_name[i].kind == "param" else None
                  for i in tensors[1 + n_state:]]
        if len(params) not in (2, 4) or not all(params):
            continue
        roles = dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), params))
        g.nodes[idx] = Node(name=n.name, kind="rnn_cell", op=n.op, inputs=tuple(tensors[:1 + n_state]), params=roles,
                            attrs={"mode": mode}, shape=n.shape, dtype=n.dtype, module=n.module,
                            module_type=n.module_type, call_site=n.call_site)
        count += 1
    if count:
        g.reindex()
    return count


def _cell_loop(g: Graph, loop: Loop) -> tuple[Node, dict[str, int]] | None:
    """One ``rnn_loop`` node for a chain of cells, and the slot of each value read outside it."""
    cells = [g.by_name[n] for n in sorted(loop.nodes, key=_order(g)) if g.by_name[n].kind == "rnn_cell"]
    if len(cells) != loop.steps or any(c.params != cells[0].params for c in cells):
        return None
    mode = cells[0].attrs["mode"]
    lstm = mode == "lstm"
    # The last step's cell state is no ancestor of any state: its unpacking joins here.
    members = set(loop.nodes) | {u for c in cells for u in g.users.get(c.name, ()) if g.by_name[u].kind == "getitem"}
    others = members - {c.name for c in cells}
    # The rest of the loop is the LSTM's (h, c) unpacking and casts.
    if any(g.by_name[n].kind not in ("getitem", "identity") for n in others):
        return None
    slot_of_cell = {c.name: t for t, c in enumerate(cells)}

    def value_of(name: str | None) -> tuple[int, int] | None:
        """(step, 0 for h / 1 for c) of a loop value."""
        n = g.by_name.get(name) if name else None
        while n is not None and n.name in others and n.kind == "identity":
            n = g.by_name.get(n.inputs[0])
        if n is None:
            return None
        if n.name in slot_of_cell and not lstm:
            return slot_of_cell[n.name], 0
        if n.kind == "getitem" and n.inputs[0] in slot_of_cell and lstm:
            return slot_of_cell[n.inputs[0]], int(n.attrs.get("index", 0))
        return None

    T = len(cells)
    for t, c in enumerate(cells[1:], start=1):
        want = [(t - 1, 0), (t - 1, 1)] if lstm else [(t - 1, 0)]
        if [value_of(i) for i in c.inputs[1:]] != want:
            return None
    xs = [c.inputs[0] for c in cells]
    if any(x in members for x in xs):
        return None
    first = cells[0]
    init = list(first.inputs[1:])
    slots: dict[str, int] = {}
    for n in sorted(members, key=_order(g)):
        if any(u not in members for u in g.users.get(n, ())) or n in g.outputs:
            v = value_of(n)
            if v is None:
                return None
            slots[n] = v[0] + T * v[1]
    shapes = tuple([_state_shape(first)] * (2 * T if lstm else T))
    node = Node(name=f"loop:{cells[-1].name}", kind="rnn_loop", op=f"{first.op} over {T} steps (fused)",
                inputs=(*xs, *init), params=dict(first.params),
                attrs={"mode": mode, "steps": T, "states": tuple(s for s in loop.states), "lag_inputs": xs,
                       "lag_output": _last_h(g, cells, lstm, members)},
                shape=shapes, dtype="float", module=first.module, module_type=first.module_type,
                call_site=first.call_site, fused=tuple(sorted(members, key=_order(g))))
    return node, slots


def _state_shape(cell: Node) -> Any:
    s = cell.shape
    return s[0] if isinstance(s, tuple) and s and isinstance(s[0], tuple) else s


def _last_h(g: Graph, cells: list[Node], lstm: bool, members: set[str]) -> str:
    last = cells[-1]
    if not lstm:
        return last.name
    for u in g.users.get(last.name, ()):
        if g.by_name[u].kind == "getitem" and g.by_name[u].attrs.get("index") == 0:
            return u
    return last.name


def _order(g: Graph):
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    return pos.__getitem__


# -- diagonal scans ----------------------------------------------------------------------

def _scan(g: Graph, loop: Loop) -> tuple[Node, dict[str, int]] | None:
    """One ``scan`` node for ``s_t = a_t * s_{t-1} + b_t`` (either operand order, casts on the
    way), and the slot of each state read outside it."""
    members = set(loop.nodes)
    if {g.by_name[n].kind for n in members} - {"mul", "add", "identity"}:
        return None
    if any(g.by_name[n].kind == "identity" and not _is_cast(g.by_name[n]) for n in members):
        return None
    T = loop.steps
    steps: list[tuple[str, str, str | None]] = []
    prev_state: str | None = None
    for t, s in enumerate(loop.states):
        add = g.by_name[s]
        while add.kind == "identity" and add.name in members:
            add = g.by_name[add.inputs[0]]
        if add.kind != "add" or len(add.inputs) != 2 or add.attrs.get("op") not in (None, "add") \
                or add.attrs.get("alpha", 1) != 1:
            return None
        mul = [g.by_name[i] for i in add.inputs if i in members and g.by_name[i].kind == "mul"]
        b = [i for i in add.inputs if i not in members]
        if len(mul) != 1 or len(b) != 1 or len(mul[0].inputs) != 2 or mul[0].attrs.get("op") not in (None, "mul"):
            return None
        m = mul[0]
        if t == 0:
            # The initial state comes from outside too: tell it from a_0 by a_1's form.
            steps.append((m.inputs[0], b[0], m.inputs[1]))
            prev_state = add.name
            continue
        carried = [i for i in m.inputs if _strip_casts(g, i, members) == prev_state]
        a = [i for i in m.inputs if i not in members and i not in carried]
        if len(carried) != 1 or len(a) != 1:
            return None
        steps.append((a[0], b[0], carried[0]))
        prev_state = add.name
    a0, b0, s0 = steps[0]
    form = _form(g.by_name[steps[1][0]])
    if _form(g.by_name[a0]) != form:
        a0, s0 = s0, a0
    if _form(g.by_name[a0]) != form or s0 in members:
        return None
    steps[0] = (a0, b0, s0)
    slots = {}
    for n in sorted(members, key=_order(g)):
        if any(u not in members for u in g.users.get(n, ())) or n in g.outputs:
            base = _strip_casts(g, n, members)
            t = next((k for k, s in enumerate(loop.states) if _strip_casts(g, s, members) == base), None)
            if t is None:
                return None
            slots[n] = t
    first = g.by_name[loop.states[0]]
    shape = g.by_name[loop.states[-1]].shape
    built = _constructions(g, [a for a, _, _ in steps], [b for _, b, _ in steps])
    node = Node(name=f"scan:{loop.states[-1]}", kind="scan", op=f"diagonal linear recurrence over {T} steps (fused)",
                inputs=(steps[0][2], *(a for a, _, _ in steps), *(b for _, b, _ in steps), *built.get("leaves", ())),
                attrs={"steps": T, "lag_inputs": [b for _, b, _ in steps], "lag_output": loop.states[-1], **built},
                shape=tuple([shape] * T), dtype="float", module=loop.module, module_type=first.module_type,
                call_site=first.call_site, fused=tuple(sorted(members, key=_order(g))))
    return node, slots


# Ops a decay or an input of a scan may be built from and still be evaluated per unit of the
# state on the parameters' values (``engine.transfers.scan``).
EVALUABLE_RESHAPES = _CASTS | {"expand", "expand_as", "unsqueeze", "transpose", "swapaxes", "permute", "squeeze"}
EVALUABLE_ACTS = {"softplus", "sigmoid", "tanh", "relu", "silu", "exp", "gelu"}


def evaluable(n: Node) -> bool:
    """Whether an op is element-wise (or a reshape that keeps elements) and one the per-unit
    evaluation of a scan's construction knows."""
    if n.kind == "identity":
        return n.attrs.get("op") in EVALUABLE_RESHAPES
    if n.kind == "act":
        return str(n.attrs.get("fn")) in EVALUABLE_ACTS
    if n.kind == "elementwise":
        return callable(n.attrs.get("target")) and not n.attrs.get("extra")
    return n.kind in ("mul", "add")


def _sequence(g: Graph, name: str) -> str:
    """Through the select that takes step t out of a sequence, and casts: the sequence."""
    n = g.by_name[name]
    while n.inputs and n.inputs[0] is not None and (n.kind == "select" or _is_cast(n)):
        n = g.by_name[n.inputs[0]]
    return n.name


def _dependent(g: Graph) -> set[str]:
    """Nodes whose value depends on a graph input."""
    out: set[str] = set()
    for n in g.nodes:
        if n.kind == "input" or any(i in out for i in n.inputs if i is not None):
            out.add(n.name)
    return out


def _leaves(g: Graph, root: str, dependent: set[str], z: str | None = None) -> list[str] | None:
    """The input-dependent values a construction starts from, through evaluable ops; None when
    it reads one through an op that is not evaluable and depends on nothing random (the
    construction cannot be evaluated). Given the decay's ``z``, a value built without ``z`` or
    parameters is one leaf, whose second moment the forward knows (mamba-minimal's silu(conv(x)))."""
    out: list[str] = []
    stack, seen = [root], set()
    opaque: dict[str, bool] = {}
    while stack:
        cur = stack.pop()
        if cur in seen:
            continue
        seen.add(cur)
        n = g.by_name[cur]
        if n.kind in ("param", "const"):
            continue
        if evaluable(n) and not (z is not None and cur in dependent and _opaque(g, cur, z, opaque)):
            stack.extend(i for i in n.inputs if i is not None)
        elif cur in dependent:
            out.append(cur)
        else:
            return None
    return out


def _opaque(g: Graph, name: str, z: str, memo: dict[str, bool]) -> bool:
    """Whether ``name``'s construction reads neither ``z`` nor a parameter through evaluable ops."""
    if name not in memo:
        n = g.by_name[name]
        memo[name] = name != z and n.kind != "param" and (
            not evaluable(n) or all(_opaque(g, i, z, memo) for i in n.inputs if i is not None))
    return memo[name]


def _monomial(g: Graph, root: str, factors: set[str], z_side: set[str]) -> bool:
    """Whether ``root`` is a product of ``factors`` (through reshapes) and of a part that
    reads no factor: E[root²] then factorizes over the factors."""
    n = g.by_name[root]
    if root in factors:
        return True
    if root in z_side:
        return True
    if n.kind == "identity" and n.inputs:
        return _monomial(g, n.inputs[0], factors, z_side)
    if n.kind == "mul" and len(n.inputs) == 2 and n.attrs.get("op") in (None, "mul"):
        return all(_monomial(g, i, factors, z_side) for i in n.inputs)
    if n.kind == "mul" and len(n.inputs) == 1:
        return _monomial(g, n.inputs[0], factors, z_side)
    return False


def _free_of(g: Graph, root: str, leaves: set[str], boundary: set[str]) -> set[str]:
    """Nodes of ``root``'s construction that read none of ``leaves``. The construction ends at
    its ``boundary`` (its input-dependent values): Mamba's Δ = softplus(dt_proj(x)) is one
    value of b = Δ·B·x, though dt_proj reads x further up."""
    memo: dict[str, bool] = {}

    def reads(name: str) -> bool:
        if name not in memo:
            n = g.by_name[name]
            memo[name] = name in leaves or (n.kind not in ("param", "const") and name not in boundary
                                            and any(reads(i) for i in n.inputs if i is not None))
        return memo[name]

    reads(root)
    return {k for k, v in memo.items() if not v}


def _constructions(g: Graph, a: list[str], b: list[str]) -> dict[str, Any]:
    """How a scan's decays and inputs are built, for the per-unit rule: the sequences they are
    steps of, the one input-dependent value the decay reads (``z``, or none), and the other
    input-dependent factors of the input b_t (``others``). Empty when they are not built that
    way (each step computed separately, several random parts in the decay, a sum in b)."""
    a_src, b_src = {_sequence(g, x) for x in a}, {_sequence(g, x) for x in b}
    if len(a_src) != 1 or len(b_src) != 1:
        return {}
    a_root, b_root = a_src.pop(), b_src.pop()
    dependent = _dependent(g)
    la = _leaves(g, a_root, dependent)
    if la is None or len(la) > 1:
        return {}
    z = la[0] if la else None
    lb = _leaves(g, b_root, dependent, z)
    if lb is None:
        return {}
    others = [x for x in lb if x != z]
    z_side = _free_of(g, b_root, set(others), set(lb))
    if not _monomial(g, b_root, set(others), z_side):
        return {}
    return {"a_root": a_root, "b_root": b_root, "z": z, "others": others,
            "leaves": [*([z] if z else []), *others]}


def _form(n: Node) -> tuple:
    return (n.kind, n.op, _hashable(n.shape))


def _strip_casts(g: Graph, name: str | None, members: set[str]) -> str | None:
    n = g.by_name.get(name) if name else None
    while n is not None and n.name in members and _is_cast(n):
        n = g.by_name.get(n.inputs[0])
    return n.name if n is not None else None


# -- rewriting ---------------------------------------------------------------------------

def _splice(g: Graph, fused: Node, slots: dict[str, int]) -> bool:
    """Replace the loop's nodes by ``fused``, each value read outside by a ``getitem`` of it
    under its own name; then order the graph topologically again. False (graph unchanged)
    when that ordering does not exist: the loop's inputs depend on its outputs."""
    members = set(fused.fused)
    pos = {n.name: i for i, n in enumerate(g.nodes)}
    first = min(pos[m] for m in members)
    new: list[tuple[float, Node]] = []
    for n in g.nodes:
        if n.name in slots:
            new.append((pos[n.name], Node(name=n.name, kind="getitem", op="getitem", inputs=(fused.name,),
                                          attrs={"index": slots[n.name]}, shape=n.shape, dtype=n.dtype,
                                          module=n.module, module_type=n.module_type, call_site=n.call_site)))
        elif n.name not in members:
            new.append((pos[n.name], n))
    new.append((first + 0.5, fused))
    ordered = _toposort(new)
    if ordered is None:
        return False
    g.nodes[:] = ordered
    g.reindex()
    return True


def _toposort(items: list[tuple[float, Node]]) -> list[Node] | None:
    """Kahn's algorithm, keeping the original order wherever the dependencies allow."""
    by_name = {n.name: (p, n) for p, n in items}
    waiting = {n.name: {i for i in n.inputs if i is not None and i in by_name} for _, n in items}
    users: dict[str, list[str]] = {}
    for name, deps in waiting.items():
        for d in deps:
            users.setdefault(d, []).append(name)
    ready = [(p, n.name) for p, n in items if not waiting[n.name]]
    heapq.heapify(ready)
    out = []
    while ready:
        _, name = heapq.heappop(ready)
        out.append(by_name[name][1])
        for u in users.get(name, ()):
            waiting[u].discard(name)
            if not waiting[u]:
                heapq.heappush(ready, (by_name[u][0], u))
    return out if len(out) == len(items) else None


def fuse_loops(g: Graph) -> int:
    """Normalize cell ops, fuse cell loops and scans, record the other loops in ``g.loops``."""
    normalize_cells(g)
    count = 0
    for _ in range(4):  # a fused loop can expose another (stacked cells read the lower loop's states)
        changed = False
        for loop in find_loops(g):
            if any(n not in g.by_name for n in loop.nodes):
                continue
            made = _cell_loop(g, loop) or _scan(g, loop)
            if made is not None and _splice(g, *made):
                count += 1
                changed = True
        if not changed:
            break
    g.loops = [lp for lp in find_loops(g) if not any(g.by_name[n].kind in ("rnn_loop", "scan") for n in lp.nodes)]
    return count


def lag_targets(g: Graph) -> dict[str, tuple[tuple[tuple[Any, ...], ...], Any]]:
    """Per recurrence a probe can measure, by its node in reports: the nodes holding each step's
    inputs, and the last step's state, nodes of the exported program (or one step of one,
    ``Graph.slices``), so the probe reads the same tensors in a real forward pass."""
    out: dict[str, tuple[tuple[tuple[Any, ...], ...], Any]] = {}
    for n in g.nodes:
        if n.kind in ("rnn_loop", "scan", "wkv") and n.attrs.get("lag_inputs"):
            steps = (x if isinstance(x, (tuple, list)) else (x,) for x in n.attrs["lag_inputs"])
            out[n.name] = (tuple(tuple(g.slices.get(y, y) for y in step) for step in steps),
                           g.slices.get(n.attrs["lag_output"], n.attrs["lag_output"]))
    for lp in getattr(g, "loops", ()):
        out[lp.name] = (lp.inputs, lp.name)
    return out
