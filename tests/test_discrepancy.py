"""The rounding-error bound of the gradients (testbed.reference.discrepancy), checked against an
oracle: the engine in extended precision (np.longdouble, 11 bits beyond float64), whose gradient
is exact at the scale of float64's rounding. Each side (the engine on either backend, and torch)
must be within the bound of the exact gradient; a wrong backward must read far outside it, even
where the plain relative error cries wolf (a gradient that cancels to almost nothing)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    ORACLE,
    engine_network_gradients,
    network_data,
    oracle_errors,
    reference_network_gradients,
)

import testbed.engine.network as network
from testbed.data import load_dataset
from testbed.engine import ACTIVATIONS, LOSSES, Backend, MLPSpec, init_params
from testbed.engine.losses import PAPER_LOSSES
from testbed.reference import Lockstep
from testbed.reference.discrepancy import bound_ratio, gradient_error_bounds, unit_roundoff

ORACLE_ACTIVATIONS = [a for a in ACTIVATIONS if a != "gelu"]  # scipy's erf has no longdouble loop
ORACLE_SHAPES = {  # (depth, init, scale): a plain net, a deep one on the edge of chaos, a chaotic one
    "depth3": (3, "xavier_normal", 1.0), "depth8-he": (8, "kaiming_normal", 1.0),
    "depth8-chaotic": (8, "kaiming_uniform", 3.0)}


@pytest.mark.parametrize("shape", ORACLE_SHAPES)
@pytest.mark.parametrize("loss", [*LOSSES, *PAPER_LOSSES])
@pytest.mark.parametrize("activation", ORACLE_ACTIVATIONS)
def test_each_side_is_within_its_bound_of_the_exact_gradient(activation, loss, shape):
    depth, init, scale = ORACLE_SHAPES[shape]
    spec = MLPSpec(in_features=4, out_features=3, depth=depth, width=7, activation=activation, init=init,
                   init_scale=scale, bias_init="normal", bias_std=0.3, loss=loss)
    for dtype in ("float64", "float32"):
        for backend in (Backend("numpy", dtype), Backend("torch", dtype)):
            for key, (engine, reference, bound) in oracle_errors(spec, backend).items():
                assert engine <= bound, f"{backend} {key}: engine off by {engine:.3g}, bound {bound:.3g}"
                assert reference <= bound, f"{backend} {key}: torch off by {reference:.3g}, bound {bound:.3g}"


def test_the_oracle_tells_which_side_is_closer_to_the_exact_gradient():
    """The engine in float32 against torch in float64, on the same float32-representable weights
    and data: the oracle must put torch closer on every gradient, by about 2^29."""
    spec = MLPSpec(in_features=4, out_features=3, depth=3, width=7, activation="tanh", loss="cross_entropy")
    params = {k: v.astype(np.float32).astype(np.float64) for k, v in init_params(spec, 0).items()}
    x, target = network_data(spec, np.random.default_rng(1), 9)
    x = x.astype(np.float32).astype(np.float64)
    exact = engine_network_gradients(spec, params, x, target, ORACLE)
    ours = engine_network_gradients(spec, params, x, target, Backend("numpy", "float32"))
    theirs = reference_network_gradients(spec, params, x, target, Backend("torch", "float64"))
    for key in spec.param_keys():
        ours_error = np.linalg.norm((ours[f"d{key}"] - exact[f"d{key}"]).astype(np.float64))
        theirs_error = np.linalg.norm(theirs[f"d{key}"].numpy() - exact[f"d{key}"].astype(np.float64))
        assert theirs_error * 1e5 < ours_error, f"{key}: float64 {theirs_error:.3g}, float32 {ours_error:.3g}"


def test_the_extended_precision_backend_is_only_for_numpy_and_refuses_erf():
    with pytest.raises(ValueError, match="longdouble.*numpy backend only"):
        Backend("torch", "longdouble")
    spec = MLPSpec(in_features=4, out_features=3, depth=1, width=5, activation="gelu")
    x, target = network_data(spec, np.random.default_rng(1), 4)
    with pytest.raises(TypeError, match="erf"):
        engine_network_gradients(spec, init_params(spec, 0), x, target, ORACLE)


# ---------------------------------------------------------------------------------------------
# Vanishing gradients: the plain relative error cries wolf, the bound ratio does not
# ---------------------------------------------------------------------------------------------

# (depth, activation, init, optimiser, lr, clip): the sigmoid config, depth 30 sigmoid, and
# tanh drawn to the loss ln 2 of XOR, where the summed gradient cancels
VANISHING = {
    "sigmoid12-adagrad-clip": (12, "sigmoid", "standard", "adagrad", 0.05, 0.5),
    "sigmoid30": (30, "sigmoid", "xavier_uniform", "sgd", 0.1, None),
    "tanh10-ln2": (10, "tanh", "standard", "sgd", 0.5, None),
}
XOR = load_dataset("xor", seed=0)


def vanishing_spec(depth: int, activation: str, init: str) -> MLPSpec:
    return MLPSpec(in_features=XOR.in_features, out_features=XOR.out_features, depth=depth, width=40,
                   activation=activation, init=init, loss=XOR.loss)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", VANISHING)
def test_vanishing_gradients_read_within_the_bound_where_the_relative_error_cries_wolf(case, dtype):
    depth, activation, init, optimizer, lr, clip = VANISHING[case]
    lockstep = Lockstep(vanishing_spec(depth, activation, init), 0, Backend("torch", dtype), optimizer,
                        clip_norm=clip, lr=lr)
    comparisons = [lockstep.step(XOR.x_train, XOR.y_train, bound=True) for _ in range(41)]
    loss = comparisons[-1].loss_manual
    assert abs(loss - np.log(2)) < 1e-3, f"not at the plateau: loss {loss:.6f}"
    worst_relative = max(c.grad_max_rel_err for c in comparisons)
    assert worst_relative > 1e3 * unit_roundoff(dtype), "no cancellation: the case tests nothing"
    worst = max(c.grad_err_bound_ratio for c in comparisons)
    assert worst <= 1.0, f"bound ratio {worst:.3g} (plain relative error up to {worst_relative:.3g})"


def wrong_sign(net):
    """The activation's derivative with its sign flipped."""
    backward = net.activation.backward
    net.activation.backward = lambda da, cache: -backward(da, cache)


