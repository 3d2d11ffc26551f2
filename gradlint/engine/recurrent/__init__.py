"""Mean-field signal propagation through nn.RNN / nn.LSTM / nn.GRU unrolled in time.

Pure math: no model is run. One call describes one layer in one direction
(`RecurrentLayerStats`, read from a module by ``layers``); stacked and bidirectional modules
are composed from such calls by `predict_module` (``module``). The rules are those of
docs/design.md: R1–R4 (§6), W1/W7 (§3), E2/E4/E6 (§4.2), default inits (§8).

* ``forward_pass`` -- second moments per step, with their covariance across steps;
* ``backward_pass`` -- δ² per step, the R4 weight-reuse estimate and the plain mean-field
  bound, and the parameter gradients;
* ``numerics`` -- the Gaussian expectations both need;
* ``node`` -- an ``rnn`` node of the graph, for the engine's transfer rule.
"""

from gradlint.engine.recurrent.backward_pass import backward
from gradlint.engine.recurrent.forward_pass import forward
from gradlint.engine.recurrent.layers import default_layer_stats, layer_stats, module_layer_stats
from gradlint.engine.recurrent.module import predict, predict_module
from gradlint.engine.recurrent.node import rnn_backward, rnn_forward
from gradlint.engine.recurrent.states import (
                                              DENSE_MAX_STEPS,
                                              KINDS,
                                              LayerPrediction,
                                              ModulePrediction,
                                              RecurrentBackward,
                                              RecurrentForward,
                                              RecurrentLayerStats,
)

__all__ = [
    "DENSE_MAX_STEPS",
    "KINDS",
    "LayerPrediction",
    "ModulePrediction",
    "RecurrentBackward",
    "RecurrentForward",
    "RecurrentLayerStats",
    "backward",
    "default_layer_stats",
    "forward",
    "layer_stats",
    "module_layer_stats",
    "predict",
    "predict_module",
    "rnn_backward",
    "rnn_forward",
]
