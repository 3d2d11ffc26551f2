"""The graph's op kinds, and the sets of them every stage agrees on.

A node's ``kind`` names its transfer rule in the engine's registry: capture writes kinds from
``KINDS`` only, and the engine registers a rule for each (``transfers.register`` refuses any
other). The sets below are the one table the summary, the rules, the report's per-layer lists
and the charts read.
"""

from __future__ import annotations

#: Every kind a graph node can have, and what it stands for.
KINDS = {
    "input": "a graph input (floats or token ids)",
    "const": "a buffer or a tensor the forward creates (masks, position ids): no gradient",
    "param": "a parameter used as a plain operand (LayerScale, a CLS token, a position table)",
    "getitem": "one output of a multi-output op",
    "identity": "views, reshapes, permutes, casts: statistics unchanged",
    "select": "slicing and indexing: a subset of the elements",
    "split": "split and chunk into pieces",
    "cat": "concatenation",
    "expand": "broadcast copies",
    "datamove": "masking, padding, upsampling: the main operand's statistics carry over",
    "block": "detach, argmax, comparisons, integer casts: no gradient flows back",
    "grad_region": "a no_grad (or enable_grad) region captured as one op",
    "unknown": "an op without a transfer rule",
    "linear": "nn.Linear, F.linear, addmm, matmul with a weight",
    "conv": "convolutions and transposed convolutions",
    "embedding": "an embedding lookup",
    "act": "an element-wise activation of the catalogue",
    "elementwise": "element-wise maths evaluated on the Gaussian grid",
    "act_module": "a parameter-free element-wise module, run on the Gaussian grid",
    "dropout": "dropout in train mode",
    "add": "sums and differences",
    "mul": "products, and scaling by constants or parameters",
    "layer_norm": "LayerNorm",
    "rms_norm": "RMSNorm",
    "group_norm": "GroupNorm and InstanceNorm",
    "batch_norm": "BatchNorm",
    "reduce": "mean, sum or max over dims",
    "cumulative": "a running sum along one dim (cumsum)",
    "max_pool": "max pooling",
    "avg_pool": "average pooling",
    "softmax": "softmax and log-softmax",
    "attention": "scaled dot-product attention (fused, or recognized in primitives)",
    "matmul": "a product of two activations outside an attention pattern",
    "topk": "topk and sort",
    "router": "mixture-of-experts routing weights",
    "moe_linear": "expert layers run as one grouped matmul",
    "rnn": "nn.RNN, nn.LSTM, nn.GRU",
    "packing": "pack_padded_sequence / pad_packed_sequence: a padded batch's valid steps, packed or padded back",
    "rnn_cell": "nn.RNNCell, nn.LSTMCell, nn.GRUCell called once",
    "rnn_loop": "a cell called once per step by a Python loop over time, fused",
    "scan": "a diagonal linear recurrence s = a*s + b written as a loop (a selective scan), fused",
    "linear_w": "a Linear whose weight is computed in forward (weight_norm, a reshaped parameter)",
    "conv_w": "a convolution whose weight is computed in forward",
    "weight_norm": "weight normalization g·v/||v||",
    "write": "a write into a tensor: an in-place op on a view, index_put, scatter",
    "extremum": "element-wise maximum or minimum of two tensors",
    "loss": "a loss function (cross-entropy, NLL, MSE, L1, smooth L1, Huber, binary cross-entropy)",
    "broadcast": "torch.broadcast_tensors: each operand expanded to the common shape",
    "wkv": "RWKV time mixing: a causal average of values with weights exp(k) times decays, fused",
}

#: Kinds that only move, select or reduce data: the summary counts their gain as neutral.
BENIGN_KINDS = frozenset({"identity", "select", "split", "getitem", "expand", "datamove", "dropout", "avg_pool",
                          "max_pool", "reduce", "cumulative", "cat", "const", "packing"})
#: Layer kinds that hold weights.
WEIGHTED_KINDS = frozenset({"linear", "conv", "linear_w", "conv_w", "embedding", "rnn", "rnn_cell", "rnn_loop",
                            "attention", "moe_linear"})
#: Layer kinds that normalize.
NORM_KINDS = frozenset({"layer_norm", "rms_norm", "group_norm", "batch_norm"})
#: Activations: functional (``act``) and parameter-free activation modules (``act_module``).
ACTIVATION_KINDS = frozenset({"act", "act_module"})
#: What the report lists per layer.
LAYER_KINDS = WEIGHTED_KINDS | NORM_KINDS | ACTIVATION_KINDS
#: What the bar profile and the chart show: an activation's output gradient repeats its
#: neighbour's.
PROFILE_KINDS = WEIGHTED_KINDS | NORM_KINDS
