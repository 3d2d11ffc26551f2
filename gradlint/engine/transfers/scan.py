"""Diagonal linear recurrences, s_t = a_t ⊙ s_{t−1} + b_t: selective scans (docs/design.md §6, R5).

A state-space model's scan keeps one state per unit (Mamba: per channel d and state n) and
multiplies it by a decay a_t ∈ (0, 1] at every step. Op by op, mean field would multiply
E[s²] by E[a²] at every step, as if each step drew a fresh unit. But the decay is a property
of the unit: Mamba's a = exp(Δ·A) with A = −exp(A_log) fixed per (d, n) and Δ =
softplus(dt + b_dt) dominated by the fixed per-channel bias b_dt. Products over k steps then
average as E_u[Π a²], ruled by the slowly decaying units, not as (E_u[a²])^k: over 32 steps
of HF Mamba's default init the difference is 3 decades of the state's second moment.

So the rule tracks the state per unit. Where the decay is built from parameters and one
input-dependent tensor through element-wise ops (``exp(A ⊗ softplus(z + b))``, a sigmoid
gate, a learned decay), it evaluates that construction per unit on the parameters' own
values, at Gauss–Hermite nodes of the input-dependent part z: E[a²|u] per unit, and for
b_t the relative E[b²|u] where b_t shares that input-dependent factor (Mamba's Δ·B·x). With
a_t independent across steps given the unit, everything is a per-unit product:

    forward   q_t(u) = E[a²|u]·q_{t−1}(u) + E[b_t²|u]
    backward  S_t(u) = s_out,t + E[a²|u]·S_{t+1}(u)        (δ² at s_t)
              s(b_t) = mean_u S_t(u),  s(a_t) = mean_u S_t(u)·q_{t−1}(u),  s(s_0) = mean_u E[a²|u]·S_0(u)

and the long-range gradient under a last-step loss is mean_u Π_{i>t} E[a²|u]. Without such a
construction (meta-device weights, or a decay the evaluator cannot follow) every unit is the
average one, which is op-by-op mean field.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gradlint.base.report import RecurrentReport
from gradlint.capture.graph import Graph, Node
from gradlint.capture.loops import evaluable
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import RECURRENCE, Transfer, register

# Gauss–Hermite nodes for E over the input-dependent part of a decay: the constructions are
# smooth (exp, softplus, sigmoid), where 24 nodes are exact to ~1e-10.
HERMITE_NODES = 24
_ACTS = {
    "softplus": lambda x, n: F.softplus(x, beta=float(n.attrs.get("beta", 1.0) or 1.0),
                                        threshold=float(n.attrs.get("threshold", 20.0) or 20.0)),
    "sigmoid": lambda x, n: torch.sigmoid(x), "tanh": lambda x, n: torch.tanh(x), "relu": lambda x, n: F.relu(x),
    "silu": lambda x, n: F.silu(x), "exp": lambda x, n: torch.exp(x), "gelu": lambda x, n: F.gelu(x),
}


class _Unsupported(Exception):
    pass


@functools.cache
def _gauss_hermite(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes and weights of the n-point rule for E[f(z)], z ~ N(0, 1) (Golub–Welsch)."""
    k = torch.arange(1, n, dtype=torch.float64)
    jacobi = torch.diag(k.sqrt(), 1) + torch.diag(k.sqrt(), -1)
    nodes, vecs = torch.linalg.eigh(jacobi)
    return tuple(nodes.tolist()), tuple((vecs[0] ** 2).tolist())


