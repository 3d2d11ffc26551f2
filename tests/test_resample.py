"""Interpolation and padding, predicted against a real backward pass (tests/helpers.py Trials).

An upsampling's backward is the transpose of a fixed linear map (docs/design.md §4.3, P4):
the gradient reaching each input element is a weighted sum of the output gradients that read
it. Before this rule the engine treated it as a broadcast, every position of the input
sharing one gradient (r = s); below the first upsampling of a U-Net (pytorch-unet) every
weight gradient was then 1.3 to 1.8 decades too large, from the coherent-sum term of W1.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import Trials, decades

from gradlint.engine.transfers.resample import axis_moments, pad_moments


class UpNet(nn.Module):
    """A U-Net level: conv, pool, conv, upsample, 1x1 conv, concat with the skip, conv."""

    def __init__(self, mode: str, align_corners: bool | None = None, c: int = 32):
        super().__init__()
        self.a = nn.Conv2d(3, c, 3, padding=1)
        self.b = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.up = nn.Conv2d(2 * c, c, 1)
        self.c = nn.Conv2d(2 * c, c, 3, padding=1)
        self.mode, self.align = mode, align_corners

    def forward(self, x):
        skip = torch.relu(self.a(x))
        h = torch.relu(self.b(F.max_pool2d(skip, 2)))
        h = self.up(F.interpolate(h, scale_factor=2, mode=self.mode, align_corners=self.align))
        return self.c(torch.cat([h, skip], 1))


@pytest.mark.parametrize("mode, align", [("bilinear", False), ("bilinear", True), ("nearest", None),
                                         ("bicubic", False)])
def test_upsampling_weight_gradients_match_a_real_backward(mode, align):
    t = Trials(lambda: UpNet(mode, align), (4, 3, 16, 16))
    for name in ("a.weight", "b.weight", "up.weight", "c.weight"):
        t.check_param(name, decades(0.25))


class PadNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3)

    def forward(self, x):
        return self.b(F.pad(torch.relu(self.a(x)), (1, 1, 1, 1)))


def test_zero_padding_passes_each_gradient_once():
    t = Trials(PadNet, (4, 3, 16, 16))
    t.check_param("a.weight", decades(0.1))


@pytest.mark.parametrize("mode, align, n_in, size", [("bilinear", False, 8, 16), ("bilinear", True, 8, 20),
                                                    ("nearest", None, 8, 20), ("bicubic", False, 8, 16),
                                                    ("bilinear", False, 16, 8)])
def test_map_moments_are_the_interpolation_matrix_columns(mode, align, n_in, size):
    # Row i of W: where input element i goes (interpolating a one-hot row).
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in).expand(n_in, 1, 4, n_in)
    w = F.interpolate(eye, size=(4, size), mode=mode, align_corners=align)[:, 0, 0, :]
    c, a = float((w ** 2).sum(1).mean()), float((w.sum(1) ** 2).mean())
    got = axis_moments(n_in, size, {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode), bool(align))
    assert got == pytest.approx((c, a), rel=1e-9)


class ReluPool(nn.Module):
    """Conv → ReLU → MaxPool → Conv, the layout of VGG and of every torchvision ResNet stem."""

    def __init__(self, k: int = 2, c: int = 64):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.k = k

    def forward(self, x):
        return self.b(F.max_pool2d(torch.relu(self.a(x)), self.k))


@pytest.mark.parametrize("k", [2, 3])
def test_relu_then_max_pool_matches_a_real_backward(k):
    # Before: q' 23-32% low and everything below the pool 46-49% low (docs/design.md P3).
    t = Trials(lambda: ReluPool(k), (8, 3, 12, 12))
    t.check_node(t.node("max_pool"), "q", decades(0.05))
    t.check_param("a.weight", decades(0.1))
    t.check_param("b.weight", decades(0.1))


class PoolBN(nn.Module):
    """VGG's small-map end: conv-BN-ReLU, pool, then a padded conv on a 2×2 map into BatchNorm."""

    def __init__(self, c: int = 128):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.na, self.nb = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        self.head = nn.Linear(c * 4, 10)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.na(self.a(x))), 2)
        return self.head(torch.relu(self.nb(self.b(h))).flatten(1))


def test_batch_norm_after_a_padded_conv_on_a_small_map():
    # The pooled input's mean makes a per-channel offset that the 2x2 map's border taps spread
    # unevenly over positions; the batch mean removes less of it than q - k. With the pool's
    # k fixed and BatchNorm still dividing by q - k: a.weight +0.11, b.weight +0.13 decades
    # (10 seeds); with the group covariance -0.05 and -0.03.
    t = Trials(PoolBN, (4, 3, 4, 4), seeds=10)
    t.check_param("a.weight", decades(0.1))
    t.check_param("b.weight", decades(0.1))


class WholeMapAvgPool(nn.Module):
    """GoogLeNet's head (pytorch-cifar): AvgPool2d(8, stride=1) over an 8×8 map, one window."""

    def __init__(self, c: int = 64):
        super().__init__()
        self.a, self.head = nn.Conv2d(3, c, 3, padding=1), nn.Linear(c, 10)
        self.pool = nn.AvgPool2d(8, stride=1)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.a(x))).flatten(1))


def test_average_pool_over_the_whole_map_at_stride_one():
    # Each element is in one window, not kernel/stride² = 64 of them: before, a.weight was
    # predicted 0.81 decades high (s_in 64× too large; 6 seeds).
    t = Trials(WholeMapAvgPool, (8, 3, 8, 8))
    t.check_param("a.weight", decades(0.1))


class CopyPadNet(nn.Module):
    """fast_neural_style's ConvLayer: reflection (or replication) padding of k // 2, then an
    unpadded k×k conv."""

    def __init__(self, mode: str, c: int = 16):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(8, c, 3, padding=1), nn.Conv2d(c, c, 9), nn.Conv2d(c, 8, 3, padding=1)
        self.mode = mode

    def forward(self, x):
        return self.c(torch.relu(self.b(F.pad(self.a(x), (4, 4, 4, 4), mode=self.mode))))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_copy_padding_sends_the_border_copies_gradient_back(mode):
    # A padded position copies an input element, whose gradient is then the sum over its
    # copies. Taken as zero padding (the copies' gradient dropped), a.weight was 0.29
    # decades low on this 8×8 map with pad 4 (6 seeds: -0.30, -0.26, -0.29 for reflect, replicate, circular).
    t = Trials(lambda: CopyPadNet(mode), (4, 8, 8, 8))
    for name in ("a.weight", "a.bias", "b.weight", "c.weight"):
        t.check_param(name, decades(0.1))


@pytest.mark.parametrize("mode, n, left, right", [("reflect", 8, 4, 4), ("reflect", 5, 1, 3),
                                                  ("replicate", 6, 4, 2), ("circular", 7, 3, 5)])
def test_pad_moments_are_the_copy_counts(mode, n, left, right):
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n)  # row i: where input element i goes
    w = F.pad(eye, (left, right), mode=mode)[:, 0, :]
    c, a = float((w ** 2).sum(1).mean()), float((w.sum(1) ** 2).mean())
    assert pad_moments((1, 1, n), (1, 1, n + left + right), mode, [left, right]) == pytest.approx((c, a), rel=1e-12)
    assert pad_moments((1, 1, n), (1, 1, n + left + right), "constant", [left, right]) is None
