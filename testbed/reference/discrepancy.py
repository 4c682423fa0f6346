"""How far the engine and torch may differ by rounding alone: an error bound for every gradient.

The plain relative error ||a - b|| / ||b|| of a gradient divides rounding noise by the gradient's
norm. Where the gradient is a sum that cancels (a signal that has vanished, a loss on its plateau
at ln 2), ||b|| is tiny and the ratio large although both sides are right to the last bits their
arithmetic allows. What rounding can do depends on the magnitudes that *enter* a gradient, not on
the size of the result. Backward computes, with dS^l = dL/ds^l and a^0 = x,

    dS^L = dL/ds^L,   dS^l = (dS^{l+1} W^{l+1}) * phi'(s^l),   dW^l = dS^l^T a^{l-1},   db^l = 1^T dS^l,

and in floating point with unit roundoff u every product and sum is off by at most u times the
sum of the absolute values of its terms (to first order; the standard model, Higham 2002, Secs.
2.2 and 3.1). Carried through the whole step on absolute values, which no cancellation can shrink
(``gradient_error_bounds``: forward's rounding too, as it moves phi'(s) and the loss gradient),
this bounds what one implementation's gradient can be off by from the exact one. Two correct
implementations then differ by at most twice the bound, whatever the cancellation, and
``bound_ratio`` reads ||a - b|| / (2 x bound): at most 1 for a correct engine (in practice far
below: the bound adds every rounding's worst case), and far above for a wrong derivative.

The bound is a worst case: layer after layer it multiplies |W|, where the signal multiplies W with
its cancelling signs, so in a deep net it can exceed the actual rounding by orders of magnitude.
The extended-precision oracle (``Backend("numpy", "longdouble")``; tests/test_discrepancy.py)
measures each side's actual error against the exact gradient, and checks the bound holds.
"""

from __future__ import annotations

import math

import numpy as np

from testbed.engine import MLP, MLPSpec
from testbed.engine.backend import namespace, to_numpy

LOSS_ROUNDINGS = 8        # the loss gradient: log-softmax, exp, the label's subtraction, / N
ROUNDING_MODELS = ("bce_with_logits", "cross_entropy", "logistic_sum_squared_error", "mse")
ACTIVATION_ROUNDINGS = 4  # phi(s) and phi'(s): a library function within a few ulps, or a short formula


def unit_roundoff(dtype) -> float:
    """u = 2^-53 for float64, 2^-24 for float32: the largest relative error of one rounding."""
    return float(np.finfo(np.dtype(str(dtype).removeprefix("torch."))).eps) / 2


def loss_gradient_magnitude(loss: str, output, target):
    """G >= |dL/ds^L| elementwise, with room for what rounding of its computation can move it by:
    per element, the magnitudes the gradient is a difference of (softmax(z) and onehot(y); sigmoid
    and y; output and y), the probabilities weighted by 1 + |logits| (an exp's argument off by
    u |z| moves its result by u |z| relative)."""
    xp = namespace(output)
    if loss == "cross_entropy":
        logits = xp.abs(output)
        magnitude = xp.exp(xp.log_softmax(output)) * (1 + logits + xp.max(logits, axis=-1, keepdims=True))
        xp.add_at_label_(magnitude, target, 1.0)  # + onehot(y)
        return magnitude / float(output.shape[-2])
    count = float(output.shape[-1] * output.shape[-2])
    if loss == "bce_with_logits":
        return (xp.sigmoid(output) * (1 + xp.abs(output)) + xp.abs(target)) / count
    if loss == "mse":
        return (xp.abs(output) + xp.abs(target)) * (2 / count)
    if loss == "logistic_sum_squared_error":  # (o - y) o (1 - o), o = sigma(z): 1 - o is off by u o
        out = xp.sigmoid(output)
        return out * ((out + xp.abs(target)) * (1 - out) + out * xp.abs(out - target))
    raise ValueError(f"no rounding model for loss {loss!r}; allowed: {', '.join(ROUNDING_MODELS)}")


