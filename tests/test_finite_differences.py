"""The engine's backward against central differences of its own forward: no torch at all.

cs231n's gradient check: for an op y = f(x) and a random, non-symmetric upstream gradient g,
d<g, f(x)>/dx_i ~ (<g, f(x + eps e_i)> - <g, f(x - eps e_i)>) / (2 eps), in float64 on the numpy
backend; for a whole MLP, f is the loss and the check covers every parameter and the input.

Choice of eps = 1e-5: a central difference has truncation error ~ eps^2 |f'''| / 6 (~1e-11
here) and rounding error ~ u |f| / eps (u = 1.1e-16). The rounding term is what matters when a
gradient is small next to the function it differentiates, e.g. dL/dx of a sigmoid network is
~1% of the loss: at eps = 1e-6 it alone reaches a relative error of ~5e-8, at 1e-5 ~7e-9.
A correct backward then lands below 1e-9 for single ops and ~1e-8 for networks; the bound 1e-7
keeps a margin without letting a wrong derivative through (the last test checks that). Inputs
are kept at least 1e-2 from the kinks (relu's 0, softplus's threshold) and a network's hidden
pre-activations at least 100 eps from them: a central difference that straddles a kink
measures the average of two one-sided slopes, not the derivative.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    FINITE_DIFFERENCE_TOL,
    OPS,
    LinearOp,
    OpCase,
    finite_difference_errors,
    network_finite_difference_errors,
)

from testbed.engine import ACTIVATIONS, LOSSES, MLPSpec

ACTIVATION_NAMES = [*ACTIVATIONS, "gelu_tanh"]
ACTIVATION_PARAMS = {"leaky_relu": {"slope": 0.2}, "elu": {"alpha": 0.7},
                     "softplus": {"beta": 2.0, "threshold": 3.0}}  # threshold inside the data range


@pytest.mark.parametrize("case", OPS, ids=[case.name for case in OPS])
def test_op_backward_matches_central_differences(case):
    errors = finite_difference_errors(case)
    assert max(errors) <= FINITE_DIFFERENCE_TOL, errors


@pytest.mark.parametrize("depth", [0, 2])
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_network_gradients_match_central_differences(activation, loss, depth):
    spec = MLPSpec(in_features=4, out_features=3, depth=depth, width=6, activation=activation,
                   activation_params=ACTIVATION_PARAMS.get(activation, {}), init="xavier_normal",
                   bias_init="standard", loss=loss)
    errors = network_finite_difference_errors(spec)
    assert set(errors) == {*spec.param_keys(), "x"}
    assert max(errors.values()) <= FINITE_DIFFERENCE_TOL, errors


def test_the_check_fails_a_slightly_wrong_backward():
    """A derivative off by 1e-5 relative (a constant 'almost right') is caught."""

    class ScaledLinear(LinearOp):
        def backward(self, grad_output, cache):
            dx, dw, db = super().backward(grad_output, cache)
            return dx, dw * (1 + 1e-5), db

    linear = next(case for case in OPS if case.name == "linear")
    wrong = OpCase("wrong", ScaledLinear(), linear.torch_fn, linear.shapes)
    errors = finite_difference_errors(wrong)
    assert errors[0] <= FINITE_DIFFERENCE_TOL and errors[2] <= FINITE_DIFFERENCE_TOL
    assert errors[1] > 10 * FINITE_DIFFERENCE_TOL
    assert np.isclose(errors[1], 1e-5, rtol=1e-2)
