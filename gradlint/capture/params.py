"""Statistics of every parameter: read from the tensor, or from its init when it has no values.

The engine needs, per parameter tensor, the mean of squares and the mean (docs/design.md §2). Real
tensors are read directly (one reduction each, no copies). Tensors on the meta device hold
no values: their statistics come from the initialization the model would have run, known
from PyTorch's defaults per layer type (docs/design.md §8), or recorded while
running the model's own ``_init_weights`` over the meta tensors (``initscan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn


@dataclass(frozen=True, slots=True)
class ParamStats:
    """What the engine knows about one parameter tensor.

    Attributes:
        name: Qualified name as in ``named_parameters()``.
        shape: Tensor shape.
        ms: Mean of squares over all elements.
        mean: Mean over all elements.
        source: ``tensor`` (read from values), ``init`` (the model's init, recorded on meta),
            ``default`` (PyTorch's default for the layer type), ``assumed`` (a guess) or
            ``nonfinite`` (the tensor holds NaN/inf) or ``overflow`` (its mean square overflows
            float64); in these two cases its layer's default init stands in.
        module: Qualified name of the owning module.
        module_type: The owning module's class name.
        requires_grad: Whether the parameter is trained.
        tied: Other names of the same tensor (weight tying); their gradients add up.
    """

    name: str
    shape: tuple[int, ...]
    ms: float
    mean: float
    source: str
    module: str
    module_type: str
    requires_grad: bool = True
    tied: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def rms(self) -> float:
        return math.sqrt(max(self.ms, 0.0))


def _fan_in(shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        return max(shape[0] if shape else 1, 1)
    return shape[1] * math.prod(shape[2:])


def default_init(module: nn.Module, pname: str, shape: tuple[int, ...]) -> tuple[float, float, str]:
    """PyTorch 2.13's default init for ``module.<pname>`` as (mean of squares, mean, source).

    Layer types not listed fall back to kaiming_uniform_(a=sqrt(5)) for matrices (what most
    custom layers copy from nn.Linear), 1 for 1-D ``weight``s (norm gains) and 0 for biases.
    """
    if math.prod(shape) == 0:
        return 0.0, 0.0, "default"  # an empty tensor: init is a no-op
    if isinstance(module, nn.MultiheadAttention):
        e = module.embed_dim
        if pname == "in_proj_weight":
            return 1.0 / (2 * e), 0.0, "default"
        if pname in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            return 2.0 / (e + shape[1]), 0.0, "default"
        if pname in ("in_proj_bias",):
            return 0.0, 0.0, "default"
        if pname in ("bias_k", "bias_v"):
            return 2.0 / (e + 1), 0.0, "default"
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear) and pname == "bias":
        return 0.0, 0.0, "default"  # MultiheadAttention zeroes out_proj.bias
    if isinstance(module, (nn.RNNBase,)):
        return 1.0 / (3 * module.hidden_size), 0.0, "default"
    if isinstance(module, nn.Embedding) and pname == "weight":
        pad = module.padding_idx is not None
        return (shape[0] - 1) / shape[0] if pad else 1.0, 0.0, "default"
    if isinstance(module, nn.PReLU):
        return 0.0625, 0.25, "default"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)):
        return (1.0, 1.0, "default") if pname == "weight" else (0.0, 0.0, "default")
    if isinstance(module, nn.modules.conv._ConvNd):
        fan = _fan_in(shape)
        if pname == "bias":
            wshape = tuple(module.weight.shape)
            fan = _fan_in(wshape)
        # No inputs (fan-in 0): PyTorch leaves the bias unset; 0 stands in.
        return (1.0 / (3 * fan) if fan else 0.0), 0.0, "default"
    if isinstance(module, nn.Linear):
        return (1.0 / (3 * module.in_features) if module.in_features else 0.0), 0.0, "default"
    if len(shape) >= 2:
        return 1.0 / (3 * _fan_in(shape)), 0.0, "assumed"
    if pname.endswith("weight") or pname in ("gamma", "scale", "g"):
        return 1.0, 1.0, "assumed"
    return 0.0, 0.0, "assumed"


def collect(model: nn.Module, recorded: dict[str, tuple[float, float]] | None = None) -> dict[str, ParamStats]:
    """Statistics for every parameter of ``model``, keyed by qualified name.

    Args:
        model: The user's model (real or meta tensors).
        recorded: For meta parameters, (mean of squares, mean) recorded from the model's own
            init functions; takes precedence over PyTorch's defaults.
    """
    recorded = recorded or {}
    owners: dict[str, tuple[str, nn.Module, str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, _ in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            owners.setdefault(full, (mname, mod, pname))
    out: dict[str, ParamStats] = {}
    seen: dict[int, ParamStats] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        mname, mod, pname = owners.get(name, ("", model, name))
        shape = tuple(int(d) for d in p.shape)
        if id(p) in seen:
            first = seen[id(p)]
            out[name] = ParamStats(name, shape, first.ms, first.mean, first.source, mname, type(mod).__name__,
                                   p.requires_grad)
            continue
        if p.is_meta:
            if name in recorded:
                ms, mean = recorded[name]
                src = "init"
            else:
                ms, mean, src = default_init(mod, pname, shape)
        else:
            with torch.no_grad():
                n = max(p.numel(), 1)
                if p.numel() == 0:
                    ms, mean = 0.0, 0.0
                else:
                    # float32 accumulation: exact enough for a mean square, and no float64 copy
                    # of a large tensor (this loop reads every weight once).
                    d = p.detach()
                    if d.is_complex():  # |w|^2 and the real part's mean; a cast would drop the imaginary part
                        d = d if d.dtype == torch.complex64 else d.to(torch.complex64)
                        ms = float(torch.linalg.vector_norm(d)) ** 2 / n
                        mean = float(d.real.sum()) / n
                    else:
                        d = d if d.dtype == torch.float32 else d.float()
                        ms = float(torch.linalg.vector_norm(d)) ** 2 / n
                        mean = float(d.sum()) / n
                    if not (math.isfinite(ms) and math.isfinite(mean)):
                        if bool(torch.isfinite(p.detach()).all()):  # large but finite: float32 overflowed
                            d = p.detach()
                            d = (d.abs() if d.is_complex() else d).double()
                            ms, mean = float(d.pow(2).mean()), float(d.mean())
            src = "tensor"
            if not (math.isfinite(ms) and math.isfinite(mean)):
                # NaN/inf weights, or finite ones whose square overflows (GL103 names them): the rest
                # of the model is still analyzed, with this tensor at its layer's default init.
                finite = bool(torch.isfinite(p.detach()).all())
                ms, mean, _ = default_init(mod, pname, shape)
                src = "overflow" if finite else "nonfinite"
        st = ParamStats(name, shape, ms, mean, src, mname, type(mod).__name__, p.requires_grad)
        seen[id(p)] = st
        out[name] = st
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    for names in groups.values():
        if len(names) > 1:
            for n in names:
                out[n] = replace(out[n], tied=tuple(x for x in names if x != n))
    return out
