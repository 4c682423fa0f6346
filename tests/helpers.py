"""The equivalence suite's shared machinery: one measuring function per kind of comparison.

Each ``compare_*``/``*_errors`` function *measures* (it returns the relative errors it found) and
the test modules assert on the numbers; ``scripts/equivalence_table.py`` calls the same functions
to print the table. The relative error of a tensor is ||a - b|| / max(||b||, tiny), per tensor
(``testbed.reference.relative_error``, computed in float64).

- ``helper_test_op`` (tinygrad's ``helper_test_op``): one op, engine vs torch autograd, forward and
  backward, on any backend, dtype and device; ``OPS`` lists every op once, one line each.
- ``finite_difference_errors`` / ``network_finite_difference_errors`` (cs231n's gradient check):
  central differences contracted with a random upstream gradient, engine alone, numpy float64.
- ``compare_network``: a whole MLP against the torch.nn reference: loss, every parameter
  gradient, dL/dx and every dL/ds^l (retain_grad on the reference's pre-activations).
  ``zero_by_symmetry`` marks gradients that vanish exactly (compared as rounding noise);
  ``condition_numbers`` measures how much float32 rounding each tensor amplifies (Monte Carlo
  arithmetic on the float64 reference), ``float32_errors`` both sides' float32 error.
- ``run_trajectory``: ``testbed.reference.Lockstep`` over many optimiser steps on minibatches
  drawn from a fixed synthetic data set.

Inputs are drawn in float64 and cast once to the dtype under test, so the engine and torch see
bit-identical numbers; upstream gradients are odd and non-symmetric (never ones), so that a
backward that is wrong by a transpose, a sign or a factor cannot hide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from testbed.engine import MLP, Backend, MLPSpec, get_activation, get_loss, init_params
from testbed.engine.backend import to_numpy
from testbed.engine.layers import linear_backward, linear_forward
from testbed.reference import (
    Lockstep,
    build_torch_loss,
    build_torch_mlp,
    relative_error,
    torch_named_params,
)
from testbed.reference.discrepancy import gradient_error_bounds
from testbed.reference.model import torch_dtype
from testbed.tracking.wandb_logger import NullLogger

# ---------------------------------------------------------------------------------------------
# Where the suites run, and how close is equal
# ---------------------------------------------------------------------------------------------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = ("float64", "float32")

OP_TOL = {"float64": 1e-12, "float32": 1e-5}
FINITE_DIFFERENCE_TOL = 1e-7  # float64, numpy backend, eps = FD_EPS
NETWORK_TOL = {"float64": 1e-10, "float32": 1e-5}
TRAJECTORY_TOL = {"float64": 1e-9, "float32": 1e-4}


def backends(names: tuple[str, ...] = ("numpy", "torch"), dtypes: tuple[str, ...] = DTYPES,
             devices: list[str] | None = None) -> list[Backend]:
    """Every (backend, dtype, device) to test; the numpy backend only ever on cpu."""
    devices = DEVICES if devices is None else devices
    found = []
    for name in names:
        for device in (["cpu"] if name == "numpy" else devices):
            found += [Backend(name, dtype, device) for dtype in dtypes]
    return found


def backend_id(backend: Backend) -> str:
    return f"{backend.name}-{backend.dtype}-{backend.device}"


def backend_params(names: tuple[str, ...] = ("numpy", "torch"), dtypes: tuple[str, ...] = DTYPES,
                   devices: list[str] | None = None) -> list:
    """``backends()`` as pytest params; those on cuda carry ``pytest.mark.cuda``."""
    return [pytest.param(b, id=backend_id(b), marks=[pytest.mark.cuda] if b.device != "cpu" else [])
            for b in backends(names, dtypes, devices)]


def device_params(devices: list[str] | None = None) -> list:
    """``DEVICES`` as pytest params; cuda carries ``pytest.mark.cuda``."""
    return [pytest.param(d, id=d, marks=[pytest.mark.cuda] if d != "cpu" else [])
            for d in (DEVICES if devices is None else devices)]


def reference_tensor(a: np.ndarray, backend: Backend, requires_grad: bool = False) -> torch.Tensor:
    """``a`` as a torch tensor on the backend's device, in its dtype (labels stay int64)."""
    t = torch.as_tensor(np.asarray(a)).to(backend.device if backend.name == "torch" else "cpu")
    if t.is_floating_point():
        t = t.to(torch_dtype(backend.dtype))
    return t.requires_grad_(requires_grad)


