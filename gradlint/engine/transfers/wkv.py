"""RWKV time mixing (WKV): a causal average of values with positive weights (docs/design.md §4.12).

Both spellings ``capture.wkv`` recognises compute, per channel c and position t,

    o_t = Σ_{i≤t} N_c[t, i]·e^{z_i}·v_i  /  Σ_{i≤t} M_c[t, i]·e^{z_i}

* ``decay`` (RWKV-4, HF ``rwkv_linear_attention_cpu``): N = M, N[t, i] = e^{−(t−1−i)·w_c} for
  i < t and e^{u_c} at i = t, w_c = exp(time_decay_c), u_c = time_first_c. A convex combination
  of the values: the logits z_i + log N[t, i] go through a softmax over i ≤ t.
* ``matrix`` (RWKV-v1): N = the per-head decay matrix D_h, M = ones (a running sum of e^{z}).

Op by op this is a division by a tensor that may reach zero (unknown, E3), and the weights
and the values' average are not independent. As one unit its moments follow from the weights'
spread, as in attention (§4.6), but the weights here differ per channel (its own decay) and
per position (fixed offsets), which no closed form of S1 covers. So the rule evaluates the
unit itself: with the parameters' own values, on Gaussian z and v of the input moments
(a shared-over-positions part kt − μ² and a per-position part q − kt, as the state models
them), a fixed-seed Monte Carlo of the forward and, with δo of the incoming s and r, of the
backward by autograd. Units: every channel in the ``decay`` form, every head in the
``matrix`` form (channels of one head are exchangeable). Parameters get their per-sample
gradient's mean square times the rows that share them (W7: B samples; B·channels per head
for D).
"""

from __future__ import annotations

import math

import torch

from gradlint.base.report import RecurrentReport
from gradlint.capture.graph import Node
from gradlint.engine.context import Context
from gradlint.engine.state import Bwd, Fwd, default_roles
from gradlint.engine.transfers.registry import ATTENTION, Transfer, register
from gradlint.engine.transfers.structural import Unknown
from gradlint.engine.transfers.wkv_values import constant_value, params_of

# Elements of one dense (samples × units × T × T) weight tensor the simulation may hold, and the
# bounds on the samples per unit (matrix form, decay form): docs/design.md §4.12 gives the
# spread over seeds these leave.
_BUDGET = 1 << 22
_SAMPLES = (8, 256, 512)
_SEED = 20250207


