"""GL402 deep-post-ln-transformer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule
from gradlint.lint.structure import Structure, structure_of

# Single-input ops that may sit between a residual sum and the LayerNorm applied to it.
_THROUGH = {"identity", "dropout", "datamove"}


class _Encoder(nn.Module):
    def __init__(self, layers: int = 24, d: int = 32, norm_first: bool = False):
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d) if norm_first else None,
                                         enable_nested_tensor=False)
        self.head = nn.Linear(d, d)

    def forward(self, x):
        return self.head(self.enc(x))


def _post_ln_6() -> nn.Module:
    return _Encoder(layers=6)


def _pre_ln_24() -> nn.Module:
    return _Encoder(layers=24, norm_first=True)


@dataclass(frozen=True, eq=False)
class _Site:
    """One post-LN sublayer: LayerNorm(stream + branch).

    Attributes:
        norm: The LayerNorm node.
        add: The residual sum it normalizes.
        region: The branch's nodes (since the stream it reads).
        attention: Whether the branch holds an attention op.
        weights: The branch's weight parameters, in graph order.
    """

    norm: str
    add: str
    region: set[str]
    attention: bool
    weights: list[str]


class DeepPostLnTransformer(Rule):
    """A deep transformer whose LayerNorms sit after the residual sums (post-LN).

    ## What it finds
    Transformers with more than `max_layers` layers in which every sublayer's output is
    added to the stream and the sum is then normalized, `x = LayerNorm(x + sublayer(x))`
    (the original Transformer, BERT, `nn.TransformerEncoderLayer` with the default
    `norm_first=False`). The finding reports the engine's predicted gradient ratio between
    the last and the first layer, from the weight gradients of corresponding sublayers;
    error when that ratio exceeds `threshold` decades (default: the run's threshold, 2),
    otherwise a warning.

    ## Why it matters
    In a post-LN transformer the expected gradient of the parameters near the output is
    large and does not shrink with depth, while pre-LN's does: deep post-LN stacks need a
    learning-rate warmup and still diverge as depth grows (Xiong et al. 2020, "On Layer
    Normalization in the Transformer Architecture"; Liu et al. 2020 on the amplified
    dependence on the residual branches). Wang et al. 2022 (DeepNet) trace the instability
    to exploding model updates and fix it with DeepNorm.

    ## Example
    `nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, batch_first=True), 24)`:
    24 post-LN layers.

    ## Fix
    Pre-LN: `nn.TransformerEncoderLayer(..., norm_first=True)` with a final norm
    (`nn.TransformerEncoder(..., norm=nn.LayerNorm(d_model))`), or in custom code
    `x = x + sublayer(norm(x))`. To keep post-LN, DeepNorm: `x = LayerNorm(alpha * x +
    sublayer(x))` with `alpha = (2N)^(1/4)` and the sublayers' value, output and FFN weights
    initialized with `nn.init.xavier_normal_(w, gain=beta)`, `beta = (8N)^(-1/4)` for an
    N-layer encoder.

    ## Known limits
    At init the ratio is often small (PyTorch's default init keeps the branches small); the
    risk the warning names appears during training, which the engine does not simulate, so
    the warning rests on the architecture. Layers are counted as post-LN feed-forward
    sublayers (encoder and decoder layers together in an encoder-decoder model). A stream
    scaled by a constant above 1 before its sum is taken for DeepNorm and not reported;
    DeepNorm's init (beta) is not checked.
    """

    code = "GL402"
    name = "deep-post-ln-transformer"
    severity = Severity.WARNING
    category = "normalization"
    options = {"max_layers": 12, "threshold": None}
    good = (Case(_post_ln_6, (4, 8, 32)), Case(_pre_ln_24, (4, 8, 32)))
    bad = (Case(_Encoder, (4, 8, 32), at="enc.layers.0", severity="warning"),)

    def check(self, result):
        st = structure_of(result)
        if st is None:
            return
        sites = self._sites(st)
        if not sites:
            return
        attn = [s for s in sites if s.attention]
        ffn = [s for s in sites if not s.attention]
        layers = len(ffn) if attn and ffn else len(sites)
        if layers <= int(self.opts["max_layers"]):
            return
        thr = self.threshold(result)
        decades, label, early, late = self._ratio(st, sites)
        first_layer = sites[: sites.index(attn[1])] if len(attn) > 1 else sites[:1]
        module = _common_prefix([st.node(s.add).module for s in first_layer]
                                + [st.node(s.norm).module for s in first_layer])
        kind = "transformer" if attn else "residual stack"
        msg = (f"{layers}-layer post-LN {kind} (LayerNorm applied to each residual sum, e.g. "
               f"{st.node(sites[0].norm).module or sites[0].norm})")
        if label:
            msg += (f": the engine predicts the {label} weights of the last layer ({late}) to get "
                    f"{10 ** decades:.2g}x the gradient of the first layer's ({early}), {decades:+.2f} decades")
        msg += ("; post-LN gradients concentrate near the output and deep post-LN stacks need warmup and "
                "still diverge (Xiong et al. 2020)")
        # Without a gradient ratio (no two sublayers to compare) the finding rests on the depth alone.
        sev = self.escalate(abs(decades), error_at=thr) if label else Severity.WARNING
        yield self.finding(result, msg, fix=self._fix(st, sites, layers), module=module, node=sites[0].norm,
                           severity=sev, layers=layers, sublayers=len(sites),
                           gradient_ratio_decades=round(decades, 3) if label else None, threshold=thr)

    @staticmethod
    def _sites(st: Structure) -> list[_Site]:
        """Every LayerNorm applied to a sum of a stream and a branch that reads that stream.

        Read over the whole graph rather than the trunk, so that decoder layers (whose
        cross-attention also reads a second input) are seen.
        """
        sites: list[_Site] = []
        for node in st.graph.nodes:
            if node.kind != "layer_norm" or node.name not in st.live:
                continue
            src = _through(st, node.name)
            if src is None or st.node(src).kind != "add":
                continue
            ins = st.tensor_inputs(src)
            if len(ins) != 2 or not _only_feeds(st, src, node.name):
                continue  # pre-LN: the sum goes on as the stream, the LayerNorm feeds a branch
            for stream_in, branch_in in (ins, ins[::-1]):
                x, scaled = _unscale(st, stream_in)
                region = _branch(st, branch_in, x)
                if region is None:
                    continue
                kinds = {st.node(n).kind for n in region}
                if scaled or not kinds & {"linear", "attention", "conv"}:
                    break  # DeepNorm's alpha * x, or embeddings summed before the first LayerNorm
                weights = []
                for n in sorted(region, key=st.order.__getitem__):
                    if st.node(n).kind in ("linear", "conv", "attention"):
                        weights += [w for r, w in st.node(n).params.items() if "weight" in r]
                sites.append(_Site(node.name, src, region, "attention" in kinds or "softmax" in kinds, weights))
                break
        return sites

    @staticmethod
    def _ratio(st: Structure, sites: list[_Site]) -> tuple[float, str, str, str]:
        """log10 of the last layer's weight-gradient RMS over the first layer's, for the
        sublayer kind where it differs most (matched by the weights' shapes)."""
        params = st.result.propagation.params
        stats = st.result.propagation.param_stats
        groups: dict[tuple, list[_Site]] = {}
        for s in sites:
            key = (s.attention, tuple(tuple(stats[w].shape) if w in stats else () for w in s.weights))
            groups.setdefault(key, []).append(s)
        best = (0.0, "", "", "")
        for (is_attn, _), group in groups.items():
            if len(group) < 2:
                continue
            a, b = group[0], group[-1]
            logs = []
            for wa, wb in zip(a.weights, b.weights):
                ga, gb = params.get(wa), params.get(wb)
                if ga and gb and ga > 0 and gb > 0:
                    logs.append(0.5 * math.log10(gb / ga))
            if not logs:
                continue
            dec = sum(logs) / len(logs)
            if abs(dec) >= abs(best[0]) or not best[1]:
                label = "attention" if is_attn else "feed-forward"
                best = (dec, label, _owner(st, a), _owner(st, b))
        return best

    @staticmethod
    def _fix(st: Structure, sites: list[_Site], layers: int) -> str:
        alpha = (2 * layers) ** 0.25
        beta = (8 * layers) ** -0.25
        types = [t for t in ("TransformerEncoderLayer", "TransformerDecoderLayer")
                 if t in {st.node(s.add).module_type for s in sites}]
        if types:
            stacks = " / ".join(f"nn.{t[:-5]}(layer, num_layers, norm=nn.LayerNorm(d_model))" for t in types)
            layer_calls = " and ".join(f"nn.{t}(d_model, nhead, ..., norm_first=True)" for t in types)
            pre = f"use pre-LN: {layer_calls}, with a final norm: {stacks} (Xiong et al. 2020)"
        else:
            pre = ("use pre-LN: x = x + sublayer(norm(x)) instead of x = norm(x + sublayer(x)), and one final "
                   "LayerNorm after the last layer (Xiong et al. 2020)")
        return (f"{pre};\nor keep post-LN with DeepNorm (Wang et al. 2022): x = norm(alpha * x + sublayer(x)) with "
                f"alpha = (2N)^(1/4) = {alpha:.2f} for N = {layers},\nand the value, output and feed-forward weights "
                f"initialized with nn.init.xavier_normal_(w, gain=beta), beta = (8N)^(-1/4) = {beta:.3f}")


def _through(st: Structure, name: str) -> str | None:
    """The node feeding ``name``, past single-input ops that only move or drop data."""
    ins = st.tensor_inputs(name)
    while len(ins) == 1 and st.node(ins[0]).kind in _THROUGH:
        ins = st.tensor_inputs(ins[0])
    return ins[0] if len(ins) == 1 else None


def _only_feeds(st: Structure, name: str, target: str) -> bool:
    """True when every use of ``name`` reaches ``target`` through data moves only."""
    todo = [name]
    while todo:
        n = todo.pop()
        for u in st.graph.users.get(n, []):
            if u == target or u not in st.live:
                continue
            if st.node(u).kind not in _THROUGH:
                return False
            todo.append(u)
    return True


def _unscale(st: Structure, name: str) -> tuple[str, bool]:
    """The tensor ``name`` is a copy of, past data moves and constant scalings, and whether one
    of those scalings is by a constant above 1 (DeepNorm's alpha)."""
    scaled = False
    while True:
        node = st.node(name)
        ins = st.tensor_inputs(name)
        c = node.attrs.get("scalar")
        if node.kind == "mul" and len(ins) == 1 and isinstance(c, (int, float)):
            scaled = scaled or (node.attrs.get("op") != "div" and abs(c) > 1)
        elif node.kind not in _THROUGH or len(ins) != 1:
            return name, scaled
        name = ins[0]


def _branch(st: Structure, start: str, stream: str) -> set[str] | None:
    """The nodes between ``stream`` and ``start`` when ``start`` depends on ``stream``, else None."""
    floor = st.order[stream]
    seen: set[str] = set()
    found = False
    todo = [start]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        if n == stream:
            found = True
            continue
        seen.add(n)
        todo.extend(i for i in st.tensor_inputs(n) if st.order[i] >= floor)
    return seen if found else None


def _owner(st: Structure, site: _Site) -> str:
    mods = [st.result.propagation.param_stats[w].module for w in site.weights if w in st.result.propagation.param_stats]
    return _common_prefix(mods) or st.node(site.add).module


def _common_prefix(mods: list[str]) -> str:
    mods = [m for m in mods if m]
    if not mods:
        return ""
    parts = mods[0].split(".")
    for m in mods[1:]:
        other = m.split(".")
        k = 0
        while k < min(len(parts), len(other)) and parts[k] == other[k]:
            k += 1
        parts = parts[:k]
    return ".".join(parts)
