"""Packed sequences (nn.utils.rnn.pack_padded_sequence) through nn.GRU / LSTM: captured as the
forward runs them, batch_sizes real, and predicted per sequence length (docs/design.md §6, R7);
checked against a real backward pass of the model itself (float64, loss Σ g·y, g ~ N(0, 1))."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gradlint.api import predict

INP, HID, T = 16, 32, 12
LENGTHS = [12, 5, 12, 3, 9, 7]  # unsorted: the forward sorts them (enforce_sorted=False)


class PackedRNN(nn.Module):
    """A bidirectional recurrent layer over a padded batch packed by its lengths, and a head on
    every valid step of the padded output."""

    def __init__(self, cell: type[nn.RNNBase] = nn.GRU, inp: int = INP, hidden: int = HID):
        super().__init__()
        self.rnn = cell(inp, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 5)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        y, _ = pad_packed_sequence(out, batch_first=True)
        return self.head(y), hidden


def measured(model: nn.Module, lengths: list[int], seeds: int = 6) -> dict[str, float]:
    """Per parameter, the geometric mean over seeds of RMS(dL/dθ), L = Σ g·y over every float
    output (a real backward pass of the model, float64)."""
    real = model.double()
    logs: dict[str, float] = {n: 0.0 for n, _ in real.named_parameters()}
    for seed in range(seeds):
        torch.manual_seed(100 + seed)
        real.zero_grad(set_to_none=True)
        ys = torch.utils._pytree.tree_leaves(real(torch.randn(len(lengths), max(lengths), INP,
                                                              dtype=torch.float64), lengths))
        sum((torch.randn_like(y) * y).sum() for y in ys if isinstance(y, torch.Tensor)).backward()
        for n, p in real.named_parameters():
            logs[n] += 0.5 * math.log10(float(p.grad.pow(2).mean())) / seeds
    model.float()
    return logs


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_packed_rnn_weights_follow_the_backward_pass(cell):
    torch.manual_seed(0)
    model = PackedRNN(cell)
    report, _ = predict(model, (torch.randn(len(LENGTHS), T, INP), LENGTHS))
    assert report.analysis == "export"
    truth = measured(model, LENGTHS)
    errors = {p.name: abs(math.log10(p.predicted_grad_rms) - truth[p.name]) for p in report.params
              if sum(d > 1 for d in p.shape) >= 2}
    assert len(errors) == 5
    # The goal for every weight matrix: within 0.3 decades of the backward pass.
    assert max(errors.values()) <= 0.3, errors


class PackedOutputs(PackedRNN):
    """The head on the padded outputs only: the weights' gradients come from the valid steps."""

    def forward(self, x, lengths):
        return super().forward(x, lengths)[0]


def test_padding_takes_no_part():
    """The same batch padded to 12 steps but packed with short lengths: the weight gradients are
    those of the valid steps only, as measured; a prediction over the padded length (every sample
    12 steps) is off by the missing rows."""
    torch.manual_seed(0)
    model = PackedOutputs()
    short = [12, 2, 2, 2, 2, 2]
    packed, _ = predict(model, (torch.randn(len(short), T, INP), short))
    full, _ = predict(model, (torch.randn(len(short), T, INP), [T] * len(short)))
    truth = measured(model, short)
    pred = {p.name: math.log10(p.predicted_grad_rms) for p in packed.params}
    pred_full = {p.name: math.log10(p.predicted_grad_rms) for p in full.params}
    for name in (n for n, p in model.named_parameters() if n.startswith("rnn.weight")):
        assert abs(pred[name] - truth[name]) <= 0.1, name
        # 22 valid rows of 72: the padded length would put 0.5·log10(72/22) = 0.26 decades more.
        assert pred_full[name] - truth[name] >= 0.25, name


