"""GL501 missing-skip-path, and the trunk structure the normalization and residual rules share.

``Structure`` reads a result's graph once: its trunk (the tensors every input-to-output
path passes through), which nodes carry the input's signal, and, for every merge on the
trunk, the branch region since the previous trunk node and how many weighted layers each
merged path holds. A merge whose paths hold different numbers of weighted layers is a skip
path (the identity or a projection shortcut next to a deeper branch).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule
from gradlint.engine.result import cause_of
from gradlint.lint.toolkit import describe_attribution
from gradlint.engine.summary import trunk_nodes
from gradlint.engine.transfers import NORMALIZATION

PLAIN_WEIGHTED = {"linear", "conv"}
WEIGHTED = {"linear", "conv", "attention", "rnn", "embedding"}
NORMS = {"layer_norm", "rms_norm", "group_norm", "batch_norm"}
ACTIVATIONS = {"act", "act_module", "elementwise"}
MERGES = {"add", "cat"}


class Merge:
    """A merge of several paths on the trunk.

    Attributes:
        node: The merge node's name.
        fork: The trunk node the merged paths leave from.
        region: Nodes between ``fork`` and the merge (the branches, the shortcut's ops).
        stream: The merged input with the fewest weighted layers since ``fork``.
        branches: The other merged inputs.
        depths: Per merged input, the fewest weighted layers on a path from ``fork``.
    """

    def __init__(self, node: str, fork: str, region: set[str], depths: dict[str, int]):
        self.node = node
        self.fork = fork
        self.region = region
        self.depths = depths
        self.stream = min(depths, key=lambda i: depths[i])
        self.branches = [i for i in depths if i != self.stream]

    @property
    def is_skip(self) -> bool:
        """True when one merged path skips weighted layers another one goes through."""
        return min(self.depths.values()) < max(self.depths.values())


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
                depth[n] = (min(prev) if prev else 0) + (1 if self.node(n).kind in WEIGHTED else 0)
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

    def forward_attribution(self, span: list[str], q_ref: float) -> dict[str, float]:
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

    def profile(self, span: list[str], q_ref: float) -> tuple[float, float, float, float]:
        """(gradient lost, gradient gained, forward collapse, forward growth) in decades over
        ``span`` (trunk nodes, forward order), against the span's last node for the gradient
        and against ``q_ref`` for the forward signal."""
        end = next((n for n in reversed(span) if n in self.points), None)
        t_end = self.points[end].t_decades if end else 0.0
        dt = [self.points[n].t_decades - t_end for n in span if n in self.points]
        dq = [0.5 * math.log10(self.q(n) / q_ref) for n in span if q_ref > 0 and self.q(n) > 0]
        dt = [x for x in dt if math.isfinite(x)] or [0.0]
        dq = dq or [0.0]
        return max(0.0, -min(dt)), max(0.0, max(dt)), max(0.0, -min(dq)), max(0.0, max(dq))


def structure_of(result) -> Structure | None:
    """The structure of a result, or None when its graph is the module-order fallback: a chain
    of leaf modules in call order, whose skip paths and functional ops are not seen."""
    if result.graph.analysis == "module-order":
        return None
    return Structure(result)


def plain_runs(st: Structure, break_on_norm: bool, need_activation: bool) -> list[tuple[list[str], list[str]]]:
    """Runs of consecutive trunk Linear/Conv layers with no skip path between them.

    Args:
        st: The structure.
        break_on_norm: A normalization layer on the trunk ends the run.
        need_activation: Every layer of a run but its last is followed by an activation
            before the next layer; a layer without one ends its run.

    Returns:
        (members, span) per run: the layers' node names, and the trunk nodes from the first
        layer to the activation after the last one (or the last one itself).
    """
    runs: list[tuple[list[str], list[str]]] = []
    members: list[str] = []
    span: list[str] = []
    activated = False

    def close():
        nonlocal members, span, activated
        if members:
            cut = span.index(members[-1]) + 1
            tail = span[cut:]
            act = next((i for i, n in enumerate(tail) if st.node(n).kind in ACTIVATIONS), None)
            runs.append((members, span[:cut] + (tail[: act + 1] if act is not None else [])))
        members, span, activated = [], [], False

    for name in st.trunk:
        kind = st.node(name).kind
        if kind in PLAIN_WEIGHTED:
            if members and need_activation and not activated:
                close()
            members.append(name)
            span.append(name)
            activated = False
        elif (kind in NORMS and break_on_norm) or kind in WEIGHTED or st.skip_merge(name) is not None:
            close()
        elif members:
            span.append(name)
            activated = activated or kind in ACTIVATIONS
    close()
    return runs


_ACT_MODULES = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh", "gelu": "GELU", "gelu_tanh": "GELU",
                "silu": "SiLU", "elu": "ELU", "selu": "SELU", "celu": "CELU", "leaky_relu": "LeakyReLU",
                "mish": "Mish", "softplus": "Softplus", "hardtanh": "Hardtanh", "relu6": "ReLU6", "prelu": "PReLU",
                "hardswish": "Hardswish", "hardsigmoid": "Hardsigmoid", "logsigmoid": "LogSigmoid"}


def run_profile(st: Structure, members: list[str], span: list[str]):
    """(q_ref, lost, gained, collapse, growth, attribution) across a run: q_ref is the forward
    second moment at the run's input, which the profile is measured from."""
    ins = st.tensor_inputs(members[0])
    q_ref = st.q(ins[0]) if ins else st.q(members[0])
    return (q_ref, *st.profile(span, q_ref), st.span_attribution(span[0], span[-1]))


def activation_name(st: Structure, span: list[str]) -> str:
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


def layer_type(st: Structure, members: list[str]) -> str:
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


def where(st: Structure, members: list[str]) -> str:
    a, b = st.node(members[0]).module or members[0], st.node(members[-1]).module or members[-1]
    return a if a == b else f"{a} … {b}"


def threshold_of(rule: Rule, result) -> float:
    thr = rule.opts.get("threshold")
    return float(thr) if thr is not None else float(result.summary.threshold)


# -- examples -----------------------------------------------------------------------------------------

def _plain_mlp(depth: int = 16, width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, width))


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class _ResidualMLP(nn.Module):
    def __init__(self, blocks: int = 8, width: int = 64):
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.blocks = nn.Sequential(*[_Block(width) for _ in range(blocks)])
        self.out = nn.Linear(width, width)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


