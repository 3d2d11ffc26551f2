"""The trunk of a model and the merges on it, for the rules about depth, skip paths and
normalization (GL401, GL402, GL501, GL502).

``Structure`` reads a result's graph once: its trunk (the tensors every input-to-output
path passes through), which nodes carry the input's signal, and, for every merge on the
trunk, the branch region since the previous trunk node and how many weighted layers each
merged path holds. A merge whose paths hold different numbers of weighted layers is a skip
path (the identity or a projection shortcut next to a deeper branch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

from gradlint.base.kinds import NORM_KINDS, WEIGHTED_KINDS
from gradlint.engine.result import cause_of
from gradlint.engine.summary import trunk_nodes

PLAIN_WEIGHTED = {"linear", "conv"}
# The weighted layers a merged path's depth counts, and that end a plain run. Without
# moe_linear, as before the kinds had one table: counting it makes the routed experts of a
# Qwen2-MoE block (shared expert beside them) a parallel branch instead of a shorter path,
# so a plain stack through such a block becomes one run, which changes GL401 and GL501
# findings. Which reading is right is a decision of its own, not a restructuring.
DEPTH_KINDS = WEIGHTED_KINDS - {"moe_linear"}
ACTIVATIONS = {"act", "act_module", "elementwise"}
MERGES = {"add", "cat"}


@dataclass(frozen=True)
class Merge:
    """A merge of several paths on the trunk.

    Attributes:
        node: The merge node's name.
        fork: The trunk node the merged paths leave from.
        region: Nodes between ``fork`` and the merge (the branches, the shortcut's ops).
        depths: Per merged input, the fewest weighted layers on a path from ``fork``.
    """

    node: str
    fork: str
    region: set[str]
    depths: dict[str, int]

    @property
    def stream(self) -> str:
        """The merged input with the fewest weighted layers since ``fork``."""
        return min(self.depths, key=lambda i: self.depths[i])

    @property
    def branches(self) -> list[str]:
        """The other merged inputs."""
        return [i for i in self.depths if i != self.stream]

    @property
    def is_skip(self) -> bool:
        """True when one merged path skips weighted layers another one goes through."""
        return min(self.depths.values()) < max(self.depths.values())


@dataclass(frozen=True)
class Run:
    """Consecutive trunk Linear/Conv layers with no skip path between them.

    Attributes:
        members: The layers' node names.
        span: The trunk nodes from the first layer to the activation after the last one
            (or the last one itself).
    """

    members: tuple[str, ...]
    span: tuple[str, ...]


@dataclass(frozen=True)
class Profile:
    """What the engine predicts across a run, in decades.

    Attributes:
        q_ref: The forward second moment at the run's input, which the forward signal is
            measured against.
        lost: Gradient lost across the run (against its last node).
        gained: Gradient gained across the run.
        collapse: Forward signal lost against ``q_ref``.
        growth: Forward signal gained against ``q_ref``.
        attribution: Gradient decades per cause over the run (negative = lost).
    """

    q_ref: float
    lost: float
    gained: float
    collapse: float
    growth: float
    attribution: dict[str, float]


class Structure:
    """The trunk of a result and its merges, computed once per check.

    Reads only the graph and the per-node moments, so it works on predictions and on
    probe measurements alike.
    """

    def __init__(self, result):
        self.result = result
        self.graph = g = result.graph
        prop = result.propagation
        carries = {n.name for n in prop.nodes if n.s > 0} | set(g.outputs)
        self.trunk: list[str] = trunk_nodes(g, carries)
        self.pos = {n: i for i, n in enumerate(self.trunk)}
        self.order = {n.name: i for i, n in enumerate(g.nodes)}
        live: set[str] = set()
        for n in g.nodes:
            if n.kind == "input" or (n.kind not in ("const", "param")
                                     and any(i in live for i in n.inputs if i is not None)):
                live.add(n.name)
        self.live = live
        self.points = {p.node: p for p in result.summary.trunk}
        self._merges: dict[str, Merge | None] = {}

    def node(self, name: str):
        return self.graph.by_name[name]

    def q(self, name: str) -> float:
        return self.result.propagation.node(name).q

    def s(self, name: str) -> float:
        return self.result.propagation.node(name).s

    def tensor_inputs(self, name: str) -> list[str]:
        """The node's distinct inputs that carry the input's signal (no constants, no parameters)."""
        out: list[str] = []
        for i in self.node(name).inputs:
            if i is not None and i in self.live and i not in out:
                out.append(i)
        return out

    def merge(self, name: str) -> Merge | None:
        """The merge at trunk node ``name``, or None when it merges fewer than two live paths."""
        if name in self._merges:
            return self._merges[name]
        m = None
        node = self.node(name)
        ins = self.tensor_inputs(name)
        p = self.pos.get(name)
        if node.kind in MERGES and len(ins) >= 2 and p:
            fork = self.trunk[p - 1]
            region: set[str] = set()
            stack = [i for i in ins if i not in self.pos]
            while stack:
                n = stack.pop()
                if n in region:
                    continue
                region.add(n)
                stack.extend(i for i in self.tensor_inputs(n) if i not in self.pos and i not in region)
            depth: dict[str, int] = {}
            for n in sorted(region, key=self.order.__getitem__):
                prev = [depth.get(i, 0) for i in self.tensor_inputs(n)]
                depth[n] = (min(prev) if prev else 0) + (1 if self.node(n).kind in DEPTH_KINDS else 0)
            m = Merge(name, fork, region, {i: depth.get(i, 0) for i in ins})
        self._merges[name] = m
        return m

    def skip_merge(self, name: str) -> Merge | None:
        m = self.merge(name)
        return m if m is not None and m.is_skip else None

    def span_attribution(self, first: str, last: str) -> dict[str, float]:
        """Decades of gradient signal per cause between two trunk points (negative = lost)."""
        pts = self.result.summary.trunk
        idx = {p.node: i for i, p in enumerate(pts)}
        if first not in idx or last not in idx:
            return {}
        out: dict[str, float] = {}
        for p in pts[idx[first]: idx[last]]:
            if math.isfinite(p.step_decades) and p.step_decades:
                c = p.cause or "other"
                out[c] = out.get(c, 0.0) + p.step_decades
        return out

    def forward_attribution(self, span, q_ref: float) -> dict[str, float]:
        """Decades of forward signal per cause over ``span`` (from ``q_ref`` at its input)."""
        out: dict[str, float] = {}
        prev = q_ref
        for n in span:
            q = self.q(n)
            if prev > 0 and q > 0:
                c = cause_of(self.node(n)) or "other"
                out[c] = out.get(c, 0.0) + 0.5 * math.log10(q / prev)
            prev = q
        return out

    def profile(self, run: Run) -> Profile:
        """The gradient and forward profile across a run: the gradient against the span's
        last node, the forward signal against the run's input."""
        span = run.span
        ins = self.tensor_inputs(run.members[0])
        q_ref = self.q(ins[0]) if ins else self.q(run.members[0])
        end = next((n for n in reversed(span) if n in self.points), None)
        t_end = self.points[end].t_decades if end else 0.0
        dt = [self.points[n].t_decades - t_end for n in span if n in self.points]
        dq = [0.5 * math.log10(self.q(n) / q_ref) for n in span if q_ref > 0 and self.q(n) > 0]
        dt = [x for x in dt if math.isfinite(x)] or [0.0]
        dq = dq or [0.0]
        return Profile(q_ref, max(0.0, -min(dt)), max(0.0, max(dt)), max(0.0, -min(dq)), max(0.0, max(dq)),
                       self.span_attribution(span[0], span[-1]))


def structure_of(result) -> Structure | None:
    """The structure of a result, or None when its graph is the module-order fallback: a chain
    of leaf modules in call order, whose skip paths and functional ops are not seen."""
    if result.graph.analysis == "module-order":
        return None
    return Structure(result)


def plain_runs(st: Structure, break_on_norm: bool, need_activation: bool) -> list[Run]:
    """Runs of consecutive trunk Linear/Conv layers with no skip path between them.

    Args:
        st: The structure.
        break_on_norm: A normalization layer on the trunk ends the run.
        need_activation: Every layer of a run but its last is followed by an activation
            before the next layer; a layer without one ends its run.
    """
    runs: list[Run] = []
    members: list[str] = []
    span: list[str] = []
    activated = False

    def close():
        nonlocal members, span, activated
        if members:
            cut = span.index(members[-1]) + 1
            tail = span[cut:]
            act = next((i for i, n in enumerate(tail) if st.node(n).kind in ACTIVATIONS), None)
            runs.append(Run(tuple(members), tuple(span[:cut] + (tail[: act + 1] if act is not None else []))))
        members, span, activated = [], [], False

    for name in st.trunk:
        kind = st.node(name).kind
        if kind in PLAIN_WEIGHTED:
            if members and need_activation and not activated:
                close()
            members.append(name)
            span.append(name)
            activated = False
        elif (kind in NORM_KINDS and break_on_norm) or kind in DEPTH_KINDS or st.skip_merge(name) is not None:
            close()
        elif members:
            span.append(name)
            activated = activated or kind in ACTIVATIONS
    close()
    return runs


# -- words for messages and fixes -------------------------------------------------------------

_ACT_MODULES = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh", "gelu": "GELU", "gelu_tanh": "GELU",
                "silu": "SiLU", "elu": "ELU", "selu": "SELU", "celu": "CELU", "leaky_relu": "LeakyReLU",
                "mish": "Mish", "softplus": "Softplus", "hardtanh": "Hardtanh", "relu6": "ReLU6", "prelu": "PReLU",
                "hardswish": "Hardswish", "hardsigmoid": "Hardsigmoid", "logsigmoid": "LogSigmoid"}


