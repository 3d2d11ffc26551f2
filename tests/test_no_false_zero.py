"""No false zero, and gates: small models of each case issue 14 found in public code, each
predicted against a real backward pass of the model itself (tests/helpers.py Trials).

Before the fixes these cases were predicted exactly zero (or several decades off); every
parameter here gets a gradient in a backward pass, so each must get a positive prediction
close to it.
"""

from __future__ import annotations

import math
import statistics
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import Trials

import gradlint


def _check_all(t: Trials, floor: float, names: list[str] | None = None):
    names = names or [p.name for p in t.report.params]
    for report, _ in t.pairs:
        preds = {p.name: p.predicted_grad_rms for p in report.params}
        for n in names:
            assert preds[n] is not None and preds[n] > 0, f"{n}: predicted {preds[n]}"
    for n in names:
        t.check_param(n, floor)


class Highway(nn.Module):
    """y = relu(H(x))·T + x·(1 - T), T = sigmoid of the same input, the gate bias -2."""

    def __init__(self, width: int = 64, depth: int = 4):
        super().__init__()
        self.h = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.t = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        for gate in self.t:
            nn.init.constant_(gate.bias, -2.0)

    def forward(self, x):
        for h, t in zip(self.h, self.t):
            g = torch.sigmoid(t(x))
            x = torch.relu(h(x)) * g + x * (1 - g)
        return x


@pytest.mark.slow
def test_highway_gate_and_its_complement():
    """1 - g is c - x (rsub), not x + c: the carry gate's mean was 1.12 instead of 0.88 and the
    20-layer network came out +3.4 decades per weight (benchmarks/realworld.py highway-20)."""
    t = Trials(Highway, (32, 64), seeds=4)
    _check_all(t, 0.1, [f"{k}.{i}.weight" for k in "ht" for i in (0, 3)])


class CrossAttention(nn.Module):
    """Decoder queries (4 positions) over encoder keys and values (32 positions)."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, mem):
        b, tq, d = x.shape
        heads = lambda y: y.view(b, y.shape[1], 4, d // 4).transpose(1, 2)
        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(mem)), heads(self.v(mem)))
        return self.o(y.transpose(1, 2).reshape(b, tq, d))


@pytest.mark.slow
def test_cross_attention_keys_and_values_from_another_sequence():
    """Each key/value position collects T_q/T_k of the queries' gradient, not all of it."""
    t = Trials(CrossAttention, lambda: (torch.randn(8, 4, 64), torch.randn(8, 32, 64)))
    _check_all(t, 0.1, ["k.weight", "v.weight", "q.weight", "o.weight"])


class WeightNormed(nn.Module):
    def __init__(self):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.a = nn.utils.weight_norm(nn.Conv1d(32, 64, 3, padding=1))
        self.b = nn.utils.parametrizations.weight_norm(nn.Linear(64, 32))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).transpose(1, 2))


def test_weight_norm_g_v_and_bias():
    """The weight is computed in forward (g·v/‖v‖): g, v and the bias were predicted 0 or None."""
    t = Trials(WeightNormed, (8, 32, 16))
    _check_all(t, 0.15, ["a.weight_v", "a.bias", "b.parametrizations.weight.original1"])


class CausalDepthwise(nn.Module):
    """Mamba's conv1d: depthwise, causal padding sliced back to the length, the weight reshaped
    in forward (weight.squeeze(1).unsqueeze(1))."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.conv = nn.Conv1d(d, d, 4, groups=d, padding=3)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        t = x.shape[1]
        h = self.inp(x).transpose(1, 2)
        w = self.conv.weight.squeeze(1).unsqueeze(1)
        h = F.conv1d(h, w, self.conv.bias, padding=3, groups=h.shape[1])[..., :t]
        return self.out(F.silu(h).transpose(1, 2))


@pytest.mark.slow
def test_depthwise_causal_conv_with_a_reshaped_weight():
    t = Trials(CausalDepthwise, (8, 16, 64), seeds=4)
    _check_all(t, 0.1, ["inp.weight", "conv.weight", "out.weight"])


class Prealloc(nn.Module):
    """A hand-written RNN cell writing each step into a preallocated tensor."""

    def __init__(self, inp: int = 32, hidden: int = 64):
        super().__init__()
        self.wx = nn.Linear(inp, hidden)
        self.wh = nn.Linear(hidden, hidden, bias=False)
        self.hidden = hidden

    def forward(self, x):
        out = x.new_zeros(x.shape[0], x.shape[1], self.hidden)
        h = x.new_zeros(x.shape[0], self.hidden)
        for i in range(x.shape[1]):
            h = torch.tanh(self.wx(x[:, i]) + self.wh(h))
            out[:, i] = h
        return out


def test_writes_into_a_preallocated_tensor():
    """out[:, t] = h: everything that made the written values was predicted zero."""
    t = Trials(Prealloc, (8, 6, 32))
    preds = {p.name: p.predicted_grad_rms for p in t.report.params}
    assert all(v is not None and v > 0 for v in preds.values()), preds
    t.check_param("wx.weight", 0.15)


class Scatter(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)

    def forward(self, x):
        y = self.a(x)
        buf = torch.zeros_like(y)
        buf = buf.index_copy(1, torch.arange(0, y.shape[1], 2, device=y.device), torch.relu(y[:, ::2]))
        return self.b(buf)


def test_index_copy_into_a_buffer():
    t = Trials(Scatter, (8, 16, 64))
    _check_all(t, 0.1, ["a.weight", "b.weight"])


class LastPosition(nn.Module):
    """nanoGPT's inference path: the head reads x[:, [-1], :] only."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head(torch.relu(self.a(x))[:, [-1], :])


