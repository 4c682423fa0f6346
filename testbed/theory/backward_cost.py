"""FLOP counts of a dense MLP's forward and backward pass ("Cost of the backward pass", claims.md).

A dense layer Y = X W^T with X: (B, n_in), W: (n_out, n_in) costs 2 B n_in n_out
FLOPs forward (one multiply and one add per term). Backward it needs
dW = dY^T X and dX = dY W, 2 B n_in n_out each, except that the first layer's
dX (the gradient w.r.t. the data) is not needed. So an L-layer MLP of equal
widths has backward/forward = (2L - 1)/L < 2: the cheap-gradient principle
(Baur & Strassen 1983; Griewank & Walther 2008), reverse mode costs a small
constant times the function. Biases and activations (O(B n) each) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class MLPFlops(NamedTuple):
    forward: int
    backward: int


def mlp_flops(batch: int, sizes: Sequence[int]) -> MLPFlops:
    """Matmul FLOPs of an MLP with layer widths ``sizes = [n_0 (input), n_1, ..., n_L]``.

    Layer k maps n_{k-1} -> n_k: forward 2 B n_{k-1} n_k; backward the same for
    dW^k plus the same for dX^k when k >= 2.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs an input and at least one layer width, got {list(sizes)}")
    layer_flops = [2 * batch * n_in * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
    forward = sum(layer_flops)
    backward = forward + sum(layer_flops[1:])  # dW for every layer, dX for all but the first
    return MLPFlops(forward=forward, backward=backward)


def backward_forward_flop_ratio(num_layers: int) -> float:
    """(2L - 1) / L: backward/forward FLOPs of an L-layer MLP of equal widths."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return (2 * num_layers - 1) / num_layers
