"""Helpers rules share: where the trunk's gradient crosses a threshold, how to word causes and
fixes, and the forward statistics rules re-read.

The other shared helpers live beside this module, one topic each: ``structure`` (the trunk
and its merges), ``paths`` (gradient paths), ``recurrence`` (recurrent layers), ``chains``
(chains of layers or activations), ``activations`` (an activation node's function) and
``examples`` (example models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gradlint.base.kinds import WEIGHTED_KINDS
from gradlint.engine.summary import OWN_BACKWARD
from gradlint.engine.transfers import ATTENTION, INIT, NORMALIZATION, RECURRENCE, RESIDUAL, SATURATION


def first_crossing(result, threshold: float, vanishing: bool) -> tuple[str | None, str]:
    """The trunk node where the gradient first crosses ``threshold``, going back from the
    output, and the module of the nearest weighted layer at or before it."""
    s = result.summary
    g = result.graph
    if vanishing and s.recurrent_decay >= max(s.trunk_attenuation, s.forward_collapse) and s.weakest:
        n = g.by_name.get(s.weakest)
        return s.weakest, n.module if n else ""
    pts = list(s.trunk)
    hit = None
    for p in reversed(pts):
        val = -p.t_decades if vanishing else p.t_decades
        qval = -p.q_decades if vanishing else p.q_decades
        if val >= threshold or qval >= threshold:
            hit = p
            break
    if hit is None:
        name = s.weakest if vanishing else s.strongest
        hit = next((p for p in pts if p.node == name), pts[0] if pts else None)
    if hit is None:
        return None, ""
    idx = pts.index(hit)
    for p in reversed(pts[: idx + 1]):
        n = g.by_name.get(p.node)
        if n is not None and n.kind in WEIGHTED_KINDS and n.module:
            return p.node, n.module
    for p in pts[idx:]:
        n = g.by_name.get(p.node)
        if n is not None and n.kind in WEIGHTED_KINDS and n.module:
            return p.node, n.module
    n = g.by_name.get(hit.node)
    return hit.node, n.module if n else ""


_SINGULAR = {"saturating activations": "saturating activation", "init scale": "layer's init scale",
             "normalization": "normalization layer", "residual summation": "residual sum",
             "recurrence": "recurrent layer", "attention": "attention layer"}
_PLURAL = {"init scale": "layers' init scale", "normalization": "normalization layers",
           "residual summation": "residual sums", "recurrence": "recurrent layers", "attention": "attention layers"}


def describe_attribution(attribution: dict[str, float], counts: dict[str, int] | None = None) -> str:
    """'19 saturating activations cost 15.8 decades, 19 layers' init scale 0.1', largest first."""
    items = sorted(attribution.items(), key=lambda kv: -abs(kv[1]))
    items = [(k, v) for k, v in items if abs(v) >= 0.05]
    parts = []
    for k, v in items[:3]:
        n = (counts or {}).get(k)
        plural = (n > 1) if n else k.endswith("s") and not k.endswith("ss")
        verb = ("cost" if plural else "costs") if v < 0 else ("add" if plural else "adds")
        if n:
            what = _SINGULAR.get(k, k) if n == 1 else _PLURAL.get(k, k)
            parts.append(f"{n} {what} {verb} {abs(v):.1f} decades")
        else:
            parts.append(f"{k} {verb} {abs(v):.1f} decades")
    return ", ".join(parts)


def dominant_cause(attribution: dict[str, float], vanishing: bool) -> str | None:
    items = [(k, v) for k, v in attribution.items() if (v < 0 if vanishing else v > 0)]
    if not items:
        return None
    return max(items, key=lambda kv: abs(kv[1]))[0]


