"""GL502 unscaled-residual-branches."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.base.kinds import NORM_KINDS
from gradlint.lint.rule import Case, Rule
from gradlint.lint.structure import DEPTH_KINDS, Merge, Structure, structure_of


class _Block(nn.Module):
    def __init__(self, width: int, mode: str):
        super().__init__()
        self.mode = mode
        self.norm = nn.LayerNorm(width) if mode == "prenorm" else nn.Identity()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(self.fc2.weight, nonlinearity="relu")
        if mode == "zeroinit":
            nn.init.zeros_(self.fc2.weight)
        self.alpha = nn.Parameter(torch.zeros(1)) if mode == "rezero" else None

    def forward(self, x):
        y = self.fc2(torch.relu(self.fc1(self.norm(x))))
        return x + (self.alpha * y if self.alpha is not None else y)


class _ResMLP(nn.Module):
    def __init__(self, mode: str = "plain", blocks: int = 12, width: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(*[_Block(width, mode) for _ in range(blocks)])
        self.head = nn.Linear(width, width)

    def forward(self, x):
        return self.head(self.blocks(x))


def _zero_init() -> nn.Module:
    return _ResMLP("zeroinit")


def _rezero() -> nn.Module:
    return _ResMLP("rezero")


def _prenorm() -> nn.Module:
    return _ResMLP("prenorm")


def _scaled_by(st: Structure, region: set[str]) -> str | None:
    """How a branch is scaled, if it is: a learnable gain (LayerScale, ReZero) or a constant."""
    for n in region:
        node = st.node(n)
        if node.kind != "mul":
            continue
        c = node.attrs.get("scalar")
        if isinstance(c, (int, float)) and node.attrs.get("op") != "div" and abs(c) < 1:
            return f"only {c:g}"
        if isinstance(c, (int, float)) and node.attrs.get("op") == "div" and abs(c) > 1:
            return f"only 1/{c:g}"
        if any(i is not None and i not in st.live for i in node.inputs):
            return "a gain that starts too large"
    return None


class UnscaledResidualBranches(Rule):
    """Residual blocks whose branches add to the stream unscaled, so the signal compounds with depth.

    ## What it finds
    Stacks of at least `min_blocks` residual sums on the model's trunk whose branches have
    no normalization layer (neither inside the branch nor on the stream between the sums),
    where the engine predicts the stream's variance to grow block after block: the growth is
    read from the forward second moment at each sum. Error when the stream grows more than
    `threshold` decades over the stack (default: the run's threshold, 2); warning when it
    grows more than `warn_decades` and keeps compounding (the later blocks grow it as fast
    as the earlier ones, unlike a pre-norm stream, which grows linearly and by design).

    ## Why it matters
    With x_{l+1} = x_l + f(x_l) and a branch f of gain g, the variance grows (1 + g)-fold per
    block, and the gradient toward the input by the same factor: the output and every
    weight gradient scale exponentially with depth, and the first steps diverge unless the
    learning rate shrinks with it. Fixup (Zhang et al. 2019), SkipInit (De & Smith 2020),
    ReZero (Bachlechner et al. 2020) and LayerScale (Touvron et al. 2021) all start each
    branch at (near) zero for this reason.

    ## Example
    Twelve blocks `x + fc2(relu(fc1(x)))` with He-initialized fc1 and fc2 and no
    normalization: the stream's variance triples per block, about 2.6 decades of RMS over
    the stack, and the gradient toward the input grows as much.

    ## Fix
    Zero-init the last layer of each branch (`nn.init.zeros_(block.fc2.weight)`, SkipInit /
    Fixup), or scale each branch, `x = x + alpha * f(x)` with `alpha = 1/sqrt(num_blocks)` or
    a learnable scalar `nn.Parameter(torch.zeros(1))` (ReZero), or normalize the branch
    input (pre-norm, `x = x + f(nn.LayerNorm(d)(x))`).

    ## Known limits
    The growth is the mean-field prediction at init; narrow layers fluctuate around it.
    Branches normalized anywhere inside (pre-norm transformers, BatchNorm ResNets) are not
    examined: their stream grows at most linearly. A stack cut by any normalization on the
    stream is examined piece by piece. Only sums on the trunk count: blocks that also read a
    second input (conditioning, cross-attention) take the stream off the trunk.
    """

    code = "GL502"
    name = "unscaled-residual-branches"
    severity = Severity.WARNING
    category = "exploding"
    options = {"min_blocks": 8, "threshold": None, "warn_decades": 0.5}
    good = (Case(_zero_init, (32, 64)), Case(_rezero, (32, 64)), Case(_prenorm, (32, 64)))
    bad = (Case(_ResMLP, (32, 64), at="blocks.0", severity="error"),)

    def check(self, result):
        st = structure_of(result)
        if st is None:
            return
        n_min = int(self.opts["min_blocks"])
        thr = self.threshold(result)
        warn = float(self.opts["warn_decades"])
        for stack in self._stacks(st):
            if len(stack) < n_min:
                continue
            q = [st.q(m.node) for m in stack]
            if not all(x > 0 and math.isfinite(x) for x in q):
                continue
            steps = [0.5 * math.log10(b / a) for a, b in zip(q, q[1:])]
            growth = sum(steps)
            half = len(steps) // 2
            early, late = sum(steps[:half]), sum(steps[half:])
            compounding = late >= 0.5 * early and late > 0
            if growth < thr and not (growth >= warn and compounding):
                continue
            s_first, s_last = st.s(stack[0].node), st.s(stack[-1].node)
            grad_growth = 0.5 * math.log10(s_first / s_last) if s_first > 0 and s_last > 0 else 0.0
            k = len(stack)
            per_block = 10 ** (growth / max(len(steps), 1))
            first, last = st.node(stack[0].node).module, st.node(stack[-1].node).module
            span = first if first == last else f"{first} … {last}"
            scale = _scaled_by(st, stack[0].region)
            how = f", scaled by {scale}" if scale else " at full scale"
            msg = (f"{k} residual blocks ({span}) add unnormalized branches to the stream{how}: its RMS "
                   f"grows x{per_block:.2f} per block, {growth:.1f} decades over the stack")
            if grad_growth > 0.05:
                msg += f", and the gradient toward the input grows {grad_growth:.1f} decades"
            sev = self.escalate(growth, error_at=thr)
            yield self.finding(result, msg, fix=self._fix(st, stack), module=first, node=stack[0].node,
                               severity=sev, blocks=k, growth_decades=round(growth, 3),
                               growth_per_block=round(per_block, 4), gradient_growth_decades=round(grad_growth, 3),
                               threshold=thr)

    @staticmethod
    def _stacks(st: Structure) -> list[list[Merge]]:
        """Runs of unnormalized residual sums on the trunk with no normalization on the stream."""
        stacks: list[list[Merge]] = []
        cur: list[Merge] = []
        for name in st.trunk:
            kind = st.node(name).kind
            m = st.skip_merge(name) if kind == "add" else None
            normalized = m is not None and any(st.node(n).kind in NORM_KINDS for n in m.region)
            if kind in NORM_KINDS or normalized:
                if cur:
                    stacks.append(cur)
                cur = []
            elif m is not None:
                cur.append(m)
        if cur:
            stacks.append(cur)
        return stacks

    @staticmethod
    def _fix(st: Structure, stack: list[Merge]) -> str:
        k = len(stack)
        alpha = 1 / math.sqrt(k)
        first = stack[0]
        block = st.node(first.node).module
        # The branch proper: what feeds the sum besides the stream (not a projection shortcut).
        branch: set[str] = set()
        todo = [b for b in first.branches if b in first.region]
        while todo:
            n = todo.pop()
            if n not in branch:
                branch.add(n)
                todo.extend(i for i in st.tensor_inputs(n) if i in first.region)
        weighted = [n for n in branch if st.node(n).kind in DEPTH_KINDS and st.node(n).params.get("weight")]
        last = max(weighted, key=st.order.__getitem__, default=None)
        last_mod = st.node(last).module if last else ""
        shape = st.node(first.node).shape
        roles = getattr(st.result.propagation.forward_state.get(first.node), "roles", "")
        width = None
        if isinstance(shape, tuple) and shape:
            width = shape[roles.index("F")] if "F" in roles and len(roles) == len(shape) else shape[-1]
        conv = isinstance(shape, tuple) and len(shape) == 4 and roles[1:2] == "F"
        if last_mod and block and last_mod.startswith(block + ".") and block.rsplit(".", 1)[-1].isdigit():
            container, rel = block.rsplit(".", 1)[0], last_mod[len(block) + 1:]
            zero = f"for block in model.{container}: nn.init.zeros_(block.{rel}.weight)"
        elif last_mod:
            zero = f"nn.init.zeros_(model.{last_mod}.weight), and likewise in every block"
        else:
            zero = "nn.init.zeros_(<last layer of each branch>.weight)"
        return (f"start each branch at zero (SkipInit/Fixup): {zero};\n"
                f"or scale each branch: x = x + alpha * f(x) with alpha = 1/sqrt({k}) = {alpha:.3f}, or a learnable "
                f"alpha = nn.Parameter(torch.zeros(1)) (ReZero);\n"
                + (f"or end each branch with nn.BatchNorm2d({width}), x = x + bn(f(x)), as in ResNet"
                   if conv else
                   f"or normalize each branch's input (pre-norm): x = x + f(nn.LayerNorm({width or 'd'})(x))"))
