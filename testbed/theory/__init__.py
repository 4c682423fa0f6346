"""Closed-form and quadrature predictions the experiments are checked against (numpy/scipy only)."""

from testbed.theory.activations import ACTIVATIONS, phi_and_derivative
from testbed.theory.backward_cost import MLPFlops, backward_forward_flop_ratio, mlp_flops
from testbed.theory.mean_field import (
    chi1,
    chi_c,
    correlation_map,
    depth_scale,
    fixed_point,
    gauss_hermite,
    gaussian_expectation,
    length_map,
    predicted_grad_norm_ratios,
    predicted_grad_variance_ratio,
    predicted_log_grad_norm_profile,
    predicted_log_grad_norm_slope,
    q_trajectory,
    regime,
)

__all__ = [
    "ACTIVATIONS",
    "MLPFlops",
    "backward_forward_flop_ratio",
    "chi1",
    "chi_c",
    "correlation_map",
    "depth_scale",
    "fixed_point",
    "gauss_hermite",
    "gaussian_expectation",
    "length_map",
    "mlp_flops",
    "phi_and_derivative",
    "predicted_grad_norm_ratios",
    "predicted_grad_variance_ratio",
    "predicted_log_grad_norm_profile",
    "predicted_log_grad_norm_slope",
    "q_trajectory",
    "regime",
]