# A LayerNorm before each saturating activation is no fix for a vanishing chain: on the
# 20-layer sigmoid MLP the probe still measures 8.2 decades lost; pre-norm residual blocks
# around the same sigmoids measure healthy.
FIXES_VANISHING = {
    SATURATION: ("replace the saturating activations by ReLU-family ones with He init, e.g. nn.ReLU() and\n"
                 "nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\"); "
                 "or keep them inside pre-norm residual blocks,\n"
                 "x = x + block(x)"),
    INIT: ("initialize for the activation that follows, e.g. for every nn.Linear/nn.Conv2d m:\n"
           "nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\"); nn.init.zeros_(m.bias)\n"
           "or add normalization (nn.LayerNorm / nn.BatchNorm2d) between layers"),
    RECURRENCE: ("use nn.LSTM or nn.GRU instead of nn.RNN; for an LSTM set the forget-gate bias to 1:\n"
                 "h = lstm.hidden_size; lstm.bias_ih_l0.data[h:2*h].fill_(1.0)"),
    NORMALIZATION: "check the normalization layers' gains (weight) and eps",
    RESIDUAL: "add skip connections around the layers that lose the gradient",
    ATTENTION: "scale attention scores by 1/sqrt(head_dim) and check the projections' init",
    OWN_BACKWARD: ("a backward hook or a custom torch.autograd.Function shrinks the gradient (GL905 names the "
                   "parameters):\nremove it, or make its backward pass the gradient on unscaled"),
}
FIXES_EXPLODING = {
    INIT: ("the weights are initialized too large for their fan-in: use\n"
           "nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\") (std sqrt(2/fan_in)), or\n"
           "nn.init.xavier_uniform_(m.weight) for tanh/linear layers"),
    NORMALIZATION: ("BatchNorm stacks amplify the gradient toward the input (Yang et al. 2019): add residual\n"
                    "connections around the BatchNorm blocks, or use nn.LayerNorm / nn.GroupNorm"),
    RESIDUAL: ("scale the residual branches: zero-init the last layer of each branch\n"
               "(nn.init.zeros_(block.<last>.weight), SkipInit/Fixup), "
               "multiply each branch by 1/sqrt(num_blocks),\n"
               "or normalize the branch input (pre-norm)"),
    SATURATION: ("lower the init gain of the layers before the saturating activations "
                 "(nn.init.xavier_uniform_(m.weight))"),
    RECURRENCE: "scale the recurrent weights down (nn.init.orthogonal_(rnn.weight_hh_l0)) or clip gradients",
    ATTENTION: "scale attention scores by 1/sqrt(head_dim)",
    OWN_BACKWARD: ("a backward hook or a custom torch.autograd.Function enlarges the gradient (GL905 names the "
                   "parameters):\nremove it, or make its backward pass the gradient on unscaled"),
}


def fix_for(result, vanishing: bool) -> str:
    cause = dominant_cause(result.summary.attribution, vanishing)
    table = FIXES_VANISHING if vanishing else FIXES_EXPLODING
    return table.get(cause or INIT, table[INIT])


@dataclass(frozen=True)
class Crossing:
    """What the vanishing and exploding rules (GL101, GL102) report alike: where the trunk's
    gradient crosses the threshold, its causes, the fix for the dominant one, and the
    summary's figures as evidence.

    Attributes:
        node: The trunk node the finding points at (see ``first_crossing``).
        module: The module of the nearest weighted layer at or before it.
        causes: The causes by share, '' when none is worth naming.
        fix: The fix for the dominant cause.
        evidence: ``attenuation_decades`` and ``attribution``, rounded.
    """

    node: str | None
    module: str
    causes: str
    fix: str
    evidence: dict[str, Any]

    def message(self, text: str) -> str:
        """``text`` with the causes after it."""
        return f"{text} ({self.causes})" if self.causes else text


def trunk_crossing(result, threshold: float, vanishing: bool) -> Crossing:
    s = result.summary
    node, module = first_crossing(result, threshold, vanishing)
    return Crossing(node, module, describe_attribution(s.attribution, s.counts), fix_for(result, vanishing),
                    {"attenuation_decades": round(s.attenuation_decades, 3),
                     "attribution": {k: round(v, 3) for k, v in s.attribution.items()}})


def forward_of(result, name: str | None):
    """The forward statistics (``Fwd``) of a node's output, first output for tuple-valued ops.

    A result without the full forward state (a probe) still has q and mu per node. None
    also where the statistics overflowed (inf or NaN): there is nothing to reason about,
    and the Gaussian maths rules re-run is undefined there (the summary says exploding).
    """
    from gradlint.engine.state import Fwd

    if name is None:
        return None
    f = result.propagation.forward_state.get(name)
    if isinstance(f, tuple):
        f = f[0] if f else None
    if not isinstance(f, Fwd) and name in result.graph.by_name:
        r = result.propagation.node(name)
        f = Fwd(q=r.q, mu=r.mu, shape=tuple(r.shape) if isinstance(r.shape, tuple) else (), blocked=r.blocked)
    if isinstance(f, Fwd) and all(math.isfinite(v) for v in (f.q, f.mu, f.k, f.kt)):
        return f
    return None


def feeds_output(result) -> set[str]:
    """Nodes with a path to a model output along which a gradient can flow."""
    g = result.graph
    live = set(g.outputs)
    for n in reversed(g.nodes):
        if n.name in live and n.kind != "block":
            live.update(i for i in n.inputs if i is not None)
    return live


def const_like(result, name: str) -> bool:
    """True for parameters, constants and values computed from them alone."""
    n = result.graph.by_name.get(name)
    if n is None or n.kind in ("param", "const"):
        return True
    f = forward_of(result, name)
    return f is not None and f.const


def rounded(x: float, digits: int = 3) -> float | None:
    """``x`` rounded for a finding's evidence; None for inf and NaN, which JSON cannot hold."""
    return round(x, digits) if math.isfinite(x) else None
