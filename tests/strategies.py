"""Generated models for the fuzz tests: the spec strategies and the interpreter that builds them.

A spec, drawn by hypothesis, is a list of op tuples that ``Fuzzed``, a small interpreter
module, executes over a growing list of values, so a failure shrinks to a short list of ops
that reads as a model. An op tuple is ``(kind, back, *params)``; ``back`` picks its operand
counting back from the newest value (0: the previous op's output), so specs shrink toward a
plain chain. An op whose construction or eager run fails on the sample inputs (a shape it
does not fit) becomes a pass-through: every generated model runs eagerly, except where a
spec asks for a failing forward on purpose.

``build(spec)`` gives the model and the ``inputs`` argument for ``gradlint.check``.
tests/test_fuzz.py holds gradlint's contract to these models, tests/test_recording.py
compares the recorded graph with export's on them, and the model files test_fuzz.py
generates import ``build`` and ``make_inputs`` from here.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck
from hypothesis import strategies as st

import gradlint

# The example count of a default run; a long campaign sets it (docs/fuzzing.md).
FUZZ_EXAMPLES = int(os.environ.get("GRADLINT_FUZZ_EXAMPLES", "100"))
# Derandomized (one fixed sequence of examples, as the conftest profile also says), so the
# tests' floors on the share of analyzed models hold for the default run; no example
# database, so a failure found once does not change what later runs draw.
FUZZ_SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
SCALES = [0.0, 1e-30, 1e-10, 1e-3, 0.5, 2.0, 1e3, 1e10, 1e30]
ODD_SCALARS = [0.0, 1e-30, 1e30, -1.0, math.inf, -math.inf, math.nan]


class StraightThrough(torch.autograd.Function):
    """A custom autograd.Function: rounds forward, passes the gradient straight through."""

    @staticmethod
    def forward(ctx, x):
        return x.round()

    @staticmethod
    def backward(ctx, g):
        return g


# -- the interpreter ----------------------------------------------------------------------------


def _rank(x: torch.Tensor, r: int) -> torch.Tensor:
    """``x`` with exactly ``r`` dims: trailing dims merged, or size-1 dims added after the batch."""
    while x.dim() < r:
        x = x.unsqueeze(1 if x.dim() >= 1 else 0)
    if x.dim() > r:
        x = x.flatten(r - 1) if r > 0 else x.reshape(())
    return x


class Fuzzed(nn.Module):
    """Runs ``spec["ops"]`` over the inputs; modules are made on first use, at build time.

    Ops reach their modules and parameters through ``self`` by name (never through
    closures), so gradlint's meta-device copy of the model runs its own copies.
    """

    def __init__(self, spec: dict, sample: list[torch.Tensor]):
        super().__init__()
        self.dt = DTYPES[spec["dtype"]]
        self.steps: list[tuple] = []
        self.refs: dict[str, str] = {}
        self.out_spec = spec["out"]
        self._building = True
        values = list(sample)
        for i, (kind, back, *params) in enumerate(spec["ops"]):
            name = f"op{i}"
            srcs = tuple(len(values) - 1 - (b % len(values)) for b in ([back] if kind not in BINARY else back))
            step = (kind, srcs, name, tuple(params))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = self._run(step, values)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"{kind} made a {type(out).__name__}")
            except Exception:  # noqa: BLE001 - a generated op that cannot run on these shapes is skipped
                self._drop(name)
                step = ("skip", (len(values) - 1,), name, ())
                out = values[-1]
            self.steps.append(step)
            values.append(out)
        self._building = False

    # -- modules and parameters, made on first use ------------------------------------------------
    def mod(self, name: str, factory):
        if name not in self._modules:
            assert self._building, f"module {name} missing after the build"
            self.add_module(name, factory().to(self.dt))
        return self._modules[name]

    def param(self, name: str, factory):
        if name not in self._parameters:
            assert self._building, f"parameter {name} missing after the build"
            self.register_parameter(name, nn.Parameter(factory()))
        return self._parameters[name]

    def buffer(self, name: str, factory):
        if name not in self._buffers:
            assert self._building, f"buffer {name} missing after the build"
            self.register_buffer(name, factory())
        return self._buffers[name]

    def _drop(self, name: str) -> None:
        for table in (self._modules, self._parameters, self._buffers):
            for key in [k for k in table if k == name or k.startswith(name + "_")]:
                del table[key]
        self.refs.pop(name, None)

    def fl(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_complex():
            x = x.real
        return x if x.dtype == self.dt else x.to(self.dt)

    # -- execution --------------------------------------------------------------------------------
    def _run(self, step: tuple, values: list) -> torch.Tensor:
        kind, srcs, name, params = step
        if kind == "skip":
            return values[srcs[0]]
        return OPS[kind](self, name, [values[j] for j in srcs], *params)

    def forward(self, *args, **kwargs):
        values = list(args) + [kwargs[k] for k in sorted(kwargs)]
        for step in self.steps:
            values.append(self._run(step, values))
        return self._output(self.out_spec, values)

    def _output(self, spec, values):
        tag = spec[0]
        if tag == "val":
            return values[len(values) - 1 - (spec[1] % len(values))]
        if tag == "none":
            return None
        if tag == "const":
            return spec[1]
        if tag == "tuple":
            return tuple(self._output(s, values) for s in spec[1])
        if tag == "list":
            return [self._output(s, values) for s in spec[1]]
        if tag == "dict":
            return {f"k{i}": self._output(s, values) for i, s in enumerate(spec[1])}
        raise AssertionError(spec)


# -- ops: (self, name, operands, *params) -> tensor ------------------------------------------------


def op_linear(self, name, xs, width, bias):
    x = self.fl(_rank(xs[0], max(xs[0].dim(), 1)))
    return self.mod(name, lambda: nn.Linear(x.shape[-1], width, bias=bias))(x)


def op_conv(self, name, xs, kind, out, k, stride, pad):
    if kind == "t2":
        x = _rank(self.fl(xs[0]), 4)
        return self.mod(name, lambda: nn.ConvTranspose2d(x.shape[1], out, k, stride, pad))(x)
    x = _rank(self.fl(xs[0]), 3 if kind == "1" else 4)
    return self.mod(name, lambda: (nn.Conv1d if kind == "1" else nn.Conv2d)(x.shape[1], out, k, stride, pad))(x)


def op_embed(self, name, xs, vocab, dim, pad):
    x = xs[0]
    ids = x if not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool) else (self.fl(x).abs() * 3).long()
    ids = ids.long().clamp(0, vocab - 1)
    return self.mod(name, lambda: nn.Embedding(vocab, dim, padding_idx=0 if pad else None))(ids)


def op_unembed(self, name, xs):
    """Logits from the latest embedding table (tied input and output embeddings)."""
    x = self.fl(xs[0])
    if self._building:
        self.refs[name] = next(n for n, m in reversed(self._modules.items()) if isinstance(m, nn.Embedding))
    emb = self._modules[self.refs[name]]
    if x.shape[-1] != emb.embedding_dim:
        x = self.mod(name + "_fit", lambda: nn.Linear(x.shape[-1], emb.embedding_dim))(x)
    return F.linear(x, emb.weight)


def op_tie(self, name, xs, bias):
    """Two square Linears sharing one weight Parameter: one tensor under two names."""
    x = self.fl(xs[0])
    a = self.mod(name, lambda: nn.Linear(x.shape[-1], x.shape[-1]))

    def make():
        lin = nn.Linear(x.shape[-1], x.shape[-1], bias=bias)
        lin.weight = a.weight
        return lin

    return self.mod(name + "_tied", make)(torch.tanh(a(x)))


def op_reuse(self, name, xs, which):
    """Calls an earlier module again: shared parameters through module reuse."""
    if self._building:
        d = xs[0].shape[-1] if xs[0].dim() else None
        names = [n for n, m in self._modules.items() if (isinstance(m, nn.Linear) and m.in_features == d)
                 or (isinstance(m, nn.LayerNorm) and m.normalized_shape == (d,))]
        self.refs[name] = names[which % len(names)]
    return self._modules[self.refs[name]](self.fl(xs[0]))


DEEP_ACTS = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu}


def op_deep(self, name, xs, depth, act, gain, residual):
    """A stack of square Linears at ``gain`` times the default init: deep enough for the
    signal to vanish, explode or overflow."""
    x = self.fl(xs[0])

    def make():
        layers = nn.ModuleList(nn.Linear(x.shape[-1], x.shape[-1]) for _ in range(depth))
        with torch.no_grad():
            for lin in layers:
                lin.weight.mul_(gain)
        return layers

    for lin in self.mod(name, make):
        y = DEEP_ACTS[act](lin(x))
        x = x + y if residual else y
    return x


class HandNorm(nn.Module):
    """A normalization written out in primitives (gradlint fuses it back into one node)."""

    def __init__(self, d, centred):
        super().__init__()
        self.centred = centred
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class NewGELU(nn.Module):
    """An activation written out in primitives, as GPT-2's."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def op_norm(self, name, xs, kind):
    x = self.fl(xs[0])
    if kind in ("hand_rms", "hand_ln"):
        return self.mod(name, lambda: HandNorm(x.shape[-1], kind == "hand_ln"))(x)
    if kind in ("ln", "ln_plain"):
        return self.mod(name, lambda: nn.LayerNorm(x.shape[-1], elementwise_affine=kind == "ln"))(x)
    if kind == "rms":
        return self.mod(name, lambda: nn.RMSNorm(x.shape[-1]))(x)
    if kind == "rms_fn":  # written out, as many models do
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    if kind == "gn":
        x = _rank(x, max(x.dim(), 2))
        return self.mod(name, lambda: nn.GroupNorm(math.gcd(x.shape[1], 4) or 1, x.shape[1]))(x)
    if kind == "in":
        x = _rank(x, 3)
        return self.mod(name, lambda: nn.InstanceNorm1d(x.shape[1], affine=True))(x)
    if kind == "bn2":
        x = _rank(x, 4)
        return self.mod(name, lambda: nn.BatchNorm2d(x.shape[1]))(x)
    x = _rank(x, 2 if x.dim() <= 2 else 3)
    return self.mod(name, lambda: nn.BatchNorm1d(x.shape[1], affine=kind == "bn"))(x)