def upstream_gradient(rng: np.random.Generator, shape) -> np.ndarray:
    """An odd, non-symmetric upstream gradient dL/d(output): never ones, rarely small."""
    return rng.normal(size=shape) * 1.3 + 0.4


def check_like(ours, theirs: torch.Tensor, backend: Backend, what: str) -> None:
    """Same shape, same dtype and the same kind of array (numpy or torch, on the same device)."""
    if backend.name == "numpy":
        assert isinstance(ours, np.ndarray | np.generic), f"{what}: {type(ours)} from the numpy backend"
    else:
        assert isinstance(ours, torch.Tensor), f"{what}: {type(ours)} from the torch backend"
        assert ours.device.type == theirs.device.type, f"{what}: on {ours.device}, torch on {theirs.device}"
    assert tuple(ours.shape) == tuple(theirs.shape), f"{what}: shape {ours.shape} != torch {theirs.shape}"
    dtype = to_numpy(ours).dtype.name
    assert dtype == backend.dtype, f"{what}: dtype {dtype}, expected {backend.dtype}"


# ---------------------------------------------------------------------------------------------
# Ops: one interface for layers, activations and losses
# ---------------------------------------------------------------------------------------------


class ActivationOp:
    """An activation as an op of one input: backward returns (dL/ds,)."""

    def __init__(self, name: str, **params):
        self.activation = get_activation(name, **params)

    def forward(self, s):
        return self.activation.forward(s)

    def backward(self, grad_output, cache):
        return (self.activation.backward(grad_output, cache),)


class LinearOp:
    """The affine layer as an op of (x, W, b): backward returns (dL/dx, dL/dW, dL/db)."""

    def forward(self, x, weight, bias):
        return linear_forward(x, weight, bias)

    def backward(self, grad_output, cache):
        return linear_backward(grad_output, cache)


class LossOp:
    """A loss as an op of (output, target); only the output is differentiable.

    The loss is a scalar (one per replica with leading axes); its upstream gradient g scales
    the engine's dL/d(output), so backward returns (g dL/d(output),).
    """

    def __init__(self, name: str):
        self.loss = get_loss(name)

    def forward(self, output, target):
        return self.loss.forward(output, target)

    def backward(self, grad_output, cache):
        return (grad_output[..., None, None] * self.loss.backward(cache),)


def labels_target(rng, output):
    return rng.integers(0, output.shape[-1], size=output.shape[:-1])


def regression_target(rng, output):
    return rng.normal(size=output.shape) * 0.8 + 0.2


def probability_target(rng, output):
    return rng.uniform(0.0, 1.0, size=output.shape)


def confident_target(rng, output):
    """Hard targets every logit already gets right: the loss is tiny where |z| is large."""
    return (output > 0).astype(np.float64)


def _cross_entropy_replicas(logits, labels):
    per_sample = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                 reduction="none")
    return per_sample.reshape(labels.shape).mean(-1)


@dataclass(frozen=True)
class OpCase:
    """One op, how torch computes it, and which inputs exercise it.

    ``typical`` and ``extreme`` are the (low, high) ranges of the uniform inputs; ``kinks`` are
    the points where the op is not differentiable (or switches branch): planted exactly into the
    first input when comparing with torch, kept away from for finite differences and gradcheck.
    """

    name: str
    op: Any
    torch_fn: Callable
    shapes: tuple
    typical: tuple[float, float] = (-3.0, 2.0)
    extreme: tuple[float, float] = (-30.0, 30.0)
    kinks: tuple[float, ...] = ()
    target: Callable | None = None


