"""Probe mode: measured numbers equal a hand-written backward pass; the model is left as found."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import gradlint
from gradlint.api import _as_example_inputs


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.Tanh(), nn.Dropout(0.0), nn.Linear(64, 8))


def test_measured_rms_equals_a_hand_written_backward_pass():
    model = small()
    report = gradlint.probe(model, (16, 32), seeds=2)
    ex = _as_example_inputs(model, (16, 32))
    # The protocol by hand: per seed, inputs and g from that seed's generator, float64, train mode.
    work = copy.deepcopy(model).double().train()
    ms = {n: [] for n, _ in work.named_parameters()}
    for seed in range(2):
        gen = torch.Generator().manual_seed(seed)
        (x,), _ = ex.materialize("cpu", gen)
        y = work(x.double())
        g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        work.zero_grad()
        (g * y).sum().backward()
        for n, p in work.named_parameters():
            ms[n].append(float(p.grad.pow(2).mean()))
    for p in report.params:
        expected = 10 ** (sum(0.5 * math.log10(v) for v in ms[p.name]) / 2)  # geometric mean over seeds
        assert p.measured_grad_rms == pytest.approx(expected, rel=1e-6), p.name


def test_probe_leaves_the_model_as_found():
    model = small()
    model.eval()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.random.get_rng_state()
    gradlint.probe(model, (16, 32), seeds=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert not model.training
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[4].weight.grad is None
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_probe_marks_findings_and_reports_agreement():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(64, 64), nn.Sigmoid())])
    report = gradlint.probe(model, (32, 64), seeds=2, select=["GL101"])
    (f,) = [f for f in report.findings if f.code == "GL101"]
    assert f.confirmed is True
    d = report.to_dict()
    assert d["probe"]["median_decades"] < 0.1 and d["probe"]["predicted_summary"]["verdict"] == "vanishing"
    assert all(p["measured_grad_rms"] is not None for p in d["params"])
