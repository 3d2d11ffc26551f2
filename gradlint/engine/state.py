"""The statistics the engine carries along every edge of the graph.

Forward (``Fwd``) and backward (``Bwd``) states follow docs/design.md §2: second moments and
correlations that mean-field theory needs, never tensor values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Dimension roles of a tensor: batch, position (token, pixel, time), feature (channel).
BATCH, POS, FEAT = "B", "P", "F"


def default_roles(shape: tuple[int, ...]) -> str:
    """Batch first, features last, positions between (the layout of Linear-based models)."""
    n = len(shape)
    if n == 0:
        return ""
    if n == 1:
        return FEAT
    return BATCH + POS * (n - 2) + FEAT


@dataclass(frozen=True, slots=True)
class Fwd:
    """Forward statistics of one tensor.

    Attributes:
        q: E[h^2], mean over elements (includes the mean).
        mu: E[h], the common mean.
        k: covariance of one unit across two different batch samples (includes mu^2).
        kt: covariance of one unit across two different positions of one sample (includes mu^2).
        shape: The tensor's shape, or ``()`` when unknown.
        roles: One of ``B``/``P``/``F`` per dim (batch, position, feature).
        dtype: ``"float"``, ``"int"`` (token ids, indices) or ``"bool"``.
        vocab: For token-id tensors, the number of distinct ids.
        const: True when the value depends on no input and no parameter (masks, position ids).
        blocked: True when no gradient can flow back through this value (detach, argmax, ...).
        origin: The node whose random component this tensor carries, for spotting x + x.
        scale: This tensor = scale * (tensor at ``origin``), where that holds exactly.
        normed: Fraction of q that comes from rows of fixed norm (a normalization output);
            feeds the kurtosis correction of LayerNorm (N1).
        unknown: The statistics are a guess: an op without a rule (or one its rule could not
            evaluate) made this tensor, or such a tensor fed it. Gradients computed from it are
            unknown, never zero (docs/design.md §2.2).
    """

    q: float
    mu: float = 0.0
    k: float = 0.0
    kt: float = 0.0
    shape: tuple[int, ...] = ()
    roles: str = ""
    dtype: str = "float"
    vocab: int | None = None
    const: bool = False
    blocked: bool = False
    origin: str | None = None
    scale: float = 1.0
    normed: float = 0.0
    unknown: bool = False

    @property
    def v(self) -> float:
        """Variance around the common mean, q - mu^2."""
        return max(self.q - self.mu * self.mu, 0.0)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def with_(self, **changes) -> Fwd:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Bwd:
    """Backward statistics of the gradient dL/dh of one tensor.

    Attributes:
        s: E[delta^2], mean over elements.
        r: E[delta_p delta_p'] for two positions of one sample (same channel).
        sw: Extra second moment that only the weight gradient of the layer producing this
            tensor sees (the attention K/V alignment term of docs/design.md §4.6); not propagated.
        rb: E[delta_n delta_m] for elements of two different samples (same channel). Zero
            except below a BatchNorm, whose backward centres the gradient over the batch:
            sum over the batch of delta is then 0, which cancels the weight gradient's share
            from the input's common component.
        coh: r_u * E[phi''(h)]^2 from the activation this tensor feeds: with dL/dh shared across
            positions (pooling, attention), each position's weight-gradient term has a mean
            along the weights (Stein's lemma: E[phi'(h) x_j] = w_j E[phi''] Var x_j), and those
            means add coherently over positions. Only the producing layer's weight gradient uses it.
        unknown: Part of this gradient went through an op the engine cannot account for: its
            moments are a guess, and so is every parameter gradient computed from them.
    """

    s: float = 0.0
    r: float = 0.0
    sw: float = 0.0
    rb: float = 0.0
    coh: float = 0.0
    unknown: bool = False

    def __add__(self, other: Bwd) -> Bwd:
        return Bwd(self.s + other.s, self.r + other.r, self.sw + other.sw, self.rb + other.rb,
                   self.coh + other.coh, self.unknown or other.unknown)

    def scaled(self, f: float) -> Bwd:
        return Bwd(self.s * f, self.r * f, self.sw * f, self.rb * f, self.coh * f, self.unknown)

    def as_unknown(self) -> Bwd:
        return self if self.unknown else Bwd(self.s, self.r, self.sw, self.rb, self.coh, True)


ZERO = Bwd()
