"""GL501 missing-skip-path."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.engine.transfers import NORMALIZATION
from gradlint.lint.rule import Case, Rule
from gradlint.lint.structure import (
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
from gradlint.lint.toolkit import describe_attribution

# -- examples -----------------------------------------------------------------------------------------

def _plain_mlp(depth: int = 16, width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, width))


def _he_plain_mlp(depth: int = 16, width: int = 64) -> nn.Module:
    model = _plain_mlp(depth, width)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class _ResidualMLP(nn.Module):
    def __init__(self, blocks: int = 8, width: int = 64):
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.blocks = nn.Sequential(*[_Block(width) for _ in range(blocks)])
        self.out = nn.Linear(width, width)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


class MissingSkipPath(Rule):
    """A deep stack of layers with no skip connection around any of them.

    ## What it finds
    Runs of at least `min_depth` Linear/Conv layers one after the other on the model's trunk
    (the path every input-to-output signal takes) with no residual or other skip path
    (a sum or concatenation on the trunk that merges a path with fewer layers) anywhere
    in the run. Error when the engine predicts the run alone loses more than `threshold`
    decades (default: the run's threshold, 2) of gradient or forward signal, or gains that
    much through BatchNorm, which residual paths cure; warning when it loses more than
    `warn_decades`; otherwise a note: no loss is predicted at init (gains from too large an
    init are left to GL102), and the depth is a risk for training.

    ## Why it matters
    Plain stacks get harder to optimize with depth even with normalization: a 56-layer
    plain CNN trains to a higher training error than a 20-layer one, which residual
    connections fix (He et al. 2016, "Deep Residual Learning", the degradation problem).
    Through a skip path the gradient reaches early layers without passing every layer's
    Jacobian; without one, each layer's gain compounds (Balduzzi et al. 2017, shattered
    gradients; Yang et al. 2019 for BatchNorm stacks).

    ## Example
    A 16-layer nn.Linear + nn.ReLU MLP with PyTorch's default init: the gradient at the
    first layer is about 5 decades below the last layer's.

    ## Fix
    Group the layers into residual blocks, `x = x + block(x)`, with normalization in the
    block (pre-norm `block = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.ReLU(),
    nn.Linear(w, w))`, or torchvision's BasicBlock for convolutions) and the block's last
    layer zero-initialized (`nn.init.zeros_(block[-1].weight)`). Where the width changes, the
    skip path takes a projection (`nn.Linear(w_in, w_out, bias=False)`, `nn.Conv2d(c_in,
    c_out, 1, stride=s, bias=False)`).

    ## Known limits
    Counts only layers on the trunk: a plain stack inside one branch of a multi-branch
    block is not seen. Well-initialized plain stacks (He init with ReLU) are reported as
    notes only, though the depth still slows their training. A merge of paths with equal
    numbers of layers (parallel branches summed) is not a skip path. Not run on the
    module-order fallback graph, which does not show skip paths.
    """

    code = "GL501"
    name = "missing-skip-path"
    severity = Severity.WARNING
    category = "skip"
    options = {"min_depth": 12, "threshold": None, "warn_decades": 1.0}
    good = (Case(_ResidualMLP, (32, 64)),)
    bad = (Case(_plain_mlp, (32, 64), at="0", severity="error"),
           # He init keeps the stack flat at init: a note.
           Case(_he_plain_mlp, (32, 64), at="0", severity="info"))

    def check(self, result):
        st = structure_of(result)
        if st is None:
            return
        n_min = int(self.opts["min_depth"])
        thr = self.threshold(result)
        warn = float(self.opts["warn_decades"])
        for run in plain_runs(st, break_on_norm=False, need_activation=False):
            members, span = run.members, run.span
            if len(members) < n_min:
                continue
            first = members[0]
            p = st.profile(run)
            lost, gained, collapse, growth = p.lost, p.gained, p.collapse, p.growth
            has_bn = any(st.node(n).kind == "batch_norm" for n in span)
            bn_gain = gained if has_bn and p.attribution.get(NORMALIZATION, 0.0) > 0 else 0.0
            loss = max(lost, collapse)
            cost = max(loss, bn_gain)
            sev = self.escalate(cost, error_at=thr, warn_at=warn)
            k = len(members)
            what = f"{k} {layer_type(st, members)} layers in a row ({where(st, members)}) with no skip connection"
            causes = describe_attribution(p.attribution if lost >= collapse or bn_gain > loss
                                          else st.forward_attribution(span, p.q_ref))
            if bn_gain >= loss and bn_gain >= warn:
                msg = (f"{what}: through their BatchNorms the gradient grows {bn_gain:.1f} decades toward the "
                       f"input (Yang et al. 2019)")
            elif loss >= warn:
                kind = "gradient" if lost >= collapse else "forward signal (and every later weight's gradient)"
                msg = f"{what}: the {kind} loses {loss:.1f} decades across them"
            elif max(gained, growth) >= warn:
                msg = (f"{what}: the engine predicts no loss across them but {max(gained, growth):.1f} decades of "
                       "growth, which comes from the layers' gain and which skip paths do not remove; plain stacks "
                       "this deep still train worse than residual ones (He et al. 2016)")
            else:
                msg = (f"{what}: the engine predicts the gradient within {max(loss, gained, growth):.1f} decades "
                       f"across them at init, but plain stacks this deep train worse than residual ones "
                       f"(He et al. 2016)")
            if causes and sev != Severity.INFO:
                msg += f" ({causes})"
            yield self.finding(result, msg, fix=self._fix(st, members, span), module=st.node(first).module,
                               node=first, severity=sev, depth=k, first=st.node(first).module,
                               last=st.node(members[-1]).module, lost_decades=round(lost, 3),
                               gained_decades=round(gained, 3), forward_collapse_decades=round(collapse, 3),
                               forward_growth_decades=round(growth, 3), threshold=thr)

    @staticmethod
    def _fix(st: Structure, members, span) -> str:
        act_call = activation_call(activation_name(st, span))
        widths = [out_width(st, n) for n in members]
        w = next((x for x in widths if x), None) or "width"
        changes = len({x for x in widths if x}) > 1
        if st.node(members[0]).kind == "conv":
            d = conv_dims(st, members[0])
            fix = (f"group the layers into residual blocks, out = relu(x + block(x)), as torchvision's BasicBlock:\n"
                   f"block = nn.Sequential(nn.Conv{d}d({w}, {w}, 3, padding=1, bias=False), nn.BatchNorm{d}d({w}), "
                   f"{act_call},\n"
                   f"                      nn.Conv{d}d({w}, {w}, 3, padding=1, bias=False), nn.BatchNorm{d}d({w}))\n"
                   f"with nn.init.zeros_(block[-1].weight) so each block starts as the identity")
            if changes:
                fix += (f"; where the channels or stride change, the skip path takes "
                        f"nn.Sequential(nn.Conv{d}d(c_in, c_out, 1, stride=s, bias=False), nn.BatchNorm{d}d(c_out))")
            return fix
        fix = (f"group the layers into pre-norm residual blocks, x = x + block(x), with\n"
               f"block = nn.Sequential(nn.LayerNorm({w}), nn.Linear({w}, {w}), {act_call}, nn.Linear({w}, {w}))\n"
               f"and nn.init.zeros_(block[-1].weight) so each block starts as the identity")
        if changes:
            fix += "; where the width changes, the skip path takes nn.Linear(w_in, w_out, bias=False)"
        return fix