class MissingSkipPath(Rule):
    """A deep stack of layers with no skip connection around any of them.

    ## What it finds
    Runs of at least `min_depth` Linear/Conv layers one after the other on the model's trunk
    (the path every input-to-output signal takes) with no residual or other skip path
    (a sum or concatenation on the trunk that merges a path with fewer layers) anywhere
    in the run. Error when the engine predicts the run alone loses more than `threshold`
    decades (default: the run's threshold, 2) of gradient or forward signal, or gains that
    much through BatchNorm, which residual paths cure; warning when it loses more than
    `warn_decades`; otherwise a note: no loss is predicted at init (gains from too large an
    init are left to GL102), and the depth is a risk for training.

    ## Why it matters
    Plain stacks get harder to optimize with depth even with normalization: a 56-layer
    plain CNN trains to a higher training error than a 20-layer one, which residual
    connections fix (He et al. 2016, "Deep Residual Learning", the degradation problem).
    Through a skip path the gradient reaches early layers without passing every layer's
    Jacobian; without one, each layer's gain compounds (Balduzzi et al. 2017, shattered
    gradients; Yang et al. 2019 for BatchNorm stacks).

    ## Example
    A 16-layer nn.Linear + nn.ReLU MLP with PyTorch's default init: the gradient at the
    first layer is about 5 decades below the last layer's.

    ## Fix
    Group the layers into residual blocks, `x = x + block(x)`, with normalization in the
    block (pre-norm `block = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.ReLU(),
    nn.Linear(w, w))`, or torchvision's BasicBlock for convolutions) and the block's last
    layer zero-initialized (`nn.init.zeros_(block[-1].weight)`). Where the width changes, the
    skip path takes a projection (`nn.Linear(w_in, w_out, bias=False)`, `nn.Conv2d(c_in,
    c_out, 1, stride=s, bias=False)`).

    ## Known limits
    Counts only layers on the trunk: a plain stack inside one branch of a multi-branch
    block is not seen. Well-initialized plain stacks (He init with ReLU) are reported as
    notes only, though the depth still slows their training. A merge of paths with equal
    numbers of layers (parallel branches summed) is not a skip path. Not run on the
    module-order fallback graph, which does not show skip paths.
    """

    code = "GL501"
    name = "missing-skip-path"
    severity = Severity.WARNING
    category = "skip"
    options = {"min_depth": 12, "threshold": None, "warn_decades": 1.0}
    good = (Case(_ResidualMLP, (32, 64)),)
    bad = (Case(_plain_mlp, (32, 64), at="0"),)

    def check(self, result):
        st = structure_of(result)
        if st is None:
            return
        n_min = int(self.opts["min_depth"])
        thr = threshold_of(self, result)
        warn = float(self.opts["warn_decades"])
        for members, span in plain_runs(st, break_on_norm=False, need_activation=False):
            if len(members) < n_min:
                continue
            first = members[0]
            q_ref, lost, gained, collapse, growth, attribution = run_profile(st, members, span)
            has_bn = any(st.node(n).kind == "batch_norm" for n in span)
            bn_gain = gained if has_bn and attribution.get(NORMALIZATION, 0.0) > 0 else 0.0
            loss = max(lost, collapse)
            cost = max(loss, bn_gain)
            sev = Severity.ERROR if cost >= thr else Severity.WARNING if cost >= warn else Severity.INFO
            k = len(members)
            what = f"{k} {layer_type(st, members)} layers in a row ({where(st, members)}) with no skip connection"
            causes = describe_attribution(attribution if lost >= collapse or bn_gain > loss
                                          else st.forward_attribution(span, q_ref))
            if bn_gain >= loss and bn_gain >= warn:
                msg = (f"{what}: through their BatchNorms the gradient grows {bn_gain:.1f} decades toward the "
                       f"input (Yang et al. 2019)")
            elif loss >= warn:
                kind = "gradient" if lost >= collapse else "forward signal (and every later weight's gradient)"
                msg = f"{what}: the {kind} loses {loss:.1f} decades across them"
            elif max(gained, growth) >= warn:
                msg = (f"{what}: the engine predicts no loss across them but {max(gained, growth):.1f} decades of "
                       "growth, which comes from the layers' gain and which skip paths do not remove; plain stacks "
                       "this deep still train worse than residual ones (He et al. 2016)")
            else:
                msg = (f"{what}: the engine predicts the gradient within {max(loss, gained, growth):.1f} decades "
                       f"across them at init, but plain stacks this deep train worse than residual ones "
                       f"(He et al. 2016)")
            if causes and sev != Severity.INFO:
                msg += f" ({causes})"
            yield self.finding(result, msg, fix=self._fix(st, members, span), module=st.node(first).module,
                               node=first, severity=sev, depth=k, first=st.node(first).module,
                               last=st.node(members[-1]).module, lost_decades=round(lost, 3),
                               gained_decades=round(gained, 3), forward_collapse_decades=round(collapse, 3),
                               forward_growth_decades=round(growth, 3), threshold=thr)

    @staticmethod
    def _fix(st: Structure, members: list[str], span: list[str]) -> str:
        act_call = activation_call(activation_name(st, span))
        widths = [out_width(st, n) for n in members]
        w = next((x for x in widths if x), None) or "width"
        changes = len({x for x in widths if x}) > 1
        if st.node(members[0]).kind == "conv":
            d = conv_dims(st, members[0])
            fix = (f"group the layers into residual blocks, out = relu(x + block(x)), as torchvision's BasicBlock:\n"
                   f"block = nn.Sequential(nn.Conv{d}d({w}, {w}, 3, padding=1, bias=False), nn.BatchNorm{d}d({w}), "
                   f"{act_call},\n"
                   f"                      nn.Conv{d}d({w}, {w}, 3, padding=1, bias=False), nn.BatchNorm{d}d({w}))\n"
                   f"with nn.init.zeros_(block[-1].weight) so each block starts as the identity")
            if changes:
                fix += (f"; where the channels or stride change, the skip path takes "
                        f"nn.Sequential(nn.Conv{d}d(c_in, c_out, 1, stride=s, bias=False), nn.BatchNorm{d}d(c_out))")
            return fix
        fix = (f"group the layers into pre-norm residual blocks, x = x + block(x), with\n"
               f"block = nn.Sequential(nn.LayerNorm({w}), nn.Linear({w}, {w}), {act_call}, nn.Linear({w}, {w}))\n"
               f"and nn.init.zeros_(block[-1].weight) so each block starts as the identity")
        if changes:
            fix += "; where the width changes, the skip path takes nn.Linear(w_in, w_out, bias=False)"
        return fix