X, W, B = (6, 5), (4, 5), (4,)  # odd sizes: a transposed weight cannot broadcast by accident
S = (7, 5)
OPS = [
    OpCase("linear", LinearOp(), F.linear, (X, W, B), extreme=(-1e3, 1e3)),
    OpCase("linear_replicas", LinearOp(), lambda x, w, b: x @ w.mT + b[..., None, :],
           ((3, *X), (3, *W), (3, *B))),
    OpCase("identity", ActivationOp("identity"), lambda s: s * 1, (S,)),
    OpCase("sigmoid", ActivationOp("sigmoid"), torch.sigmoid, (S,)),
    OpCase("tanh", ActivationOp("tanh"), torch.tanh, (S,)),
    OpCase("relu", ActivationOp("relu"), F.relu, (S,), kinks=(0.0,)),
    OpCase("leaky_relu", ActivationOp("leaky_relu", slope=0.2), lambda s: F.leaky_relu(s, 0.2), (S,),
           kinks=(0.0,)),
    OpCase("elu", ActivationOp("elu", alpha=0.7), lambda s: F.elu(s, 0.7), (S,), kinks=(0.0,)),
    OpCase("selu", ActivationOp("selu"), F.selu, (S,), kinks=(0.0,)),
    OpCase("gelu", ActivationOp("gelu"), F.gelu, (S,)),
    OpCase("gelu_tanh", ActivationOp("gelu", approximate="tanh"),
           lambda s: F.gelu(s, approximate="tanh"), (S,)),
    OpCase("silu", ActivationOp("silu"), F.silu, (S,)),
    OpCase("softplus", ActivationOp("softplus"), F.softplus, (S,), kinks=(20.0,)),
    OpCase("softplus_beta", ActivationOp("softplus", beta=2.0, threshold=15.0),
           lambda s: F.softplus(s, beta=2.0, threshold=15.0), (S,), kinks=(7.5,)),
    OpCase("softsign", ActivationOp("softsign"), F.softsign, (S,), kinks=(0.0,)),
    OpCase("mse", LossOp("mse"), F.mse_loss, (S,), target=regression_target),
    OpCase("cross_entropy", LossOp("cross_entropy"), F.cross_entropy, (S,), extreme=(-1e4, 1e4),
           target=labels_target),
    OpCase("cross_entropy_replicas", LossOp("cross_entropy"), _cross_entropy_replicas, ((3, *S),),
           extreme=(-1e4, 1e4), target=labels_target),
    OpCase("bce_with_logits", LossOp("bce_with_logits"), F.binary_cross_entropy_with_logits, (S,),
           target=probability_target),
    # every logit right and, in the extreme range, sure of it: the loss is ~exp(-z), tiny. (Not
    # z << 0 with y = 0: there torch's own (1 - y) z - log_sigmoid(z) cancels; test_ops checks
    # the engine against exact arithmetic there.)
    OpCase("bce_with_logits_confident", LossOp("bce_with_logits"),
           F.binary_cross_entropy_with_logits, (S,), extreme=(10.0, 30.0), target=confident_target),
]
OPS_BY_NAME = {case.name: case for case in OPS}


def draw_inputs(shapes, rng: np.random.Generator, low: float, high: float, kinks=(),
                plant_kinks: bool = False, kink_margin: float = 0.0) -> list[np.ndarray]:
    """Uniform float64 inputs on [low, high]; the first one gets the kinks planted exactly, or
    every entry of it kept at least ``kink_margin`` from any kink."""
    inputs = [rng.uniform(low, high, size=shape) for shape in shapes]
    first = inputs[0].reshape(-1)  # a view
    for kink in kinks:
        near = np.abs(first - kink) < kink_margin
        first[near] = kink + np.where(first[near] < kink, -2, 2) * kink_margin
    if plant_kinks:
        planted = [k for k in kinks if low <= k <= high]
        first[: len(planted)] = planted
    return inputs


def compare_op(shapes, torch_fn: Callable, our_op, backend: Backend, *, low: float, high: float,
               kinks=(), target: Callable | None = None, seed: int = 0) -> dict[str, float]:
    """The engine's op against torch autograd: {"forward": err, "backward": max err over inputs}.

    Checks along the way that outputs and gradients have torch's shape and the backend's dtype.
    """
    rng = np.random.default_rng(seed)
    inputs = draw_inputs(shapes, rng, low, high, kinks, plant_kinks=True)
    extra = [] if target is None else [target(rng, inputs[0])]
    is_labels = [np.issubdtype(np.asarray(a).dtype, np.integer) for a in extra]

    ours = [backend.asarray(a) for a in inputs]
    ours += [backend.labels(a) if labels else backend.asarray(a)
             for a, labels in zip(extra, is_labels, strict=True)]
    theirs = [reference_tensor(a, backend, requires_grad=True) for a in inputs]
    theirs += [reference_tensor(a, backend) for a in extra]

    output, cache = our_op.forward(*ours)
    reference_output = torch_fn(*theirs)
    check_like(output, reference_output, backend, "forward")

    upstream = upstream_gradient(rng, tuple(reference_output.shape))
    grads = our_op.backward(backend.asarray(upstream), cache)
    reference_output.backward(reference_tensor(upstream, backend))
    assert len(grads) == len(inputs), f"{len(grads)} gradients for {len(inputs)} inputs"
    leaves = theirs[: len(inputs)]
    for index, (grad, leaf) in enumerate(zip(grads, leaves, strict=True)):
        check_like(grad, leaf.grad, backend, f"gradient of input {index}")
    return {"forward": relative_error(output, reference_output),
            "backward": max(relative_error(g, leaf.grad) for g, leaf in zip(grads, leaves, strict=True))}


