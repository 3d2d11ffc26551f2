"""RWKV time mixing (docs/design.md §4.12): the HF ``rwkv_linear_attention_cpu`` loop and RWKV-v1's
``einsum(D, e^k·v) / cumsum(e^k)`` are each one ``wkv`` unit, predicted against a real backward.

Before, both were unknown: op by op the division by a running sum of exponentials has no rule
(and HF's loop was two recurrences: the output buffer's writes and the running maximum, with a
decay of +0.00 predicted for one and nothing measurable)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gradlint.api import predict


def measured(model: nn.Module, inputs, seeds: int = 3) -> dict[str, float]:
    """log10 RMS of every parameter's gradient, mean over seeds, loss Σ g·y (float64)."""
    acc: dict[str, list[float]] = {}
    real = model.double().train()
    for s in range(seeds):
        torch.manual_seed(100 + s)
        real.zero_grad(set_to_none=True)
        x = inputs()
        x = x.double() if x.is_floating_point() else x
        y = real(x)
        y = getattr(y, "last_hidden_state", y)
        (torch.randn_like(y) * y).sum().backward()
        for n, p in real.named_parameters():
            ms = float(p.grad.pow(2).mean()) if p.grad is not None else 0.0
            acc.setdefault(n, []).append(0.5 * math.log10(ms) if ms > 0 else -math.inf)
    return {n: sum(v) / len(v) for n, v in acc.items()}


def _errors(report, model, inputs, names) -> dict[str, float]:
    pred = {p.name: p.predicted_grad_rms for p in report.params}
    meas = measured(model, inputs)
    assert all(pred[n] is not None for n in pred), [n for n in pred if pred[n] is None]
    return {n: math.log10(pred[n]) - meas[n] for n in names}


def test_hf_rwkv_matches_a_real_backward():
    transformers = pytest.importorskip("transformers")
    config = transformers.RwkvConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, context_length=16,
                                     attention_hidden_size=32, intermediate_size=64)
    torch.manual_seed(0)
    model = transformers.RwkvModel(config)
    report, result = predict(model, (torch.randint(0, 100, (4, 16)),))
    assert report.summary.verdict != "unknown", report.summary.unknown
    assert [n.kind for n in result.graph.nodes].count("wkv") == 2
    # One recurrence per block, the time mixing itself (not the output buffer's writes and the
    # running maximum as two loops).
    assert sorted(r.module for r in report.recurrent) == ["blocks.0.attention", "blocks.1.attention"]
    names = [n for n, p in model.named_parameters() if p.dim() == 2 or "time_decay" in n or "time_first" in n]
    errs = _errors(report, model, lambda: torch.randint(0, 100, (4, 16)), names)
    assert max(abs(e) for e in errs.values()) < 0.25, errs