class _Unit:
    """The parameters of one recognised time mixing, on their own values (float64)."""

    def __init__(self, ctx: Context, node: Node):
        at = node.attrs
        self.form = at["form"]
        self.T = int(at["steps"])
        model = ctx.model
        if model is None:
            raise LookupError("no model")
        if self.form == "decay":
            theta = model.get_parameter(at["decay"])
            first = model.get_parameter(at["first"])
            if theta.is_meta or first.is_meta:
                raise LookupError("meta parameters")
            self.theta = theta.detach().double().reshape(-1)
            self.first = first.detach().double().reshape(-1)
            self.units = self.theta.numel()
            self.share = 1
            channels = node.shape[-1] if isinstance(node.shape, tuple) and node.shape else None
            if self.first.numel() != self.units or channels != self.units:
                raise LookupError("one decay and one bonus per channel expected")
        else:
            d = constant_value(ctx, node.inputs[2])
            if d is None:
                raise LookupError("decay matrix not evaluable")
            perm = at["perm"]
            self.D = d.double().permute(*perm)  # (heads, t, i)
            self.units = self.D.shape[0]
            if tuple(self.D.shape[1:]) != (self.T, self.T) or int(at["channels"]) % self.units:
                raise LookupError("decay matrix of another shape")
            self.share = int(at["channels"]) // self.units
        if not all(bool(torch.isfinite(x).all()) for x in self.leaves()):
            raise LookupError("non-finite parameters")

    def leaves(self) -> list[torch.Tensor]:
        return [self.theta, self.first] if self.form == "decay" else [self.D]

    def samples(self) -> int:
        if self.form == "matrix":
            return max(_SAMPLES[0], min(_SAMPLES[1], _BUDGET // max(self.units * self.T * self.T, 1)))
        # The loop holds (samples × units) per step: more samples for the same memory, which the
        # long-range gradient needs (it is ruled by the few slowest-decaying channels).
        return max(_SAMPLES[0], min(_SAMPLES[2], _BUDGET // max(self.units * self.T * 4, 1)))

    def outputs(self, z: torch.Tensor, v: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """o (n, U, T) from z, v (n, U, T) and per-sample copies of the parameters."""
        e = torch.exp(z - z.detach().amax(-1, keepdim=True))  # a common shift cancels in the ratio
        if self.form == "matrix":
            (D,) = params
            T = self.T
            tril = torch.ones(T, T, dtype=z.dtype).tril()
            num = (D * (e * v).unsqueeze(-2)).sum(-1)
            den = (tril * e.unsqueeze(-2)).sum(-1)
            return num / den
        theta, first = params
        decay, boost = torch.exp(-torch.exp(theta)), torch.exp(first)
        num = torch.zeros_like(z[..., 0])
        den = torch.zeros_like(z[..., 0])
        out = []
        # unbind, not e[..., t]: the backward of each strided slice would write a full-size zero
        # tensor per step (5x the whole simulation's time at T = 32).
        for et, vt in zip(e.unbind(-1), v.unbind(-1)):
            now = boost * et
            out.append((num + now * vt) / (den + now))
            num = decay * num + et * vt
            den = decay * den + et
        return torch.stack(out, -1)


def _draw(gen: torch.Generator, shape: tuple[int, int, int], f: Fwd) -> torch.Tensor:
    """Gaussian values with f's moments: a part shared over positions (kt − μ²) and one per position."""
    mu2 = f.mu * f.mu
    shared = max(f.kt - mu2, 0.0)
    own = max(f.q - mu2 - shared, 0.0)
    n, u, t = shape
    return (f.mu + math.sqrt(shared) * torch.randn(n, u, 1, generator=gen, dtype=torch.float64)
            + math.sqrt(own) * torch.randn(n, u, t, generator=gen, dtype=torch.float64))


def _pair_mean(x: torch.Tensor) -> float:
    """Mean over ordered pairs of distinct positions (last dim) of x_t·x_t'."""
    T = x.shape[-1]
    if T < 2:
        return 0.0
    tot = x.sum(-1)
    return float(((tot * tot - (x * x).sum(-1)).mean()) / (T * (T - 1)))


def _setup(ctx: Context, node: Node, ins: list[Fwd]):
    unit = _Unit(ctx, node)
    z, v = ins[0], ins[1]
    gen = torch.Generator().manual_seed(_SEED)
    shape = (unit.samples(), unit.units, unit.T)
    zs = _draw(gen, shape, z).requires_grad_(True)
    vs = _draw(gen, shape, v).requires_grad_(True)
    params = [p.unsqueeze(0).expand(shape[0], *p.shape).clone().requires_grad_(True) for p in unit.leaves()]
    return unit, gen, zs, vs, params


@register("wkv")
class Wkv(Transfer):
    """RWKV time mixing, fused (module docstring): inputs (z, v) and, in the ``matrix`` form, the
    decay matrix; output o of v's shape."""

    cause = ATTENTION

    def forward(self, ctx: Context, node: Node, ins: list[Fwd]):
        z, v = ins[0], ins[1]
        if not isinstance(z, Fwd) or not isinstance(v, Fwd):
            return Unknown().forward(ctx, node, ins)
        try:
            unit, _, zs, vs, params = _setup(ctx, node, ins)
        except (LookupError, RuntimeError, ValueError, KeyError, AttributeError, IndexError):
            return Unknown().forward(ctx, node, ins)
        shared = max(v.k - v.mu * v.mu, 0.0)
        with torch.no_grad():
            o = unit.outputs(zs, vs, params)
            # Two samples share only v's common part, weighted by each one's (independent)
            # coefficients: Σ_i of them per t, averaged over samples, squared.
            coef = float((unit.outputs(zs, torch.ones_like(vs), params).mean(0) ** 2).mean()) if shared else 0.0
        if not bool(torch.isfinite(o).all()):
            return Unknown().forward(ctx, node, ins)
        q, mu = float((o * o).mean()), float(o.mean())
        kt = _pair_mean(o)
        k = mu * mu + shared * coef
        shape = node.shape if isinstance(node.shape, tuple) else v.shape
        roles = v.roles if len(v.roles) == len(shape) else default_roles(shape)
        return Fwd(q=q, mu=mu, k=min(k, q), kt=min(kt, q), shape=shape, roles=roles, origin=node.name)

    def backward(self, ctx: Context, node: Node, ins: list[Fwd], out: Fwd, g: Bwd):
        if not isinstance(ins[0], Fwd) or not isinstance(ins[1], Fwd):
            return Unknown().backward(ctx, node, ins, out, g)
        try:
            unit, gen, zs, vs, params = _setup(ctx, node, ins)
        except (LookupError, RuntimeError, ValueError, KeyError, AttributeError, IndexError):
            return Unknown().backward(ctx, node, ins, out, g)
        lag = bool(node.attrs.get("lag_inputs"))
        if g.s <= 0.0 and g.r <= 0.0 and not lag:
            # No gradient reaches the output (RWKV_Init zeroes the output projection): none
            # passes, and the parameters provably get none.
            for p in [*node.params.values(), *(node.attrs.get("params") or ())]:
                ctx.param_grad(p, 0.0)
            return [Bwd() if isinstance(f, Fwd) and not f.const else None for f in ins[:2]] + [None] * (len(ins) - 2)
        n, U, T = zs.shape
        o = unit.outputs(zs, vs, params)
        d = (math.sqrt(max(g.s - max(g.r, 0.0), 0.0)) * torch.randn(n, U, T, generator=gen, dtype=torch.float64)
             + math.sqrt(max(g.r, 0.0)) * torch.randn(n, U, 1, generator=gen, dtype=torch.float64))
        grads = torch.autograd.grad((d * o).sum(), [zs, vs, *params], retain_graph=lag)
        dz, dv, dp = grads[0], grads[1], grads[2:]
        back: list[Bwd | None] = [None] * len(ins)
        if not ins[0].const:
            # Σ_t δz_t = 0 exactly (the weights do not change when every z_t shifts alike): keep
            # s + (T − 1)·r, what a bias on z receives, from falling below 0 by rounding.
            s_z = float((dz * dz).mean())
            back[0] = Bwd(s_z, max(_pair_mean(dz), -s_z / max(T - 1, 1)))
        if not ins[1].const:
            back[1] = Bwd(float((dv * dv).mean()), _pair_mean(dv))
        batch = ctx.batch_of(math.prod(out.shape[:-1])) if out.shape else 1
        rows = batch * unit.share  # independent samples (and channels of a head) sharing a parameter
        if unit.form == "decay":
            for name, grad in zip((node.attrs["decay"], node.attrs["first"]), dp):
                ctx.param_grad(name, rows * float((grad * grad).mean()))
        else:
            # D is built from parameters (time_w tiled into a circulant, times time_alpha and
            # time_beta): each sample's δD goes back through that construction exactly, and the
            # parameters book the result; op by op the tiling's copies would add as independent.
            names = params_of(ctx, node.inputs[2])
            given = {p: ctx.model.get_parameter(p).detach().double().requires_grad_(True) for p in names}
            built = constant_value(ctx, node.inputs[2], given)
            if built is None:
                return Unknown().backward(ctx, node, ins, out, g)
            built = built.permute(*node.attrs["perm"])
            acc = {p: 0.0 for p in names}
            for i in range(n):
                gi = torch.autograd.grad(built, list(given.values()), dp[0][i], retain_graph=True, allow_unused=True)
                for p, x in zip(names, gi):
                    acc[p] += float((x * x).mean()) / n if x is not None else 0.0
            for p, e2 in acc.items():
                ctx.param_grad(p, rows * e2)
        if lag:
            self._report(ctx, node, unit, zs, vs, o, dz, dv, gen)
        return back

    @staticmethod
    def _report(ctx: Context, node: Node, unit: _Unit, zs, vs, o, dz, dv, gen) -> None:
        """The long-range gradient as a loop's (§6): loss on the last step's output only, the RMS
        gradient at each step's inputs (z_t and v_t together, as the probe measures them)."""
        e = torch.randn(o[..., -1].shape, generator=gen, dtype=torch.float64)
        lz, lv = torch.autograd.grad((e * o[..., -1]).sum(), [zs, vs])
        lag = ((lz * lz + lv * lv) / 2).mean((0, 1))
        main = ((dz * dz + dv * dv) / 2).mean((0, 1))
        rms = tuple(math.sqrt(max(float(x), 0.0)) for x in lag)
        ctx.recurrent.append(RecurrentReport(
            node=node.name, module=node.module, mode="wkv", steps=unit.T,
            input_grad_rms=tuple(math.sqrt(max(float(x), 0.0)) for x in main),
            lag_grad_rms=rms, lag_grad_rms_bound=rms, form="loop"))
