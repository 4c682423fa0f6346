"""Post-hoc analyses of trained (or freshly initialised) networks, all through the hand-written engine.

- ``end_to_end_jacobian``: d output / d input at a point, one backward pass per output unit
  (the engine's input gradient with a one-hot upstream gradient);
- ``hessian_vector_product`` and ``power_iteration``: the top Hessian eigenvalue (sharpness, Keskar
  et al. 2017) from central finite differences of the hand-written gradient,
  Hv ~ (g(theta + e v) - g(theta - e v)) / 2e, no second-order code anywhere;
- ``loss_along_line``: the loss on theta(a) = (1 - a) theta_0 + a theta_1 (Goodfellow et al. 2015);
- ``maximise_activation``: gradient ascent on the input of a unit's activation on a sphere
  (Erhan et al. 2009), through the engine's dL/dx.

Everything here runs in float64 on the numpy backend unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from testbed.engine import MLP, Backend, MLPSpec, to_numpy

NUMPY64 = Backend("numpy", "float64")


# ---------------------------------------------------------------- parameters as one vector
def flatten(params: dict, keys: list[str]) -> np.ndarray:
    """The parameters ``keys`` concatenated into one float64 vector."""
    return np.concatenate([np.asarray(params[k], dtype=np.float64).ravel() for k in keys])


def unflatten(vector: np.ndarray, like: dict, keys: list[str]) -> dict[str, np.ndarray]:
    """The inverse of ``flatten``: a dict of arrays shaped like ``like``."""
    out, start = {}, 0
    for k in keys:
        shape = np.shape(like[k])
        size = int(np.prod(shape))
        out[k] = vector[start:start + size].reshape(shape).copy()
        start += size
    return out


def network(spec: MLPSpec, params: dict, backend: Backend = NUMPY64) -> MLP:
    """An engine MLP holding a copy of ``params`` on ``backend``."""
    return MLP(spec, {k: backend.asarray(v) for k, v in params.items()})


def _targets(spec: MLPSpec, y, backend: Backend):
    return backend.labels(y) if spec.loss == "cross_entropy" else backend.asarray(y)


def gradient_function(spec: MLPSpec, params: dict, x: np.ndarray, y: np.ndarray
                      ) -> tuple[np.ndarray, Callable[[np.ndarray], tuple[float, np.ndarray]]]:
    """(theta, f) with f(theta) = (loss, dloss/dtheta) of the full batch (x, y), by the engine."""
    keys = spec.param_keys()
    net = network(spec, params)
    xb, yb = NUMPY64.asarray(x), _targets(spec, y, NUMPY64)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        net.params = unflatten(theta, params, keys)
        loss, grads = net.loss_and_grads(xb, yb)
        return float(loss), flatten(grads, keys)

    return flatten(params, keys), loss_and_grad


# ---------------------------------------------------------------- curvature
def hessian_vector_product(grad: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, v: np.ndarray,
                           eps: float = 1e-4) -> np.ndarray:
    """Hv by central differences of the gradient: (g(theta + e u) - g(theta - e u)) / 2e * ||v||,
    u = v / ||v|| (the step has length eps whatever the size of v); error O(eps^2) + O(rounding/eps)."""
    norm = float(np.linalg.norm(v))
    if norm == 0:
        return np.zeros_like(theta)
    u = v / norm
    return (grad(theta + eps * u) - grad(theta - eps * u)) / (2 * eps) * norm


def power_iteration(matvec: Callable[[np.ndarray], np.ndarray], dim: int, iters: int = 100,
                    tol: float = 1e-4, seed: int = 0) -> tuple[float, np.ndarray, int]:
    """The eigenvalue of largest magnitude of a symmetric operator, by the power method.

    Returns (Rayleigh quotient v.Av, unit eigenvector v, iterations used); stops when the
    eigenvalue changes by less than ``tol`` relatively between two iterations.
    """
    v = np.random.default_rng(seed).standard_normal(dim)
    v /= np.linalg.norm(v)
    eigenvalue = 0.0
    for i in range(1, iters + 1):
        w = matvec(v)
        new = float(v @ w)
        norm = float(np.linalg.norm(w))
        if norm == 0:
            return 0.0, v, i
        v = w / norm
        if i > 1 and abs(new - eigenvalue) <= tol * max(abs(new), 1e-12):
            return new, v, i
        eigenvalue = new
    return eigenvalue, v, iters


def top_hessian_eigenvalue(spec: MLPSpec, params: dict, x: np.ndarray, y: np.ndarray,
                           iters: int = 100, tol: float = 1e-4, eps: float = 1e-4,
                           seed: int = 0) -> tuple[float, int]:
    """Sharpness: the top eigenvalue of the Hessian of the full-batch loss at ``params``
    (power iteration on finite-difference Hv of the hand-written gradient). At a minimum the
    eigenvalue of largest magnitude is the largest positive one. Returns (eigenvalue, iterations)."""
    theta, loss_and_grad = gradient_function(spec, params, x, y)

    def grad(t):
        return loss_and_grad(t)[1]

    value, _, used = power_iteration(lambda v: hessian_vector_product(grad, theta, v, eps),
                                     theta.size, iters, tol, seed)
    return value, used


# ---------------------------------------------------------------- the straight line
def loss_along_line(spec: MLPSpec, start: dict, end: dict, alphas, x: np.ndarray, y: np.ndarray
                    ) -> np.ndarray:
    """Loss of the full batch (x, y) at theta(a) = (1 - a) start + a end, for each a in ``alphas``."""
    keys = spec.param_keys()
    xb, yb = NUMPY64.asarray(x), _targets(spec, y, NUMPY64)
    losses = []
    for a in alphas:
        params = {k: (1 - a) * np.asarray(start[k], dtype=np.float64) + a * np.asarray(end[k], np.float64)
                  for k in keys}
        losses.append(float(network(spec, params).loss(xb, yb)))
    return np.array(losses)


def largest_rise(values: np.ndarray) -> float:
    """The largest increase along a sequence after any earlier point: max_{i<j} values[j] - values[i]
    (0 for a non-increasing sequence). On a loss path it is the height of the worst barrier."""
    values = np.asarray(values, dtype=np.float64)
    running_min = np.minimum.accumulate(values)
    return float(max(0.0, np.max(values - running_min)))


# ---------------------------------------------------------------- input gradients
def end_to_end_jacobian(net: MLP, x0) -> np.ndarray:
    """d output / d input at the point ``x0`` (in_features,): a (out_features, in_features) matrix.

    Row k is the engine's input gradient for the upstream gradient e_k: the K rows of a batch of K
    copies of x0 are independent, so one backward with the identity as dL/d(output) gives J.
    """
    backend = _backend_of(net)
    k = net.spec.out_features
    x = backend.asarray(np.tile(np.asarray(x0, dtype=np.float64), (k, 1)))
    net.forward(x)
    jac = net.backward(backend.asarray(np.eye(k)), input_grad=True)
    return to_numpy(jac).astype(np.float64)


def _backend_of(net: MLP) -> Backend:
    """The backend (library, dtype, device) that holds the net's parameters."""
    w = net.params["W1"]
    if isinstance(w, np.ndarray):
        return Backend("numpy", str(w.dtype))
    return Backend("torch", str(w.dtype).removeprefix("torch."), w.device.type)