class HFTimeMix(nn.Module):
    """HF's CPU time mixing on two projections of the input, with RwkvSelfAttention's init of
    the decay (−5 … 3 over the channels) and time_first (1)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.key, self.value = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.time_decay = nn.Parameter(torch.tensor([-5 + 8 * (h / (dim - 1)) ** 0.7 for h in range(dim)]))
        self.time_first = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

        k, v = self.key(x), self.value(x)
        if k.requires_grad:
            k.retain_grad()
            v.retain_grad()
        self.kv = (k, v)
        return rwkv_linear_attention_cpu(self.time_decay, self.time_first, k, v)[0]


def test_hf_time_mixing_decay_matches_the_real_one():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = HFTimeMix()
    report, _ = predict(model, (torch.randn(8, 24, 32),))
    (rec,) = report.recurrent
    assert rec.mode == "wkv" and rec.steps == 24
    pred = [math.log10(x / rec.lag_grad_rms[-1]) for x in rec.lag_grad_rms]
    # Measured as the probe does: loss on the last step's output only, RMS gradient at each
    # step's key and value (float64, 3 seeds, mean of log RMS).
    real = model.double()
    meas = [0.0] * 24
    for s in range(3):
        torch.manual_seed(200 + s)
        y = real(torch.randn(8, 24, 32, dtype=torch.float64))
        (torch.randn_like(y[:, -1]) * y[:, -1]).sum().backward()
        k, v = real.kv
        ms = ((k.grad ** 2 + v.grad ** 2) / 2).mean((0, 2))
        log = [0.5 * math.log10(float(x)) for x in ms]
        meas = [m + (x - log[-1]) / 3 for m, x in zip(meas, log)]
        real.zero_grad(set_to_none=True)
    assert max(abs(p - m) for p, m in zip(pred, meas)) < 0.2, list(zip(pred, meas))


class TimeMixV1(nn.Module):
    """RWKV-v1's time mixing (BlinkDL/RWKV-LM RWKV-v1/src/model.py, RWKV_TimeMix) with every
    projection random, so the gradient passes through the unit (RWKV_Init zeroes key,
    receptance and output)."""

    def __init__(self, dim: int = 32, heads: int = 4, ctx_len: int = 16):
        super().__init__()
        self.ctx_len, self.n_head, self.head_size = ctx_len, heads, dim // heads
        ww = torch.ones(heads, ctx_len)
        curve = torch.tensor([-(ctx_len - 1 - i) for i in range(ctx_len)])
        for h in range(heads):
            ww[h] = torch.exp(curve * (math.pow(ctx_len, -(h + 1) / (heads - 1)) if h < heads - 1 else 0.0))
        self.time_w = nn.Parameter(ww)
        self.time_alpha = nn.Parameter(torch.ones(heads, 1, ctx_len))
        self.time_beta = nn.Parameter(torch.ones(heads, ctx_len, 1))
        self.time_gamma = nn.Parameter(torch.ones(ctx_len, 1))
        self.inp = nn.Linear(dim, dim)
        self.key, self.value, self.receptance = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)

    def forward(self, x):
        x = self.inp(x)
        B, T, C = x.size()
        TT = self.ctx_len
        w = F.pad(self.time_w, (0, TT))
        w = torch.tile(w, [TT])
        w = w[:, :-TT].reshape(-1, TT, 2 * TT - 1)
        w = w[:, :, TT - 1:]
        w = w[:, :T, :T] * self.time_alpha[:, :, :T] * self.time_beta[:, :T, :]
        k = torch.exp(torch.clamp(self.key(x), max=30, min=-60))
        v, r = self.value(x), self.receptance(x)
        sum_k = torch.cumsum(k, dim=1)
        kv = (k * v).view(B, T, self.n_head, self.head_size)
        wkv = torch.einsum("htu,buhc->bthc", w, kv).contiguous().view(B, T, -1)
        return self.output(torch.sigmoid(r) * wkv / sum_k) * self.time_gamma[:T, :]


def test_rwkv_v1_time_mixing_matches_a_real_backward():
    torch.manual_seed(0)
    model = TimeMixV1()
    example = (torch.randn(4, 16, 32),)
    report, result = predict(model, example)
    assert report.summary.verdict != "unknown", report.summary.unknown
    assert [n.kind for n in result.graph.nodes].count("wkv") == 1
    # key.bias gets exactly no gradient (a shift of every k_t leaves the weights unchanged).
    names = [n for n, _ in model.named_parameters() if n != "key.bias"]
    errs = _errors(report, model, lambda: torch.randn(4, 16, 32), names)
    assert max(abs(e) for e in errs.values()) < 0.25, errs


def test_time_mixing_without_values_is_unknown():
    # The rule evaluates the unit on the parameters' values; on the meta device it has none and
    # says so rather than guessing a decay.
    with torch.device("meta"):
        model = TimeMixV1()
    report, _ = predict(model, (torch.randn(4, 16, 32),))
    assert report.summary.verdict == "unknown"
    assert all(p.predicted_grad_rms is None for p in report.params)
