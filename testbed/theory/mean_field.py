"""Mean-field signal propagation in wide random networks (Poole et al. 2016; Schoenholz et al. 2017).

Setup and indices (as in ``docs/claims.md``). Layer l = 1 is next to the input x:

    s^1 = W^1 x + b^1,        s^l = W^l phi(s^{l-1}) + b^l   (l = 2..L),
    W^l_ij ~ N(0, sw2 / fan_in),  b^l_i ~ N(0, sb2).

Forward, the variance of a pre-activation unit follows the length map
(Poole et al. 2016, eq. 3)

    q^l = sw2 E_z[phi(sqrt(q^{l-1}) z)^2] + sb2,    z ~ N(0, 1),

started from q^1 = sw2 mean(x^2) + sb2. Backward, with delta^l = dL/ds^l,

    delta^l = phi'(s^l) * (W^{l+1}^T delta^{l+1}),

so (Schoenholz et al. 2017, eq. 11; treating W^{l+1} as independent of the
forward pass, exact as width -> infinity)

    E ||delta^l||^2 = chi_1(q^l) ||delta^{l+1}||^2,   chi_1(q) = sw2 E_z[phi'(sqrt(q) z)^2].

The factor linking layer l to l + 1 uses q^l (through phi'(s^l)) and the sw2
of W^{l+1}. The squared-norm ratio is chi_1 for any widths (the 1/fan_in in
Var[W] cancels the number of units); the per-unit variance ratio
Var[delta^l] / Var[delta^{l+1}] equals chi_1 for equal widths. At the fixed
point q* the per-layer factor is the constant chi_1(q*); at finite depth the
transient q^1 -> q* matters, so the finite-depth predictions below take the
product over q^l iterated from q^1.

Expectations over z ~ N(0, 1) are Gauss-Hermite sums (``gauss_hermite``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from testbed.theory.activations import Activation, phi_and_derivative

DEFAULT_NODES = 100


@lru_cache(maxsize=8)
def gauss_hermite(n: int = DEFAULT_NODES) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z_k and weights w_k with sum_k w_k f(z_k) ~ E[f(z)], z ~ N(0, 1).

    Probabilists' Hermite rule (weight exp(-z^2/2)), weights normalised to sum 1;
    exact for polynomials of degree <= 2n - 1. The default node count is even on
    purpose: an odd rule puts a node (weight 0.124 for n = 101) exactly on the
    kink at 0 of relu-like activations, where relu'(0) = 0 would make chi_1 of
    relu 12% low. With an even rule the nodes are symmetric and avoid 0, so a
    step at 0 integrates exactly to 1/2. For saturating activations the error
    grows with q (phi(sqrt(q) z) turns over on a scale 1/sqrt(q)): E[erf(sqrt(q) z)^2]
    is exact to 1e-15 at q = 1 but off by 2e-6 at q = 5 with 100 nodes, 1e-10 with
    200. Returned arrays are read-only (cached). numpy's rule overflows above ~300.
    """
    with np.errstate(all="ignore"):
        nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"Gauss-Hermite rule with n={n} nodes overflows; use n <= 300")
    weights = weights / weights.sum()
    nodes.flags.writeable = False
    weights.flags.writeable = False
    return nodes, weights


def gaussian_expectation(f, q: ArrayLike = 1.0, n: int = DEFAULT_NODES) -> np.ndarray | float:
    """E_z[f(sqrt(q) z)], z ~ N(0, 1), by Gauss-Hermite; broadcasts over an array ``q``."""
    nodes, weights = gauss_hermite(n)
    q = np.asarray(q, dtype=float)
    values = f(np.sqrt(q)[..., None] * nodes)
    result = values @ weights
    return float(result) if result.ndim == 0 else result


def length_map(q: ArrayLike, sw2: float, sb2: float, activation: Activation) -> np.ndarray | float:
    """q^{l+1} = sw2 E_z[phi(sqrt(q^l) z)^2] + sb2 (Poole et al. 2016, eq. 3)."""
    phi, _ = phi_and_derivative(activation)
    return sw2 * gaussian_expectation(lambda s: phi(s) ** 2, q) + sb2


