"""Capture on eager code as it is written (gradlint.capture.fake, reads, views).

One small model per idiom that breaks a meta-device copy of the model: tensors made without
``device=``, a ``lambda`` holding submodules, weights computed by pre-forward hooks (legacy
``spectral_norm`` and ``weight_norm``), outputs written into a preallocated tensor, masks checked
by value (``nn.TransformerEncoder``). Each test asserts that the analysis ran on a captured
graph, that the predictions agree with a real backward pass of the model itself (not of
gradlint's graph), and that the model comes out of ``check`` as it went in.
"""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch
import torch.nn as nn
from helpers import Trials, decades

import gradlint
from gradlint.api import as_example_inputs, predict

# -- truth: a real backward pass of the model itself ---------------------------------------------

class EagerTrials(Trials):
    """Per seed: the model built afresh, predicted, then a real forward and backward of the model
    itself (float32, train mode, inputs drawn by ``inputs()``, loss sum(g * y), g ~ N(0, 1))."""

    def __init__(self, build, inputs, seeds: int = 6):
        self.pairs, self.results = [], []
        for i in range(seeds):
            torch.manual_seed(1000 + i)
            model = build()
            report, result = predict(model, as_example_inputs(model, inputs))
            assert report.analysis == "export", result.trace_failures
            torch.manual_seed(100 + i)
            args = inputs()
            model.train().zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ys = [y for y in torch.utils._pytree.tree_leaves(model(*args)) if y.requires_grad]
            sum((torch.randn_like(y) * y).sum() for y in ys).backward()
            truth = {n: (float(p.grad.pow(2).mean()) if p.grad is not None else 0.0,)
                     for n, p in model.named_parameters()}
            self.pairs.append((report, type("Measured", (), {"param_ms": truth})))
            self.results.append(result)

    def check_matrices(self, floor: float) -> list[str]:
        """Every weight matrix (two or more dims larger than 1): the prediction agrees."""
        names = [p.name for p in self.report.params if sum(d > 1 for d in p.shape) >= 2]
        for name in names:
            assert all(next(p for p in r.params if p.name == name).predicted_grad_rms for r, _ in self.pairs), \
                f"{name}: predicted zero gradient, measured {math.sqrt(self.pairs[0][1].param_ms[name][0]):.3g}"
            self.check_param(name, floor)
        return names


# -- the model comes out as it went in -------------------------------------------------------------

