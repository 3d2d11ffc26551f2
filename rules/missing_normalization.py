"""GL401 missing-normalization."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.lint.rule import Case, Rule
from gradlint.lint.structure import (
    ACTIVATIONS,
    Structure,
    activation_call,
    activation_name,
    conv_dims,
    layer_type,
    out_width,
    plain_runs,
    structure_of,
    where,
)
from gradlint.lint.toolkit import describe_attribution, dominant_cause


def _tanh_mlp(depth: int = 10, width: int = 64, norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width)] + ([nn.LayerNorm(width)] if norm else []) + [nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, width))


def _normed_tanh_mlp() -> nn.Module:
    return _tanh_mlp(norm=True)


def _plain_cnn(depth: int = 8, ch: int = 16, bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
    for _ in range(depth - 1):
        layers += ([nn.BatchNorm2d(ch)] if bn else []) + [nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 10))


def _bn_cnn() -> nn.Module:
    return _plain_cnn(bn=True)


def _group_norm_groups(c: int) -> int:
    """Groups for nn.GroupNorm: 32 as in Wu & He 2018, fewer when groups would hold under 4 channels."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0 and (c // g >= 4 or g == 1))


class MissingNormalization(Rule):
    """A deep stack of layers and activations with no normalization layer in it.

    ## What it finds
    Runs of at least `min_depth` Linear/Conv layers along the model's trunk, each followed
    by an activation, with no LayerNorm, RMSNorm, GroupNorm or BatchNorm anywhere in the
    run and no skip path around its layers. Error when the engine predicts that the run
    alone loses or gains more than `threshold` decades (default: the run's threshold, 2) of
    gradient, or of forward signal, which scales every later weight's gradient; warning when it drifts by more than
    `warn_decades`; otherwise a note: the init is predicted to keep the run flat, and
    nothing else will once training moves the weights.

    ## Why it matters
    Without normalization every layer's gain multiplies: a per-layer gain slightly off one
    (default init, saturating activations, a learning step) compounds over the stack into
    vanishing or exploding signals. Normalization resets the scale after every layer and
    makes the depth insensitive to the weights' scale (Ioffe & Szegedy 2015, BatchNorm; Ba
    et al. 2016, LayerNorm); PyTorch documents both as `nn.BatchNorm2d` / `nn.LayerNorm`.

    ## Example
    A 10-layer nn.Linear + nn.Tanh MLP of width 64 with PyTorch's default init: over the
    stack the gradient loses about 1.5 decades and the forward signal 1 decade (a
    warning); at 20 layers the loss passes 2 decades (an error).

    ## Fix
    A normalization layer after each weighted layer, before its activation, with the
    layer's output width: `nn.LayerNorm(out_features)` after an nn.Linear,
    `nn.BatchNorm2d(out_channels)` after an nn.Conv2d (then `bias=False` on the conv), or
    `nn.GroupNorm(32, out_channels)` for small batches.

    ## Known limits
    Counts only layers on the trunk (a plain stack inside a branch is not seen). A run that
    the init keeps flat (He init with ReLU, Xavier with tanh) is reported as a note only,
    though it stays fragile to a change of init, width or activation. Weight
    standardization and self-normalizing nets (SELU with LeCun init) have no normalization
    layer and are reported like any plain stack. Not run on the module-order fallback
    graph, which does not show skip paths.
    """

    code = "GL401"
    name = "missing-normalization"
    severity = Severity.WARNING
    category = "normalization"
    options = {"min_depth": 8, "threshold": None, "warn_decades": 1.0}
    good = (Case(_normed_tanh_mlp, (32, 64)), Case(_bn_cnn, (4, 3, 16, 16)))
    bad = (Case(_tanh_mlp, (32, 64), at="0", severity="warning"),
           Case(_plain_cnn, (4, 3, 16, 16), at="0", severity="warning"))

    def check(self, result):
        st = structure_of(result)
        if st is None:
            return
        n_min = int(self.opts["min_depth"])
        thr = self.threshold(result)
        warn = float(self.opts["warn_decades"])
        for run in plain_runs(st, break_on_norm=True, need_activation=True):
            members, span = run.members, run.span
            if len(members) < n_min:
                continue
            first = members[0]
            p = st.profile(run)
            lost, gained, collapse, growth, attribution = p.lost, p.gained, p.collapse, p.growth, p.attribution
            cost = max(lost, gained, collapse, growth)
            sev = self.escalate(cost, error_at=thr, warn_at=warn)
            act = activation_name(st, span)
            what = (f"{len(members)} {layer_type(st, members)}+{act} layers in a row ({where(st, members)}) "
                    "without normalization")
            effects = {"lose": lost, "gain": gained, "collapse": collapse, "grow": growth}
            worst = max(effects, key=effects.get)
            if cost < warn:
                msg = (f"{what}: the init keeps them within {cost:.1f} decades at the start, and nothing "
                       "will keep their scale once training moves the weights")
            elif worst in ("lose", "gain"):
                msg = f"{what} {worst} {cost:.1f} decades of gradient"
            else:
                msg = (f"{what} {'shrink' if worst == 'collapse' else 'grow'} the forward signal by {cost:.1f} "
                       f"decades, and every later weight's gradient with it")
            if worst in ("collapse", "grow"):
                attribution = st.forward_attribution(span, p.q_ref)
            causes = describe_attribution(attribution)
            if causes and sev != Severity.INFO:
                msg += f" ({causes})"
            yield self.finding(result, msg, fix=self._fix(st, members, span, act), module=st.node(first).module,
                               node=first, severity=sev, depth=len(members), first=st.node(first).module,
                               last=st.node(members[-1]).module, lost_decades=round(lost, 3),
                               gained_decades=round(gained, 3), forward_collapse_decades=round(collapse, 3),
                               forward_growth_decades=round(growth, 3), threshold=thr,
                               cause=dominant_cause(attribution, vanishing=worst in ("lose", "collapse")))

    @staticmethod
    def _fix(st: Structure, members, span, act: str) -> str:
        act_call = activation_call(act)
        # The run's last layer is often the output layer, with no activation after it:
        # it needs no normalization.
        last_bare = st.node(span[-1]).kind not in ACTIVATIONS and len(members) > 1
        normed = members[:-1] if last_bare else members
        parts: list[str] = []
        for kind in ("conv", "linear"):
            layers = [n for n in normed if st.node(n).kind == kind]
            if not layers:
                continue
            widths: list[int] = []
            for n in layers:
                w = out_width(st, n)
                if w is not None and w not in widths:
                    widths.append(w)
            w0 = widths[0] if widths else "out_features"
            if kind == "conv":
                d = conv_dims(st, layers[0])
                norms = ", ".join(f"nn.BatchNorm{d}d({w})" for w in widths)
                g = _group_norm_groups(w0) if isinstance(w0, int) else 32
                parts.append(f"after each nn.Conv{d}d, before its activation, nn.BatchNorm{d}d(out_channels) "
                             f"({norms} here): nn.Conv{d}d(..., {w0}, ..., bias=False), nn.BatchNorm{d}d({w0}), "
                             f"{act_call}; for small batches nn.GroupNorm({g}, {w0})")
            else:
                wname = st.node(layers[0]).params.get("weight")
                ps = st.result.propagation.param_stats.get(wname) if wname else None
                w_in = ps.shape[1] if ps is not None and len(ps.shape) == 2 else w0
                norms = ", ".join(f"nn.LayerNorm({w})" for w in widths)
                parts.append(f"after each nn.Linear, before its activation, nn.LayerNorm(out_features) "
                             f"({norms} here): nn.Linear({w_in}, {w0}), nn.LayerNorm({w0}), {act_call}; "
                             f"nn.BatchNorm1d({w0}) works too for (batch, features) inputs")
        return "put a normalization layer " + ";\nand ".join(parts)
