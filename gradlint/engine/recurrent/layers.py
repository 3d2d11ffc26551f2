"""Reading nn.RNN / nn.LSTM / nn.GRU: the statistics of each layer and direction, or those of
PyTorch's default init (docs/design.md §8)."""

from __future__ import annotations

import math

import torch
from torch import nn

from gradlint.engine.recurrent.states import KINDS, NUM_CHUNKS, RecurrentLayerStats


def _module_kind(module: nn.Module) -> str:
    if isinstance(module, nn.LSTM):
        return "lstm"
    if isinstance(module, nn.GRU):
        return "gru"
    if isinstance(module, nn.RNN):
        return "rnn_tanh" if module.nonlinearity == "tanh" else "rnn_relu"
    raise TypeError(f"module of type {type(module).__name__} is not nn.RNN, nn.LSTM or nn.GRU")


def default_layer_stats(
    kind: str, input_size: int, hidden_size: int, *, bias: bool = True, proj_size: int = 0
) -> RecurrentLayerStats:
    """Statistics of PyTorch's default init (docs/design.md §8): every tensor U(±1/√H).

    Weights have variance 1/(3H) (H = hidden_size, also for weight_ih and weight_hr); each
    bias vector has mean 0 and variance 1/(3H), so b_ih + b_hh has variance 2/(3H).

    Args:
        kind: one of KINDS.
        input_size: I.
        hidden_size: H.
        bias: whether the module has biases.
        proj_size: LSTM projection size (0: none).

    Returns:
        The statistics.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {KINDS}")
    n = NUM_CHUNKS[kind]
    var = 1.0 / (3.0 * hidden_size)
    one = var if bias else 0.0
    bvar = (2.0 * one,) * n
    if kind == "gru":
        bvar = bvar[:2] + (one,)  # b_in alone; b_hn is carried separately
    return RecurrentLayerStats(
        kind=kind,
        input_size=input_size,
        hidden_size=hidden_size,
        var_ih=(var,) * n,
        var_hh=(var,) * n,
        bias_mean=(0.0,) * n,
        bias_var=bvar,
        hn_bias_var=one if kind == "gru" else 0.0,
        has_bias=bias,
        proj_size=proj_size,
        var_hr=var if proj_size else 0.0,
    )


def _chunk_mean_sq(w: torch.Tensor, n: int) -> tuple[float, ...]:
    return tuple(float(c.double().pow(2).mean()) for c in w.detach().chunk(n, 0))


def layer_stats(module: nn.Module, layer: int = 0, reverse: bool = False) -> RecurrentLayerStats:
    """Read the statistics of one layer and direction from nn.RNN / nn.LSTM / nn.GRU.

    Parameters on the meta device (no values) fall back to the default init
    (`default_layer_stats`).

    Args:
        module: the recurrent module.
        layer: layer index (0 .. num_layers-1).
        reverse: the reverse direction of a bidirectional module.

    Returns:
        The statistics.
    """
    kind = _module_kind(module)
    if not 0 <= layer < module.num_layers:
        raise ValueError(f"layer={layer!r} must be in 0..{module.num_layers - 1}")
    if reverse and not module.bidirectional:
        raise ValueError("reverse=True needs a bidirectional module")
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    proj = getattr(module, "proj_size", 0) or 0
    return tensor_stats(kind, getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx),
                        getattr(module, "bias_ih" + sfx) if module.bias else None,
                        getattr(module, "bias_hh" + sfx) if module.bias else None,
                        hidden_size=module.hidden_size, weight_hr=getattr(module, "weight_hr" + sfx) if proj else None)


def tensor_stats(kind: str, weight_ih: torch.Tensor, weight_hh: torch.Tensor, bias_ih: torch.Tensor | None,
                 bias_hh: torch.Tensor | None, *, hidden_size: int | None = None,
                 weight_hr: torch.Tensor | None = None) -> RecurrentLayerStats:
    """The statistics of one layer and direction from its weight tensors: those of nn.RNN /
    LSTM / GRU, or of nn.RNNCell / LSTMCell / GRUCell (the same layout without the ``_l0``).

    Tensors on the meta device (no values) give the default init (`default_layer_stats`).

    Args:
        kind: one of KINDS.
        weight_ih: (chunks·H, I).
        weight_hh: (chunks·H, H or the projection size).
        bias_ih: (chunks·H,) or None without biases.
        bias_hh: (chunks·H,) or None.
        hidden_size: H (default: rows of weight_ih over the chunks).
        weight_hr: LSTM projection (P, H), or None.

    Returns:
        The statistics.
    """
    n = NUM_CHUNKS[kind]
    hidden = hidden_size or weight_ih.shape[0] // n
    proj = weight_hr.shape[0] if weight_hr is not None else 0
    has_bias = bias_ih is not None and bias_hh is not None
    w_ih = weight_ih
    if w_ih.is_meta:
        return default_layer_stats(kind, w_ih.shape[1], hidden, bias=has_bias, proj_size=proj)
    bias_mean = bias_var = (0.0,) * n
    hn_mean = hn_var = 0.0
    if has_bias:
        b_ih = bias_ih.detach().double().chunk(n)
        b_hh = bias_hh.detach().double().chunk(n)
        summed = [a + b for a, b in zip(b_ih, b_hh)]
        if kind == "gru":
            summed[2] = b_ih[2]
            hn_mean, hn_var = float(b_hh[2].mean()), float(b_hh[2].var(unbiased=False))
        bias_mean = tuple(float(c.mean()) for c in summed)
        bias_var = tuple(float(c.var(unbiased=False)) for c in summed)
    # nn.RNN's long-range decay depends on W_hh's own spectrum at finite H (R1w, §6); the
    # gated cells' R4 works from statistics alone.
    keep_w = kind in ("rnn_tanh", "rnn_relu") and not weight_hh.is_meta and bool(torch.isfinite(weight_hh).all())
    stats = RecurrentLayerStats(
        kind=kind,
        input_size=w_ih.shape[1],
        hidden_size=hidden,
        var_ih=_chunk_mean_sq(w_ih, n),
        var_hh=_chunk_mean_sq(weight_hh, n),
        bias_mean=bias_mean,
        bias_var=bias_var,
        hn_bias_mean=hn_mean,
        hn_bias_var=hn_var,
        has_bias=has_bias,
        proj_size=proj,
        var_hr=_chunk_mean_sq(weight_hr, 1)[0] if weight_hr is not None else 0.0,
        weight_hh=weight_hh.detach().to(torch.float64).clone() if keep_w else None,
    )
    numbers = (*stats.var_ih, *stats.var_hh, *stats.bias_mean, *stats.bias_var, hn_mean, hn_var, stats.var_hr)
    if not all(math.isfinite(x) for x in numbers):
        # NaN/inf weights (or a mean square beyond float64): as for every other layer
        # (params.collect, GL103), the layer is analyzed at its default init.
        return default_layer_stats(kind, w_ih.shape[1], hidden, bias=has_bias, proj_size=proj)
    return stats


def module_layer_stats(module: nn.Module) -> tuple[tuple[RecurrentLayerStats, ...], ...]:
    """Statistics of every layer and direction: `result[layer][direction]`.

    Args:
        module: nn.RNN, nn.LSTM or nn.GRU.

    Returns:
        One tuple per layer with one (unidirectional) or two (bidirectional) entries.
    """
    dirs = (False, True) if module.bidirectional else (False,)
    return tuple(tuple(layer_stats(module, layer, r) for r in dirs) for layer in range(module.num_layers))