def dropped_bias(monkeypatch):
    """Layer L-1's bias gradient dropped (zero), as if the bias term were left out of backward."""
    calls = []

    def linear_backward(grad_output, cache, input_grad):
        grad_input, grad_weight, grad_bias = LINEAR_BACKWARD(grad_output, cache, input_grad)
        calls.append(None)
        return grad_input, grad_weight, grad_bias * 0 if len(calls) == 2 else grad_bias

    monkeypatch.setattr(network, "linear_backward", linear_backward)


LINEAR_BACKWARD = network.linear_backward


@pytest.mark.parametrize("bug", ["derivative-sign", "dropped-bias"])
@pytest.mark.parametrize("case", VANISHING)
def test_a_wrong_backward_reads_far_outside_the_bound(case, bug, monkeypatch):
    depth, activation, init, *_ = VANISHING[case]
    spec = vanishing_spec(depth, activation, init)
    params = init_params(spec, 0)
    backend = Backend("torch", "float64")
    reference = reference_network_gradients(spec, params, XOR.x_train, XOR.y_train, backend)
    if bug == "dropped-bias":
        dropped_bias(monkeypatch)
    net = network.MLP(spec, {k: backend.asarray(v) for k, v in params.items()})
    if bug == "derivative-sign":
        wrong_sign(net)
    x, y = backend.asarray(XOR.x_train), backend.asarray(XOR.y_train)
    _, grads = net.loss_and_grads(x, y)
    bounds = gradient_error_bounds(spec, {k: backend.asarray(v) for k, v in params.items()}, x, y)
    ratio = bound_ratio(grads, {k[1:]: v for k, v in reference.items() if k[1:] in grads}, bounds)
    assert ratio > 1e4, f"a wrong backward reads only {ratio:.3g} x the bound"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_clipped_gradients_read_within_the_bound(dtype):
    """Clipping by the global norm acts on every step here (clip_norm far below the gradient's
    norm): the bound then carries the clipping factor's own error."""
    spec = MLPSpec(in_features=XOR.in_features, out_features=XOR.out_features, depth=4, width=16,
                   activation="tanh", init="kaiming_normal", init_scale=2.0, loss=XOR.loss)
    clip_norm = 1e-3
    lockstep = Lockstep(spec, 0, Backend("torch", dtype), "adam", clip_norm=clip_norm, lr=1e-2)
    for _ in range(10):
        comparison = lockstep.step(XOR.x_train, XOR.y_train, bound=True)
        clipped = sum(float((p.grad.double() ** 2).sum()) for p in lockstep.torch_params.values()) ** 0.5
        assert clipped == pytest.approx(clip_norm, rel=1e-3), "clipping did not act"
        assert comparison.grad_err_bound_ratio <= 1.0, f"bound ratio {comparison.grad_err_bound_ratio:.3g}"