class _Evaluator:
    """Evaluates a construction of parameters and input-dependent values on the parameters'
    own values. The input-dependent value ``z`` becomes a constant, the others 1 (they are
    factors whose second moments multiply in); each has size 1 in every dim, so the result
    varies only along the dims along which parameters vary: the units of the state.
    ``shift`` adds a constant to one parameter, for derivatives by central differences."""

    def __init__(self, ctx: Context, z: str | None, value: float | torch.Tensor,
                 shift: tuple[str, float] | None = None, others: tuple[str, ...] = ()):
        self.ctx, self.z, self.value, self.shift = ctx, z, value, shift
        self.cache: dict[str, torch.Tensor] = {}
        self.leaves = {z, *others} - {None}

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.cache:
            self.cache[name] = self.eval(self.ctx.graph.by_name[name])
        return self.cache[name]

    def eval(self, n: Node) -> torch.Tensor:
        if n.kind == "param":
            p = self.ctx.model.get_parameter(n.attrs["param"]) if self.ctx.model is not None else None
            if p is None or p.is_meta:
                raise _Unsupported(n.name)
            v = p.detach().double()
            return v + self.shift[1] if self.shift and self.shift[0] == n.attrs["param"] else v
        # A leaf may be an evaluable op itself (mamba-minimal's u = silu(conv(x)), capture.loops):
        # evaluated through, silu(1) would stand for u.
        if n.kind == "const" or not evaluable(n) or n.name in self.leaves:
            if not isinstance(n.shape, tuple) or not all(isinstance(d, int) for d in n.shape) or n.kind == "const":
                raise _Unsupported(n.name)
            ones = torch.ones([1] * len(n.shape), dtype=torch.float64)
            return ones * self.value if n.name == self.z else ones
        xs = [self(i) for i in n.inputs if i is not None]
        op, args = n.attrs.get("op"), n.attrs.get("args", {})
        if n.kind == "identity":
            x = xs[0]
            if op == "unsqueeze":
                return x.unsqueeze(int(args["dim"]))
            if op in ("transpose", "swapaxes"):
                return x.transpose(int(args.get("dim0", 0)), int(args.get("dim1", 1)))
            if op == "permute":
                return x.permute(*[int(d) for d in args["dims"]])
            if op == "squeeze":
                dims = args.get("dim")
                if dims is None:
                    raise _Unsupported(n.name)
                return x.squeeze(tuple(int(d) for d in (dims if isinstance(dims, (list, tuple)) else [dims])))
            return x  # casts and expands: broadcasting does the rest
        if n.kind == "act":
            return _ACTS[str(n.attrs.get("fn"))](xs[0], n)
        if n.kind == "elementwise":
            return n.attrs["target"](xs[0])
        scalar = n.attrs.get("scalar")
        if n.kind == "mul":
            if len(xs) == 2:
                return xs[0] / xs[1] if op == "div" else xs[0] * xs[1]
            if not isinstance(scalar, (int, float)):
                raise _Unsupported(n.name)
            if op == "div":
                return scalar / xs[0] if n.attrs.get("scalar_first") else xs[0] / scalar
            return xs[0] * scalar
        alpha = float(n.attrs.get("alpha", 1) or 1)  # add
        if len(xs) == 2:
            return xs[1] - alpha * xs[0] if op == "rsub" else xs[0] + alpha * xs[1]
        if not isinstance(scalar, (int, float)):
            raise _Unsupported(n.name)
        return scalar - alpha * xs[0] if op == "rsub" else xs[0] + alpha * scalar


def _params_of(g: Graph, root: str) -> list[str]:
    """The parameters a construction reads through evaluable ops."""
    out, stack, seen = [], [root], set()
    while stack:
        cur = stack.pop()
        if cur in seen:
            continue
        seen.add(cur)
        n = g.by_name[cur]
        if n.kind == "param":
            out.append(n.attrs["param"])
        elif evaluable(n):
            stack.extend(i for i in n.inputs if i is not None)
    return sorted(set(out))


def _unit_bias(ctx: Context, z: Node) -> torch.Tensor | None:
    """The bias of the Linear that makes the decay's input-dependent value, when it has one
    (Mamba's dt_proj): fixed per channel, it makes some units decay slowly at every step, and
    products over steps are ruled by those units, so it is no part of z's randomness."""
    name = z.params.get("bias") if z.kind == "linear" else None
    if not name or ctx.model is None or not isinstance(z.shape, tuple) or not z.shape:
        return None
    try:
        b = ctx.model.get_parameter(name)
    except AttributeError:
        return None
    if b.is_meta or b.dim() != 1 or b.numel() != z.shape[-1]:
        return None
    return b.detach().double()


