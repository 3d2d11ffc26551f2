"""GL103 non-finite-values."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradlint.base.findings import Severity
from gradlint.base.kinds import NORM_KINDS, WEIGHTED_KINDS
from gradlint.lint.rule import Case, Rule

# Where the probe's first non-finite value is named as a layer (module and type) rather than
# as an op in a module's forward. Without moe_linear, as before the kinds had one table: no
# test overflows an MoE under the probe, so changing that wording is left to a change of its own.
_LAYER_KINDS = (WEIGHTED_KINDS - {"moe_linear"}) | NORM_KINDS | {"matmul"}


def _nan_weight() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")  # e.g. a checkpoint saved after a diverged step
    return model


def _inf_bias() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 8))
    with torch.no_grad():
        model[0].bias.fill_(float("inf"))
    return model


class NonFiniteValues(Rule):
    """Parameters hold NaN or inf, or a probe's forward or backward produced them.

    ## What it finds
    Statically: parameters whose values include NaN or inf (a checkpoint saved after a
    diverged step, an init divided by zero, a `log` of a zero scale). The rest of the model
    is analyzed with those tensors at their layer's default init, so the other findings
    still hold. With `--probe`: the first module, in execution order, whose output held
    inf or NaN in the real forward pass, or, when every output was finite, the module
    nearest the output whose gradient did. The probe runs in float64, so an overflow it
    reports would also overflow in float32 and bfloat16.

    ## Why it matters
    One NaN reaches every output it feeds within a forward pass, and every parameter's
    gradient in the backward pass that follows: the first optimizer step turns the whole
    model into NaN. The loss shows `nan` without saying where it began.

    ## Example
    `model[2].weight[0, 0] = float("nan")`: every gradient of the model is NaN after one
    backward pass.

    ## Fix
    Re-initialize the tensor (`module.reset_parameters()`, or the `nn.init` call the model
    uses), or load a checkpoint from before the divergence. For an overflow found by the
    probe, scale down the weights of the module named (the exploding-gradient rule, GL102,
    says by how much).

    ## Known limits
    Statically, only parameter values are read: an op that overflows on finite weights is
    found by `--probe` (or predicted as exploding by GL102). Non-finite buffers (running
    statistics) are found only by the probe.
    """

    code = "GL103"
    name = "non-finite-values"
    severity = Severity.ERROR
    category = "exploding"
    good = (Case(lambda: nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)), (8, 32)),)
    bad = (Case(_nan_weight, (8, 32), at="2", severity="error"), Case(_inf_bias, (8, 32), at="0", severity="error"))

    def check(self, result):
        bad: dict[tuple[str, str], list[str]] = {}
        for name, st in result.propagation.param_stats.items():
            if st.source in ("nonfinite", "overflow") and not any(
                    t in bad.get((st.module, st.source), ()) for t in st.tied):
                bad.setdefault((st.module, st.source), []).append(name)
        for (module, source), names in bad.items():
            typ = result.propagation.param_stats[names[0]].module_type
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            attr = f"model.get_submodule({module!r})" if module else "model"
            what = ("NaN or inf values" if source == "nonfinite" else
                    "values so large that their mean square overflows float64")
            yield self.finding(
                result, f"{shown} hold{'s' if len(names) == 1 else ''} {what}: every output and every "
                f"gradient this {typ or 'module'} feeds will be inf or NaN after one step",
                fix=f"re-initialize it: {attr}.reset_parameters(), or load a checkpoint from before the divergence",
                module=module, params=names, source=source)
        if result.nonfinite is not None:
            node, phase = result.nonfinite
            n = result.graph.by_name.get(node)
            module = n.module if n is not None else ""
            if any(m == module for m, _ in bad):
                return  # the non-finite weights named above are the cause
            layer = n is not None and n.kind in _LAYER_KINDS
            if layer:
                where = f"{module} ({n.module_type})" if n.module_type else module
                fix = (f"scale down the init of {module} or put a normalization layer before it; GL102 says by how "
                       "many decades the gradient grows")
            else:
                op = (n.op if n is not None and n.op else node).replace("aten.", "").replace(".default", "")
                where = f"{op} in {module or 'the model'}'s forward"
                fix = ("keep its input in range: torch.log(x.clamp_min(1e-6)), torch.sqrt(x.clamp_min(0)), "
                       "x / (y + 1e-6), or a normalization layer before it")
            what = "output" if phase == "forward" else "gradient"
            order = "the first op, in execution order," if phase == "forward" else "the op nearest the output"
            yield self.finding(
                result, f"the probe's {phase} pass produced inf/NaN: {where} is {order} whose {what} held "
                f"non-finite values (the probe runs in float64, so float32 would too)",
                fix=fix, node=node, module=module, phase=phase, node_name=node)
