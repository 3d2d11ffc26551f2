"""GL301 init-scale-mismatch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.activations import Phi, phi_of
from gradlint.lint.chains import ChainWalker, PathCover
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import const_like, feeds_output, forward_of

# Between a weight layer and its activation: data movement only (a bias added separately too).
MOVES = {"identity", "select", "getitem", "expand", "datamove", "dropout"}
# From an activation to the next weight layer of the same stack.
THROUGH = MOVES | {"split", "cat", "avg_pool", "max_pool"}
# A layer's activation is a few ops after it at most (a reshape, dropout, a bias added
# separately): the walk to it gives up after this many, as no such chain is that long.
MAX_OPS_TO_ACTIVATION = 32
# Activations whose critical init is a fixed scheme rather than a gain found numerically.
RELU_LIKE = {"relu", "relu6"}
TANH_LIKE = {"tanh", "hardtanh", "softsign"}
# No critical init exists for these (their derivative is at most 1/4): GL201 reports them.
SKIPPED = {"sigmoid", "hardsigmoid", "logsigmoid"}
# Weight variances within this fraction of the critical one are the right init.
SCALE_TOLERANCE = 0.1


def _mlp(depth: int = 8, width: int = 64, init: str = "default", act: type[nn.Module] = nn.ReLU) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        lin = nn.Linear(width, width)
        if init == "kaiming":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        elif init == "std1":
            nn.init.normal_(lin.weight, std=1.0)
            nn.init.zeros_(lin.bias)
        elif init == "xavier-tanh":
            nn.init.xavier_uniform_(lin.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < depth - 1:
            layers.append(act())
    return nn.Sequential(*layers)


class _Block(nn.Module):
    """Pre-norm residual block with GPT-style 0.02-std projections."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        for lin in (self.fc1, self.fc2):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))


def _small_init_resnet(depth: int = 8, width: int = 64) -> nn.Module:
    return nn.Sequential(*[_Block(width) for _ in range(depth)], nn.LayerNorm(width), nn.Linear(width, width))


def _fan_in(node, shape: tuple[int, ...]) -> int | None:
    """torch's fan_in of a Linear / Conv weight (what nn.init schemes divide by)."""
    if len(shape) < 2:
        return None
    if node.kind == "linear":
        return shape[0] if node.attrs.get("layout") == "in_out" else shape[-1]
    return shape[1] * math.prod(shape[2:])


_LABELS = {"relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU", "gelu": "GELU", "gelu_tanh": "GELU",
           "silu": "SiLU", "tanh": "tanh", "elu": "ELU", "selu": "SELU", "mish": "Mish", "softplus": "Softplus",
           "hardswish": "Hardswish"}


@dataclass(frozen=True)
class _Layer:
    """A Linear/Conv layer and the activation it feeds directly, with its gradient gain.

    Attributes:
        node: The layer's node.
        act: The activation's node.
        phi: The activation's function.
        label: The activation's name in messages ('ReLU').
        fan_in: The weight's fan-in.
        gain2: sigma_w^2 * fan_in.
        dphi2: E[phi'^2] at the predicted pre-activation.
        chi: The layer's gradient gain, gain2 * dphi2.
        decades: 0.5 * log10(chi), the gradient's change per layer.
        q_in: The second moment of the layer's input (1 when unknown).
    """

    node: object
    act: object
    phi: Phi
    label: str
    fan_in: int
    gain2: float
    dphi2: float
    chi: float
    decades: float
    q_in: float


def _critical_gain(phi: Phi, q_in: float) -> float | None:
    """sigma_w^2 * fan_in at which the layer's gradient gain sigma_w^2 * fan_in * E[phi'^2] is one.

    ReLU-like and odd activations have a fixed scheme (He; LeCun/Glorot, the edge of chaos
    at small variance). For the others (GELU, SiLU, ELU, ...) E[phi'^2] depends on the
    pre-activation variance, which depends on the gain itself: the gain g solves
    g * E[phi'^2](g * q_in) = 1 for the stack's input second moment q_in (chi_1 = 1 at the
    variance that init would produce, not at the one the current init produces). None
    where E[phi'^2] cannot be evaluated at some variance on the way.
    """
    if phi.fn in RELU_LIKE:
        return 2.0
    if phi.fn == "leaky_relu":
        a = float(phi.params.get("negative_slope", 0.01))
        return 2.0 / (1.0 + a * a)
    if phi.fn in TANH_LIKE or phi.fn == "selu":
        return 1.0
    q = q_in if q_in > 0 else 1.0
    g = 2.0
    for _ in range(100):
        m = phi.moments(0.0, g * q)
        if m is None:
            return None
        d2 = m.dphi2
        if d2 <= 0:
            break
        new = 1.0 / d2
        if abs(new - g) < 1e-4 * g:
            return new
        g = 0.5 * (g + new)
    return g