def test_packed_recurrence_decay_follows_the_backward_pass():
    """report.recurrent lists the packed layer over the longest length; its long-range decay
    (a loss on the last step of the samples that run every step) is what a backward pass gives."""
    steps, lengths = 32, [32, 20, 32, 9]
    torch.manual_seed(0)
    model = PackedRNN(nn.GRU, hidden=64)
    report, _ = predict(model, (torch.randn(len(lengths), steps, INP), lengths))
    (rec,) = report.recurrent
    assert rec.steps == steps and rec.module == "rnn"
    pred = math.log10(rec.lag_grad_rms[0] / rec.lag_grad_rms[-1])
    real = model.double()
    decays = []
    for seed in range(4):
        torch.manual_seed(200 + seed)
        x = torch.randn(len(lengths), steps, INP, dtype=torch.float64, requires_grad=True)
        out, _ = real.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        y, _ = pad_packed_sequence(out, batch_first=True)
        full = [i for i, n in enumerate(lengths) if n == steps]
        last = y[full, -1]
        (torch.randn_like(last) * last).sum().backward()
        rms = x.grad[full].pow(2).mean(dim=(0, 2)).sqrt()
        decays.append(float(torch.log10(rms[0] / rms[-1])))
    model.float()
    meas = sum(decays) / len(decays)
    sd = (sum((d - meas) ** 2 for d in decays) / (len(decays) - 1)) ** 0.5
    assert abs(pred - meas) <= max(0.3, sd), (pred, decays)


class GreedyDecoder(nn.Module):
    """nn.GRU called once per step on its own last prediction (seq2seq's decoder without teacher
    forcing), and NumPy bookkeeping of where each sequence produced its end token."""

    def __init__(self, vocab: int = 12, hidden: int = 32, steps: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.steps = steps

    def forward(self, h0):
        tok = torch.zeros(h0.shape[1], 1, dtype=torch.long)
        h, outs = h0, []
        lengths = np.full(h0.shape[1], self.steps)
        for step in range(self.steps):
            y, h = self.rnn(self.emb(tok), h)
            outs.append(self.out(y[:, 0]))
            tok = outs[-1].topk(1)[1]
            ended = (tok == 3).cpu().view(-1).numpy()
            lengths[(lengths > step) & ended] = step + 1  # bookkeeping: no op depends on it
        return torch.stack(outs, 1), h


def test_a_module_called_once_per_step_is_one_recurrence():
    """The calls of one nn.GRU chained through h_n are one recurrence over the calls: its decay
    (a loss on the last call's output, the gradient at each call's input) is the backward pass's."""
    torch.manual_seed(0)
    model = GreedyDecoder()
    report, _ = predict(model, (torch.randn(1, 16, 32),))
    assert report.analysis == "export"
    (rec,) = report.recurrent
    assert (rec.module, rec.steps) == ("rnn", model.steps)
    pred = [math.log10(v / rec.lag_grad_rms[-1]) for v in rec.lag_grad_rms]
    real = model.double()
    xs: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []

    def pre(m, args):
        xs.append(args[0].detach().requires_grad_(True))
        return (xs[-1],) + tuple(args[1:])

    hooks = [real.rnn.register_forward_pre_hook(pre),
             real.rnn.register_forward_hook(lambda m, args, out: outs.append(out[0]))]
    meas = [0.0] * model.steps
    for seed in range(4):
        torch.manual_seed(300 + seed)
        xs.clear()
        outs.clear()
        real(torch.randn(1, 16, 32, dtype=torch.float64))
        last = outs[-1][:, -1]
        grads = torch.autograd.grad((torch.randn_like(last) * last).sum(), xs)
        rms = [float(d.pow(2).mean().sqrt()) for d in grads]
        meas = [m + math.log10(r / rms[-1]) / 4 for m, r in zip(meas, rms)]
    for h in hooks:
        h.remove()
    model.float()
    assert max(abs(p - m) for p, m in zip(pred, meas)) <= 0.3, (pred, meas)
    truth = measured_h0(model)
    for p in report.params:
        if p.name in ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "out.weight", "emb.weight"):
            assert abs(math.log10(p.predicted_grad_rms) - truth[p.name]) <= 0.3, p.name