def maximise_activation(net: MLP, units, starts: np.ndarray, radius: float, steps: int = 300,
                        lr: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Erhan et al. (2009) activation maximisation of output units by projected gradient ascent.

    Row i of ``starts`` (M, in_features) climbs the pre-softmax activation s^L_{units[i]} of the
    engine's network, x <- P(x + lr * radius * g / ||g||), g = ds_k/dx from the engine's backward
    with upstream gradient e_k, P the projection onto the sphere ||x|| = radius (the norm constraint
    of the paper), the step shrinking linearly to 0 so that the iterates settle. ``net`` is on the
    numpy backend. Returns (inputs found (M, in), their activations (M,)).
    """
    units = np.asarray(units)
    x = np.array(starts, dtype=np.float64)
    x *= radius / np.linalg.norm(x, axis=1, keepdims=True)
    upstream = np.eye(net.spec.out_features)[units]
    for step in range(steps):
        net.forward(x)
        grad = np.asarray(net.backward(upstream, input_grad=True))
        grad_norm = np.linalg.norm(grad, axis=1, keepdims=True)
        x = x + lr * (1 - step / steps) * radius * grad / np.maximum(grad_norm, 1e-300)
        x *= radius / np.linalg.norm(x, axis=1, keepdims=True)
    output = np.asarray(net.forward(x))
    return x, output[np.arange(len(units)), units]