def _recommend(phi: Phi, gain2: float, over: bool) -> tuple[str, str]:
    """(the nn.init call, the critical variance in words) for the activation.

    An over-scaled tanh stack gets gain 1 (the edge of chaos); torch's tanh gain 5/3 is
    slightly chaotic and suits an under-scaled one.
    """
    if phi.fn in RELU_LIKE:
        return 'nn.init.kaiming_normal_(m.weight, nonlinearity="relu")', "He's 2/fan_in"
    if phi.fn == "leaky_relu":
        a = float(phi.params.get("negative_slope", 0.01))
        return (f'nn.init.kaiming_normal_(m.weight, a={a:g}, nonlinearity="leaky_relu")',
                f"He's 2/((1+a^2) fan_in) with a = {a:g}")
    if phi.fn == "tanh" and not over:
        return ('nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("tanh"))',
                "LeCun/Glorot's 1/fan_in")
    if phi.fn in TANH_LIKE:
        return "nn.init.xavier_uniform_(m.weight)", "LeCun/Glorot's 1/fan_in"
    if phi.fn == "selu":
        return 'nn.init.kaiming_normal_(m.weight, nonlinearity="linear")', "LeCun's 1/fan_in"
    gain = math.sqrt(gain2)
    words = f"{gain2:.2g}/fan_in (gain {gain:.2f}) at the stack's input variance"
    if abs(gain - math.sqrt(2.0)) <= 0.1 * math.sqrt(2.0):
        return 'nn.init.kaiming_normal_(m.weight, nonlinearity="relu")', words
    # m.weight[0].numel() is the fan_in of a Linear (in_features) and of a Conv (C_in/groups * kernel).
    return f"nn.init.normal_(m.weight, std={gain:.3g} / math.sqrt(m.weight[0].numel()))", words


def _relative(ratio: float) -> str:
    """``ratio`` (weight variance / critical variance) as the message says it: ``16x``, ``0.5x``,
    ``1/62842 of``; from 10^4 on in e-notation (``1.59e+21x``, ``1/6.28e+18 of``), as the same
    message writes the variance and chi. Every form masks to the same baseline fingerprint
    (``#x`` or ``#/# of``), so a finding keeps its fingerprint when its ratio crosses 10^4."""
    if ratio >= 10:
        return f"{ratio:.0f}x" if ratio < 1e4 else f"{ratio:.3g}x"
    if ratio >= 0.34:
        return f"{ratio:.2g}x"
    return f"1/{1 / ratio:.0f} of" if 1 / ratio < 1e4 else f"1/{1 / ratio:.3g} of"


