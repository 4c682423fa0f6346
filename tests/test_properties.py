"""Property-based: for any network, the engine's gradients equal torch's (hypothesis).

Random input and output sizes, depths (0, a linear model, included), widths (1 included), batch
sizes (1 included), activations, weight and bias inits, losses, backends, devices and dtypes; the
loss, output, every parameter gradient, dL/dx and every dL/ds^l are compared with the torch.nn
reference (``helpers.compare_network``).

float64: relative error <= 1e-10. float32: relative error <= 1e-5, or, where the comparison is
ill-conditioned, the engine is as accurate as torch itself. Two float32 implementations cannot
agree better than each agrees with the exact result, and a gradient that is a sum with
cancellation (db = sum over the batch of dL/ds when the signal has vanished) carries an error of
condition number x 6e-8 in any implementation, torch's included: there the check is that the
engine's error against a float64 reference is at most ``FLOAT32_ACCURACY_FACTOR`` times torch's
own float32 error against it (or within 1e-5), see ``helpers.network_float32_accuracy``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import (
    NETWORK_TOL,
    backend_id,
    backends,
    compare_network,
    device_params,
    network_float32_accuracy,
)

from testbed.engine import ACTIVATIONS, BIAS_INITS, LOSSES, WEIGHT_INITS, MLPSpec

# the engine's float32 error may exceed torch's by this factor (different summation orders give
# errors of the same size, not the same errors)
FLOAT32_ACCURACY_FACTOR = 4.0
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
        accuracy = network_float32_accuracy(spec, backend, seed=seed, batch=batch)
        off = {key: accuracy[key] for key in off
               if accuracy[key][0] > max(tol, FLOAT32_ACCURACY_FACTOR * accuracy[key][1])}
    assert not off, f"{backend_id(backend)} {spec} batch {batch} seed {seed}: {off}"
