"""Interpolation (``nn.Upsample``, ``F.interpolate``): the gradient through a fixed linear map.

Each output element is a weighted sum of input elements along every resampled axis, with
weights that depend only on the sizes, the mode and ``align_corners`` (PyTorch's
``area_pixel_compute_source_index``). The backward is the transpose of that map, so the
gradient's moments follow from the map's columns (docs/design.md §4.3, P4):

    s_in = c·s + (a − c)·r,   c = mean_i Σ_j W_ji²,   a = mean_i (Σ_j W_ji)²

per resampled plane (the map is a product over axes, so are c and a). Nearest copies give
c = a = the copy count; bilinear ×2 gives c = 1.25 per axis, a = 4 per axis. Every row of W
sums to one, so the gradient summed over a plane is the same on both sides; that fixes the
position correlation r_in the local overlaps leave behind.
"""

from __future__ import annotations

import math

_CUBIC_A = -0.75  # PyTorch's bicubic kernel


def mode_of(op: str) -> str | None:
    """The interpolation of an ``upsample_*`` ATen op, None for any other op."""
    if not op.lstrip("_").startswith("upsample"):
        return None
    if "nearest_exact" in op:
        return "nearest-exact"
    if "nearest" in op:
        return "nearest"
    if "bicubic" in op:
        return "cubic"
    return "linear"


def _ratio(n_in: int, n_out: int, align_corners: bool, scale: float | None) -> float:
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / scale if scale and scale > 0 else n_in / n_out


def _cubic(t: float) -> tuple[float, float, float, float]:
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return far(t + 1), near(t), near(1 - t), far(2 - t)


def _rows(n_in: int, n_out: int, mode: str, align_corners: bool, scale: float | None):
    """Per output index, the (input index, weight) pairs of one axis."""
    ratio = _ratio(n_in, n_out, align_corners, scale)
    for j in range(n_out):
        if mode in ("nearest", "nearest-exact"):
            src = math.floor((j + (0.5 if mode == "nearest-exact" else 0.0)) * ratio)
            yield [(min(src, n_in - 1), 1.0)]
            continue
        real = ratio * j if align_corners else ratio * (j + 0.5) - 0.5
        if mode == "linear":
            real = max(real, 0.0)
            i0 = int(real)
            lam = real - i0
            yield [(i0, 1.0 - lam), (min(i0 + 1, n_in - 1), lam)]
            continue
        i0 = math.floor(real)
        ws = _cubic(real - i0)
        yield [(min(max(i0 - 1 + m, 0), n_in - 1), w) for m, w in enumerate(ws)]


def axis_moments(n_in: int, n_out: int, mode: str, align_corners: bool = False,
                 scale: float | None = None) -> tuple[float, float]:
    """(c, a) of one axis: the mean over input indices of the sum of squared weights reading
    it, and of the square of their sum."""
    col = [[0.0] * n_in for _ in range(2)]
    for row in _rows(n_in, n_out, mode, align_corners, scale):
        merged: dict[int, float] = {}
        for i, w in row:  # a clamped border index can appear twice in one row
            merged[i] = merged.get(i, 0.0) + w
        for i, w in merged.items():
            col[0][i] += w * w
            col[1][i] += w
    return sum(col[0]) / n_in, sum(x * x for x in col[1]) / n_in


def plane_moments(shape_in: tuple[int, ...], shape_out: tuple[int, ...], op: str, align_corners: bool,
                  scales: tuple[float, ...] | None) -> tuple[float, float] | None:
    """(c, a) of the whole resampled plane (the trailing axes whose size changed or that the
    op resamples), or None when the op is not an interpolation the map can be built for."""
    mode = mode_of(op)
    if mode is None or len(shape_in) != len(shape_out) or len(shape_in) < 3:
        return None
    axes = len(shape_in) - 2
    c = a = 1.0
    for d in range(axes):
        n_in, n_out = shape_in[2 + d], shape_out[2 + d]
        if n_in < 1 or n_out < 1:
            return None
        scale = scales[d] if scales and len(scales) == axes else None
        cd, ad = axis_moments(n_in, n_out, mode, align_corners, scale)
        c, a = c * cd, a * ad
    return c, a


def _pad_source(j: int, n: int, left: int, mode: str) -> int:
    """The input index a padded output index ``j`` copies (PyTorch's reflect: the border is
    the mirror, not repeated; replicate: the border is repeated; circular: wraps around)."""
    i = j - left
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "circular":
        return i % n
    period = 2 * (n - 1)
    i = abs(i) % period if period else 0
    return period - i if i >= n else i


def pad_moments(shape_in: tuple[int, ...], shape_out: tuple[int, ...], mode: str,
                pad: list[int]) -> tuple[float, float] | None:
    """(c, a) of a reflect, replicate or circular padding: each output element copies one
    input element, so per input element c is its copy count and a the count squared (the
    same map algebra as an interpolation; every row sums to one). ``pad`` lists (left, right)
    from the last axis backwards, as ``F.pad`` does. None for zero/constant padding or
    shapes that do not fit."""
    if (mode not in ("reflect", "replicate", "circular") or len(shape_in) != len(shape_out) or len(pad) % 2
            or len(pad) // 2 > len(shape_in) - 2):  # only spatial axes: the plane the gradient sums over
        return None
    c = a = 1.0
    for k in range(len(pad) // 2):
        axis = len(shape_in) - 1 - k
        n, n_out, left = shape_in[axis], shape_out[axis], pad[2 * k]
        if n < 1 or n_out != n + left + pad[2 * k + 1]:
            return None
        counts = [0] * n
        for j in range(n_out):
            counts[_pad_source(j, n, left, mode)] += 1
        c, a = c * sum(counts) / n, a * sum(x * x for x in counts) / n
    return c, a