def activation_name(st: Structure, span) -> str:
    """The activation a run uses most, by its PyTorch module name ('ReLU'), or 'activation'."""
    names: list[str] = []
    for n in span:
        node = st.node(n)
        if node.kind == "act":
            fn = str(node.attrs.get("fn", ""))
            names.append(_ACT_MODULES.get(fn, "activation"))
        elif node.kind == "act_module":
            names.append(node.module_type or "activation")
        elif node.kind in ACTIVATIONS:
            names.append("activation")
    return max(names, key=names.count) if names else "activation"


def activation_call(act: str) -> str:
    """The constructor call for an activation name from ``activation_name``."""
    if act == "activation":
        return "nn.ReLU()"
    return f"nn.{act}()" if hasattr(nn, act) else f"{act}()"


def layer_type(st: Structure, members) -> str:
    types: list[str] = []
    for n in members:
        t = st.node(n).module_type or ("Linear" if st.node(n).kind == "linear" else "Conv")
        if t not in types:
            types.append(t)
    return "/".join(types)


def out_width(st: Structure, name: str) -> int | None:
    """Output features (channels) of a Linear/Conv node, from its weight's shape."""
    w = st.node(name).params.get("weight")
    ps = st.result.propagation.param_stats.get(w) if w else None
    if ps is not None and ps.shape:
        return int(ps.shape[0])
    shape = st.node(name).shape
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        return shape[1] if st.node(name).kind == "conv" and len(shape) > 2 else shape[-1]
    return None


def conv_dims(st: Structure, name: str) -> int:
    w = st.node(name).params.get("weight")
    ps = st.result.propagation.param_stats.get(w) if w else None
    return max(1, min(3, len(ps.shape) - 2)) if ps is not None and len(ps.shape) > 2 else 2


def where(st: Structure, members) -> str:
    a, b = st.node(members[0]).module or members[0], st.node(members[-1]).module or members[-1]
    return a if a == b else f"{a} … {b}"