def _state(model: nn.Module) -> dict:
    return {
        "params": [(n, p, p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
                   for n, p in model.named_parameters(remove_duplicate=False)],
        "buffers": [(n, b, b.clone()) for n, b in model.named_buffers(remove_duplicate=False)],
        "modules": [(n, m, m.training, dict(vars(m)), {k: dict(v) for k, v in vars(m).items() if isinstance(v, dict)})
                    for n, m in model.named_modules(remove_duplicate=False)],
        "rng": (torch.get_rng_state(), random.getstate()),
        "grad": torch.is_grad_enabled(),
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = _state(model)
    for (n, p, v, rg, g), (n2, p2, v2, rg2, g2) in zip(before["params"], after["params"], strict=True):
        assert n == n2 and p is p2, f"parameter {n} replaced"
        assert torch.equal(v, v2) and rg == rg2, f"parameter {n} changed"
        assert (g is None) == (g2 is None) and (g is None or torch.equal(g, g2)), f"gradient of {n} changed"
    for (n, b, v), (n2, b2, v2) in zip(before["buffers"], after["buffers"], strict=True):
        assert n == n2 and b is b2 and torch.equal(v, v2), f"buffer {n} changed"
    for (n, m, training, attrs, tables), (n2, m2, training2, attrs2, tables2) in zip(
            before["modules"], after["modules"], strict=True):
        assert n == n2 and m is m2 and training == training2, f"module {n!r} changed mode"
        assert attrs.keys() == attrs2.keys(), f"module {n!r}: attributes {set(attrs) ^ set(attrs2)} changed"
        changed = [k for k in attrs if attrs[k] is not attrs2[k] and not isinstance(attrs[k], (int, float, str))]
        changed += [k for k in attrs if isinstance(attrs[k], (int, float, str)) and attrs[k] != attrs2[k]]
        assert not changed, f"module {n!r}: attributes {changed} reassigned"
        assert tables == tables2, f"module {n!r}: a table (parameters, buffers, hooks) changed"
    assert torch.equal(before["rng"][0], after["rng"][0]) and before["rng"][1] == after["rng"][1], "RNG state moved"
    assert before["grad"] == after["grad"]


def checked(model: nn.Module, inputs) -> gradlint.Report:
    """``gradlint.check`` on a model in eval mode with gradients from a real step, asserting
    that nothing of the model changed."""
    args = inputs() if callable(inputs) else None
    if args is not None:  # real gradients to protect
        sum(y.float().sum() for y in torch.utils._pytree.tree_leaves(model(*args)) if y.requires_grad).backward()
    model.eval()
    # Resolved first: calling the inputs callable draws from the global generator, as it would.
    example = as_example_inputs(model, inputs)
    before = _state(model)
    report = gradlint.check(model, example)
    assert_untouched(model, before)
    assert report.analysis == "export", report.findings
    return report


# -- the idioms ---------------------------------------------------------------------------------

class NoDevice(nn.Module):
    """Tensors made without ``device=``: a gain vector, a mask, a hidden state, position ids; a
    BatchNorm whose running statistics must stay; a forward that assigns attributes."""

    def __init__(self, d: int = 64, positions: int = 16):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.norm = nn.BatchNorm1d(d)
        self.cell = nn.Linear(d, d)
        self.pos = nn.Embedding(positions, d)
        self.out = nn.Linear(d, d)
        self.calls = 0

    def forward(self, x):  # (batch, d)
        b, d = x.shape
        h = self.norm(self.inp(x)) * torch.ones(d)
        h = h.masked_fill(~torch.ones(b, d).bool(), 0.0)
        state = torch.zeros(b, d)
        state = torch.relu(self.cell(h) + state)
        ids = torch.arange(b) % self.pos.num_embeddings
        self.calls += 1
        self.last = state  # a forward that keeps what it computed
        return self.out(state + self.pos(ids))


class LambdaMLP(nn.Module):
    """minGPT's block: ``self.mlpf = lambda x: m.c_proj(m.act(m.c_fc(x)))`` over a ModuleDict,
    and a closure holding a submodule."""

    def __init__(self, d: int = 64):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(d, 4 * d), c_proj=nn.Linear(4 * d, d), act=nn.GELU()))
        m = self.mlp
        self.mlpf = lambda x: m.c_proj(m.act(m.c_fc(x)))
        head = nn.Linear(d, 10)
        self.head = head

        def project(x):
            return head(x)

        self.project = project

    def forward(self, x):
        x = x + self.mlpf(self.ln(x))
        return self.project(x)


class HookWeights(nn.Module):
    """Weights computed by pre-forward hooks: legacy ``spectral_norm`` and ``weight_norm``."""

    def __init__(self):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.a = nn.utils.spectral_norm(nn.Linear(64, 128))
            self.b = nn.utils.weight_norm(nn.Linear(128, 128))
        self.c = nn.Linear(128, 10)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class Preallocated(nn.Module):
    """A tanh RNN written by hand, each step's output written into a preallocated tensor."""

    def __init__(self, inp: int = 16, hidden: int = 64):
        super().__init__()
        self.wx = nn.Linear(inp, hidden)
        self.wh = nn.Linear(hidden, hidden, bias=False)
        self.hidden = hidden

    def forward(self, x):
        outputs = torch.zeros(x.shape[0], x.shape[1], self.hidden)
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(self.wx(x[:, t]) + self.wh(h))
            outputs[:, t] = h
        return outputs


class MaskedEncoder(nn.Module):
    """``nn.TransformerEncoder`` with a causal ``src_mask``: the encoder compares the mask with
    a causal one by value, and runs causal attention when they are equal."""

    def __init__(self, d: int = 64, vocab: int = 100):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 128, dropout=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(d, vocab)

    def forward(self, src, src_mask):
        return self.head(self.encoder(self.emb(src), src_mask))


def _tokens_and_mask():
    t, b = 12, 4
    return torch.randint(0, 100, (t, b)), nn.Transformer.generate_square_subsequent_mask(t)


CASES = {
    "no-device": (NoDevice, lambda: (torch.randn(32, 64),)),
    "lambda": (LambdaMLP, lambda: (torch.randn(8, 10, 64),)),
    "hook-weights": (HookWeights, lambda: (torch.randn(32, 64),)),
    "transformer-mask": (MaskedEncoder, _tokens_and_mask),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_model_is_captured_and_untouched(case):
    build, inputs = CASES[case]
    torch.manual_seed(0)
    checked(build(), inputs)


@pytest.mark.parametrize("case", list(CASES))
def test_predictions_agree_with_a_real_backward_pass(case):
    build, inputs = CASES[case]
    # Linear ∂W is within ±3.6% (docs/design.md §11); the seeds' spread adds the rest.
    EagerTrials(build, inputs).check_matrices(decades(0.036))