def helper_test_op(shapes, torch_fn: Callable, our_op, backend: Backend, *, low: float = -3.0,
                   high: float = 2.0, kinks=(), target: Callable | None = None, seed: int = 0,
                   tol: float | None = None) -> dict[str, float]:
    """tinygrad's helper_test_op: shape, dtype, forward and backward of one op against torch."""
    tol = OP_TOL[backend.dtype] if tol is None else tol
    errors = compare_op(shapes, torch_fn, our_op, backend, low=low, high=high, kinks=kinks,
                        target=target, seed=seed)
    assert errors["forward"] <= tol, f"forward relative error {errors['forward']:.3g} > {tol:g}"
    assert errors["backward"] <= tol, f"backward relative error {errors['backward']:.3g} > {tol:g}"
    return errors


def op_case_kwargs(case: OpCase, extreme: bool) -> dict:
    low, high = case.extreme if extreme else case.typical
    return dict(low=low, high=high, kinks=case.kinks, target=case.target)


# ---------------------------------------------------------------------------------------------
# Finite differences (the engine alone: numpy, float64)
# ---------------------------------------------------------------------------------------------

FD_EPS = 1e-5  # see test_finite_differences: rounding ~ u |f| / eps outweighs truncation ~ eps^2
KINK_MARGIN = 1e-2  # 10^3 eps: a central difference never straddles a kink


def central_differences(objective: Callable[[], float], array: np.ndarray, eps: float = FD_EPS):
    """d objective / d array, one entry at a time, perturbing ``array`` in place."""
    numeric = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + eps
        plus = objective()
        array[index] = original - eps
        minus = objective()
        array[index] = original
        numeric[index] = (plus - minus) / (2 * eps)
    return numeric


def finite_difference_errors(case: OpCase, seed: int = 0, eps: float = FD_EPS) -> list[float]:
    """Relative error of the op's backward against central differences of <g, forward(inputs)>,
    one per differentiable input, for a random non-symmetric upstream gradient g."""
    rng = np.random.default_rng(seed)
    low, high = case.typical
    inputs = draw_inputs(case.shapes, rng, low, high, case.kinks, kink_margin=KINK_MARGIN)
    extra = [] if case.target is None else [case.target(rng, inputs[0])]
    output, cache = case.op.forward(*inputs, *extra)
    upstream = np.asarray(upstream_gradient(rng, np.shape(output)))
    grads = case.op.backward(upstream, cache)

    def objective() -> float:
        return float(np.sum(upstream * case.op.forward(*inputs, *extra)[0]))

    return [relative_error(grad, central_differences(objective, array, eps))
            for grad, array in zip(grads, inputs, strict=True)]


ACTIVATION_KINKS = {"relu": (0.0,), "leaky_relu": (0.0,), "elu": (0.0,), "selu": (0.0,),
                    "softsign": (0.0,)}


def activation_kinks(spec: MLPSpec) -> tuple[float, ...]:
    if spec.activation == "softplus":
        params = {"beta": 1.0, "threshold": 20.0} | spec.activation_params
        return (params["threshold"] / params["beta"],)
    return ACTIVATION_KINKS.get(spec.activation, ())


def network_data(spec: MLPSpec, rng: np.random.Generator, batch: int):
    """Inputs (batch, in_features) and targets of the spec's loss, as float64/int64 numpy."""
    x = rng.normal(size=(batch, spec.in_features)) * 1.1 + 0.2
    output_shape = np.empty((batch, spec.out_features))
    target = {"mse": regression_target, "cross_entropy": labels_target, "bce_with_logits": probability_target,
              "logistic_sum_squared_error": probability_target}[spec.loss](rng, output_shape)
    return x, target


