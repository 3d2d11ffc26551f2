"""Every fix text, applied as written and measured: the finding goes away.

For each rule whose findings carry a fix, a small model that triggers it; the fix applied in
code following the words of the fix text (quoted beside it); then a probe, which runs the
model's own backward, and the finding (or a note grouped under another finding) is gone.
Where the text leaves something that remains, the test says what and asserts it. GL101's fix
is checked on examples/ (tests/test_examples.py) and GL602's on a tagger (tests/test_truth.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import gradlint
from gradlint.lint.rule import REGISTRY, load_builtin

W = 32  # tiny widths keep the module fast; mean field holds within tenths of a decade here


def codes(report) -> set[str]:
    """Codes of the findings, and of the findings grouped under them as notes."""
    return {f.code for f in report.findings} | {n.code for f in report.findings for n in f.notes}


def fix_text(code: str) -> str:
    load_builtin()
    return REGISTRY[code].__doc__.split("## Fix", 1)[1].split("##", 1)[0]


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# -- GL102 exploding-gradient ---------------------------------------------------------------------

def std1_relu_mlp(depth: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(W, W, bias=False)
        nn.init.normal_(lin.weight, std=1.0)
        layers += [lin] + ([nn.ReLU()] if i < depth - 1 else [])
    return nn.Sequential(*layers)


def fix_gl102(model):
    # "Initialize for the fan-in (`nn.init.kaiming_normal_(m.weight, nonlinearity="relu")`)"
    for m in _linears(model):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


# -- GL201 saturating-activation-chain ------------------------------------------------------------

def sigmoid_mlp(depth: int = 8) -> nn.Module:
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(W, W), nn.Sigmoid())], nn.Linear(W, W))


def fix_gl201_relu(model):
    # "Use ReLU-family activations with He init (`nn.ReLU()` and
    # `nn.init.kaiming_normal_(m.weight, nonlinearity="relu")`)"
    for i, m in enumerate(model):
        if isinstance(m, nn.Sigmoid):
            model[i] = nn.ReLU()
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


def fix_gl201_layernorm(model):
    # "or put `nn.LayerNorm(width)` before each of them" (for saturated activations; here it is
    # applied to an unsaturated sigmoid chain, where the text says GL101 remains)
    layers = []
    for m in model:
        layers += ([nn.LayerNorm(W)] if isinstance(m, nn.Sigmoid) else []) + [m]
    return nn.Sequential(*layers)


# -- GL202 unscaled-attention-scores --------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, d: int = 128, scale: bool = False):
        super().__init__()
        self.scale = scale
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        if self.scale:
            # "in hand-written attention use `q = q * head_dim ** -0.5` before `q @ k.transpose(-2, -1)`"
            q = q * q.shape[-1] ** -0.5
        return x + self.proj(torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v)


def fix_gl202(model):
    model.scale = True


# -- GL203 dead-relu-risk -------------------------------------------------------------------------

def negative_bias_mlp(depth: int = 4, bias: float = -2.5) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(W, W)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.constant_(lin.bias, bias)
        layers += [lin] + ([nn.ReLU()] if i < depth - 1 else [])
    return nn.Sequential(*layers)


def fix_gl203(model):
    # "Initialize the biases to zero (`nn.init.zeros_(m.bias)`)"
    for m in _linears(model):
        nn.init.zeros_(m.bias)


# -- GL301 init-scale-mismatch --------------------------------------------------------------------

def default_relu_mlp(depth: int = 8) -> nn.Module:
    return nn.Sequential(*[m for i in range(depth) for m in ([nn.Linear(W, W)] + ([nn.ReLU()] if i < depth - 1
                                                                                  else []))])


def fix_gl301(model):
    # "Initialize every layer of the stack for its activation: ReLU
    # `nn.init.kaiming_normal_(m.weight, nonlinearity="relu")` ...; `nn.init.zeros_(m.bias)`."
    for m in _linears(model):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)


def default_tanh_mlp(depth: int = 8) -> nn.Module:
    return nn.Sequential(*[m for _ in range(depth - 1) for m in (nn.Linear(W, W), nn.Tanh())], nn.Linear(W, W))


def fix_gl301_tanh(model):
    # "tanh `nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("tanh"))` ...; `nn.init.zeros_(m.bias)`"
    for m in _linears(model):
        nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("tanh"))
        nn.init.zeros_(m.bias)


# -- GL401 missing-normalization ------------------------------------------------------------------

def tanh_mlp_20() -> nn.Module:
    return default_tanh_mlp(20)


def fix_gl401(model):
    # "A normalization layer after each weighted layer, before its activation, with the layer's
    # output width: `nn.LayerNorm(out_features)` after an nn.Linear"
    layers = []
    for m in model:
        layers.append(m)
        if isinstance(m, nn.Linear) and m is not model[-1]:
            layers.append(nn.LayerNorm(m.out_features))
    return nn.Sequential(*layers)


# -- GL402 deep-post-ln-transformer ---------------------------------------------------------------

class Encoder(nn.Module):
    def __init__(self, layers: int = 24, norm_first: bool = False):
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(W, 4, dim_feedforward=2 * W, dropout=0.0,
                                                                    batch_first=True, norm_first=norm_first),
                                         layers, norm=nn.LayerNorm(W) if norm_first else None,
                                         enable_nested_tensor=False)

    def forward(self, x):
        return self.enc(x)


def fix_gl402(model):
    # "Pre-LN: `nn.TransformerEncoderLayer(..., norm_first=True)` with a final norm
    # (`nn.TransformerEncoder(..., norm=nn.LayerNorm(d_model))`)"
    return Encoder(len(model.enc.layers), norm_first=True)


# -- GL501 missing-skip-path ----------------------------------------------------------------------

def plain_relu_mlp(depth: int = 16) -> nn.Module:
    return default_relu_mlp(depth)


class Residual(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


def fix_gl501(model):
    # "Group the layers into residual blocks, `x = x + block(x)`, with normalization in the block
    # (pre-norm `block = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w))`)
    # and the block's last layer zero-initialized (`nn.init.zeros_(block[-1].weight)`)."
    lin = _linears(model)
    blocks = []
    for a, b in zip(lin[0::2], lin[1::2]):
        block = nn.Sequential(nn.LayerNorm(W), a, nn.ReLU(), b)
        nn.init.zeros_(block[-1].weight)
        blocks.append(Residual(block))
    return nn.Sequential(*blocks)


# -- GL502 unscaled-residual-branches -------------------------------------------------------------

class ResMLP(nn.Module):
    def __init__(self, blocks: int = 12):
        super().__init__()
        self.fc1 = nn.ModuleList(nn.Linear(W, W) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(W, W) for _ in range(blocks))
        for lin in [*self.fc1, *self.fc2]:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        self.alpha = 1.0
        self.head = nn.Linear(W, W)

    def forward(self, x):
        for fc1, fc2 in zip(self.fc1, self.fc2):
            x = x + self.alpha * fc2(torch.relu(fc1(x)))
        return self.head(x)


def fix_gl502_zero(model):
    # "Zero-init the last layer of each branch (`nn.init.zeros_(block.fc2.weight)`, SkipInit / Fixup)"
    for fc2 in model.fc2:
        nn.init.zeros_(fc2.weight)


def fix_gl502_alpha(model):
    # "or scale each branch, `x = x + alpha * f(x)` with `alpha = 1/sqrt(num_blocks)`"
    model.alpha = 1 / math.sqrt(len(model.fc2))


# -- GL601 vanilla-rnn-long-sequence, GL603 exploding-recurrence ----------------------------------

class Recurrent(nn.Module):
    def __init__(self, cell: str = "rnn", gain: float | None = None):
        super().__init__()
        self.rnn = getattr(nn, cell.upper())(W, W, batch_first=True)
        if gain is not None:
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = nn.Linear(W, 4)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def fix_gl601(model):
    # "`nn.LSTM(input_size, hidden_size, batch_first=True)` with the forget-gate bias at 1
    # (`h = lstm.hidden_size; lstm.bias_ih_l0.data[h:2*h].fill_(1.0); lstm.bias_hh_l0.data[h:2*h].zero_()`)"
    model.rnn = lstm = nn.LSTM(model.rnn.input_size, model.rnn.hidden_size, batch_first=True)
    h = lstm.hidden_size
    lstm.bias_ih_l0.data[h:2 * h].fill_(1.0)
    lstm.bias_hh_l0.data[h:2 * h].zero_()


def fix_gl603(model):
    # The finding's own fix text carries code: run it as written. Clipping acts in the training
    # loop, on the step, not on the gradient measured here.
    (f,) = [f for f in gradlint.check(model, (8, 12, W)).findings if f.code == "GL603"]
    code = f.fix.split(":\n", 1)[1].split("\nand clip", 1)[0]
    assert code.startswith("rnn = model.get_submodule('rnn')"), f.fix
    exec(code, {"model": model, "nn": nn})


# -- GL701 gradient-blockage, GL702 unused-parameters ---------------------------------------------

class Encoded(nn.Module):
    def __init__(self, detach: bool = True, spare: bool = False):
        super().__init__()
        self.detach = detach
        self.encoder = nn.Sequential(nn.Linear(W, W), nn.ReLU(), nn.Linear(W, W))
        self.head = nn.Linear(W, 4)
        if spare:
            self.aux_head = nn.Sequential(nn.Linear(W, W), nn.ReLU(), nn.Linear(W, 4))

    def forward(self, x):
        h = torch.relu(self.encoder(x))
        return self.head(h.detach() if self.detach else h)


def fix_gl701(model):
    # "Remove the `.detach()` / `torch.no_grad()` if the layers before it should learn"
    model.detach = False


def fix_gl701_ste(model):
    # "for a non-differentiable step keep a straight-through gradient, `y = x + (f(x) - x).detach()`"
    class STE(Encoded):
        def forward(self, x):
            h = torch.relu(self.encoder(x))
            return self.head(h + (torch.round(h) - h).detach())
    fixed = STE(detach=False)
    fixed.load_state_dict(model.state_dict())
    return fixed


def fix_gl702_remove(model):
    # "Remove the module if it is not needed"
    del model.aux_head


def fix_gl702_freeze(model):
    # "or freeze it (`module.requires_grad_(False)`)"
    model.aux_head.requires_grad_(False)


# -- GL103 non-finite-values ----------------------------------------------------------------------

def nan_weight() -> nn.Module:
    model = nn.Sequential(nn.Linear(W, W), nn.ReLU(), nn.Linear(W, 8))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    return model


def fix_gl103(model):
    # "Re-initialize the tensor (`module.reset_parameters()`, ...)"
    model[2].reset_parameters()


@dataclass(frozen=True)
class Fix:
    code: str
    build: Callable[[], nn.Module]
    apply: Callable[[nn.Module], nn.Module | None]
    inputs: tuple[int, ...]
    words: str  # the words of the fix text applied (asserted to be in the rule's fix text)
    remains: frozenset[str] = frozenset()  # codes the fix, as written, leaves (see the case's comment)


FIXES = {
    "GL102-kaiming": Fix("GL102", std1_relu_mlp, fix_gl102, (64, W), 'nn.init.kaiming_normal_(m.weight, '
                         'nonlinearity="relu")'),
    "GL201-relu": Fix("GL201", sigmoid_mlp, fix_gl201_relu, (64, W), "Use ReLU-family activations with He init"),
    # The text says a LayerNorm does not cure an unsaturated sigmoid chain: GL101 remains.
    "GL201-layernorm": Fix("GL201", sigmoid_mlp, fix_gl201_layernorm, (64, W), "put `nn.LayerNorm(width)` before "
                           "each of them", frozenset({"GL101"})),
    "GL202-scale-q": Fix("GL202", Attention, fix_gl202, (4, 32, 128), "q = q * head_dim ** -0.5"),
    "GL203-zero-bias": Fix("GL203", negative_bias_mlp, fix_gl203, (64, W), "nn.init.zeros_(m.bias)"),
    "GL301-relu": Fix("GL301", default_relu_mlp, fix_gl301, (64, W), 'ReLU\n`nn.init.kaiming_normal_(m.weight, '
                      'nonlinearity="relu")`'),
    "GL301-tanh": Fix("GL301", default_tanh_mlp, fix_gl301_tanh, (64, W), 'nn.init.xavier_uniform_(m.weight, '
                      'gain=nn.init.calculate_gain("tanh"))'),
    "GL401-layernorm": Fix("GL401", tanh_mlp_20, fix_gl401, (64, W), "`nn.LayerNorm(out_features)` after an "
                           "nn.Linear"),
    "GL402-pre-ln": Fix("GL402", Encoder, fix_gl402, (4, 8, W), "norm_first=True"),
    "GL501-residual": Fix("GL501", plain_relu_mlp, fix_gl501, (64, W), "nn.init.zeros_(block[-1].weight)"),
    "GL502-zero-init": Fix("GL502", ResMLP, fix_gl502_zero, (64, W), "nn.init.zeros_(block.fc2.weight)"),
    "GL502-alpha": Fix("GL502", ResMLP, fix_gl502_alpha, (64, W), "alpha = 1/sqrt(num_blocks)"),
    # An LSTM with forget bias 1 still loses about 0.09 decades a step (GL602's "Why"): over 16
    # steps that stays under the threshold, so nothing remains.
    "GL601-lstm": Fix("GL601", lambda: Recurrent("rnn"), fix_gl601, (8, 16, W), "lstm.bias_hh_l0.data[h:2*h].zero_()"),
    # The text says a tanh RNN at gain 1 loses the gradient slowly instead: GL601 (a warning) remains.
    "GL603-orthogonal": Fix("GL603", lambda: Recurrent("rnn", gain=3.0), fix_gl603, (8, 12, W),
                            "nn.init.orthogonal_(rnn.weight_hh_l0)", frozenset({"GL601"})),
    "GL701-remove-detach": Fix("GL701", Encoded, fix_gl701, (16, W), "Remove the `.detach()`"),
    "GL701-straight-through": Fix("GL701", Encoded, fix_gl701_ste, (16, W), "y = x + (f(x) - x).detach()"),
    "GL702-remove": Fix("GL702", lambda: Encoded(detach=False, spare=True), fix_gl702_remove, (16, W),
                        "Remove the module"),
    "GL702-freeze": Fix("GL702", lambda: Encoded(detach=False, spare=True), fix_gl702_freeze, (16, W),
                        "module.requires_grad_(False)"),
    "GL103-reset": Fix("GL103", nan_weight, fix_gl103, (16, W), "module.reset_parameters()"),
}

SLOW = {"GL402-pre-ln", "GL601-lstm"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FIXES])
def test_a_fix_applied_as_written_clears_its_finding_when_measured(name):
    fix = FIXES[name]
    assert " ".join(fix.words.split()) in " ".join(fix_text(fix.code).split()), "the words are not the rule's"
    torch.manual_seed(0)
    model = fix.build()
    before = gradlint.check(model, fix.inputs)
    assert fix.code in codes(before), before  # the model triggers the rule
    model = fix.apply(model) or model
    after = gradlint.probe(model, fix.inputs, seeds=1)
    assert fix.code not in codes(after), (name, after)
    # What remains of the model's problems (warnings and errors) is what the text says remains.
    left = {f.code for f in after.findings if f.severity in ("warning", "error")}
    assert left == set(fix.remains), (name, after)
    assert (after.summary.verdict == "healthy") == (not left & {"GL101", "GL102", "GL701"}), after
