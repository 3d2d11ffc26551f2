"""Per-op transfer rules: forward statistics and backward gradient moments.

Each rule implements one rule of docs/design.md (cited by its label: L1 Linear, N1
LayerNorm, ...) and is registered under the graph node ``kind``s it handles
(``registry``). The families, in registration order:

* ``structural`` -- sources, shape ops, gradient blockers, unknown ops;
* ``layers`` -- Linear, convolutions, embeddings;
* ``activations`` -- activations and other element-wise maths;
* ``arith`` -- dropout, sums, products;
* ``norms`` -- LayerNorm, RMSNorm, GroupNorm, BatchNorm;
* ``pooling`` -- reductions, pooling, softmax;
* ``cumulative`` -- running sums along one dim (cumsum);
* ``attention`` -- attention and products of two activations;
* ``moe`` -- top-k selection and mixture-of-experts layers;
* ``recurrent`` -- nn.RNN / LSTM / GRU;
* ``loops`` -- RNN / GRU / LSTM cells, alone and unrolled by a Python loop;
* ``scan`` -- diagonal linear recurrences (selective scans);
* ``wkv`` -- RWKV time mixing (``wkv_values`` evaluates its decay matrix);
* ``reparam`` -- weights computed from parameters in forward (weight_norm);
* ``writes`` -- writes into a region of a tensor (index_put, scatter, ``x[:, t] = h``);
* ``losses`` -- cross-entropy, NLL, MSE, L1, smooth L1, Huber, binary cross-entropy.

``roles`` holds the shape and dim-role helpers they share.
"""

# Imported for their registrations, in this order (the order of TRANSFERS).
from gradlint.engine.transfers import structural, layers, activations, arith, norms, pooling, cumulative  # noqa: F401, I001
from gradlint.engine.transfers import attention, extremum, moe, recurrent, loops, scan, reparam, writes  # noqa: F401
from gradlint.engine.transfers import losses, wkv  # noqa: F401
from gradlint.engine.transfers.registry import (ATTENTION, INIT, NORMALIZATION, RECURRENCE, RESIDUAL, SATURATION,
                                                TRANSFERS, Transfer, register)

__all__ = ["ATTENTION", "INIT", "NORMALIZATION", "RECURRENCE", "RESIDUAL", "SATURATION", "TRANSFERS", "Transfer",
           "register"]