def network_finite_difference_errors(spec: MLPSpec, seed: int = 0, batch: int = 5,
                                     eps: float = FD_EPS) -> dict[str, float]:
    """Every parameter gradient and dL/dx of the engine's MLP against central differences of
    g L, g a random scalar upstream gradient; numpy float64."""
    rng = np.random.default_rng(seed)
    mlp = MLP(spec, init_params(spec, seed))
    x, target = network_data(spec, rng, batch)
    upstream = float(upstream_gradient(rng, ()))
    output = mlp.forward(x)
    loss, loss_cache = mlp.loss_fn.forward(output, target)
    mlp.backward(upstream * mlp.loss_fn.backward(loss_cache), input_grad=True)
    grads, input_grad = dict(mlp.grads), mlp.input_grad
    hidden = mlp.pre_activations[:-1]
    for kink in activation_kinks(spec):
        distance = min((float(np.min(np.abs(s - kink))) for s in hidden), default=np.inf)
        assert distance > 100 * eps, f"a pre-activation is {distance:.2g} from the kink at {kink}"

    def objective() -> float:
        return upstream * float(mlp.loss(x, target))

    errors = {k: relative_error(grads[k], central_differences(objective, mlp.params[k], eps))
              for k in spec.param_keys()}
    errors["x"] = relative_error(input_grad, central_differences(objective, x, eps))
    return errors


# ---------------------------------------------------------------------------------------------
# Whole networks against torch.nn
# ---------------------------------------------------------------------------------------------


def engine_network_gradients(spec: MLPSpec, params: dict, x: np.ndarray, target: np.ndarray,
                             backend: Backend) -> dict[str, Any]:
    """One forward and backward of the engine's MLP: loss, output, dW^l, db^l, dx and dL/ds^l."""
    mlp = MLP(spec, {k: backend.asarray(v) for k, v in params.items()})
    target = backend.labels(target) if spec.loss == "cross_entropy" else backend.asarray(target)
    output = mlp.forward(backend.asarray(x))
    loss, loss_cache = mlp.loss_fn.forward(output, target)
    mlp.backward(mlp.loss_fn.backward(loss_cache), input_grad=True)
    found = {"loss": loss, "output": output} | {f"d{k}": g for k, g in mlp.grads.items()}
    found["dx"] = mlp.input_grad
    assert len(mlp.pre_activation_grads) == spec.num_layers
    found |= {f"ds{layer}": g for layer, g in enumerate(mlp.pre_activation_grads, start=1)}
    return found


def reference_network_gradients(spec: MLPSpec, params: dict, x: np.ndarray, target: np.ndarray,
                                backend: Backend, jitter: Callable | None = None) -> dict[str, torch.Tensor]:
    """The same from the torch.nn reference (autograd), on the backend's device and dtype;
    dL/ds^l through retain_grad on every Linear's output. ``jitter``, if given, perturbs every
    intermediate result, forward and backward (see ``condition_numbers``)."""
    device = backend.device if backend.name == "torch" else "cpu"
    model = build_torch_mlp(spec, params, device=device, dtype=backend.dtype)
    pre_activations: list[torch.Tensor] = []

    def perturb(module, inputs, out):
        out = jitter(out)
        out.register_hook(jitter)  # the gradient flowing into this output
        return out

    def keep_pre_activation(module, inputs, out):
        out.retain_grad()  # retain_grad hooks run after the others: it keeps the perturbed grad
        pre_activations.append(out)

    for module in model:
        if jitter is not None:
            module.register_forward_hook(perturb)
        if isinstance(module, nn.Linear):
            module.register_forward_hook(keep_pre_activation)
    x = reference_tensor(x, backend, requires_grad=True)
    output = model(x)
    loss = build_torch_loss(spec.loss)(output, reference_tensor(target, backend))
    loss.backward()
    found = {"loss": loss, "output": output}
    found |= {f"d{k}": p.grad for k, p in torch_named_params(model).items()}
    found["dx"] = x.grad
    assert len(pre_activations) == spec.num_layers
    found |= {f"ds{layer}": s.grad for layer, s in enumerate(pre_activations, start=1)}
    if jitter is not None:
        found = {k: jitter(v) if k.startswith("d") and not k.startswith("ds") else v
                 for k, v in found.items()}
    return found


