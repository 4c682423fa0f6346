"""Property-based: for any network, the engine's gradients equal torch's (hypothesis).

Random input and output sizes, depths (0, a linear model, included), widths (1 included), batch
sizes (1 included), activations, weight inits and scales, bias inits, losses, backends, devices
and dtypes; the loss, output, every parameter gradient, dL/dx and every dL/ds^l are compared
with the torch.nn reference (``helpers.compare_network``), per tensor.

float64: relative error <= 1e-10.

float32: relative error <= 1e-5 x kappa, kappa >= 1 the tensor's measured amplification of
float32 rounding (``helpers.condition_numbers``: Monte Carlo arithmetic on the float64
reference). For a well-conditioned tensor kappa ~ 1 and the bound is the op tolerance 1e-5.
But two float32 implementations can only agree as well as each agrees with the exact result,
and a gradient that is a sum with cancellation (db = the sum over the batch of dL/ds once the
signal has nearly vanished, hypothesis finds such nets quickly) is off by kappa x 6e-8 in any
implementation, torch's included: one ulp of difference in dL/ds becomes 3e-5 in db at
kappa ~ 500. The tolerance scales with the physics, not with the engine.

Monte Carlo arithmetic perturbs the results of whole ops; it cannot see a cancellation inside
one op's formula. Torch's exact gelu derivative Phi(s) + s phi(s) computes Phi(s) as
(1 + erf(s / sqrt 2)) / 2, which in float32 has no correct digit below s ~ -5 (erf rounds to
-1 + one ulp); torch and the engine both follow that formula and both are ~1% off there, in
different directions. So a float32 tensor that fails the first bound passes if the engine's
error against the float64 reference is at most ``AS_ACCURATE_AS_TORCH`` times torch's own.
"""

from __future__ import annotations

import pytest
from helpers import (
    NETWORK_TOL,
    backend_id,
    backends,
    compare_network,
    condition_numbers,
    device_params,
    float32_errors,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.engine import ACTIVATIONS, BIAS_INITS, LOSSES, WEIGHT_INITS, MLPSpec

# the engine's float32 error against float64 may exceed torch's own by this factor: different
# roundings of the same ill-conditioned formula give errors of the same size, not the same errors
AS_ACCURATE_AS_TORCH = 4.0
# Random biases only. With zero biases and weights that make every logit equal (zeros or
# constant weights, or a dead relu layer), the cross-entropy gradient of the output bias is the
# batch mean of 1/C - onehot(y): exactly zero when the labels are balanced, a zero by
# coincidence whose computed value is rounding noise in both implementations (hypothesis finds
# it within seconds). Zero biases are covered by the fixed grid of test_networks.
RANDOM_BIAS_INITS = [b for b in BIAS_INITS if b != "zeros"]
ACTIVATION_PARAMS = {"leaky_relu": {"slope": 0.2}, "elu": {"alpha": 0.7},
                     "softplus": {"beta": 2.0, "threshold": 3.0}}


@st.composite
def networks(draw):
    activation = draw(st.sampled_from([*ACTIVATIONS, "gelu_tanh"]))
    spec = MLPSpec(
        in_features=draw(st.integers(1, 6)),
        out_features=draw(st.integers(1, 5)),
        depth=draw(st.integers(0, 4)),
        width=draw(st.integers(1, 8)),
        activation=activation,
        activation_params=ACTIVATION_PARAMS.get(activation, {}),
        init=draw(st.sampled_from(sorted(WEIGHT_INITS))),
        init_scale=draw(st.sampled_from([0.5, 1.0, 2.0])),
        bias_init=draw(st.sampled_from(RANDOM_BIAS_INITS)),
        bias_std=0.3,
        loss=draw(st.sampled_from(sorted(LOSSES))),
    )
    batch = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**16))
    return spec, batch, seed


@pytest.mark.parametrize("device", device_params())
@settings(max_examples=30, deadline=None)
@given(case=networks(), data=st.data())
def test_network_gradients_equal_the_reference(device, case, data):
    spec, batch, seed = case
    names = ("numpy", "torch") if device == "cpu" else ("torch",)  # numpy runs on cpu only
    backend = data.draw(st.sampled_from(backends(names, devices=[device])), label="backend")
    tol = NETWORK_TOL[backend.dtype]
    errors = compare_network(spec, backend, seed=seed, batch=batch)
    off = {key: err for key, err in errors.items() if err > tol}
    if off and backend.dtype == "float32":
        kappa = condition_numbers(spec, seed=seed, batch=batch, device=backend.device)
        off = {key: err for key, err in off.items() if err > tol * kappa[key]}
    if off and backend.dtype == "float32":
        against_float64 = float32_errors(spec, backend, seed=seed, batch=batch)
        off = {key: (err, kappa[key], *against_float64[key]) for key, err in off.items()
               if against_float64[key][0] > AS_ACCURATE_AS_TORCH * against_float64[key][1]}
    assert not off, f"{backend_id(backend)} {spec} batch {batch} seed {seed}: {off}"