def _backward_rms(build, shape, seeds: int = 6) -> dict[str, float]:
    """log10 RMS gradient per parameter, mean over seeds, of a float64 backward pass with the
    loss sum(g * y), g ~ N(0, 1) (the protocol of docs/design.md §1)."""
    logs: dict[str, list[float]] = {}
    for i in range(seeds):
        torch.manual_seed(1000 + i)
        model = build().double()
        y = model(torch.randn(*shape, dtype=torch.float64))
        (torch.randn_like(y) * y).sum().backward()
        for n, p in model.named_parameters():
            logs.setdefault(n, []).append(math.log10(p.grad.pow(2).mean().sqrt().item()))
    return {n: statistics.mean(v) for n, v in logs.items()}


def test_list_index_of_the_last_position():
    """x[:, [-1], :] keeps one position of 16: the layer before gets 1/16 of the gradient.
    (Measured here directly: gradlint's probing measure() reads this model's head gradient
    as 0 or inf.)"""
    report = gradlint.check(LastPosition(), (8, 16, 64))
    measured = _backward_rms(LastPosition, (8, 16, 64))
    for p in report.params:
        assert p.predicted_grad_rms and p.predicted_grad_rms > 0, p
        if p.name.endswith("weight"):
            assert abs(math.log10(p.predicted_grad_rms) - measured[p.name]) < 0.1, (p, measured[p.name])


class Extremum(nn.Module):
    """torch.maximum / torch.minimum of two branches (RWKV keeps a running maximum)."""

    def __init__(self, op, d: int = 64):
        super().__init__()
        self.op = op
        self.a, self.b, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        nn.init.normal_(self.b.weight, std=2.0 / d ** 0.5)  # unequal variances: P(a taken) != 1/2
        nn.init.constant_(self.b.bias, 0.5)

    def forward(self, x):
        return self.out(self.op(self.a(x), self.b(x) - 0.3))


@pytest.mark.parametrize("op", [torch.maximum, torch.minimum], ids=["maximum", "minimum"])
def test_elementwise_maximum_and_minimum(op):
    """An op without a rule is unknown, never zero; maximum/minimum have one (Clark's moments)."""
    t = Trials(lambda: Extremum(op), (16, 64), seeds=4)
    _check_all(t, 0.05, ["a.weight", "b.weight", "out.weight"])


class SwiGLU(nn.Module):
    """LLaMA's feed-forward: w2(silu(w1 x) * w3 x), both factors computed from the same x."""

    def __init__(self, d: int = 64, hidden: int = 128):
        super().__init__()
        self.w1, self.w3 = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class HandLSTMStep(nn.Module):
    """Two LSTM steps written by hand: c = f·c + i·g, h = o·tanh(c), gates from one Linear."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.gates = nn.Linear(2 * d, 4 * d)
        self.d = d

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], self.d)
        for step in range(2):
            i, f, g, o = self.gates(torch.cat([x[:, step], h], -1)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return h


@pytest.mark.parametrize("build,shape,floor", [
    (SwiGLU, (16, 64), 0.05),
    (HandLSTMStep, (32, 2, 64), 0.1),
], ids=["swiglu", "hand-lstm"])
def test_multiplicative_gates(build, shape, floor):
    """Gates from independent projections of the same input multiply as independent factors
    (E3): GLU/SwiGLU and a hand-written LSTM cell."""
    t = Trials(build, shape, seeds=4)
    _check_all(t, floor)


class Fused(nn.Module):
    """addcmul / addcdiv / lerp: fused sums of products that had no rule (all unknown)."""

    def __init__(self, op: str, d: int = 64):
        super().__init__()
        self.op = op
        self.a, self.b, self.c, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        a, b, c = self.a(x), torch.tanh(self.b(x)), self.c(x)
        if self.op == "addcmul":
            y = torch.addcmul(a, b, c, value=0.5)
        elif self.op == "addcdiv":
            y = torch.addcdiv(a, c, torch.sigmoid(b) + 1.0, value=0.5)
        else:
            y = torch.lerp(a, c, 0.3)
        return self.out(y)


@pytest.mark.parametrize("op", ["addcmul", "addcdiv", "lerp"])
def test_fused_sums_of_products(op):
    t = Trials(lambda: Fused(op), (16, 64), seeds=4)
    names = ["a.weight", "c.weight", "out.weight"] + (["b.weight"] if op != "lerp" else [])
    _check_all(t, 0.1, names)


class CopyHead(nn.Module):
    """RWKV-v1's copy head: (q kᵀ) @ one_hot(idx), ids computed from the input."""

    def __init__(self, d: int = 64, vocab: int = 50):
        super().__init__()
        self.q, self.k, self.vocab = nn.Linear(d, 32), nn.Linear(d, 32), vocab

    def forward(self, x):
        idx = (x[..., 0].abs() * 1000).long() % self.vocab
        c = self.q(x) @ self.k(x).transpose(-2, -1)
        return c @ F.one_hot(idx, num_classes=self.vocab).to(c.dtype)


def test_product_with_a_one_hot():
    """one_hot(idx) holds one 1 among V codes (q = 1/V): c @ it hands each entry of c one code's
    gradient. Before, one_hot kept its ids' statistics: RWKV-v1's head_q/head_k came out 0 (ids
    of q = 0), this head +3.9 decades over."""
    report = gradlint.check(CopyHead(), (8, 16, 64))
    measured = _backward_rms(CopyHead, (8, 16, 64))
    for p in report.params:
        assert p.predicted_grad_rms and p.predicted_grad_rms > 0, p
        if p.name.endswith("weight"):
            assert abs(math.log10(p.predicted_grad_rms) - measured[p.name]) < 0.1, (p, measured[p.name])