def fixed_point(sw2: float, sb2: float, activation: Activation, q0: float = 1.0,
                tol: float = 1e-12, max_iter: int = 10000) -> float:
    """The fixed point q* of the length map reached by iterating it from ``q0``.

    Stops when |q^{l+1} - q^l| <= tol * max(1, q^l). At the order-to-chaos
    boundary with sb2 = 0 and phi(0) = 0 (e.g. tanh, sw2 = 1) the fixed point is
    q* = 0 but marginal: q^l decays as a power law (q^l ~ 1/(2l) for tanh) and
    never meets ``tol``. A monotonically decreasing sequence converges to the
    largest fixed point below q0; if it is still moving after ``max_iter`` steps
    and 0 is a fixed point, that limit is taken to be 0 and 0.0 is returned.
    Raises OverflowError when q grows without bound (e.g. relu, sw2 > 2) and
    RuntimeError when the iteration neither converges nor decays to 0.
    """
    q = float(q0)
    decreasing = True
    for _ in range(max_iter):
        with np.errstate(over="ignore"):  # divergence is reported below
            q_next = float(length_map(q, sw2, sb2, activation))
        if not math.isfinite(q_next):
            raise OverflowError(f"length map diverges (sw2={sw2}, sb2={sb2}, {activation}): no finite q*")
        if abs(q_next - q) <= tol * max(1.0, q):
            return q_next
        decreasing = decreasing and q_next < q
        q = q_next
    if decreasing and float(length_map(0.0, sw2, sb2, activation)) == 0.0:
        return 0.0
    raise RuntimeError(f"length map did not converge in {max_iter} steps (last q = {q})")


def chi1(q: ArrayLike, sw2: float, activation: Activation) -> np.ndarray | float:
    """chi_1(q) = sw2 E_z[phi'(sqrt(q) z)^2]: E||dL/ds^l||^2 / ||dL/ds^{l+1}||^2 at Var[s^l] = q.

    Schoenholz et al. 2017, eq. 11; evaluated at q* it is the asymptotic factor.
    ``sw2`` is that of W^{l+1}, the weights the gradient flows back through.
    """
    _, dphi = phi_and_derivative(activation)
    return sw2 * gaussian_expectation(lambda s: dphi(s) ** 2, q)


