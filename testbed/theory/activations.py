"""Activations phi and their derivatives phi' as plain numpy functions, for the theory.

The same names as the engine (``testbed.engine.activations``) with the same
defaults and the same convention at kinks (relu'(0) = 0, leaky_relu'(0) =
slope, elu'(0) = alpha), written again here so that the theory depends on
numpy/scipy only and not on the engine it is used to check. Extra names:
``linear`` (= identity), ``gelu_tanh`` and ``erf`` (phi = erf(s), the
activation with closed-form mean-field maps used in the literature).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import special

ArrayFn = Callable[[np.ndarray], np.ndarray]

LEAKY_RELU_SLOPE = 0.01  # torch's default negative_slope
ELU_ALPHA = 1.0
SELU_ALPHA = 1.6732632423543772848170429916717  # Klambauer et al. 2017
SELU_SCALE = 1.0507009873554804934193349852946
SOFTPLUS_THRESHOLD = 20.0  # softplus is linear above it, as torch (beta = 1)
_GELU_KAPPA = 0.044715
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _identity(s):
    return np.asarray(s, dtype=float)


def _one(s):
    return np.ones_like(s, dtype=float)


def _dsigmoid(s):
    sig = special.expit(s)
    return sig * (1 - sig)  # sigma' = sigma (1 - sigma)


def _dtanh(s):
    return 1 - np.tanh(s) ** 2  # tanh' = 1 - tanh^2


def _relu(s):
    return np.maximum(s, 0.0)


def _drelu(s):
    return np.where(s > 0, 1.0, 0.0)  # relu'(0) = 0, as torch


def _leaky_relu(s):
    return np.where(s > 0, s, LEAKY_RELU_SLOPE * s)


def _dleaky_relu(s):
    return np.where(s > 0, 1.0, LEAKY_RELU_SLOPE)


def _elu(s):
    return np.where(s > 0, s, ELU_ALPHA * np.expm1(np.minimum(s, 0.0)))


def _delu(s):
    return np.where(s > 0, 1.0, ELU_ALPHA * np.exp(np.minimum(s, 0.0)))


def _selu(s):
    return SELU_SCALE * np.where(s > 0, s, SELU_ALPHA * np.expm1(np.minimum(s, 0.0)))


def _dselu(s):
    return SELU_SCALE * np.where(s > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(s, 0.0)))


def _gelu(s):
    return s * special.ndtr(s)  # s Phi(s)


def _dgelu(s):
    return special.ndtr(s) + s * np.exp(-0.5 * s * s) / math.sqrt(2 * math.pi)  # Phi(s) + s phi(s)


def _gelu_tanh(s):
    return 0.5 * s * (1 + np.tanh(_SQRT_2_OVER_PI * (s + _GELU_KAPPA * s**3)))


def _dgelu_tanh(s):
    t = np.tanh(_SQRT_2_OVER_PI * (s + _GELU_KAPPA * s**3))
    return 0.5 * (1 + t) + 0.5 * s * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_KAPPA * s * s)


def _silu(s):
    return s * special.expit(s)


def _dsilu(s):
    sig = special.expit(s)
    return sig * (1 + s * (1 - sig))  # d/ds s sigma(s) = sigma (1 + s (1 - sigma))


def _softplus(s):
    return np.where(s > SOFTPLUS_THRESHOLD, s, np.log1p(np.exp(np.minimum(s, SOFTPLUS_THRESHOLD))))


def _dsoftplus(s):
    return np.where(s > SOFTPLUS_THRESHOLD, 1.0, special.expit(s))  # softplus' = sigma


def _softsign(s):
    return s / (1 + np.abs(s))


def _dsoftsign(s):
    return 1 / (1 + np.abs(s)) ** 2  # d/ds s/(1+|s|) = 1/(1+|s|)^2


def _derf(s):
    return 2 / math.sqrt(math.pi) * np.exp(-s * s)


ACTIVATIONS: dict[str, tuple[ArrayFn, ArrayFn]] = {
    "identity": (_identity, _one),
    "linear": (_identity, _one),
    "sigmoid": (special.expit, _dsigmoid),
    "tanh": (np.tanh, _dtanh),
    "relu": (_relu, _drelu),
    "leaky_relu": (_leaky_relu, _dleaky_relu),
    "elu": (_elu, _delu),
    "selu": (_selu, _dselu),
    "gelu": (_gelu, _dgelu),
    "gelu_tanh": (_gelu_tanh, _dgelu_tanh),
    "silu": (_silu, _dsilu),
    "softplus": (_softplus, _dsoftplus),
    "softsign": (_softsign, _dsoftsign),
    "erf": (special.erf, _derf),
}

Activation = str | tuple[ArrayFn, ArrayFn]


def phi_and_derivative(activation: Activation) -> tuple[ArrayFn, ArrayFn]:
    """``(phi, phi')`` for an activation name, or a ``(phi, phi')`` pair passed through."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[activation]
    phi, dphi = activation
    return phi, dphi
