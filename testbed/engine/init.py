"""Weight and bias initialisers.

Each draws a (fan_out, fan_in) float64 numpy array from a seeded
``numpy.random.Generator`` (so the numpy and torch backends, and the torch
reference, start from bit-identical weights) and multiplies it by ``scale``,
the knob that moves a net into the exploding regime (std -> scale * std).
Biases are zero unless asked otherwise; the papers use zero biases.
"""

from __future__ import annotations

import math

import numpy as np

KAIMING_GAIN = {"relu": math.sqrt(2.0), "linear": 1.0, "tanh": 5.0 / 3, "sigmoid": 1.0,
                "selu": 0.75}


def zeros(rng, fan_out, fan_in):
    return np.zeros((fan_out, fan_in))


def constant(rng, fan_out, fan_in, value: float = 0.1):
    return np.full((fan_out, fan_in), float(value))


def normal(rng, fan_out, fan_in, std: float = 0.01):
    return rng.normal(0.0, std, size=(fan_out, fan_in))


def uniform(rng, fan_out, fan_in, a: float = 0.05):
    return rng.uniform(-a, a, size=(fan_out, fan_in))


def standard(rng, fan_out, fan_in):
    """Glorot & Bengio's "standard" init, W ~ U[-1/sqrt(fan_in), 1/sqrt(fan_in)] (n Var W = 1/3)."""
    return uniform(rng, fan_out, fan_in, a=1.0 / math.sqrt(fan_in))


def xavier_uniform(rng, fan_out, fan_in, gain: float = 1.0):
    """Glorot & Bengio 2010 eq. 16, "normalized": U[-a, a], a = gain sqrt(6 / (fan_in + fan_out))."""
    return uniform(rng, fan_out, fan_in, a=gain * math.sqrt(6.0 / (fan_in + fan_out)))


def xavier_normal(rng, fan_out, fan_in, gain: float = 1.0):
    return normal(rng, fan_out, fan_in, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(fan_out, fan_in, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming mode {mode!r} is not one of ('fan_in', 'fan_out')")
    if nonlinearity not in KAIMING_GAIN:
        raise ValueError(f"kaiming nonlinearity {nonlinearity!r} is not one of {sorted(KAIMING_GAIN)}")
    fan = fan_in if mode == "fan_in" else fan_out
    return KAIMING_GAIN[nonlinearity] / math.sqrt(fan)


def kaiming_normal(rng, fan_out, fan_in, mode: str = "fan_in", nonlinearity: str = "relu"):
    """He et al. 2015: std = gain / sqrt(fan), gain sqrt(2) for relu.

    From Var[y_l] = 1/2 n_l Var[w_l] Var[y_{l-1}]: n_l Var[w_l] = 2 keeps the variance constant.
    """
    return normal(rng, fan_out, fan_in, std=_kaiming_std(fan_out, fan_in, mode, nonlinearity))


def kaiming_uniform(rng, fan_out, fan_in, mode: str = "fan_in", nonlinearity: str = "relu"):
    bound = math.sqrt(3.0) * _kaiming_std(fan_out, fan_in, mode, nonlinearity)
    return uniform(rng, fan_out, fan_in, a=bound)


def lecun_normal(rng, fan_out, fan_in):
    """LeCun et al. 1998: std = 1/sqrt(fan_in) (SELU's init)."""
    return normal(rng, fan_out, fan_in, std=1.0 / math.sqrt(fan_in))


def orthogonal(rng, fan_out, fan_in, gain: float = 1.0):
    """Saxe et al. 2013: a random (semi-)orthogonal matrix, as torch.nn.init.orthogonal_."""
    rows, cols = fan_out, fan_in
    flat = rng.normal(size=(rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))  # makes the draw uniform over the orthogonal group
    if rows < cols:
        q = q.T
    return gain * q


WEIGHT_INITS = {
    "zeros": zeros, "constant": constant, "normal": normal, "uniform": uniform,
    "standard": standard, "xavier_uniform": xavier_uniform, "xavier_normal": xavier_normal,
    "kaiming_uniform": kaiming_uniform, "kaiming_normal": kaiming_normal,
    "lecun_normal": lecun_normal, "orthogonal": orthogonal,
}
ALIASES = {"glorot_uniform": "xavier_uniform", "glorot_normal": "xavier_normal",
           "he_uniform": "kaiming_uniform", "he_normal": "kaiming_normal", "xavier": "xavier_uniform",
           "he": "kaiming_normal"}
BIAS_INITS = ("zeros", "normal", "standard")


def init_weight(name: str, rng: np.random.Generator, fan_out: int, fan_in: int,
                scale: float = 1.0, **params) -> np.ndarray:
    """A (fan_out, fan_in) weight drawn by initialiser ``name``, times ``scale``."""
    name = ALIASES.get(name, name)
    if name not in WEIGHT_INITS:
        raise ValueError(f"unknown init {name!r}; allowed: {sorted(WEIGHT_INITS) + sorted(ALIASES)}")
    return scale * WEIGHT_INITS[name](rng, fan_out, fan_in, **params)


def init_bias(name: str, rng: np.random.Generator, fan_out: int, fan_in: int,
              std: float = 0.0) -> np.ndarray:
    """A (fan_out,) bias: ``zeros``, ``normal`` (std), or ``standard``
    U[-1/sqrt(fan_in), +1/sqrt(fan_in)] (torch's default bias init)."""
    if name == "zeros":
        return np.zeros(fan_out)
    if name == "normal":
        return rng.normal(0.0, std, size=fan_out)
    if name == "standard":
        bound = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=fan_out)
    raise ValueError(f"unknown bias init {name!r}; allowed: {list(BIAS_INITS)}")