def q_trajectory(q1: float, depth: int, sw2: float, sb2: float, activation: Activation) -> np.ndarray:
    """[q^1, ..., q^depth]: the length map iterated from q^1 = Var[s^1] (= sw2 mean(x^2) + sb2)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    q = np.empty(depth)
    q[0] = q1
    for layer in range(1, depth):
        q[layer] = length_map(q[layer - 1], sw2, sb2, activation)
    return q


def predicted_grad_norm_ratios(q1: float, depth: int, sw2: float, sb2: float,
                               activation: Activation) -> np.ndarray:
    """Predicted ||dL/ds^l|| / ||dL/ds^{l+1}|| = sqrt(chi_1(q^l)) for l = 1..depth-1.

    Entry ``l - 1`` links layer l to layer l + 1; q^l comes from ``q_trajectory``.
    Shape (depth - 1,). Square it for the squared-norm (variance) ratio.
    """
    q = q_trajectory(q1, depth, sw2, sb2, activation)
    return np.sqrt(np.asarray(chi1(q[:-1], sw2, activation)))


def predicted_grad_variance_ratio(q1: float, depth: int, sw2: float, sb2: float,
                                  activation: Activation) -> float:
    """Predicted ||dL/ds^1||^2 / ||dL/ds^depth||^2 = prod_{l=1}^{depth-1} chi_1(q^l).

    The first-to-last ratio of squared gradient norms (= of per-unit variances
    at equal widths) across a depth-layer net: depth - 1 factors, one per link.
    This is the "ratio" of claims.md: tanh, sw2 = 1.5, sb2 = 0 from q^1 = 1 at
    depth 20 gives 0.796 ("~0.80") although chi_1(q*) = 1.0406 > 1, because
    chi_1(q^l) < 1 for the first five layers while q^l relaxes from 1 to
    q* = 0.287. (The norm ratio is its square root, 0.892; twenty factors,
    as if a 21st layer were counted, would give 0.828.)
    """
    return float(np.prod(predicted_grad_norm_ratios(q1, depth, sw2, sb2, activation) ** 2))


def predicted_log_grad_norm_profile(q1: float, depth: int, sw2: float, sb2: float,
                                    activation: Activation) -> np.ndarray:
    """ln||dL/ds^l|| - ln||dL/ds^depth|| for l = 1..depth (shape (depth,), last entry 0).

    Entry l - 1 is sum_{k=l}^{depth-1} 1/2 ln chi_1(q^k): the profile a plot of
    log gradient norm against layer index should follow, pinned at the output.
    """
    log_ratios = np.log(predicted_grad_norm_ratios(q1, depth, sw2, sb2, activation))
    return np.append(np.cumsum(log_ratios[::-1])[::-1], 0.0)


def predicted_log_grad_norm_slope(sw2: float, sb2: float, activation: Activation,
                                  q: float | None = None) -> float:
    """d ln||dL/ds^l|| / dl = -1/2 ln chi_1(q), with q = q* unless given.

    The slope against the layer index l (increasing towards the output) far
    from the input: positive when gradients vanish towards the input (chi_1 < 1),
    negative when they explode. For variances double it.
    """
    if q is None:
        q = fixed_point(sw2, sb2, activation)
    return -0.5 * math.log(float(chi1(q, sw2, activation)))


def depth_scale(chi: float) -> float:
    """xi = -1/ln(chi) (Schoenholz et al. 2017): the e-folding depth of gradient variance.

    Positive in the ordered phase (chi < 1, variance decays as exp(-l/xi)),
    negative in the chaotic phase (chi > 1, it grows as exp(l/|xi|)), inf at
    chi = 1. Nets train when depth <~ 6 |xi|.
    """
    if chi <= 0:
        raise ValueError(f"chi must be positive, got {chi}")
    if chi == 1:
        return math.inf
    return -1.0 / math.log(chi)


def regime(chi: float, tol: float = 1e-8) -> str:
    """"ordered" (chi < 1, vanishing), "critical" (|chi - 1| <= tol) or "chaotic" (exploding)."""
    if abs(chi - 1) <= tol:
        return "critical"
    return "ordered" if chi < 1 else "chaotic"


def _pair_expectation(f, g, c: float, q: float, n: int = DEFAULT_NODES) -> float:
    """E[f(u1) g(u2)], (u1, u2) Gaussian, Var = q each, correlation c; product Gauss-Hermite."""
    if not -1 <= c <= 1:
        raise ValueError(f"correlation must lie in [-1, 1], got {c}")
    nodes, weights = gauss_hermite(n)
    z1, z2 = nodes[:, None], nodes[None, :]
    u1 = math.sqrt(q) * z1
    u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
    return float(weights @ (f(u1) * g(u2)) @ weights)


def correlation_map(c: float, q: float, sw2: float, sb2: float, activation: Activation) -> float:
    """c^{l+1} = (sw2 E[phi(u1) phi(u2)] + sb2) / q^{l+1} (Poole et al. 2016, eq. 5).

    Two inputs whose layer-l pre-activations both have variance q and correlation c;
    q^{l+1} = length_map(q). At q = q*, c = 1 is always a fixed point.
    """
    phi, _ = phi_and_derivative(activation)
    return (sw2 * _pair_expectation(phi, phi, c, q) + sb2) / float(length_map(q, sw2, sb2, activation))


def chi_c(c: float, q: float, sw2: float, activation: Activation) -> float:
    """sw2 E[phi'(u1) phi'(u2)]: the slope d c^{l+1} / d c^l of the correlation map at q = q*.

    By Price's theorem (Poole et al. 2016, eq. 7); at c = 1 it equals chi_1(q).
    """
    _, dphi = phi_and_derivative(activation)
    return sw2 * _pair_expectation(dphi, dphi, c, q)