def _numel(n: Node) -> int:
    return math.prod(n.shape) if isinstance(n.shape, tuple) and all(isinstance(d, int) for d in n.shape) else 0


@dataclass
class Units:
    """Per unit u of the state (flattened), what the scan's rules need, averaged over the
    input-dependent part z of the decay (Gauss–Hermite) and multiplied by the second moments
    of b's other factors.

    Attributes:
        ea2: E[a²|u].
        eb2: E[b²|u].
        da_dz: E[(∂a/∂z)²|u].
        db_dz: E[(∂b/∂z)²|u].
        db_dx: Per other factor X of b, E[(∂b/∂X)²|u].
        da_dp: Per parameter of a's construction, E[(∂a/∂θ)²|u] (θ the element of the
            parameter that unit reads).
        db_dp: The same for b.
        ma_z: E[(∂a/∂z)·a|u], signed: what makes a unit's δ at two steps add coherently.
        ma_p: Per parameter of a's construction, E[(∂a/∂θ)·a|u].
    """

    ea2: torch.Tensor
    eb2: torch.Tensor
    da_dz: torch.Tensor
    db_dz: torch.Tensor
    db_dx: dict[str, torch.Tensor]
    da_dp: dict[str, torch.Tensor]
    db_dp: dict[str, torch.Tensor]
    ma_z: torch.Tensor
    ma_p: dict[str, torch.Tensor]


def unit_stats(ctx: Context, node: Node) -> Units | None:
    """The per-unit statistics of a scan whose decay and input constructions capture found
    (``capture.loops``), on the parameters' values; None when they cannot be evaluated
    (meta-device parameters, an op the evaluator does not know, non-finite values)."""
    at = node.attrs
    if not at.get("a_root") or ctx.model is None:
        return None
    g, fwd = ctx.graph, ctx.forward
    z, others = at.get("z"), list(at.get("others") or [])
    zf = fwd.get(z) if z else None
    if z is not None and not isinstance(zf, Fwd):
        return None
    q_other = {x: fwd[x].q if isinstance(fwd.get(x), Fwd) else math.nan for x in others}
    mu, sd = (zf.mu, math.sqrt(zf.v)) if zf is not None else (0.0, 0.0)
    offset: float | torch.Tensor = 0.0
    bias = _unit_bias(ctx, g.by_name[z]) if z is not None else None
    if bias is not None and zf is not None:
        # z = r + b_u: the random part r is the same for every unit, the bias is the unit's own.
        mu_r = zf.mu - float(bias.mean())
        mu, sd = mu_r, math.sqrt(max(zf.q - float(((mu_r + bias) ** 2).mean()), 0.0))
        offset = bias.reshape([1] * (len(zf.shape) - 1) + [-1])
    nodes, weights = _gauss_hermite(HERMITE_NODES) if z is not None else ((0.0,), (1.0,))
    pa, pb = _params_of(g, at["a_root"]), _params_of(g, at["b_root"])
    acc: dict[str, torch.Tensor] = {}

    def add(key: str, w: float, v: torch.Tensor, a: torch.Tensor | None = None) -> None:
        acc[key] = acc[key] + w * v * v if key in acc else w * v * v
        if a is not None:  # the signed first moment E[v·a] as well
            acc["m" + key] = acc["m" + key] + w * v * a if "m" + key in acc else w * v * a

    try:
        for x, w in zip(nodes, weights):
            zk = mu + sd * x + offset

            def ev(root: str, zv: float | torch.Tensor = zk, shift: tuple[str, float] | None = None) -> torch.Tensor:
                return _Evaluator(ctx, z, zv, shift, tuple(others))(root)

            a_k = ev(at["a_root"])
            add("a", w, a_k)
            add("b", w, ev(at["b_root"]))
            if z is not None:
                h = 1e-5 * max(1.0, float(abs(torch.as_tensor(zk)).max()))
                add("a_z", w, (ev(at["a_root"], zk + h) - ev(at["a_root"], zk - h)) / (2 * h), a_k)
                add("b_z", w, (ev(at["b_root"], zk + h) - ev(at["b_root"], zk - h)) / (2 * h))
            for side, names in (("a", pa), ("b", pb)):
                for p in names:
                    h = 1e-5 * max(1.0, float(ctx.model.get_parameter(p).detach().abs().max()))
                    add(f"{side}_p:{p}", w, (ev(at[f"{side}_root"], shift=(p, h))
                                             - ev(at[f"{side}_root"], shift=(p, -h))) / (2 * h),
                        a_k if side == "a" else None)
    except (_Unsupported, KeyError, RuntimeError, AttributeError, TypeError, ValueError, IndexError):
        return None
    shape = torch.broadcast_shapes(*(v.shape for v in acc.values()))
    flat = {k: v.expand(shape).flatten() for k, v in acc.items()}
    if not all(bool(torch.isfinite(v).all()) for v in flat.values()) or not all(
            math.isfinite(q) for q in q_other.values()):
        return None
    prod_q = math.prod(q_other.values())
    zero = torch.zeros_like(flat["a"])
    return Units(
        ea2=flat["a"], eb2=flat["b"] * prod_q, da_dz=flat.get("a_z", zero), db_dz=flat.get("b_z", zero) * prod_q,
        db_dx={x: flat["b"] * prod_q / q_other[x] if q_other[x] > 0 else zero for x in others},
        da_dp={p: flat[f"a_p:{p}"] for p in pa}, db_dp={p: flat[f"b_p:{p}"] * prod_q for p in pb},
        ma_z=flat.get("ma_z", zero), ma_p={p: flat[f"ma_p:{p}"] for p in pa})