def compare_network(spec: MLPSpec, backend: Backend, seed: int = 0, batch: int = 5) -> dict[str, float]:
    """The engine's MLP against the torch.nn reference built from the same spec and weights, on
    the same device and dtype: the relative error of the loss, the output, every parameter
    gradient, dL/dx and every dL/ds^l. Tensors that are zero by symmetry (``zero_by_symmetry``)
    are checked to be rounding noise instead and left out of the result."""
    params = init_params(spec, seed)
    x, target = network_data(spec, np.random.default_rng(seed + 1), batch)
    ours = engine_network_gradients(spec, params, x, target, backend)
    theirs = reference_network_gradients(spec, params, x, target, backend)
    for key in theirs:
        check_like(ours[key], theirs[key], backend, key)
    if zero_by_symmetry(spec):
        top = float(np.linalg.norm(to_numpy(theirs[f"ds{spec.num_layers}"]).astype(np.float64)))
        bound = SYMMETRY_ULPS * np.finfo(backend.dtype).eps * top
        for key in below_output_layer(spec):
            noise = max(np.linalg.norm(to_numpy(a).astype(np.float64)) for a in (ours[key], theirs[key]))
            assert noise <= bound, f"{key}: norm {noise:.3g}, but zero by symmetry (<= {bound:.3g})"
            del theirs[key]
    return {key: relative_error(ours[key], theirs[key]) for key in theirs}


FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def condition_numbers(spec: MLPSpec, seed: int = 0, batch: int = 5, device: str = "cpu",
                      draws: int = 3) -> dict[str, float]:
    """How much float32 rounding can move each quantity, in units of the roundoff 2^-24.

    Monte Carlo arithmetic: the torch reference is rerun in float64 with every intermediate
    result perturbed by an independent relative error uniform in [-2^-24, 2^-24], the size of
    one float32 rounding: every pre-activation and activation (forward hooks), every gradient
    flowing into them (tensor hooks), every parameter gradient and dL/dx. Its own float64
    rounding is negligible next to that, so kappa = max over ``draws`` of (relative change /
    2^-24), at least 1, is the factor by which float32 rounding is amplified in *any*
    implementation, torch's included: a gradient that is a sum with cancellation (db = the sum
    over the batch of dL/ds when the signal has nearly vanished) has kappa in the hundreds.
    """
    params = init_params(spec, seed)
    x, target = network_data(spec, np.random.default_rng(seed + 1), batch)
    backend = Backend("torch", "float64", device)
    exact = reference_network_gradients(spec, params, x, target, backend)
    generator = torch.Generator(device=device).manual_seed(seed)

    def jitter(t: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype) * 2 - 1
        return t * (1 + FLOAT32_UNIT_ROUNDOFF * noise)

    kappa = dict.fromkeys(exact, 1.0)
    for _ in range(draws):
        perturbed = reference_network_gradients(spec, params, x, target, backend, jitter=jitter)
        for key in exact:
            change = relative_error(perturbed[key], exact[key]) / FLOAT32_UNIT_ROUNDOFF
            kappa[key] = max(kappa[key], change)
    return kappa


def float32_errors(spec: MLPSpec, backend: Backend, seed: int = 0,
                   batch: int = 5) -> dict[str, tuple[float, float]]:
    """For each quantity: (relative error of the engine in float32, relative error of torch in
    float32), both against torch in float64 on the same float32-rounded weights and data."""
    assert backend.dtype == "float32"
    params = init_params(spec, seed)
    x, target = network_data(spec, np.random.default_rng(seed + 1), batch)
    params = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    x = x.astype(np.float32).astype(np.float64)
    if spec.loss != "cross_entropy":
        target = target.astype(np.float32).astype(np.float64)
    ours = engine_network_gradients(spec, params, x, target, backend)
    theirs = reference_network_gradients(spec, params, x, target, Backend("torch", "float32", backend.device))
    exact = reference_network_gradients(spec, params, x, target, Backend("torch", "float64", backend.device))
    return {key: (relative_error(ours[key], exact[key]), relative_error(theirs[key], exact[key]))
            for key in exact}


SYMMETRY_ULPS = 16


def zero_by_symmetry(spec: MLPSpec) -> bool:
    """Constant weights under softmax cross-entropy: every gradient below the output layer is 0.

    Softmax is invariant to adding the same number to every logit, and when the rows of W^L are
    equal every change below the output layer moves all logits together; so dL/ds^L W^L = 0 and
    all gradients beneath it vanish. Both implementations then return rounding noise (a few ulps
    of ||dL/ds^L||), whose relative error is meaningless: ``compare_network`` checks that those
    tensors are that small instead.
    """
    return spec.init == "constant" and spec.loss == "cross_entropy"


