"""Gaussian expectations for mean-field signal propagation.

The numerical core behind the activation, pooling, softmax and recurrent rules of the
design reference (docs/design.md):

* :func:`moments` -- E[phi(h)], E[phi(h)^2], E[phi'(h)^2], E[phi'(h)] for h ~ N(mu, v)
  (§5 (E1));
* :func:`cross` -- E[phi(h) phi(h')] and E[phi'(h) phi'(h')] for jointly Gaussian h, h'
  with correlation c (§5.1, used for k' and r_in in E1);
* :func:`expect`, :func:`gate_moments`, :func:`tanh_moments` -- the gate moments of the
  LSTM/GRU rules R2/R3 (§6); :func:`expect_fn` -- all four moments of any elementwise
  callable;
* :func:`softmax_moments` -- S2, S3, S22 of rule S1 (§4.5, §4.6);
* :func:`max_normal_moments`, :func:`topk_normal_moments` -- order statistics of normals
  (§4.3, P3 and ``topk``);
* :func:`activation` -- the activation catalogue (names, parameters with torch's defaults,
  phi and phi' on tensors); :func:`node_activation`, :func:`node_moments` -- the function an
  element-wise graph node computes, and its moments.

Evaluation (§5.1, §5.3): exact closed forms for the piecewise-polynomial and
exponential-linear activations (``closed_form``); the uniform 801-point grid for analytic
ones, graded composite Gauss-Legendre where a transition is too narrow for it or phi has a
kink (``quadrature``); the arc-cosine kernel, closed-form inner expectations and a 2D grid
for cross moments (``bivariate``); a Laplace-transform quadrature for softmax moments
(``softmax``).

Every public function takes and returns Python floats and is memoised: arguments are
rounded to 7 significant decimal digits before the cached computation, and a small front
dictionary keyed on the raw arguments makes repeated identical calls cost well under a
microsecond (``arguments``). torch (float64, CPU) is the only numeric dependency, and
torch's global state is never changed.
"""

from gradlint.engine.gaussian.activations import ACTIVATION_PARAMS, ACTIVATIONS, Activation, activation
from gradlint.engine.gaussian.bivariate import cross
from gradlint.engine.gaussian.expectations import expect, expect_fn, gate_moments, moments, tanh_moments
from gradlint.engine.gaussian.nodes import node_activation, node_function, node_moments
from gradlint.engine.gaussian.normal import normal_cdf, normal_pdf
from gradlint.engine.gaussian.order_stats import max_normal_moments, max_relu_moments, topk_normal_moments
from gradlint.engine.gaussian.results import (
                                              Cross,
                                              GateMoments,
                                              MaxNormalMoments,
                                              Moments,
                                              SoftmaxMoments,
                                              TanhMoments,
                                              TopkMoments,
)
from gradlint.engine.gaussian.softmax import softmax_moments

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_PARAMS",
    "Activation",
    "Cross",
    "GateMoments",
    "MaxNormalMoments",
    "Moments",
    "SoftmaxMoments",
    "TanhMoments",
    "TopkMoments",
    "activation",
    "cross",
    "expect",
    "expect_fn",
    "gate_moments",
    "max_normal_moments",
    "max_relu_moments",
    "moments",
    "node_activation",
    "node_function",
    "node_moments",
    "normal_cdf",
    "normal_pdf",
    "softmax_moments",
    "tanh_moments",
    "topk_normal_moments",
]