@register("scan")
class Scan(Transfer):
    """``s_t = a_t ⊙ s_{t−1} + b_t`` over T steps, fused: inputs (s_init, a_0 … a_{T−1}, b_0 … b_{T−1},
    then the input-dependent values the decay and the input are built from), outputs
    s_0 … s_{T−1} (R5, module docstring)."""

    cause = RECURRENCE

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        T = int(node.attrs["steps"])
        s0, a, b = ins[0], ins[1:1 + T], ins[1 + T:1 + 2 * T]
        shapes = node.shape if isinstance(node.shape, tuple) else ()
        if not all(isinstance(x, Fwd) for x in (*a, *b)):
            ctx.note_unknown(node)
            first = next((f for f in ins if isinstance(f, Fwd)), Fwd(q=0.0))
            return tuple(first for _ in range(T))
        units = unit_stats(ctx, node)
        if units is not None:
            ea2 = units.ea2.expand(T, -1)
            eb2 = units.eb2.expand(T, -1)
        else:
            # Without the parameters' values (meta device) or with an op the evaluator does not
            # know, the decay exp(Δ·A) is a guess: op-by-op mean field took Mamba's scan for +78
            # decades of growth where it measures -9. The shapes still flow; the numbers are unknown.
            ctx.note_unknown(node)
            ea2 = torch.tensor([[x.q] for x in a], dtype=torch.float64)
            eb2 = torch.tensor([[x.q] for x in b], dtype=torch.float64)
        q_u = torch.full_like(ea2[0], s0.q if isinstance(s0, Fwd) else 0.0)
        history = []
        for t in range(T):
            history.append(q_u)
            q_u = ea2[t] * q_u + eb2[t]
        history.append(q_u)
        ctx.memo[node.name] = (units, ea2, torch.stack(history))  # history[t] = q(s_{t−1}) per unit
        out = []
        for t in range(T):
            shape = shapes[t] if t < len(shapes) and isinstance(shapes[t], tuple) else b[t].shape
            roles = b[t].roles if len(b[t].roles) == len(shape) else default_roles(shape)
            out.append(Fwd(q=float(history[t + 1].mean()), shape=shape, roles=roles))
        return tuple(out)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out, g):
        T = int(node.attrs["steps"])
        if node.name not in ctx.memo:
            return [None] * len(ins)
        units, ea2, history = ctx.memo[node.name]
        gs = list(g) if isinstance(g, (tuple, list)) else [g]
        s_out = [x.s if isinstance(x, Bwd) else 0.0 for x in gs] + [0.0] * T
        S = torch.zeros_like(ea2[0])
        per_s = []  # δ² at s_t per unit, t = T−1 … 0
        for t in range(T - 1, -1, -1):
            S = s_out[t] + (ea2[t + 1] * S if t + 1 < T else torch.zeros_like(S))
            per_s.append(S)
        per_s.reverse()
        Ss = torch.stack(per_s)  # (T, U)
        Sa = Ss * history[:T]  # δ² at a_t: δs_t · s_{t−1}
        s_init = float((ea2[0] * Ss[0]).mean())
        lag = torch.ones_like(ea2[0])
        lags = [0.0] * T
        for t in range(T - 1, -1, -1):
            lags[t] = float(lag.mean())
            lag = lag * ea2[t]
        rms = tuple(math.sqrt(max(v, 0.0)) for v in lags)
        if units is not None:  # a guessed decay is no report (the verdict is unknown instead)
            ctx.recurrent.append(RecurrentReport(
                node=node.name, module=node.module, mode="scan", steps=T,
                input_grad_rms=tuple(math.sqrt(max(float(v), 0.0)) for v in Ss.mean(1)),
                lag_grad_rms=rms, lag_grad_rms_bound=rms, form="scan"))
        back: list[Bwd | None] = [Bwd(s_init)] + [None] * (len(ins) - 1)
        if units is None:
            for t in range(T):
                back[1 + t] = Bwd(float(Sa[t].mean()))
                back[1 + T + t] = Bwd(float(Ss[t].mean()))
            return back
        # The constructions of a and b are this rule's: δ goes to what they are built from.
        at, gr = node.attrs, ctx.graph
        n_a, n_b = _numel(gr.by_name[at["a_root"]]), _numel(gr.by_name[at["b_root"]])
        T_ = float(T)
        # Sum over steps pairs t < t' of δa_t·δa_t' for one unit (per unit, without the
        # derivative factors): S_t'·q_{t−1}·E[a²]^{t'−t−1}, and the E[J·a] factors of both ends.
        R = torch.zeros_like(ea2[0])
        pairs = torch.zeros_like(ea2[0])
        for t in range(T):
            pairs = pairs + Ss[t] * R
            R = ea2[t] * R + history[t]

        def mean_a(d: torch.Tensor, m: torch.Tensor | None = None) -> float:
            """Mean over steps and units of E[(∂a/∂·)²]·E[δa²], plus the coherent sum over pairs of
            steps: a unit's δa at two steps share its state and its future (both ∝ E[J·a]²)."""
            cross = 2.0 * (m * m * pairs).mean() / T_ if m is not None else 0.0
            return float((d * Sa).mean() + cross)

        def mean_b(d: torch.Tensor) -> float:
            return float((d * Ss).mean())

        leaf_s: dict[str, float] = {}
        leaf_r: dict[str, float] = {}
        if at.get("z"):
            n_z = _numel(gr.by_name[at["z"]])
            leaf_s[at["z"]] = (n_a * float((units.da_dz * Sa).mean()) + n_b * mean_b(units.db_dz)) / max(n_z, 1)
            if T > 1:
                leaf_r[at["z"]] = n_a / max(n_z, 1) * float((2.0 * units.ma_z ** 2 * pairs).mean()) / (T - 1)
        for x, d in units.db_dx.items():
            leaf_s[x] = leaf_s.get(x, 0.0) + n_b * mean_b(d) / max(_numel(gr.by_name[x]), 1)
        for side, derivs, n in (("a", units.da_dp, n_a), ("b", units.db_dp, n_b)):
            for p, d in derivs.items():
                st = ctx.stats.get(p)
                if st is not None:
                    ctx.param_grad(p, n * (mean_a(d, units.ma_p[p]) if side == "a" else mean_b(d)) / max(st.numel, 1))
        for k, name in enumerate(node.inputs[1 + 2 * T:], start=1 + 2 * T):
            if name in leaf_s:
                back[k] = Bwd(leaf_s.pop(name), leaf_r.pop(name, 0.0))
        return back
