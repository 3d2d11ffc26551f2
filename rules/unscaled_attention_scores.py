"""GL202 unscaled-attention-scores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.engine import gaussian
from gradlint.lint.rule import Case, Rule
from gradlint.lint.toolkit import feeds_output, forward_of

# Ops between a projection and the attention that only move data around.
_PASS_BACK = {"identity", "select", "split", "getitem", "expand", "datamove", "dropout"}
# A projection is a few such ops before its attention (a split into heads, a transpose): the
# walk back gives up after this many, as no such chain is that long.
MAX_OPS_TO_PROJECTION = 64


class _SelfAttention(nn.Module):
    """One self-attention layer written out by hand, with or without the 1/sqrt(d) scale."""

    def __init__(self, d: int = 128, scaled: bool = True):
        super().__init__()
        self.scaled = scaled
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1)
        if self.scaled:
            scores = scores / math.sqrt(q.shape[-1])
        return x + self.proj(torch.softmax(scores, dim=-1) @ v)


def _projection(result, name: str | None) -> str:
    """The module of the Linear that produced an attention operand, through reshapes."""
    g = result.graph
    seen = 0
    while name is not None and name in g.by_name and seen < MAX_OPS_TO_PROJECTION:
        n = g.by_name[name]
        if n.kind == "linear":
            return n.module
        if n.kind not in _PASS_BACK or not n.inputs:
            return ""
        name = n.inputs[0]
        seen += 1
    return ""


def _f(k: int, v: float, causal: bool) -> tuple[float, float]:
    """S2 and F = S2 - 2 S3 + S22 of a softmax over k logits of variance v (rule S1)."""
    s2, s3, s22 = gaussian.softmax_moments(k, v, causal)
    return s2, max(s2 - 2 * s3 + s22, 0.0)


@dataclass(frozen=True)
class _Scores:
    """One attention op's scores at init.

    Attributes:
        node: The attention node.
        scale: Its score scale.
        d: The head dimension.
        sc2d: scale^2 * d, 1 for scaled dot-product attention.
        t_k: The number of keys.
        v_s: The predicted score variance across keys.
        v_ref: What it would be with the 1/sqrt(d) scale.
        s2: E[sum a^2] of the softmax at ``v_s``.
        s2_ref: The same at ``v_ref``.
        lost: Decades of gradient the scores lose against the scaled softmax.
    """

    node: object
    scale: float
    d: int
    sc2d: float
    t_k: int
    v_s: float
    v_ref: float
    s2: float
    s2_ref: float
    lost: float


class UnscaledAttentionScores(Rule):
    """Attention scores are not scaled by 1/sqrt(head_dim): the softmax saturates at init.

    ## What it finds
    Attention (fused `F.scaled_dot_product_attention`, `nn.MultiheadAttention`, or a
    hand-written `softmax(q @ k.T) @ v`) whose score scale is at least `scale_ratio` times
    the 1/sqrt(head_dim) of scaled dot-product attention, and whose predicted score
    variance across keys, v_s = scale^2 * d * q_Q * (q_K - k_K) (docs/design.md
    §4.6, with the forward statistics of Q and K), exceeds `max_score_variance`:
    the softmax over the keys is then close to one-hot at initialization.

    ## Why it matters
    Dot products of d-dimensional vectors grow like sqrt(d); without the 1/sqrt(d) factor
    "the dot products grow large in magnitude, pushing the softmax function into regions
    where it has extremely small gradients" (Vaswani et al. 2017, "Attention Is All You
    Need", section 3.2.1). Saturated, low-entropy attention at the start of training is
    also the "attention entropy collapse" that makes transformer training unstable (Zhai
    et al. 2023).

    ## Example
    A hand-written self-attention `torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v` on
    128-wide LayerNorm'd tokens with PyTorch's default Linear init: the score variance is
    about 14 instead of 0.11, and each query attends to about 2 of the 32 keys
    (1/E[sum a^2]) instead of 29.

    ## Fix
    Scale the scores by 1/sqrt(head_dim): `F.scaled_dot_product_attention(q, k, v)` does
    it by default; in hand-written attention use `q = q * head_dim ** -0.5` before
    `q @ k.transpose(-2, -1)`.

    ## Known limits
    The score variance is a mean-field prediction for random weights at initialization.
    Models that omit the scale on purpose and keep the scores small through the init of
    their query/key projections (T5) are not reported, because the rule judges the
    predicted variance, not the scale alone; for the same reason narrow unscaled heads
    can stay below `max_score_variance` (with PyTorch's default Linear init q_Q and q_K
    are about 1/3, so v_s is about head_dim / 9). A large variance that comes only from
    the projections' init (the scale being right) is not this rule's concern.
    """

    code = "GL202"
    name = "unscaled-attention-scores"
    severity = Severity.WARNING
    category = "saturation"
    options = {"scale_ratio": 2.0, "max_score_variance": 4.0}
    good = (Case(lambda: _SelfAttention(128, scaled=True), (4, 32, 128)),
            Case(lambda: nn.TransformerEncoderLayer(64, 4, 128, batch_first=True), (4, 16, 64)))
    bad = (Case(lambda: _SelfAttention(128, scaled=False), (4, 32, 128), severity="warning"),)

    def check(self, result):
        ratio = float(self.opts["scale_ratio"])
        max_var = float(self.opts["max_score_variance"])
        thr = result.summary.threshold
        live = feeds_output(result)
        # One finding per place in the source: a loop over layers runs the same code many times.
        groups: dict[tuple, list[_Scores]] = {}
        for node in result.graph.nodes:
            if node.kind != "attention" or len(node.inputs) < 2:
                continue
            if node.name not in live:
                continue  # no gradient flows through it
            scale = node.attrs.get("scale")
            Q, K = forward_of(result, node.inputs[0]), forward_of(result, node.inputs[1])
            if scale is None or Q is None or K is None or not Q.shape or len(K.shape) < 2:
                continue  # the default 1/sqrt(d) scale
            d = Q.shape[-1]
            sc2d = float(scale) * float(scale) * d
            if sc2d < ratio * ratio:
                continue
            t_k = K.shape[-1 if node.attrs.get("k_transposed") else -2]
            causal = bool(node.attrs.get("causal"))
            v_qk = sc2d * Q.q * max(K.q - K.kt, 0.0)
            # Score biases (T5's relative positions, ALiBi) add their own spread across keys.
            extra = sum(max(b.q - b.kt, 0.0) for b in (forward_of(result, i) for i in node.inputs[4:]) if b is not None)
            v_s = v_qk + extra
            if v_s <= max_var:
                continue
            v_ref = v_qk / sc2d + extra
            s2, f = _f(t_k, v_s, causal)
            s2_ref, f_ref = _f(t_k, v_ref, causal)
            # The gradient reaching the score logits is proportional to F (rule S1): what the
            # saturated softmax loses against the properly scaled one.
            lost = 0.5 * math.log10(f_ref / f) if f > 0 and f_ref > 0 else (math.inf if f_ref > 0 else 0.0)
            site = node.call_site
            # Same line of code (a block class used N times) or, without one, the same module.
            key = ("site", site.path, site.line) if site else ("module", node.module)
            groups.setdefault(key, []).append(_Scores(node=node, scale=float(scale), d=d, sc2d=sc2d, t_k=t_k,
                                                      v_s=v_s, v_ref=v_ref, s2=s2, s2_ref=s2_ref, lost=lost))
        for items in groups.values():
            w = max(items, key=lambda it: it.v_s)
            node, d = w.node, w.d
            lost = w.lost
            where = node.module or "the model"
            n = len(items)
            mods = list(dict.fromkeys(it.node.module for it in items))
            what = f"attention scores in {where}"
            if len(mods) > 1:
                what += f" and {len(mods) - 1} more module{'s' if len(mods) > 2 else ''} ({n} attention ops)"
            elif n > 1:
                what += f" ({n} attention ops)"
            msg = (f"{what} are scaled by {w.scale:.3g}, {math.sqrt(w.sc2d):.1f}x the 1/sqrt(head_dim) = "
                   f"1/sqrt({d}) of scaled dot-product attention: their predicted variance across keys is "
                   f"{w.v_s:.3g} (it would be {w.v_ref:.2g} with 1/sqrt({d})), so the softmax over {w.t_k} "
                   f"keys is saturated at init: each query attends to about {1 / w.s2:.1f} keys "
                   f"(1/E[sum a^2]) instead of {1 / w.s2_ref:.0f} with the 1/sqrt({d}) scale")
            if lost > 0.05:
                msg += f" and the gradient reaching the scores is {lost:.1f} decades smaller"
            sev = self.escalate(lost, error_at=thr)
            fix = (f"scale the scores by 1/sqrt(head_dim): F.scaled_dot_product_attention(q, k, v) does it by "
                   f"default; in hand-written attention use q = q * {d} ** -0.5 before q @ k.transpose(-2, -1)")
            yield self.finding(result, msg, fix=fix, module=node.module, node=node.name, severity=sev,
                               scale=w.scale, head_dim=d, keys=w.t_k, ops=n,
                               score_variance=round(w.v_s, 4), score_variance_scaled=round(w.v_ref, 4),
                               s2=round(w.s2, 4), s2_scaled=round(w.s2_ref, 4),
                               score_gradient_decades_lost=round(lost, 3) if math.isfinite(lost) else None,
                               modules=mods, query_projection=_projection(result, node.inputs[0]))
