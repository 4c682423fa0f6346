"""Per-layer diagnostics: what vanishing, exploding and saturating look like in numbers.

Inputs are per-layer lists of arrays, layer l = 1..L (1 next to the input),
from one forward and backward pass; numpy or torch, converted here.
"""

from __future__ import annotations

import numpy as np

from testbed.engine.backend import to_numpy

# Saturation of a unit's activation a = phi(s), per Glorot & Bengio 2010 (sigmoid near 0 or 1,
# tanh near +-1); for rectifier-like units the fraction of dead units (zero on the whole batch).
SATURATING = {"tanh": 0.97, "softsign": 0.97}
RECTIFIERS = ("relu", "leaky_relu", "elu", "selu", "gelu", "gelu_tanh", "silu", "softplus")


def saturation(activation: str, a: np.ndarray, s: np.ndarray) -> float:
    """Fraction of saturated (tanh, softsign, sigmoid) or dead (rectifiers) units."""
    if activation in SATURATING:
        return float(np.mean(np.abs(a) > SATURATING[activation]))
    if activation == "sigmoid":
        return float(np.mean((a < 0.03) | (a > 0.97)))
    if activation in RECTIFIERS:
        return float(np.mean(np.all(s.reshape(-1, s.shape[-1]) <= 0, axis=0)))
    return 0.0


def _norm(x) -> float:
    return float(np.linalg.norm(to_numpy(x).astype(np.float64).ravel()))


def layer_metrics(activation: str, pre_activations: list, activations: list, weight_grads: list,
                  pre_activation_grads: list, weights: list, updates: list | None = None) -> dict:
    """Metrics keyed ``name/L{l}``.

    grad_norm/W: ||dL/dW^l||; grad_norm/s: ||dL/ds^l|| (the backpropagated signal);
    act/mean, act/std, act/saturation: of a^l (the output s^L for l = L);
    preact/std: of s^l; update_ratio: ||Delta W^l|| / ||W^l|| of the step just taken.
    """
    metrics: dict[str, float] = {}
    num_layers = len(weights)
    for layer in range(1, num_layers + 1):
        s = to_numpy(pre_activations[layer - 1]).astype(np.float64)
        hidden = layer < num_layers
        a = to_numpy(activations[layer - 1]).astype(np.float64) if hidden else s
        tag = f"L{layer}"
        metrics[f"grad_norm/W/{tag}"] = _norm(weight_grads[layer - 1])
        metrics[f"grad_norm/s/{tag}"] = _norm(pre_activation_grads[layer - 1])
        metrics[f"act/mean/{tag}"] = float(a.mean())
        metrics[f"act/std/{tag}"] = float(a.std())
        metrics[f"act/saturation/{tag}"] = saturation(activation, a, s) if hidden else 0.0
        metrics[f"preact/std/{tag}"] = float(s.std())
        if updates is not None:
            metrics[f"update_ratio/{tag}"] = _norm(updates[layer - 1]) / max(_norm(weights[layer - 1]),
                                                                             1e-30)
    return metrics


def per_layer(metrics_rows: list[dict], key: str, num_layers: int) -> np.ndarray:
    """A (layers x rows) matrix of ``key/L{l}`` from logged rows (NaN where missing)."""
    return np.array([[row.get(f"{key}/L{layer}", np.nan) for row in metrics_rows]
                     for layer in range(1, num_layers + 1)], dtype=float)