def below_output_layer(spec: MLPSpec) -> list[str]:
    layers = range(1, spec.num_layers)
    return ([f"d{kind}{layer}" for layer in layers for kind in "Wb"]
            + [f"ds{layer}" for layer in layers] + ["dx"])


# ---------------------------------------------------------------------------------------------
# Trajectories: many optimiser steps in lockstep
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrajectoryCase:
    name: str
    optimizer: str
    hyper: dict = field(default_factory=dict)
    clip_norm: float | None = None
    activation: str = "tanh"
    init: str = "xavier_uniform"
    loss: str = "cross_entropy"


def synthetic_dataset(loss: str, seed: int = 0, size: int = 256, features: int = 10,
                      outputs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A fixed data set a small MLP can learn but not interpolate at once: labels of a noisy
    linear teacher (cross_entropy), a noisy tanh teacher (mse), or noisy multi-label signs
    (bce_with_logits)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, features))
    teacher = rng.normal(size=(features, outputs)) / math.sqrt(features)
    scores = x @ teacher + 0.3 * rng.normal(size=(size, outputs))
    if loss == "cross_entropy":
        return x, np.argmax(scores, axis=1)
    if loss == "bce_with_logits":
        return x, (scores > 0).astype(np.float64)
    readout = rng.normal(size=(outputs, outputs))
    return x, np.tanh(2 * scores) @ readout + 0.1 * rng.normal(size=(size, outputs))


@dataclass
class TrajectoryResult:
    param_rel_err: float       # max over steps and parameters
    grad_rel_err: float        # max over steps and parameters
    initial_loss: float        # engine, on the whole data set
    final_loss: float
    losses: list[float]        # engine minibatch losses, step by step
    clipped_steps: int         # steps whose (reference) gradient was scaled down to clip_norm


def trajectory_spec(case: TrajectoryCase, outputs: int = 3, features: int = 10) -> MLPSpec:
    return MLPSpec(in_features=features, out_features=outputs, depth=2, width=16,
                   activation=case.activation, init=case.init, bias_init="standard", loss=case.loss)


def run_trajectory(case: TrajectoryCase, backend: Backend, steps: int = 100, batch: int = 16,
                   seed: int = 0, fused: bool = False) -> TrajectoryResult:
    """``steps`` optimiser steps of the engine and torch in lockstep from identical weights on
    identical minibatches (drawn without replacement within a step) of ``synthetic_dataset``;
    ``fused``: the engine's steps are ``MLP.sgd_step`` (``Lockstep.step``)."""
    x, y = synthetic_dataset(case.loss, seed)
    spec = trajectory_spec(case, outputs=3, features=x.shape[1])
    lockstep = Lockstep(spec, seed, backend, case.optimizer, clip_norm=case.clip_norm, **case.hyper)
    x_all = backend.asarray(x)
    y_all = backend.labels(y) if case.loss == "cross_entropy" else backend.asarray(y)
    initial_loss = float(lockstep.manual.loss(x_all, y_all))
    rng = np.random.default_rng(seed + 1)
    param_err = grad_err = 0.0
    losses, clipped = [], 0
    for _ in range(steps):
        index = rng.choice(len(x), size=batch, replace=False)
        comparison = lockstep.step(x[index], y[index], fused)
        param_err = max(param_err, comparison.param_max_rel_err)
        grad_err = grad_err if fused else max(grad_err, comparison.grad_max_rel_err)
        losses.append(comparison.loss_manual)
        if case.clip_norm is not None:
            norm = math.sqrt(sum(float(p.grad.double().square().sum())
                                 for p in lockstep.torch_model.parameters()))
            clipped += norm > 0.999 * case.clip_norm
    final_loss = float(lockstep.manual.loss(x_all, y_all))
    return TrajectoryResult(param_err, grad_err, initial_loss, final_loss, losses, clipped)


