"""Losses and normalizations written by hand, predicted against a real backward pass.

A loss (cross-entropy, NLL, MSE, L1, smooth L1, Huber, binary cross-entropy) sends its input a
gradient whose moments follow from the statistics (docs/design.md §4.9); before it had a rule,
every gradient through it was unknown. Hand-written norms (``h / sqrt(mean(h²) + eps)``,
``x * rsqrt(...)``, ``(x - mean) / std``, ``var``) feed a square root or a variance of a
concentrated row statistic (docs/design.md §4.9); before, those nodes could not be evaluated.

The losses are measured as a training step runs them: ``loss.backward()`` on the scalar (unit
upstream gradient, which is what the engine seeds), the mean square over 8 draws of weights,
inputs and targets.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import Trials

from gradlint.api import as_example_inputs, predict


class LossHead(nn.Module):
    def __init__(self, loss: str, reduction: str = "mean", d: int = 64, classes: int = 100, **kw):
        super().__init__()
        self.a, self.h = nn.Linear(d, d), nn.Linear(d, classes)
        self.loss, self.reduction, self.kw = loss, reduction, kw

    def forward(self, x, t, y):
        lg = self.h(torch.relu(self.a(x)))
        r, kw = self.reduction, self.kw
        if self.loss == "cross_entropy":
            return F.cross_entropy(lg.view(-1, lg.size(-1)), t.view(-1), reduction=r, **kw)
        if self.loss == "nll":
            return F.nll_loss(F.log_softmax(lg, -1).view(-1, lg.size(-1)), t.view(-1), reduction=r)
        if self.loss == "bce_logits":
            return F.binary_cross_entropy_with_logits(lg, torch.sigmoid(y), reduction=r)
        if self.loss == "bce":
            return F.binary_cross_entropy(torch.sigmoid(lg), torch.sigmoid(y), reduction=r)
        fn = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss, "huber": F.huber_loss}[self.loss]
        return fn(lg, y, reduction=r, **kw)


def _training_step_rms(build, seeds: int = 8) -> tuple[dict[str, float], dict[str, float]]:
    """Per parameter: log10 RMS of the predicted and of the measured gradient, each a mean
    square over seeds; measured with loss.backward() (times g ~ N(0, 1) per element for an
    unreduced loss)."""
    pred, meas = {}, {}
    for s in range(seeds):
        torch.manual_seed(2000 + s)
        m = build()
        v = m.h.out_features
        x, t, y = torch.randn(4, 16, 64), torch.randint(0, v, (4, 16)), torch.randn(4, 16, v)
        report, _ = predict(m, as_example_inputs(m, (x, t, y)))
        for p in report.params:
            assert p.predicted_grad_rms, f"{p.name}: predicted {p.predicted_grad_rms}"
            pred[p.name] = pred.get(p.name, 0.0) + p.predicted_grad_rms ** 2 / seeds
        loss = m(x, t, y)
        (loss if loss.dim() == 0 else (loss * torch.randn_like(loss)).sum()).backward()
        for n, p in m.named_parameters():
            meas[n] = meas.get(n, 0.0) + p.grad.pow(2).mean().item() / seeds
    return ({n: 0.5 * math.log10(e) for n, e in pred.items()}, {n: 0.5 * math.log10(e) for n, e in meas.items()})


LOSSES = {
    "cross_entropy": ({}, 0.03), "cross_entropy-sum": ({"reduction": "sum"}, 0.03),
    "cross_entropy-none": ({"reduction": "none"}, 0.05),
    "cross_entropy-smoothing": ({"label_smoothing": 0.1}, 0.03),
    "cross_entropy-large-vocab": ({"classes": 5000}, 0.03),
    "nll": ({}, 0.03), "mse": ({}, 0.06), "l1": ({}, 0.06), "smooth_l1": ({"beta": 0.5}, 0.06),
    "huber": ({"delta": 0.3}, 0.06), "bce_logits": ({}, 0.06), "bce": ({}, 0.06),
}


@pytest.mark.parametrize("case", list(LOSSES))
def test_a_loss_sends_its_input_the_measured_gradient(case):
    """The head's weight and bias, whose gradient is the loss's own; ``a.weight`` one layer
    further for the classification losses. Under a regression loss, ``a`` is under-predicted
    by up to 0.07 decades (its bias by 0.2-0.3): the loss's gradient is correlated with the
    output it came from, which mean field leaves out (docs/design.md §4.9); not asserted."""
    kw, tol = LOSSES[case]
    loss = case.split("-")[0]
    pred, meas = _training_step_rms(lambda: LossHead(loss, **kw))
    for name in ("h.weight", "h.bias") + (("a.weight",) if loss in ("cross_entropy", "nll") else ()):
        assert abs(pred[name] - meas[name]) <= tol, f"{name}: predicted {pred[name]:.3f}, measured {meas[name]:.3f}"


class ReturnsLogitsAndLoss(nn.Module):
    """nanoGPT's forward: (logits, cross-entropy loss)."""

    def __init__(self, d: int = 64, vocab: int = 200):
        super().__init__()
        self.emb, self.a, self.head = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx, targets):
        logits = self.head(torch.tanh(self.a(self.emb(idx))))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def test_a_model_returning_logits_and_loss_is_predicted():
    t = Trials(ReturnsLogitsAndLoss, (torch.randint(0, 200, (4, 16)), torch.randint(0, 200, (4, 16))))
    for name in ("emb.weight", "a.weight", "head.weight"):
        t.check_param(name, 0.05)


class HandNorm(nn.Module):
    """Linear, a normalization written by hand, Linear, tanh, Linear."""

    def __init__(self, kind: str, d: int = 64):
        super().__init__()
        self.kind, self.a, self.b, self.c = kind, nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.g = nn.Parameter(torch.ones(d))

    def norm(self, h):
        eps = 1e-5
        if self.kind == "div-sqrt":
            return h / (h.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        if self.kind == "rsqrt":  # Llama / Mamba RMSNorm in plain PyTorch
            return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * self.g
        if self.kind == "std":
            return (h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + eps)
        return (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + eps)

    def forward(self, x):
        return self.c(torch.tanh(self.b(self.norm(3.0 * self.a(x)))))


@pytest.mark.parametrize("kind", ["div-sqrt", "rsqrt", "std", "var"])
def test_a_hand_written_norm_is_predicted(kind):
    t = Trials(lambda: HandNorm(kind), (8, 16, 64))
    assert not t.results[0].propagation.unknown_ops
    # Measured: weights within 0.01 decades, the first bias +0.035 (docs/design.md §4.11).
    for name in ("a.weight", "b.weight", "c.weight"):
        t.check_param(name, 0.02)
    t.check_param("a.bias", 0.05)