def loss_gradient_sensitivity(loss: str, output, target, output_error):
    """>= |change of dL/ds^L| when the output moves by up to ``output_error`` elementwise (first
    order): softmax moves by p_i (e_i + sum_j p_j e_j), sigmoid by sigma (1 - sigma) e."""
    xp = namespace(output)
    if loss == "cross_entropy":
        probs = xp.exp(xp.log_softmax(output))
        spread = output_error + xp.sum(probs * output_error, axis=-1, keepdims=True)
        return probs * spread / float(output.shape[-2])
    count = float(output.shape[-1] * output.shape[-2])
    if loss == "bce_with_logits":
        sigma = xp.sigmoid(output)
        return sigma * (1 - sigma) * output_error / count
    if loss == "logistic_sum_squared_error":  # d/dz (o - y) o (1 - o) = o'(o' + (o - y)(1 - 2 o))
        out = xp.sigmoid(output)
        slope = out * (1 - out)
        return slope * (slope + xp.abs(out - target) * xp.abs(1 - 2 * out)) * output_error
    return output_error * (2 / count)


def gradient_error_bounds(spec: MLPSpec, params: dict, x, target) -> dict:
    """The bound on one implementation's rounding error in every parameter gradient at ``params``
    on the minibatch (x, target): {"W1": ||E_W1||, "b1": ..., "bL": ...}, Frobenius norms of the
    elementwise bounds, as floats (or, with leading replica axes, arrays of one per replica).

    A running error analysis (Higham 2002, Sec. 3.3) of forward and backward, to first order in
    u, carried on absolute values in the arrays' own backend and dtype:
      forward   F^l  >= |error of s^l|:  F^l = (n u |a^{l-1}| + Phi^{l-1}) |W^l|^T + n u |b^l|,
                Phi^l >= |error of a^l| = F^l |phi'(s^l)| + r u |a^l|   (Phi^0 = 0: x is exact);
      backward  B^l >= |dS^l|, E^l >= |error of dS^l|:  B^L = G, E^L = r u G + (softmax's change by F^L),
                P = B^{l+1} |W^{l+1}|,  B^l = P |phi'(s^l)|,
                E^l = (E^{l+1} |W^{l+1}| + n u P) |phi'(s^l)|
                      + P (|phi'(s^l +- F^l) - phi'(s^l)| + r u |phi'(s^l)|);
      gradients |error of dW^l| <= (N u B^l + E^l)^T |a^{l-1}| + B^l^T Phi^{l-1}, db^l alike,
    with n each sum's length, r the few roundings of an activation or the loss, N the batch. The
    change of phi' over s +- F^l stands in for phi'' F^l, and holds where a ReLU's input may round
    across 0. A forward pass, then five matrix products per layer (one for F, two for P and E, two
    for the gradients' bounds): for logged steps.
    """
    xp = namespace(x)
    net = MLP(spec, params)
    net.forward(x)
    s_all = net.pre_activations
    activation = net.activation
    u = unit_roundoff(x.dtype)
    sizes, num_layers, batch = spec.layer_sizes, spec.num_layers, x.shape[-2]

    def derivative(s):
        return xp.abs(activation.backward(xp.ones_like(s), activation.forward(s)[1]))

    # forward: |a^l|, |phi'(s^l)| and Phi^l (a^0 = x, exact), F^l for every layer
    magnitudes, slopes, a_errors, s_errors = [xp.abs(x)], [], [xp.zeros_like(x)], []
    for layer in range(1, num_layers + 1):
        weight, bias = xp.abs(params[f"W{layer}"]), xp.abs(params[f"b{layer}"])[..., None, :]
        n = (sizes[layer - 1] + 1) * u
        s_error = (magnitudes[-1] * n + a_errors[-1]) @ weight.mT + bias * n
        s_errors.append(s_error)
        if layer < num_layers:
            a = xp.abs(net.activations[layer - 1])
            magnitudes.append(a)
            slopes.append(derivative(s_all[layer - 1]))
            a_errors.append(s_error * slopes[-1] + a * (ACTIVATION_ROUNDINGS * u))

    output = s_all[-1]
    magnitude = loss_gradient_magnitude(spec.loss, output, target)  # B^L
    error = (magnitude * (LOSS_ROUNDINGS * u)
             + loss_gradient_sensitivity(spec.loss, output, target, s_errors[-1]))
    bounds = {}
    for layer in range(num_layers, 0, -1):
        a, a_error = magnitudes[layer - 1], a_errors[layer - 1]
        weight_bound = (magnitude * (batch * u) + error).mT @ a + magnitude.mT @ a_error
        bias_bound = xp.sum(magnitude * (batch * u) + error, axis=-2)
        bounds[f"W{layer}"] = _frobenius(weight_bound, 2)
        bounds[f"b{layer}"] = _frobenius(bias_bound, 1)
        if layer > 1:
            s, s_error, slope = s_all[layer - 2], s_errors[layer - 2], slopes[layer - 2]
            slope_change = xp.maximum(xp.abs(derivative(s + s_error) - slope),
                                      xp.abs(derivative(s - s_error) - slope))
            weight = xp.abs(params[f"W{layer}"])
            incoming = magnitude @ weight  # P >= |dL/da^{l-1}|
            error = ((error @ weight + incoming * ((sizes[layer] + 1) * u)) * slope
                     + incoming * (slope_change + slope * (ACTIVATION_ROUNDINGS * u)))
            magnitude = incoming * slope  # B^{l-1}
    return {key: bounds[key] for key in spec.param_keys()}


