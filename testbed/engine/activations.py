"""Activation functions as forward/backward pairs.

``forward(s)`` maps pre-activations ``s`` to activations and returns
``(a, cache)``; ``backward(da, cache)`` returns dL/ds = da * phi'(s). Any
shape. At kinks the derivative follows torch's convention (relu'(0) = 0,
leaky_relu'(0) = slope, elu'(0) = alpha) so that the engine equals autograd
exactly there too.
"""

from __future__ import annotations

import math

from testbed.engine.backend import namespace


class Activation:
    name = "activation"

    def forward(self, s):
        raise NotImplementedError

    def backward(self, da, cache):
        raise NotImplementedError

    def __call__(self, s):
        return self.forward(s)[0]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class Identity(Activation):
    name = "identity"

    def forward(self, s):
        return s, None

    def backward(self, da, cache):
        return da


class Sigmoid(Activation):
    name = "sigmoid"

    def forward(self, s):
        a = namespace(s).sigmoid(s)
        return a, a

    def backward(self, da, a):
        return da * a * (1 - a)  # sigma' = sigma (1 - sigma)


class Tanh(Activation):
    name = "tanh"

    def forward(self, s):
        a = namespace(s).tanh(s)
        return a, a

    def backward(self, da, a):
        return da * (1 - a * a)  # tanh' = 1 - tanh^2


class ReLU(Activation):
    name = "relu"

    def forward(self, s):
        a = namespace(s).relu(s)
        return a, a

    def backward(self, da, a):
        # relu'(s) = [s > 0] = sign(relu(s)): 0 at s = 0, as torch; multiplied by da in place, one
        # temporary (a where() with a scalar, or a bool mask, costs 5-10x more on torch CPU)
        ds = namespace(a).sign(a)
        ds *= da
        return ds


class LeakyReLU(Activation):
    name = "leaky_relu"

    def __init__(self, slope: float = 0.01):
        self.slope = slope

    def forward(self, s):
        return namespace(s).where(s > 0, s, s * self.slope), s

    def backward(self, da, s):
        return namespace(s).where(s > 0, da, da * self.slope)


class ELU(Activation):
    name = "elu"

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def forward(self, s):
        xp = namespace(s)
        # min(s, 0) keeps the branch where() discards finite
        negative = self.alpha * xp.expm1(xp.minimum(s, 0.0))
        return xp.where(s > 0, s, negative), s

    def backward(self, da, s):
        xp = namespace(s)
        return xp.where(s > 0, da, da * self.alpha * xp.exp(xp.minimum(s, 0.0)))


class SELU(Activation):
    """Klambauer et al. 2017: scale * elu(s, alpha) with the self-normalising constants."""

    name = "selu"
    alpha = 1.6732632423543772848170429916717
    scale = 1.0507009873554804934193349852946

    def forward(self, s):
        xp = namespace(s)
        negative = self.alpha * xp.expm1(xp.minimum(s, 0.0))
        return self.scale * xp.where(s > 0, s, negative), s

    def backward(self, da, s):
        xp = namespace(s)
        return self.scale * xp.where(s > 0, da, da * self.alpha * xp.exp(xp.minimum(s, 0.0)))


class GELU(Activation):
    """Hendrycks & Gimpel 2016: s Phi(s), exact (erf) or the tanh approximation."""

    name = "gelu"

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu approximate={approximate!r} is not one of ('none', 'tanh')")
        self.approximate = approximate

    _SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
    _KAPPA = 0.044715

    def forward(self, s):
        xp = namespace(s)
        if self.approximate == "tanh":
            inner = self._SQRT_2_OVER_PI * (s + self._KAPPA * s * s * s)
            t = xp.tanh(inner)
            return 0.5 * s * (1 + t), (s, t)
        cdf = 0.5 * (1 + xp.erf(s * math.sqrt(0.5)))
        return s * cdf, (s, cdf)

    def backward(self, da, cache):
        xp = namespace(da)
        s, t_or_cdf = cache
        if self.approximate == "tanh":
            t = t_or_cdf  # d/ds = (1 + t)/2 + s/2 (1 - t^2) sqrt(2/pi) (1 + 3 kappa s^2)
            inner_grad = self._SQRT_2_OVER_PI * (1 + 3 * self._KAPPA * s * s)
            return da * (0.5 * (1 + t) + 0.5 * s * (1 - t * t) * inner_grad)
        pdf = xp.exp(-0.5 * s * s) / math.sqrt(2 * math.pi)
        return da * (t_or_cdf + s * pdf)  # d/ds s Phi(s) = Phi(s) + s phi(s)


class SiLU(Activation):
    """Swish-1 (Ramachandran et al. 2017; Elfwing et al. 2018): s sigma(s)."""

    name = "silu"

    def forward(self, s):
        sig = namespace(s).sigmoid(s)
        return s * sig, (s, sig)

    def backward(self, da, cache):
        s, sig = cache
        return da * sig * (1 + s * (1 - sig))  # d/ds s sigma(s) = sigma (1 + s (1 - sigma))


class Softplus(Activation):
    """log(1 + exp(beta s)) / beta; linear above beta s > threshold, as torch."""

    name = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        self.beta = beta
        self.threshold = threshold

    def forward(self, s):
        xp = namespace(s)
        z = s * self.beta
        soft = xp.log1p(xp.exp(xp.minimum(z, self.threshold))) / self.beta
        return xp.where(z > self.threshold, s, soft), z

    def backward(self, da, z):
        xp = namespace(z)
        return xp.where(z > self.threshold, da, da * xp.sigmoid(z))  # softplus' = sigma(beta s)


class Softsign(Activation):
    name = "softsign"

    def forward(self, s):
        denominator = 1 + namespace(s).abs(s)
        return s / denominator, denominator

    def backward(self, da, denominator):
        return da / (denominator * denominator)  # d/ds s/(1+|s|) = 1/(1+|s|)^2


ACTIVATIONS = {
    cls.name: cls
    for cls in (Identity, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, SELU, GELU, SiLU, Softplus, Softsign)
}


def get_activation(name: str, **params) -> Activation:
    """An activation by name; ``gelu_tanh`` is gelu with the tanh approximation."""
    if name == "gelu_tanh":
        return GELU(approximate="tanh")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS) + ['gelu_tanh']}")
    return ACTIVATIONS[name](**params)