def _scales(items: list[_Layer]) -> tuple[float, float]:
    """(median sigma_w^2 * fan_in of the stack, the critical value for its first activation;
    He's 2 for an activation the Gaussian grid cannot evaluate)."""
    gains = sorted(it.gain2 for it in items)
    crit = _critical_gain(items[0].phi, items[0].q_in)
    return gains[len(gains) // 2], 2.0 if crit is None else crit


class InitScaleMismatch(Rule):
    """A stack of layers is initialized off the critical scale for its activation.

    ## What it finds
    Stacks of at least `min_layers` consecutive Linear/Conv layers, each followed directly
    by its activation (no normalization in between) and chained without normalization or
    skip connections, whose weight variance sigma_w^2 is far from the critical value for
    that activation: the layer's gradient gain chi = sigma_w^2 * fan_in * E[phi'(h)^2],
    with E[phi'^2] at the predicted pre-activation mean and variance, differs from 1 by
    more than `tolerance_decades` per layer (0.5 * log10(chi)), and the stack loses or
    gains at least `min_decades` decades of gradient; or any such stack whose total
    reaches the summary threshold. PyTorch's default Linear/Conv init
    (kaiming_uniform_(a=sqrt(5)), variance 1/(3 fan_in)) gives chi = 1/6 per ReLU layer.

    ## Why it matters
    Without normalization the gradient is multiplied by chi at every layer, so any
    systematic departure from chi = 1 compounds geometrically with depth (He et al. 2015,
    "Delving Deep into Rectifiers", section 2.2; Glorot & Bengio 2010; Schoenholz et al.
    2017, "Deep Information Propagation"). PyTorch's own documentation of `torch.nn.init`
    lists the gain each non-linearity needs (`nn.init.calculate_gain`).

    ## Example
    An 8-layer ReLU MLP with PyTorch's default Linear init: 7 Linear+ReLU layers at
    1/(3 fan_in), one sixth of He's 2/fan_in, lose 0.39 decades each, 2.7 in all.

    ## Fix
    Initialize every layer of the stack for its activation: ReLU
    `nn.init.kaiming_normal_(m.weight, nonlinearity="relu")`, tanh
    `nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("tanh"))`, GELU/SiLU
    the gain computed in the message; `nn.init.zeros_(m.bias)`. Or normalize between
    layers (`nn.LayerNorm`, `nn.BatchNorm2d`).

    ## Known limits
    Layers followed by a normalization, residual branches, attention projections and
    single layers (heads, classifiers) are not judged: small inits there (0.02-std
    projections, zero-init branches, LayerScale) are deliberate. Sigmoid-like activations
    have no critical init and are left to GL201. Transposed convolutions and stacks of
    Linear layers without activations between them are not checked. The critical gain of
    GELU/SiLU-like activations depends on the signal's variance and is computed at the
    predicted one.
    """

    code = "GL301"
    name = "init-scale-mismatch"
    severity = Severity.WARNING
    category = "init"
    options = {"min_layers": 4, "tolerance_decades": 0.1, "min_decades": 1.0}
    good = (Case(lambda: _mlp(8, 64, "kaiming"), (32, 64)),
            Case(lambda: _mlp(8, 64, "xavier-tanh", nn.Tanh), (32, 64)),
            Case(_small_init_resnet, (32, 64)))
    bad = (Case(lambda: _mlp(8, 64, "default"), (32, 64), at="0", severity="error"),
           Case(lambda: _mlp(4, 64, "std1"), (32, 64), at="0", severity="error"))

    def check(self, result):
        g = result.graph
        thr = result.summary.threshold
        tol = float(self.opts["tolerance_decades"])
        min_layers = int(self.opts["min_layers"])
        min_dec = float(self.opts["min_decades"])

        live = feeds_output(result)
        pairs: dict[str, _Layer] = {}  # activation node -> the layer before it and its gain
        for node in g.nodes:
            if node.kind not in ("linear", "conv") or "weight" not in node.params:
                continue
            if node.attrs.get("transposed") or node.name not in live:
                continue
            act = self._activation_after(result, node)
            if act is None:
                continue
            it = self._layer(result, node, act)
            if it is not None:
                pairs[act.name] = it
        if not pairs:
            return

        layer_to_act = {it.node.name: a for a, it in pairs.items()}
        walker = ChainWalker(result, pairs, THROUGH, enter=layer_to_act.get, around=THROUGH | {"linear", "conv"})
        preds = walker.predecessors()

        reported: set[str] = set()
        for sign in (-1.0, 1.0):
            order = [n.name for n in g.nodes if n.name in pairs and pairs[n.name].decades * sign > 0]
            cover = PathCover(order, {a: abs(pairs[a].decades) for a in order}, preds)
            for path in cover:
                items = [pairs[a] for a in path]
                total = sum(it.decades for it in items)
                off = sum(1 for it in items if abs(it.decades) >= tol)
                if not ((off >= min_layers and abs(total) >= min_dec) or abs(total) >= thr):
                    continue
                med, crit = _scales(items)
                # Odd activations are right anywhere from LeCun (gain 1) to torch's tanh gain 5/3.
                top = crit * (25.0 / 9.0 if items[0].phi.fn in TANH_LIKE else 1.0)
                if crit / (1.0 + SCALE_TOLERANCE) < med < top * (1.0 + SCALE_TOLERANCE):
                    continue  # the init is the critical one: the drift is the activation's (GL201/GL401)
                cover.take(path)
                if any(a in reported for a in path):
                    continue
                reported.update(path)
                yield self._stack_finding(result, items, total, thr, med, crit)

    # -- structure -------------------------------------------------------------------------

    def _activation_after(self, result, node):
        """The activation this layer feeds directly, or None (normalization, residual, several users)."""
        g = result.graph
        cur = node.name
        for _ in range(MAX_OPS_TO_ACTIVATION):
            users = g.users.get(cur, [])
            if len(users) != 1:
                return None
            u = g.by_name[users[0]]
            if u.kind in ("act", "act_module"):
                if u.kind == "act" and u.attrs.get("fn") in SKIPPED:
                    return None
                return u
            others = [i for i in u.inputs if i is not None and i != cur]
            if u.kind in MOVES or (u.kind == "add" and all(const_like(result, i) for i in others)):
                cur = u.name  # reshapes, dropout, a separately added bias
                continue
            return None
        return None

    def _layer(self, result, node, act) -> _Layer | None:
        st = result.propagation.param_stats.get(node.params["weight"])
        if st is None:
            return None
        fan_in = _fan_in(node, tuple(st.shape))
        if not fan_in:
            return None
        pre = forward_of(result, act.inputs[0])
        if pre is None:
            return None
        phi = phi_of(act, result.propagation.param_stats)
        m = phi.moments(pre.mu, pre.v) if phi is not None else None
        if m is None:
            return None
        d2 = m.dphi2
        gain2 = st.ms * fan_in
        chi = gain2 * d2
        if not (chi > 0 and math.isfinite(chi)):
            return None
        x = forward_of(result, node.inputs[0]) if node.inputs else None
        label = _LABELS.get(phi.fn, phi.fn) if phi.fn is not None else act.module_type or "activation"
        return _Layer(node=node, act=act, phi=phi, label=label, fan_in=fan_in, gain2=gain2, dphi2=d2, chi=chi,
                      decades=0.5 * math.log10(chi), q_in=x.q if x is not None else 1.0)

    # -- message -----------------------------------------------------------------------------

    def _stack_finding(self, result, items, total, thr, med, crit):
        first, last = items[0], items[-1]
        n = len(items)
        layer_type = first.node.module_type or ("Linear" if first.node.kind == "linear" else "Conv")
        acts = {it.label for it in items}
        act = next(iter(acts)) if len(acts) == 1 else "activation"
        default = all(abs(it.gain2 * 3.0 - 1.0) <= 0.15 for it in items)
        call, crit_words = _recommend(first.phi, crit, over=med > crit)
        ratio = med / crit
        per = total / n
        where = first.node.module or "the model"
        span = where if n == 1 else f"{where} to {last.node.module or 'the model'}"
        scale = "1/(3 fan_in), PyTorch's default kaiming_uniform_(a=sqrt(5))" if default else f"{med:.3g}/fan_in"
        rel = _relative(ratio)
        direction = "shrinks" if total < 0 else "grows"
        msg = (f"{n} consecutive {layer_type}+{act} layers without normalization ({span}) are initialized with "
               f"weight variance {scale}, {rel} the critical {crit_words} for {act}: the gradient {direction} by "
               f"{abs(per):.2f} decades per layer (chi = {10 ** (2 * per):.3g}), {abs(total):.1f} decades over "
               f"the stack")
        modules = list(dict.fromkeys(it.node.module for it in items if it.node.module))
        shown = ", ".join(modules[:4]) + (" ..." if len(modules) > 4 else "")
        bias = "\nnn.init.zeros_(m.bias)" if any("bias" in it.node.params for it in items) else ""
        fix = (f"for every {layer_type} m in the stack ({shown}):\n{call}{bias}\n"
               f"or add normalization between the layers (nn.LayerNorm / nn.BatchNorm)")
        if first.phi.fn not in RELU_LIKE | TANH_LIKE | {"leaky_relu", "selu"}:
            # E[phi'^2] of GELU/SiLU-like activations drifts with the signal's variance: no
            # init keeps chi = 1 through a deep stack on its own.
            fix = (f"add normalization between the layers (nn.LayerNorm before each {act}); and for every "
                   f"{layer_type} m in the stack ({shown}):\n{call}{bias}")
        sev = self.escalate(abs(total), error_at=thr)
        return self.finding(result, msg, fix=fix, module=first.node.module, node=first.node.name, severity=sev,
                            layers=n, decades=round(total, 3), decades_per_layer=round(per, 3),
                            weight_gain=round(med, 4), critical_gain=round(crit, 4), default_init=default,
                            activation=act, modules=modules, threshold=thr)
