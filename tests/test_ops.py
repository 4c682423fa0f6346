"""Every op of the engine against torch autograd, forward and backward (tinygrad's test_ops).

``helpers.OPS`` lists each op once (one line per op: the engine's op, torch's function, input
shapes, ranges, kinks); ``helper_test_op`` checks shape, dtype, forward and backward with an
odd, non-symmetric upstream gradient, on both engine backends (numpy arrays; torch tensors with
autograd off) and every device. Two input ranges per op: ``typical`` (uniform on [-3, 2]) and
``extreme`` (|x| up to 30 for the saturating activations, logits of +-1e4 for cross-entropy),
each with the op's kinks planted exactly (relu'(0), the softplus threshold, ...), where the
engine must follow torch's convention. Tolerance: relative error <= 1e-12 (float64), 1e-5
(float32), per tensor.

Why the extreme range is uniform over [-30, 30] and not *all* saturated for tanh and sigmoid: at
|s| > 8, 1 - tanh(s)^2 is a difference of nearly equal numbers, so a last-bit difference between
numpy's and torch's tanh (both correctly rounded to within an ulp) becomes a large relative
difference of a tiny derivative. Both sides compute the same formula as torch; a tensor made only
of such entries measures libm rounding, not the engine.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    OP_TOL,
    OPS,
    Backend,
    LossOp,
    backend_params,
    device_params,
    helper_test_op,
    op_case_kwargs,
    reference_tensor,
    relative_error,
)

from testbed.engine import get_loss


@pytest.mark.parametrize("extreme", [False, True], ids=["typical", "extreme"])
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("case", OPS, ids=[case.name for case in OPS])
def test_op_matches_torch_autograd(case, backend, extreme):
    helper_test_op(case.shapes, case.torch_fn, case.op, backend, **op_case_kwargs(case, extreme))


@pytest.mark.parametrize("backend", backend_params())
def test_cross_entropy_is_finite_and_equal_to_torch_at_logits_of_1e4(backend):
    logits = np.array([[1e4, -1e4, 0.0, 5.0], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -3.0, 1e4],
                       [-1e4, 2.0, 1e4, -1e4], [0.5, -1e4, -1e4, 1e4]])
    labels = np.array([1, 2, 2, 0, 3])
    ours, cache = get_loss("cross_entropy").forward(backend.asarray(logits), backend.labels(labels))
    upstream = 1.7
    grad = LossOp("cross_entropy").backward(backend.asarray(upstream), cache)[0]
    logits_t = reference_tensor(logits, backend, requires_grad=True)
    theirs = F.cross_entropy(logits_t, reference_tensor(labels, backend))
    theirs.backward(reference_tensor(upstream, backend))
    assert np.isfinite(float(ours)) and backend.xp.isfinite(grad)
    assert relative_error(ours, theirs) <= OP_TOL[backend.dtype]
    assert relative_error(grad, logits_t.grad) <= OP_TOL[backend.dtype]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("side", [1.0, -1.0], ids=["positive", "negative"])
def test_bce_with_logits_is_accurate_where_the_loss_is_tiny(backend, side):
    """Confident, correct logits (|z| in [10, 30]): the loss is ~exp(-|z|) and must keep its
    relative accuracy. Checked against exact (50-digit) arithmetic rather than torch, because for
    z << 0, y = 0 torch's own (1 - y) z - log_sigmoid(z) cancels (1% off in float32)."""
    rng = np.random.default_rng(3)
    logits = side * rng.uniform(10.0, 30.0, size=(6, 4))
    target = (logits > 0).astype(np.float64)
    ours, _ = get_loss("bce_with_logits").forward(backend.asarray(logits), backend.asarray(target))
    rounded = np.asarray(backend.asarray(logits).tolist(), dtype=np.float64)  # what the engine saw
    with mpmath.workdps(50):
        exact = mpmath.fsum((1 - y) * mpmath.mpf(z) + mpmath.log1p(mpmath.exp(-mpmath.mpf(z)))
                            for z, y in zip(rounded.ravel(), target.ravel(), strict=True)) / logits.size
    # a few roundings of the dtype on the sum of positive terms: no cancellation is left
    assert abs(float(ours) - float(exact)) <= 16 * np.finfo(backend.dtype).eps * float(exact)


def test_the_numpy_backend_runs_on_cpu_only_and_cuda_params_are_marked():
    with pytest.raises(ValueError, match="cpu only"):
        Backend("numpy", "float64", "cuda")
    params = backend_params(devices=["cpu", "cuda"])  # as on a machine with a GPU
    assert {(p.values[0].name, p.values[0].device) for p in params} == {
        ("numpy", "cpu"), ("torch", "cpu"), ("torch", "cuda")}
    for param in params:
        assert (pytest.mark.cuda in param.marks) == (param.values[0].device == "cuda")
    assert [p.id for p in device_params(["cpu", "cuda"])] == ["cpu", "cuda"]
    assert pytest.mark.cuda in device_params(["cpu", "cuda"])[1].marks


def test_helper_test_op_fails_a_wrong_backward():
    """The helper has teeth: a backward off by the derivative at the kink, or by a transpose."""
    relu = next(case for case in OPS if case.name == "relu")

    class ReluWithOneAtZero:
        def forward(self, s):
            return relu.op.forward(s)

        def backward(self, da, s):
            return (np.where(s >= 0, da, 0.0),)  # relu'(0) = 1: not torch's convention

    with pytest.raises(AssertionError, match="backward"):
        helper_test_op(relu.shapes, relu.torch_fn, ReluWithOneAtZero(), Backend(),
                       **op_case_kwargs(relu, False))

    linear = next(case for case in OPS if case.name == "linear")

    class LinearTransposedWeightGrad:
        def forward(self, x, w, b):
            return linear.op.forward(x, w, b)

        def backward(self, ds, cache):
            dx, dw, db = linear.op.backward(ds, cache)
            return dx, dw[::-1], db  # wrong rows: right shape, wrong values

    with pytest.raises(AssertionError, match="backward"):
        helper_test_op(linear.shapes, linear.torch_fn, LinearTransposedWeightGrad(), Backend(),
                       **op_case_kwargs(linear, False))


def test_ops_cover_every_activation_and_loss():
    from testbed.engine import ACTIVATIONS, LOSSES

    names = {case.name for case in OPS}
    assert set(ACTIVATIONS) | set(LOSSES) | {"linear", "gelu_tanh"} <= names
    assert torch.is_grad_enabled()  # the reference side really used autograd