ACTS = {
    "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "softplus": nn.Softplus, "hardtanh": nn.Hardtanh,
    "mish": nn.Mish, "selu": nn.SELU, "prelu": nn.PReLU, "softsign": nn.Softsign, "logsigmoid": nn.LogSigmoid,
    "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "new_gelu": NewGELU,
}


def op_act(self, name, xs, fn, functional):
    x = self.fl(xs[0])
    if functional and fn not in ("prelu", "gelu_tanh", "new_gelu"):
        return getattr(F, fn)(x)
    return self.mod(name, ACTS[fn])(x)


def op_softmax(self, name, xs, dim, log):
    x = self.fl(xs[0])
    return (F.log_softmax if log else F.softmax)(x, dim=dim)


def op_sdpa(self, name, xs, causal, proj, mask):
    x = _rank(self.fl(xs[0]), 3)
    q = k = v = x
    if proj:
        q, k, v = self.mod(name, lambda: nn.Linear(x.shape[-1], 3 * x.shape[-1]))(x).chunk(3, dim=-1)
    m = None
    if mask:
        m = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal and not mask)


def op_eager_attention(self, name, xs, heads, causal, dropout):
    """Attention written out: scores, scale, mask, softmax, dropout, values (gradlint fuses it)."""
    x = _rank(self.fl(xs[0]), 3)
    b, t, e = x.shape
    h = heads if e % heads == 0 else 1
    qkv = self.mod(name, lambda: nn.Linear(e, 3 * e))(x)
    q, k, v = (z.view(b, t, h, e // h).transpose(1, 2) for z in qkv.split(e, dim=-1))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(max(e // h, 1))
    if causal:
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    p = F.dropout(F.softmax(scores, dim=-1), dropout, training=self.training)
    return (p @ v).transpose(1, 2).reshape(b, t, e)


def op_mha(self, name, xs, heads, weights):
    x = _rank(self.fl(xs[0]), 3)
    e = x.shape[-1]
    h = heads if e % heads == 0 else 1
    out, w = self.mod(name, lambda: nn.MultiheadAttention(e, h, batch_first=True))(x, x, x, need_weights=weights)
    return out if not weights else out + w.sum()


def op_rnn(self, name, xs, kind, hidden, layers, bidir, take):
    x = _rank(self.fl(xs[0]), 3)
    cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU, "rnn_relu": nn.RNN}[kind]
    extra = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    out, h = self.mod(name, lambda: cls(x.shape[-1], hidden, layers, batch_first=True, bidirectional=bidir,
                                        **extra))(x)
    if take == "out":
        return out
    return h[0] if isinstance(h, tuple) else h


def op_pool(self, name, xs, kind, k):
    x = self.fl(xs[0])
    if kind.endswith("1"):
        x = _rank(x, 3)
    else:
        x = _rank(x, 4)
    if kind == "max1":
        return F.max_pool1d(x, k)
    if kind == "avg1":
        return F.avg_pool1d(x, k)
    if kind == "aavg1":
        return self.mod(name, lambda: nn.AdaptiveAvgPool1d(k))(x)
    if kind == "amax1":
        return F.adaptive_max_pool1d(x, k)
    if kind == "max2":
        return self.mod(name, lambda: nn.MaxPool2d(k))(x)
    if kind == "avg2":
        return self.mod(name, lambda: nn.AvgPool2d(k))(x)
    return self.mod(name, lambda: nn.AdaptiveAvgPool2d(k))(x)


def op_shape(self, name, xs, kind):
    x = xs[0]
    if kind == "flatten":
        return x.flatten(1) if x.dim() > 1 else x.flatten()
    if kind == "flatten_mod":
        return self.mod(name, nn.Flatten)(x)
    if kind == "permute":
        return x.permute(*reversed(range(x.dim())))
    if kind == "transpose":
        return x.transpose(-1, -2)
    if kind == "unsqueeze":
        return x.unsqueeze(1)
    if kind == "squeeze":
        return x.squeeze()
    if kind == "view_b":
        return x.reshape(x.shape[0], -1) if x.dim() else x.reshape(1, 1)
    if kind == "contiguous":
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "expand":
        return x.unsqueeze(1).expand(-1, 3, *x.shape[1:])
    if kind == "repeat":
        return x.repeat(*([1] * (x.dim() - 1)), 2)
    if kind == "slice":
        return x[..., ::2]
    if kind == "select0":
        return x[0]
    if kind == "narrow":
        return x.narrow(-1, 0, 1)
    raise AssertionError(kind)


def op_dropout(self, name, xs, p, functional):
    x = self.fl(xs[0])
    if functional:
        return F.dropout(x, p, training=self.training)
    return self.mod(name, lambda: nn.Dropout(p))(x)


def op_scale(self, name, xs, c):
    return self.fl(xs[0]) * c


def op_param(self, name, xs, kind, init):
    x = self.fl(xs[0])
    last = x.shape[-1] if x.dim() else 1
    if kind == "mul_vec":  # LayerScale
        return x * self.param(name, lambda: torch.full((last,), init, dtype=x.dtype))
    if kind == "add_vec":
        return x + self.param(name, lambda: torch.full((last,), init, dtype=x.dtype))
    if kind == "add_full":  # a position table
        return x + self.param(name, lambda: torch.randn(x.shape[1:], dtype=x.dtype) * init)
    if kind == "mul_scalar":  # SkipInit's alpha
        return x * self.param(name, lambda: torch.tensor(init, dtype=x.dtype))
    if kind == "alone":  # a learned constant that ignores x's values
        p = self.param(name, lambda: torch.full((last,), init, dtype=x.dtype))
        return p.expand_as(x) + 0 * x
    if kind == "frozen":
        p = self.param(name, lambda: torch.full((last,), init, dtype=x.dtype))
        p.requires_grad_(False)
        return x * p
    raise AssertionError(kind)


def op_buffer(self, name, xs, kind):
    x = self.fl(xs[0])
    if kind == "add":
        return x + self.buffer(name, lambda: torch.linspace(-1, 1, x.shape[-1] if x.dim() else 1, dtype=x.dtype))
    if kind == "mask":
        m = self.buffer(name, lambda: torch.ones(x.shape[-1] if x.dim() else 1, dtype=torch.bool).tril(-1)[-1])
        return x.masked_fill(~m, 0.0)
    if kind == "index":
        ids = self.buffer(name, lambda: torch.arange(x.shape[-1] if x.dim() else 1).flip(0))
        return x.index_select(-1, ids) if x.dim() else x
    raise AssertionError(kind)


def op_odd(self, name, xs, kind):
    """Ops without a transfer rule, with unusual dtypes, or that stop the gradient."""
    x = xs[0]
    f = self.fl(x)
    table = {
        "fft_abs": lambda: torch.fft.rfft(f.float(), dim=-1).abs(),
        "fft_real": lambda: torch.fft.fft(f.float(), dim=-1).real,
        "fft_complex": lambda: torch.fft.fft(f.float(), dim=-1),
        "complex": lambda: f.float().to(torch.complex64) * (1 + 2j),
        "sort": lambda: torch.sort(f, dim=-1).values,
        "argsort": lambda: torch.argsort(f, dim=-1),
        "cumsum": lambda: torch.cumsum(f, dim=-1),
        "cumprod": lambda: torch.cumprod(f, dim=-1),
        "topk": lambda: torch.topk(f, 1, dim=-1).values,
        "where": lambda: torch.where(f > 0, f, -f * 0.1),
        "custom_fn": lambda: StraightThrough.apply(f),
        "inplace": lambda: f.clone().relu_().mul_(2.0).add_(1.0),
        "inplace_input": lambda: f.add_(0.0),
        "detach": lambda: f.detach(),
        "argmax": lambda: f.argmax(-1),
        "long": lambda: f.long(),
        "bool": lambda: f > 0,
        "masked_fill": lambda: f.masked_fill(f < 0, 0.0),
        "clamp": lambda: f.clamp(-1, 1),
        "exp": lambda: f.exp(),
        "log": lambda: (f.abs() + 1e-6).log(),
        "sqrt": lambda: f.abs().sqrt(),
        "rsqrt": lambda: f.rsqrt(),
        "pow3": lambda: f.pow(3),
        "nan_to_num": lambda: f.nan_to_num(),
        "norm": lambda: f.norm(dim=-1, keepdim=True),
        "std": lambda: f.std(dim=-1),
        "max_dim": lambda: f.max(dim=-1).values,
        "logsumexp": lambda: f.logsumexp(-1),
        "sum": lambda: f.sum(),
        "mean": lambda: f.mean(dim=0),
        "unbind": lambda: f.unbind(-1)[0],
        "chunk": lambda: f.chunk(2, dim=-1)[-1],
        "gather": lambda: f.gather(-1, torch.zeros_like(f, dtype=torch.long)),
        "roll": lambda: f.roll(1, -1),
        "flip": lambda: f.flip(-1),
        "triu": lambda: f.triu(),
        "bessel": lambda: torch.special.bessel_j0(f),
        "erf": lambda: torch.erf(f),
        "einsum": lambda: torch.einsum("...i,...i->...", f, f),
        "matmul_self": lambda: f @ f.transpose(-1, -2),
        "item": lambda: f * float(f.mean()),
        "branch": lambda: f if bool(f.sum() > 0) else -f,
        "nonzero": lambda: f.flatten()[f.flatten().nonzero().flatten()],
        "zeros_like": lambda: torch.zeros_like(f),
        "new_ones": lambda: f.new_ones(f.shape) + torch.arange(f.shape[-1] if f.dim() else 1),
        "int_arith": lambda: (f.long() + 1) * 2,
        "sign": lambda: torch.sign(f),
        "round": lambda: f.round(),
        "isnan": lambda: torch.isnan(f),
        "cummax": lambda: torch.cummax(f, dim=-1).values,
        "diff": lambda: torch.diff(f, dim=-1),
        "atan2": lambda: torch.atan2(f, f + 1),
        "no_grad": lambda: _no_grad(f),
        "to_double": lambda: f.double(),
        "to_half": lambda: f.half(),
        "outer": lambda: f.unsqueeze(-1) * f.unsqueeze(-2),
        "tolist": lambda: torch.tensor(f.flatten()[:3].tolist(), dtype=f.dtype),
    }
    return table[kind]()


ODD_KINDS = [
    "fft_abs", "fft_real", "fft_complex", "complex", "sort", "argsort", "cumsum", "cumprod", "topk", "where",
    "custom_fn", "inplace", "inplace_input", "detach", "argmax", "long", "bool", "masked_fill", "clamp", "exp",
    "log", "sqrt", "rsqrt", "pow3", "nan_to_num", "norm", "std", "max_dim", "logsumexp", "sum", "mean",
    "unbind", "chunk", "gather", "roll", "flip", "triu", "bessel", "erf", "einsum", "matmul_self", "item",
    "branch", "nonzero", "zeros_like", "new_ones", "int_arith", "sign", "round", "isnan", "cummax", "diff",
    "atan2", "no_grad", "to_double", "to_half", "outer", "tolist"]


def _no_grad(x):
    with torch.no_grad():
        y = x * 2
    return y + x


def op_nograd_linear(self, name, xs, width):
    x = self.fl(xs[0])
    lin = self.mod(name, lambda: nn.Linear(x.shape[-1], width))
    with torch.no_grad():
        return lin(x)


def _fit(self, name, a, b):
    """``b`` in ``a``'s shape: a Linear from b's features per sample to a's, else ``a`` itself."""
    if a.shape == b.shape:
        return b
    if a.dim() >= 1 and b.dim() >= 1 and a.shape[0] == b.shape[0]:
        na, nb = math.prod(a.shape[1:]), math.prod(b.shape[1:])
        lin = self.mod(name + "_fit", lambda: nn.Linear(nb, na))
        return lin(b.reshape(b.shape[0], nb)).reshape(a.shape)
    return a


def op_binary(self, name, xs, kind):
    a = self.fl(xs[0])
    b = _fit(self, name, a, self.fl(xs[1]))
    table = {
        "add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: a / b,
        "cat": lambda: torch.cat([a, b], dim=-1), "cat0": lambda: torch.cat([a, b], dim=0),
        "stack": lambda: torch.stack([a, b], dim=1), "matmul": lambda: a @ b.transpose(-1, -2),
        "maximum": lambda: torch.maximum(a, b), "where": lambda: torch.where(a > b, a, b),
        "add_scaled": lambda: torch.add(a, b, alpha=0.5), "residual": lambda: a + 0.1 * b,
    }
    return table[kind]()


def op_fail(self, name, xs, kind):
    x = xs[0]
    if kind == "raise" and not self._building:
        raise RuntimeError("this model's forward always fails")
    if kind == "meta" and x.is_meta:
        raise NotImplementedError("this model does not run on the meta device")
    if kind == "value_error" and not self._building:
        raise ValueError("bad value")
    return x


OPS = {
    "linear": op_linear, "conv": op_conv, "embed": op_embed, "unembed": op_unembed, "tie": op_tie,
    "reuse": op_reuse, "deep": op_deep, "norm": op_norm, "act": op_act, "softmax": op_softmax, "sdpa": op_sdpa,
    "eager_attention": op_eager_attention, "mha": op_mha,
    "rnn": op_rnn, "pool": op_pool, "shape": op_shape, "dropout": op_dropout, "scale": op_scale,
    "param": op_param, "buffer": op_buffer, "odd": op_odd, "nograd_linear": op_nograd_linear,
    "binary": op_binary, "fail": op_fail,
}
BINARY = {"binary"}


# -- strategies ------------------------------------------------------------------------------------

back = st.integers(0, 6)
widths = st.sampled_from([1, 2, 4, 8, 16, 0])
op_specs = st.one_of(
    st.tuples(st.just("linear"), back, widths, st.booleans()),
    st.tuples(st.just("conv"), back, st.sampled_from(["1", "2", "t2"]), st.sampled_from([1, 4, 8]),
              st.sampled_from([1, 2, 3]), st.sampled_from([1, 2]), st.sampled_from([0, 1])),
    st.tuples(st.just("embed"), back, st.sampled_from([1, 5, 50]), st.sampled_from([1, 8, 16]), st.booleans()),
    st.tuples(st.just("unembed"), back),
    st.tuples(st.just("tie"), back, st.booleans()),
    st.tuples(st.just("reuse"), back, st.integers(0, 5)),
    st.tuples(st.just("deep"), back, st.integers(2, 12), st.sampled_from(sorted(DEEP_ACTS)),
              st.sampled_from([1e-30, 0.1, 1.0, 2.0, 10.0, 1e30]), st.booleans()),
    st.tuples(st.just("norm"), back, st.sampled_from(["ln", "ln_plain", "rms", "rms_fn", "gn", "in", "bn",
                                                      "bn_plain", "bn2", "hand_rms", "hand_ln"])),
    st.tuples(st.just("act"), back, st.sampled_from(sorted(ACTS)), st.booleans()),
    st.tuples(st.just("softmax"), back, st.sampled_from([-1, 0, 1]), st.booleans()),
    st.tuples(st.just("sdpa"), back, st.booleans(), st.booleans(), st.booleans()),
    st.tuples(st.just("eager_attention"), back, st.sampled_from([1, 2]), st.booleans(), st.sampled_from([0.0, 0.1])),
    st.tuples(st.just("mha"), back, st.sampled_from([1, 2, 4]), st.booleans()),
    st.tuples(st.just("rnn"), back, st.sampled_from(["rnn", "lstm", "gru", "rnn_relu"]), st.sampled_from([1, 4, 8]),
              st.sampled_from([1, 2]), st.booleans(), st.sampled_from(["out", "h"])),
    st.tuples(st.just("pool"), back, st.sampled_from(["max1", "avg1", "aavg1", "amax1", "max2", "avg2", "aavg2"]),
              st.sampled_from([1, 2, 3])),
    st.tuples(st.just("shape"), back, st.sampled_from(["flatten", "flatten_mod", "permute", "transpose", "unsqueeze",
                                                       "squeeze", "view_b", "contiguous", "expand", "repeat",
                                                       "slice", "select0", "narrow"])),
    st.tuples(st.just("dropout"), back, st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.booleans()),
    st.tuples(st.just("scale"), back, st.sampled_from(SCALES + ODD_SCALARS)),
    st.tuples(st.just("param"), back, st.sampled_from(["mul_vec", "add_vec", "add_full", "mul_scalar", "alone",
                                                       "frozen"]), st.sampled_from([0.0, 1e-30, 0.1, 1.0, 1e30])),
    st.tuples(st.just("buffer"), back, st.sampled_from(["add", "mask", "index"])),
    st.tuples(st.just("odd"), back, st.sampled_from(ODD_KINDS)),
    st.tuples(st.just("nograd_linear"), back, widths),
    st.tuples(st.just("binary"), st.tuples(back, back), st.sampled_from(
        ["add", "sub", "mul", "div", "cat", "cat0", "stack", "matmul", "maximum", "where", "add_scaled",
         "residual"])),
    st.tuples(st.just("fail"), back, st.sampled_from(["raise", "meta", "value_error"])),
)
# Common layers more often than the odd ones, so models are deep enough to reach every path.
common_ops = st.one_of(
    st.tuples(st.just("linear"), st.just(0), st.sampled_from([4, 8, 16]), st.just(True)),
    st.tuples(st.just("act"), st.just(0), st.sampled_from(["relu", "tanh", "sigmoid", "gelu"]), st.booleans()),
    st.tuples(st.just("binary"), st.tuples(st.just(0), st.integers(1, 4)), st.sampled_from(["add", "cat", "mul"])),
)
dims = st.sampled_from([1, 2, 3, 4, 8, 16, 0])
shapes = st.one_of(
    st.tuples(st.sampled_from([1, 2, 4]), dims),
    st.tuples(st.sampled_from([1, 2, 4]), dims, dims),
    st.tuples(st.sampled_from([1, 2]), dims, dims, dims),
    st.tuples(dims),
    st.just(()),
)
input_specs = st.one_of(
    st.tuples(st.just("float"), shapes),
    st.tuples(st.just("float"), shapes),
    st.tuples(st.just("int"), shapes, st.sampled_from([1, 5, 50])),
    st.tuples(st.sampled_from(["bool", "complex", "double"]), shapes),
)
value_out = st.tuples(st.just("val"), st.integers(0, 6))
leaf_out = st.one_of(value_out, value_out, value_out, st.just(("none",)),
                     st.tuples(st.just("const"), st.sampled_from([3, "text", 2.5, None])))
outputs = st.one_of(
    st.just(("val", 0)),
    st.just(("val", 0)),
    st.recursive(leaf_out, lambda inner: st.tuples(st.sampled_from(["tuple", "list", "dict"]),
                                                     st.lists(inner, min_size=0, max_size=3)), max_leaves=5),
)
inits = st.lists(st.tuples(st.integers(0, 20), st.sampled_from(
    [("scale", s) for s in SCALES] + [("fill", v) for v in (math.nan, math.inf, -math.inf, 3e38, 1e-45, 1.0)])),
    max_size=3)
specs = st.fixed_dictionaries({
    "inputs": st.lists(input_specs, min_size=1, max_size=2),
    "pass": st.sampled_from(["tuple", "tuple", "tuple", "single", "dict", "shapes", "none", "eia"]),
    "ops": st.lists(st.one_of(common_ops, op_specs), max_size=10),
    "out": outputs,
    "init": inits,
    "dtype": st.sampled_from(["float32", "float32", "float32", "float64", "bfloat16"]),
    "device": st.sampled_from(["cpu", "cpu", "cpu", "meta"]),
    "eval": st.booleans(),
    "unused": st.booleans(),
    "seed": st.integers(0, 3),
})


# -- building a model and its inputs from a spec ---------------------------------------------------


def make_inputs(spec) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(spec["seed"])
    out = []
    for inp in spec["inputs"]:
        kind, shape = inp[0], inp[1]
        if kind == "int":
            out.append(torch.randint(0, inp[2], shape, generator=g))
        elif kind == "bool":
            out.append(torch.rand(shape, generator=g) < 0.5)
        elif kind == "complex":
            out.append(torch.randn(shape, generator=g, dtype=torch.complex64))
        elif kind == "double":
            out.append(torch.randn(shape, generator=g, dtype=torch.float64))
        else:
            out.append(torch.randn(shape, generator=g).to(DTYPES[spec["dtype"]]))
    return out


def build(spec) -> tuple[nn.Module, object]:
    """The model and the ``inputs`` argument for ``check``, as the spec says."""
    torch.manual_seed(spec["seed"])
    sample = make_inputs(spec)
    model = Fuzzed(spec, sample)
    if spec["unused"]:
        model.unused = nn.Linear(3, 2)
        model.register_parameter("unused_p", nn.Parameter(torch.zeros(4)))
    params = [p for _, p in sorted(model.named_parameters())]
    with torch.no_grad():
        for j, (what, v) in spec["init"]:
            if params:
                p = params[j % len(params)]
                if what == "scale":
                    p.mul_(v)
                else:
                    p.fill_(v)
    model = model.to(DTYPES[spec["dtype"]]) if spec["dtype"] != "float32" else model
    if spec["device"] == "meta":
        model = model.to("meta")
    if spec["eval"]:
        model.eval()
    how = spec["pass"]
    if how == "single" and len(sample) == 1:
        return model, sample[0]
    if how == "dict":
        return model, {f"x{i}": t for i, t in enumerate(sample)}
    if how == "shapes":
        decl = [gradlint.tokens(t.shape, int(t.max()) + 1) if not t.is_floating_point() and not t.is_complex()
                and t.dtype != torch.bool and t.numel() and t.dim() else tuple(t.shape) for t in sample]
        return model, decl[0] if len(decl) == 1 else decl
    if how == "none":
        return model, None
    if how == "eia":
        model.example_input_array = tuple(sample)
        return model, None
    return model, tuple(sample)
