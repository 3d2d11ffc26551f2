"""Predictions for one layer and direction, and for whole stacked or bidirectional modules.

Layers compose as docs/design.md prescribes: E4 (concatenated directions), E6 (inter-layer
dropout) and E2 (the backward sum over the directions above), §4.2; the parameter gradients
are W1/W7 with the time steps as positions (§3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gradlint.engine.recurrent.backward_pass import backward
from gradlint.engine.recurrent.forward_pass import as_steps, forward
from gradlint.engine.recurrent.layers import module_layer_stats
from gradlint.engine.recurrent.states import (
    LayerPrediction,
    ModulePrediction,
    RecurrentBackward,
    RecurrentForward,
    RecurrentLayerStats,
)


def predict(
    stats: RecurrentLayerStats,
    q_x: float | Sequence[float],
    s_out: float | Sequence[float],
    batch_size: int,
    seq_len: int | None = None,
    *,
    q_h0: float = 0.0,
    q_c0: float = 0.0,
    s_hn: float = 0.0,
    s_cn: float = 0.0,
    k_x: torch.Tensor | None = None,
) -> LayerPrediction:
    """Forward plus both backward estimates for one layer and direction.

    Args:
        stats: the layer.
        q_x: input second moment (scalar or per step).
        s_out: s arriving at each output step (scalar or per step).
        batch_size: B.
        seq_len: T (needed when both q_x and s_out are scalars).
        q_h0: second moment of the initial hidden state.
        q_c0: second moment of the initial cell state.
        s_hn: s arriving at h_n.
        s_cn: s arriving at c_n.
        k_x: optional (T, T) input covariance across steps (see `forward`).

    Returns:
        The layer prediction (estimate = R4 or R1w, bound = plain mean field).
    """
    if seq_len is None and isinstance(q_x, (int, float)) and not isinstance(s_out, (int, float)):
        seq_len = len(s_out)
    fwd = forward(stats, q_x, seq_len, q_h0=q_h0, q_c0=q_c0, k_x=k_x)
    bound = backward(stats, fwd, s_out, batch_size, s_hn=s_hn, s_cn=s_cn, reuse=False)
    est = backward(stats, fwd, s_out, batch_size, s_hn=s_hn, s_cn=s_cn, reuse=True)
    return LayerPrediction(stats=stats, forward=fwd, estimate=est, bound=bound)


def predict_module(
    module: nn.Module,
    batch_size: int,
    seq_len: int,
    *,
    q_x: float | Sequence[float] = 1.0,
    s_out: float | Sequence[float] = 1.0,
    s_hn: float | Sequence[float] = 0.0,
    s_cn: float | Sequence[float] = 0.0,
    q_h0: float = 0.0,
    q_c0: float = 0.0,
    train: bool = True,
) -> ModulePrediction:
    """Compose per-layer, per-direction predictions for a whole recurrent module.

    Layer l+1 reads the concatenation of layer l's directions (E4: q and the covariance
    across steps average over the concatenated features) after inter-layer dropout (E6:
    q/(1−p) and s/(1−p) in train mode; masks are independent across steps, so the
    off-diagonal covariance is unchanged). Backward, every feature of layer l's output
    receives the sum of what the directions of layer l+1 send to their input (E2), and the
    module input the sum over the first layer's directions. A reverse direction processes
    time backwards: its per-step sequences and covariance matrices are flipped when they
    are exchanged with neighbours.

    Args:
        module: nn.RNN, nn.LSTM or nn.GRU (batch_first does not matter).
        batch_size: B.
        seq_len: T.
        q_x: second moment of the module input (scalar or per time step); the input is
            taken as independent across steps (the protocol's x ~ N(0, 1)).
        s_out: s arriving at every element of the module output at each time step (scalar
            or per step); 1 for a loss on all steps, (0, ..., 0, 1) for the last step only.
        s_hn: s arriving at h_n, one scalar for all (layer, direction) slices or one value
            per slice in h_n's order (layer-major, direction-minor).
        s_cn: the same for c_n (LSTM).
        q_h0: second moment of every initial hidden state.
        q_c0: second moment of every initial cell state.
        train: whether inter-layer dropout is active (the protocol uses train mode).

    Returns:
        The composed prediction.
    """
    layers = module_layer_stats(module)
    L, D, T = len(layers), len(layers[0]), seq_len
    keep = 1.0 - (float(module.dropout) if (train and L > 1) else 0.0)

    def per_slice(v: float | Sequence[float], name: str) -> list[float]:
        if isinstance(v, (int, float)):
            return [float(v)] * (L * D)
        out = [float(x) for x in v]
        if len(out) != L * D:
            raise ValueError(f"{name} has {len(out)} entries, expected num_layers*num_directions={L * D}")
        return out

    def flip(seq):
        return seq.flip(0, 1) if isinstance(seq, torch.Tensor) else seq[::-1]

    hn, cn = per_slice(s_hn, "s_hn"), per_slice(s_cn, "s_cn")
    q_in: tuple[float, ...] = as_steps(q_x, T, "q_x")
    k_in: torch.Tensor | None = None
    fwds: list[list[RecurrentForward]] = []
    for dirs in layers:
        row = [
            forward(st, flip(q_in) if d else q_in, q_h0=q_h0, q_c0=q_c0,
                    k_x=flip(k_in) if (d and k_in is not None) else k_in)
            for d, st in enumerate(dirs)
        ]
        fwds.append(row)
        # time-aligned output of the concatenated directions, then dropout
        q_out = tuple(sum((flip(f.q_h) if d else f.q_h)[t] for d, f in enumerate(row)) / D for t in range(T))
        q_in = tuple(q / keep for q in q_out)
        if row[0].k_h is not None:
            k_in = sum(flip(f.k_h) if d else f.k_h for d, f in enumerate(row)) / D

    def run_backward(reuse: bool) -> tuple[list[list[RecurrentBackward]], tuple[float, ...]]:
        res: list[list[RecurrentBackward]] = [[] for _ in range(L)]
        s_above = as_steps(s_out, T, "s_out")
        r_above: torch.Tensor | None = None  # the loss is independent across steps
        for layer in range(L - 1, -1, -1):
            s_below = [0.0] * T
            r_below: torch.Tensor | None = None
            for d, st in enumerate(layers[layer]):
                bw = backward(
                    st,
                    fwds[layer][d],
                    flip(s_above) if d else s_above,
                    batch_size,
                    s_hn=hn[layer * D + d],
                    s_cn=cn[layer * D + d],
                    reuse=reuse,
                    r_out=flip(r_above) if (d and r_above is not None) else r_above,
                )
                res[layer].append(bw)
                s_below = [a + b for a, b in zip(s_below, flip(bw.s_x) if d else bw.s_x)]
                if bw.r_x is not None:
                    r_x = flip(bw.r_x) if d else bw.r_x
                    r_below = r_x if r_below is None else r_below + r_x
            # dropout masks are independent across steps: s/(1−p), off-diagonal unchanged
            s_above = tuple(s / keep for s in s_below)
            r_above = r_below
        return res, tuple(s_below)

    est, s_x = run_backward(True)
    bound, s_x_bound = run_backward(False)
    preds = tuple(
        tuple(
            LayerPrediction(stats=layers[layer][d], forward=fwds[layer][d], estimate=est[layer][d],
                            bound=bound[layer][d])
            for d in range(D)
        )
        for layer in range(L)
    )
    return ModulePrediction(layers=preds, q_out=q_out, s_x=s_x, s_x_bound=s_x_bound)
