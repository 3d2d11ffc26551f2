"""What positions share, through average pooling, residual sums and InstanceNorm/GroupNorm,
checked against a real backward (float64, loss Σ g·y, 4 seeds, mean log10 RMS per weight).

- AvgPool2d(2) (P2): only the other entries of a window share its δ, but r_in was s/n² for
  every pair of positions, as for a global pool. Under a ReLU the Stein term (W1) made every
  conv below a pool too large (SAGAN's discriminator: +0.4 to +0.8 decades toward its input).
- A residual sum before an activation: the activation's Stein term holds for the layer at the
  head of either branch, and the sum dropped it (SAGAN's first shortcut conv, fan-in 3, was
  0.5 decades low).
- InstanceNorm/GroupNorm (N3) divided by q − μ² as LayerNorm does, but a group's members share
  their channel's offset (k_tok): InstanceNorm divides by q − k_tok and leaves positions no
  covariance. TransformerNet (fast_neural_style) was 0.3–0.5 decades low throughout.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import measured_log_rms

from gradlint.api import predict


class Down(nn.Module):
    """SAGAN's discriminator blocks: relu, conv, relu, conv, AvgPool2d(2), plus a pooled 1×1
    shortcut; the last map summed over positions."""

    def __init__(self, c: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.c1 = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(c, c[1:]))
        self.c2 = nn.ModuleList(nn.Conv2d(b, b, 3, padding=1) for b in c[1:])
        self.c0 = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(c, c[1:]))

    def forward(self, x):
        for c1, c2, c0 in zip(self.c1, self.c2, self.c0):
            x = torch.relu(x)
            x = F.avg_pool2d(c2(torch.relu(c1(x))), 2) + F.avg_pool2d(c0(x), 2)
        return x.sum(dim=(2, 3))


class Shortcut(nn.Module):
    """SAGAN's first block: a 1×1 conv on the pooled image joins the main branch before a ReLU."""

    def __init__(self):
        super().__init__()
        self.c1, self.c0 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        h = F.avg_pool2d(torch.relu(self.c1(x)), 2) + self.c0(F.avg_pool2d(x, 2))
        return self.c2(torch.relu(h)).sum(dim=(2, 3))


class NormStack(nn.Module):
    """conv → InstanceNorm2d (or GroupNorm) → ReLU, four times, as TransformerNet stacks them."""

    def __init__(self, groups: int | None = None, c: int = 16):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, c, 3, padding=1)] + [nn.Conv2d(c, c, 3, padding=1) for _ in range(3)])
        self.norms = nn.ModuleList(nn.InstanceNorm2d(c, affine=True) if groups is None else nn.GroupNorm(groups, c)
                                   for _ in range(4))
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = torch.relu(norm(conv(x)))
        return self.out(x)


# Before the fixes (main at 56ed479), the worst weight of each: Down +0.44, Shortcut -0.36,
# InstanceNorm -0.28, GroupNorm(4) -0.13 decades.
@pytest.mark.parametrize(("build", "shape", "tol"), [
    (Down, (4, 8, 32, 32), 0.25),
    (Shortcut, (4, 3, 32, 32), 0.1),
    (NormStack, (2, 3, 32, 32), 0.1),
    (lambda: NormStack(groups=4), (2, 3, 32, 32), 0.1),
], ids=["avgpool", "shortcut", "instancenorm", "groupnorm"])
def test_conv_weights_match_a_real_backward(build, shape, tol):
    torch.manual_seed(0)
    model = build()
    report, _ = predict(model, (torch.randn(*shape),))
    truth = measured_log_rms(model, shape)
    for p in report.params:
        if p.name.endswith("weight") and len(p.shape) > 1:
            err = math.log10(p.predicted_grad_rms) - truth[p.name]
            assert abs(err) < tol, (p.name, err)