def measured_h0(model: nn.Module, seeds: int = 6) -> dict[str, float]:
    real = model.double()
    logs = {n: 0.0 for n, _ in real.named_parameters()}
    for seed in range(seeds):
        torch.manual_seed(400 + seed)
        real.zero_grad(set_to_none=True)
        ys = real(torch.randn(1, 16, 32, dtype=torch.float64))
        sum((torch.randn_like(y) * y).sum() for y in ys).backward()
        for n, p in real.named_parameters():
            logs[n] += 0.5 * math.log10(float(p.grad.pow(2).mean())) / seeds
    model.float()
    return logs


class ReadsWeightsThroughNumpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        h = self.a(x)
        if (h > 0).numpy().mean() > 0.5:  # a branch only the weights' values decide
            return self.b(h)
        return h


def test_a_branch_on_weights_read_through_numpy_is_refused_not_guessed():
    from gradlint.api import as_example_inputs
    from gradlint.capture.fake import fake_forward
    from gradlint.capture.record import Unsupported, record_program

    model = ReadsWeightsThroughNumpy()
    with fake_forward(model, as_example_inputs(model, (torch.randn(4, 8),))) as run, \
            pytest.raises(Unsupported, match="NumPy"):
        record_program(run.model, run.args, run.kwargs, run.reader)


class WithState(nn.Module):
    """forward(x, (h0, c0)), as the word-language model takes its hidden state."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(INP, HID, batch_first=True)
        self.head = nn.Linear(HID, 5)

    def forward(self, x, hidden):
        out, hidden = self.rnn(x, hidden)
        return self.head(out), hidden


@pytest.mark.parametrize("zeros", [True, False])
def test_initial_state_as_handed_in(zeros):
    """h0, c0 handed in as zeros (init_hidden) are zeros; drawn ones are N(0, 1) as the protocol
    draws every float input: each prediction follows the backward pass run on that state."""
    torch.manual_seed(0)
    model = WithState()
    state = (lambda: torch.zeros(1, 8, HID, dtype=torch.float64)) if zeros else \
        (lambda: torch.randn(1, 8, HID, dtype=torch.float64))
    report, _ = predict(model, (torch.randn(8, 4, INP), (state().float(), state().float())))
    real = model.double()
    logs = {n: 0.0 for n, _ in real.named_parameters()}
    for seed in range(6):
        torch.manual_seed(500 + seed)
        real.zero_grad(set_to_none=True)
        y, (h, c) = real(torch.randn(8, 4, INP, dtype=torch.float64), (state(), state()))
        sum((torch.randn_like(v) * v).sum() for v in (y, h, c)).backward()
        for n, p in real.named_parameters():
            logs[n] += 0.5 * math.log10(float(p.grad.pow(2).mean())) / 6
    model.float()
    for p in report.params:
        if p.name.startswith("rnn.weight"):
            assert abs(math.log10(p.predicted_grad_rms) - logs[p.name]) <= 0.15, (p.name, zeros)


class CoinPath(nn.Module):
    """Teacher forcing's form: a branch picked by Python's random.random()."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(INP, INP)
        self.b = nn.Linear(INP, INP)

    def forward(self, x):
        return self.a(x) if random.random() < 0.5 else self.b(x)


@pytest.mark.parametrize("seed", [0, 1])  # random.random() is 0.84 after seed 0, 0.13 after seed 1
def test_a_path_picked_by_python_random_is_the_path_probed(seed):
    import gradlint

    random.seed(seed)
    state = random.getstate()
    report = gradlint.probe(CoinPath(), (8, INP), seeds=3)
    assert random.getstate() == state  # the caller's stream is left where it was
    used = "a" if seed == 1 else "b"
    for p in report.params:
        assert bool(p.predicted_grad_rms) == p.name.startswith(used), p.name
        assert bool(p.measured_grad_rms) == p.name.startswith(used), p.name
    finding = next(f for f in report.findings if "not used in forward" in f.message)
    assert "random" in finding.message
