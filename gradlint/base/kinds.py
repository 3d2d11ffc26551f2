"""The graph's op kinds, and the sets of them every stage agrees on.

A node's ``kind`` names its transfer rule in the engine's registry; the sets below are the
one table the summary, the rules, the report's per-layer lists and the charts read.
"""

from __future__ import annotations

#: Kinds that only move, select or reduce data: the summary counts their gain as neutral.
BENIGN_KINDS = frozenset({"identity", "select", "split", "getitem", "expand", "datamove", "dropout", "avg_pool",
                          "max_pool", "reduce", "cat", "const"})
#: Layer kinds that hold weights.
WEIGHTED_KINDS = frozenset({"linear", "conv", "linear_w", "conv_w", "embedding", "rnn", "attention", "moe_linear"})
#: Layer kinds that normalize.
NORM_KINDS = frozenset({"layer_norm", "rms_norm", "group_norm", "batch_norm"})
#: Activations: functional (``act``) and parameter-free activation modules (``act_module``).
ACTIVATION_KINDS = frozenset({"act", "act_module"})
#: What the report lists per layer.
LAYER_KINDS = WEIGHTED_KINDS | NORM_KINDS | ACTIVATION_KINDS
#: What the bar profile and the chart show: an activation's output gradient repeats its
#: neighbour's.
PROFILE_KINDS = WEIGHTED_KINDS | NORM_KINDS