def clipped_bounds(bounds: dict, grads: dict, total_norm, max_norm: float) -> dict:
    """The bounds of gradients that were then clipped by their global norm (``clip_grad_norm``):
    g -> c g, c = min(1, max_norm / (||g|| + 1e-6)). ``grads``: the clipped gradients; ``total_norm``:
    ||g|| before clipping (per replica with leading axes). Where clipping acted, a bound scales by c
    and gains c |dc/c| ||g_p||, the clipping factor's own error: |dc/c| <= ||E|| / ||g|| + (P + 4) u,
    with E the bounds of all P gradient elements (a norm of gradients off by E is off by <= ||E||)."""
    total_norm = to_numpy(total_norm).astype(np.float64)
    scale = np.minimum(max_norm / (total_norm + 1e-6), 1.0)
    if np.all(scale == 1.0):
        return bounds
    replicas = scale.ndim
    u = unit_roundoff(next(iter(grads.values())).dtype)
    count = sum(int(np.prod(g.shape[replicas:])) for g in grads.values())
    total_bound = np.sqrt(sum(np.square(b) for b in bounds.values()))
    factor_error = total_bound / np.maximum(total_norm, 1e-300) + (count + 4) * u
    clipped = {}
    for key, bound in bounds.items():
        grad = to_numpy(grads[key]).astype(np.float64)
        raw_norm = np.sqrt(np.sum(grad * grad, axis=tuple(range(replicas, grad.ndim)))) / scale + bound
        value = np.where(scale < 1.0, scale * (bound + factor_error * raw_norm), bound)
        clipped[key] = float(value) if value.ndim == 0 else value
    return clipped


def bound_ratio(manual: dict, reference: dict, bounds: dict, clip_norm: float | None = None,
                total_norm=None) -> float:
    """max over parameters of ||manual - reference|| / (2 x bound): two implementations, each within
    its bound, read <= 1. With ``clip_norm`` the gradients compared were clipped by their global norm,
    ``total_norm`` before clipping (``clipped_bounds``). A bound of 0 (nothing entered the gradient)
    with equal gradients reads 0; anything not finite, nan."""
    if clip_norm is not None:
        bounds = clipped_bounds(bounds, manual, total_norm, clip_norm)
    worst = 0.0
    for key, bound in bounds.items():
        difference = float(np.linalg.norm(to_numpy(manual[key]).astype(np.float64)
                                          - to_numpy(reference[key]).astype(np.float64)))
        if not math.isfinite(difference) or not math.isfinite(bound):
            return math.nan  # a gradient or its bound overflowed: nothing to say
        if difference:
            worst = max(worst, difference / (2 * float(bound)) if bound else math.inf)
    return worst


def _frobenius(bound, own_ndim: int):
    """The Frobenius norm over the last ``own_ndim`` axes, in float64: a float, or an array per
    replica with leading axes."""
    values = to_numpy(bound).astype(np.float64)
    norms = np.sqrt(np.sum(values * values, axis=tuple(range(values.ndim - own_ndim, values.ndim))))
    return float(norms) if norms.ndim == 0 else norms