TRAJECTORIES = [
    TrajectoryCase("sgd", "sgd", dict(lr=0.1)),
    TrajectoryCase("sgd_defaults", "sgd"),
    TrajectoryCase("sgd_momentum_dampening", "sgd", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    TrajectoryCase("sgd_nesterov", "sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    TrajectoryCase("sgd_weight_decay", "sgd", dict(lr=0.1, momentum=0.5, weight_decay=1e-2),
                   activation="relu", init="kaiming_normal"),
    TrajectoryCase("sgd_clip", "sgd", dict(lr=0.2, momentum=0.5), clip_norm=0.2),
    TrajectoryCase("sgd_high_lr", "sgd", dict(lr=0.5)),
    TrajectoryCase("sgd_mse", "sgd", dict(lr=0.05, momentum=0.9), loss="mse", activation="gelu"),
    TrajectoryCase("adam", "adam", dict(lr=1e-2)),
    TrajectoryCase("adam_defaults", "adam"),
    TrajectoryCase("adam_l2", "adam", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2),
                   activation="silu"),
    TrajectoryCase("adam_high_lr", "adam", dict(lr=0.05)),
    TrajectoryCase("adam_clip_bce", "adam", dict(lr=1e-2), clip_norm=0.05, loss="bce_with_logits"),
    TrajectoryCase("adamw", "adamw", dict(lr=1e-2, weight_decay=0.1), activation="elu"),
    TrajectoryCase("adamw_defaults", "adamw"),
    TrajectoryCase("rmsprop", "rmsprop", dict(lr=3e-3)),
    TrajectoryCase("rmsprop_defaults", "rmsprop"),
    TrajectoryCase("rmsprop_centered", "rmsprop", dict(lr=3e-3, centered=True), loss="mse"),
    TrajectoryCase("rmsprop_momentum", "rmsprop", dict(lr=1e-3, momentum=0.9, weight_decay=1e-3),
                   activation="softplus"),
    TrajectoryCase("adagrad", "adagrad", dict(lr=0.05)),
    TrajectoryCase("adagrad_defaults", "adagrad"),
    TrajectoryCase("adagrad_decay", "adagrad",
                   dict(lr=0.1, lr_decay=1e-2, weight_decay=1e-3, initial_accumulator_value=0.1),
                   activation="leaky_relu", init="kaiming_uniform"),
]
TRAJECTORIES_BY_NAME = {case.name: case for case in TRAJECTORIES}


# -- the app -----------------------------------------------------------------------------------------

def compose_config(*overrides: str):
    """The app's config for these overrides, composed as the command line would (no job run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from testbed.app.preflight import CONFIG_DIR
    from testbed.app.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after it runs but ``finally`` blocks."""


class KillAt(NullLogger):
    """A logger that kills the run when it is given the row of ``step`` (or a later one)."""

    def __init__(self, step: int):
        self.step = step

    def log(self, metrics, step):
        if step >= self.step:
            raise Killed


# ---------------------------------------------------------------------------------------------
# The third oracle: the exact gradient, from the engine in extended precision
# ---------------------------------------------------------------------------------------------

ORACLE = Backend("numpy", "longdouble")


def oracle_errors(spec: MLPSpec, backend: Backend, seed: int = 0,
                  batch: int = 9) -> dict[str, tuple[float, float, float]]:
    """Per parameter gradient: (the engine's error, torch's error, the bound of one side), the
    errors ||g - g_exact|| against the engine's gradient in extended precision (``ORACLE``, exact
    at the scale of float64 rounding), the bound ``gradient_error_bounds`` in the backend's dtype.
    Weights and data are drawn in float64 and rounded to the dtype first: all three compute the
    gradient of the same numbers."""
    rounded = {k: to_numpy(backend.asarray(v)).astype(np.float64) for k, v in init_params(spec, seed).items()}
    x, target = network_data(spec, np.random.default_rng(seed + 1), batch)
    x = to_numpy(backend.asarray(x)).astype(np.float64)
    exact = engine_network_gradients(spec, rounded, x, target, ORACLE)
    ours = engine_network_gradients(spec, rounded, x, target, backend)
    theirs = reference_network_gradients(spec, rounded, x, target, backend)
    labels = backend.labels(target) if spec.loss == "cross_entropy" else backend.asarray(target)
    bounds = gradient_error_bounds(spec, {k: backend.asarray(v) for k, v in rounded.items()},
                                   backend.asarray(x), labels)

    def error(found, key: str) -> float:
        difference = to_numpy(found[f"d{key}"]).astype(np.longdouble) - exact[f"d{key}"]
        return float(np.linalg.norm(difference.astype(np.float64)))

    return {key: (error(ours, key), error(theirs, key), bound) for key, bound in bounds.items()}
