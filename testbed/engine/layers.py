"""The affine layer, as a forward/backward pair (cs231n style).

Shapes: x (..., N, D_in), weight (..., D_out, D_in), bias (..., D_out)
-> out (..., N, D_out). Leading axes, when present, index independent
replicas that share nothing (batched matrix products).
"""

from __future__ import annotations

from testbed.engine.backend import namespace


def linear_forward(x, weight, bias):
    """s = x W^T + b. Returns (s, cache)."""
    return namespace(x).linear(x, weight, bias), (x, weight)


def linear_backward(ds, cache, need_input_grad: bool = True):
    """Given dL/ds, return (dL/dx, dL/dW, dL/db).

    dL/dx = ds W;  dL/dW = ds^T x;  dL/db = sum over the N rows of ds.
    dL/dx is skipped (None) when not needed, as for the first layer.
    """
    x, weight = cache
    grad_input = ds @ weight if need_input_grad else None
    grad_weight = ds.mT @ x
    grad_bias = namespace(ds).sum(ds, axis=-2)
    return grad_input, grad_weight, grad_bias


def linear_backward_sgd(ds, cache, lr: float, need_input_grad: bool = True):
    """``linear_backward`` with plain SGD's weight update fused in: W <- W - lr ds^T x as one matrix
    product accumulated into W (a GEMM with beta = 1), so dL/dW is never formed. dL/dx is taken
    before W changes. Returns (dL/dx, dL/db); the caller updates b."""
    x, weight = cache
    grad_input = ds @ weight if need_input_grad else None
    xp = namespace(ds)
    xp.sub_matmul_(weight, lr, ds.mT, x)
    return grad_input, xp.sum(ds, axis=-2)
